"""Input sets: the Boolean cube and image subsets read from local files; target labellings.

* Boolean cube of n bits: input j is the binary expansion of j, most significant bit
  first (the order of ``itertools.product([0, 1], repeat=n)``), values in {0, 1} or {-1, 1}.
* Images: MNIST / Fashion-MNIST IDX files (``{train,t10k}-images-idx3-ubyte[.gz]`` and the
  matching labels) and CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) from a
  local directory; scikit-learn's 8x8 digits as a small built-in set. Nothing is downloaded:
  a missing file is a :class:`DataError` that says where the file is expected.

An :class:`InputSet` holds ``x`` of shape (M, *shape) as float32 (images as (C, H, W)),
and for images the true class labels, from which binary targets are made.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from volume.errors import DataError, FunctionError
from volume.spec import BooleanCube, ImageSubset, InputSpec

DATA_ENV = "VOLUME_DATA"


@dataclass(frozen=True)
class InputSet:
    x: np.ndarray  # (M, *shape) float32
    shape: tuple[int, ...]  # shape of one input: (n,) or (C, H, W)
    labels: np.ndarray | None = None  # true classes of images (M,), None for the cube
    indices: np.ndarray | None = None  # indices into the data set

    @property
    def n_inputs(self) -> int:
        return int(self.x.shape[0])

    @property
    def flat(self) -> np.ndarray:
        """(M, d) view, d = prod(shape)."""
        return self.x.reshape(self.x.shape[0], -1)


def boolean_cube(n: int, encoding: str = "01") -> np.ndarray:
    """(2^n, n) float32: row j holds the bits of j, most significant first."""
    j = np.arange(2**n, dtype=np.int64)[:, None]
    bits = ((j >> np.arange(n - 1, -1, -1)) & 1).astype(np.float32)
    return bits * 2 - 1 if encoding == "pm1" else bits


def load_inputs(spec: InputSpec) -> InputSet:
    """Build the input set a spec names."""
    if isinstance(spec, BooleanCube):
        x = boolean_cube(spec.n, spec.encoding)
        return InputSet(x=x, shape=(spec.n,))
    return _load_images(spec)


# --------------------------------------------------------------------------- images
def _resolve_dir(spec: ImageSubset) -> Path:
    path = spec.path or os.environ.get(DATA_ENV, "")
    if not path:
        raise DataError(
            f"inputs.path is empty: set it to the directory holding the {spec.dataset} files "
            f"(or set the {DATA_ENV} environment variable)"
        )
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"inputs.path {str(p)!r} is not a directory: it must hold the {spec.dataset} files")
    return p


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"missing data file: expected {stem} or {stem}.gz in {str(directory)!r} (nothing is downloaded)")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) as in LeCun's MNIST format: magic 0x0000 08 <ndim>,
    big-endian uint32 dimensions, then uint8 data."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {str(p)!r}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{str(p)!r} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims)) if dims else 0
    if len(data) != header + size:
        raise DataError(f"IDX file {str(p)!r} is truncated or padded: expected {header + size} bytes, found {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@lru_cache(maxsize=8)
def _load_full(dataset: str, directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    d = Path(directory)
    if dataset in ("mnist", "fashion-mnist"):
        prefix = "train" if split == "train" else "t10k"
        images = read_idx(_find(d, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(d, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{dataset} files in {directory!r} do not match: images {images.shape}, labels {labels.shape}")
        return images[:, None, :, :], labels
    if dataset == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        xs, ys = [], []
        for name in names:
            f = d / name
            if not f.is_file():
                f = d / "cifar-10-batches-py" / name
            if not f.is_file():
                raise DataError(f"missing CIFAR-10 batch {name!r} in {directory!r} (python version of CIFAR-10)")
            with open(f, "rb") as fh:
                # Local CIFAR-10 python batches are pickles by format; they are read only
                # from the user's own data directory, never from a client.
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.uint8))
        return np.concatenate(xs), np.concatenate(ys)
    raise DataError(f"unknown dataset {dataset!r}")


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("dataset 'digits' needs scikit-learn: pip install 'volume[digits]'") from None
    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None, :, :]
    return images, bunch.target.astype(np.uint8)


def _load_images(spec: ImageSubset) -> InputSet:
    if spec.dataset == "digits":
        images, labels = _load_digits()
    else:
        images, labels = _load_full(spec.dataset, str(_resolve_dir(spec)), spec.split)
    total = images.shape[0]
    if spec.indices is not None:
        idx = np.asarray(spec.indices, dtype=np.int64)
        if idx.max() >= total:
            raise DataError(f"inputs.indices has index {int(idx.max())} but the {spec.split} split has {total} images")
    else:
        if spec.count > total:
            raise DataError(f"inputs.count = {spec.count} but the {spec.split} split has only {total} images")
        rng = np.random.default_rng(spec.subset_seed)
        idx = np.sort(rng.choice(total, size=spec.count, replace=False))
    x = images[idx].astype(np.float32)
    if spec.normalise in ("unit", "standard"):
        x /= 255.0
    if spec.normalise == "standard":
        flat = x.reshape(x.shape[0], -1)
        flat -= flat.mean(axis=1, keepdims=True)
        flat /= np.maximum(flat.std(axis=1, keepdims=True), 1e-12)
        x = flat.reshape(x.shape)
    return InputSet(x=np.ascontiguousarray(x), shape=tuple(x.shape[1:]), labels=labels[idx].copy(), indices=idx)


# --------------------------------------------------------------------------- targets
TARGET_RULES = (
    "parity", "majority", "zero", "one", "bit:<i>", "bits:<0/1 string>", "hex:<key>",
    "ge5 (class >= 5)", "even (class even)", "class:<k> (class == k)", "classes (the true classes)",
)


def target_labels(inputs: InputSet, rule: str, classes: int = 2) -> np.ndarray:
    """Labels (M,) uint8 of a target function on an input set.

    Rules for the Boolean cube: 'parity' (XOR of the bits), 'majority' (more ones than
    zeros), 'zero'/'one' (constant), 'bit:i' (bit i, 0 = most significant); for images:
    'ge5' (class >= 5), 'even', 'class:k' (class == k), 'classes' (the true class, for
    k-class outputs); for any set: 'bits:<string of labels>' or 'hex:<packed key>'.
    """
    from volume.keys import parse_function

    m = inputs.n_inputs
    r = rule.strip()
    if r.startswith("bits:"):
        return parse_function(r[5:], m, classes)
    if r.startswith("hex:"):
        return parse_function("0x" + r[4:].removeprefix("0x"), m, classes)
    if inputs.labels is None:
        bits = (inputs.flat > 0).astype(np.uint8)
        if r == "parity":
            return (bits.sum(axis=1) % 2).astype(np.uint8)
        if r == "majority":
            return (2 * bits.sum(axis=1) > bits.shape[1]).astype(np.uint8)
        if r in ("zero", "one"):
            return np.full(m, int(r == "one"), dtype=np.uint8)
        if r.startswith("bit:") and r[4:].isdigit() and int(r[4:]) < bits.shape[1]:
            return bits[:, int(r[4:])].copy()
    else:
        y = inputs.labels
        if r == "ge5":
            return (y >= 5).astype(np.uint8)
        if r == "even":
            return (y % 2 == 0).astype(np.uint8)
        if r.startswith("class:") and r[6:].isdigit():
            return (y == int(r[6:])).astype(np.uint8)
        if r == "classes":
            if y.max() >= classes:
                raise FunctionError(f"target 'classes' has labels up to {int(y.max())} but the output has {classes} classes")
            return y.astype(np.uint8)
        if r in ("zero", "one"):
            return np.full(m, int(r == "one"), dtype=np.uint8)
    kind = "image" if inputs.labels is not None else "Boolean"
    raise FunctionError(f"unknown target rule {rule!r} for a {kind} input set: use one of {', '.join(TARGET_RULES)}")
