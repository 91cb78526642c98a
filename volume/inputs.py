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
def expected_files(dataset: str, split: str) -> list[str]:
    """The files a data set's split is read from (the names of the original distributions)."""
    if dataset in ("mnist", "fashion-mnist"):
        prefix = "train" if split == "train" else "t10k"
        return [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    if dataset == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return []


def _placement(dataset: str, split: str, directory: Path) -> str:
    """Exactly which files to put where, for error messages."""
    files = ", ".join(expected_files(dataset, split))
    origin = {"mnist": "the MNIST distribution (gzipped or not)",
              "fashion-mnist": "the Fashion-MNIST distribution (gzipped or not)",
              "cifar10": "CIFAR-10's python version (cifar-10-python.tar.gz, unpacked)"}.get(dataset, dataset)
    return (f"put {files} from {origin} into {str(directory)!r}; nothing is downloaded "
            f"(data/README.md in the repository says where to get them)")


def _resolve_dir(spec: ImageSubset) -> Path:
    path = spec.path or os.environ.get(DATA_ENV, "")
    if not path:
        raise DataError(
            f"inputs.path is empty: set it to the directory holding the {spec.dataset} files "
            f"(or set the {DATA_ENV} environment variable)"
        )
    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise DataError(f"inputs.path {str(p)!r} is not a directory: create it and "
                        + _placement(spec.dataset, spec.split, p))
    return p


def _find(directory: Path, stem: str, dataset: str, split: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"missing data file {stem}.gz (or {stem}) in {str(directory)!r}: "
                    + _placement(dataset, split, directory))


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
        images = read_idx(_find(d, f"{prefix}-images-idx3-ubyte", dataset, split))
        labels = read_idx(_find(d, f"{prefix}-labels-idx1-ubyte", dataset, split))
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
                raise DataError(f"missing CIFAR-10 batch {name!r} in {directory!r}: " + _placement(dataset, split, d))
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
BOOLEAN_RULES = ("parity", "majority", "zero", "one", "bit:<i>")
IMAGE_RULES = ("ge5 (class >= 5)", "even (class even)", "class:<k> (class == k)", "classes (the true classes)",
               "zero", "one")
FUNCTION_FORMS = ("a '0'/'1' string with one label per input", "a hex key with a '0x' prefix",
                  "bits:<labels>", "hex:<key>")
TARGET_RULES = tuple(dict.fromkeys(BOOLEAN_RULES + IMAGE_RULES))  # every rule name, for documentation


def _rule_labels(inputs: InputSet, rule: str, classes: int) -> np.ndarray | None:
    """Labels of a named rule on ``inputs``, or None if ``rule`` is no rule for this kind of set."""
    m = inputs.n_inputs
    if rule in ("zero", "one"):
        return np.full(m, int(rule == "one"), dtype=np.uint8)
    if inputs.labels is None:
        bits = (inputs.flat > 0).astype(np.uint8)
        if rule == "parity":
            return (bits.sum(axis=1) % 2).astype(np.uint8)
        if rule == "majority":
            return (2 * bits.sum(axis=1) > bits.shape[1]).astype(np.uint8)
        if rule.startswith("bit:") and rule[4:].isdigit():
            i, n = int(rule[4:]), bits.shape[1]
            if i >= n:
                raise FunctionError(f"target rule {rule!r} is out of range: the inputs have {n} bits, "
                                    f"use bit:0 (most significant) .. bit:{n - 1}")
            return bits[:, i].copy()
        return None
    y = inputs.labels
    if rule == "ge5":
        return (y >= 5).astype(np.uint8)
    if rule == "even":
        return (y % 2 == 0).astype(np.uint8)
    if rule.startswith("class:") and rule[6:].isdigit():
        return (y == int(rule[6:])).astype(np.uint8)
    if rule == "classes":
        if y.max() >= classes:
            raise FunctionError(f"target 'classes' has labels up to {int(y.max())} but the output has {classes} classes")
        return y.astype(np.uint8)
    return None


def _unknown_rule(rule: str, inputs: InputSet) -> FunctionError:
    image = inputs.labels is not None
    own, other = (IMAGE_RULES, BOOLEAN_RULES) if image else (BOOLEAN_RULES, IMAGE_RULES)
    kind = "an image" if image else "a Boolean"
    name = rule.split(":", 1)[0] + (":" if ":" in rule else "")
    hint = ""
    if any(r.split(" ")[0].split("<")[0] == name for r in other if r not in own):
        hint = f" ({rule!r} is a rule for {'Boolean' if image else 'image'} inputs)"
    return FunctionError(f"unknown target rule {rule[:40]!r} for {kind} input set of {inputs.n_inputs} inputs{hint}: "
                         f"give a rule ({', '.join(own)}) or a function ({', '.join(FUNCTION_FORMS)})")


def resolve_labels(value, inputs, classes: int = 2, *, allow_file: bool = False) -> np.ndarray:
    """Labels (M,) uint8 of a function on an input set, given in any of the project's forms.

    This is the one resolver of labels and targets (the CLI, the service, the GP and the
    trainer call it). ``value`` is, in this order of precedence:

    * a vector of M labels;
    * ``'@FILE'`` (only with ``allow_file``; the command line sets it, the service never
      does): the file holds one of the forms below;
    * ``'bits:<labels>'``, ``'hex:<key>'`` or a ``'0x'``-prefixed hex key
      (:func:`volume.keys.parse_function`);
    * a rule: for the Boolean cube ``parity`` (XOR of the bits), ``majority`` (more ones than
      zeros), ``bit:i`` (bit i, 0 = most significant); for images ``ge5`` (class >= 5),
      ``even``, ``class:k``, ``classes`` (the true class, for k-class outputs); for both
      ``zero``/``one`` (constant);
    * otherwise a '0'/'1' string of M labels (base-36 digits for more classes), or hex
      digits without the prefix (:func:`volume.keys.parse_function`).

    ``inputs`` is an :class:`InputSet`, or an ``ExperimentSpec`` whose input set is loaded
    only if a rule needs it (a function string needs no data files).

    >>> cube = load_inputs(BooleanCube(n=2))
    >>> resolve_labels("parity", cube).tolist(), resolve_labels("0x60", cube).tolist()
    ([0, 1, 1, 0], [0, 1, 1, 0])
    """
    from volume.keys import parse_function

    if isinstance(inputs, InputSet):
        m, get_inputs = inputs.n_inputs, (lambda: inputs)
    else:  # an ExperimentSpec: load its inputs only for a rule
        m, get_inputs = inputs.n_inputs, (lambda: load_inputs(inputs.inputs))
    if not isinstance(value, str):
        return parse_function(value, m, classes)
    s = value.strip()
    if s.startswith("@"):
        if not allow_file:
            raise FunctionError(f"{s[:40]!r}: '@FILE' targets are read only on the command line; "
                                "give the labels themselves")
        p = Path(s[1:]).expanduser()
        if not p.is_file():
            raise FunctionError(f"labels file {str(p)!r} does not exist ('@FILE' reads the labels or rule from FILE)")
        return resolve_labels(p.read_text().strip(), inputs, classes)
    if s.startswith("bits:"):
        return parse_function(s[5:], m, classes)
    if s.startswith("hex:"):
        return parse_function("0x" + s[4:].removeprefix("0x"), m, classes)
    if s.lower().startswith("0x"):
        return parse_function(s, m, classes)
    if _looks_like_rule(s):
        lab = _rule_labels(get_inputs(), s, classes)
        if lab is not None:
            return lab
        try:  # a text function of many classes can look like a word
            return parse_function(s, m, classes)
        except FunctionError:
            raise _unknown_rule(s, get_inputs()) from None
    try:
        return parse_function(s, m, classes)
    except FunctionError as e:
        raise FunctionError(f"target {s[:40]!r}{'...' if len(s) > 40 else ''} is neither a rule nor a function "
                            f"of the {m} inputs: {e}") from None


def _looks_like_rule(s: str) -> bool:
    """A word (letters first, then letters, digits, ':' or '_'): rules are words, functions are not."""
    return bool(s) and s[0].isalpha() and all(c.isalnum() or c in ":_" for c in s) and not all(
        c in "0123456789abcdefABCDEF" for c in s)


def target_labels(inputs: InputSet, rule: str, classes: int = 2) -> np.ndarray:
    """Labels (M,) uint8 of a target on an input set: a rule or a function, as in
    :func:`resolve_labels` (this is that resolver, kept under the name the API documents)."""
    return resolve_labels(rule, inputs, classes)
