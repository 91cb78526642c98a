"""Shared fixtures: small specs, MNIST-format image files the tests write themselves, the real
MNIST test set where it is present, a temp dir.

The tests need no data beside the repository: ``mnist_dir`` is a directory of IDX files in
MNIST's format written by the test session (random digits-like images, seeded). The checks that
need the real MNIST test set (``real_mnist_dir``) run where it is present: at ``$VOLUME_MNIST``,
in the repository's ``data/mnist`` or in ``../shared/data/mnist`` beside the checkout (CI). Where
it is not, they are deselected and the summary says so in a NOTICE line.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MNIST_CANDIDATES = [Path(p) for p in [os.environ.get("VOLUME_MNIST", "")] if p] + [
    REPO / "data" / "mnist", REPO.parent / "shared" / "data" / "mnist"]
MNIST_DIR = next((p for p in MNIST_CANDIDATES if (p / "t10k-images-idx3-ubyte.gz").is_file()), None)
_NOT_RUN: list[str] = []


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (LeCun's format: magic 0 0 8 ndim, big-endian uint32 sizes)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as f:
        f.write(data)


def synthetic_mnist(directory: Path, n: int = 300, seed: int = 0) -> Path:
    """MNIST-format test split in ``directory``: n 28x28 images and labels 0..9. Like digits,
    the images are mostly 0 with a bright region whose place depends on the class (so that
    classes can be learnt), its pixels random."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        r, c = 2 + 4 * (k % 5) + rng.integers(0, 3), 2 + 12 * (k // 5) + rng.integers(0, 3)
        images[i, r:r + 8, c:c + 10] = rng.integers(64, 256, size=(8, 10))
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", images)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A directory holding an MNIST-format test split that this session wrote."""
    return synthetic_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def real_mnist_dir() -> Path:
    assert MNIST_DIR is not None  # tests using it are deselected when it is absent
    return MNIST_DIR


def pytest_collection_modifyitems(config, items):
    if MNIST_DIR is not None:
        return
    keep, drop = [], []
    for item in items:
        (drop if "real_mnist_dir" in getattr(item, "fixturenames", ()) else keep).append(item)
    if drop:
        _NOT_RUN.extend(item.nodeid for item in drop)
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    if _NOT_RUN:
        terminalreporter.write_line(
            f"NOTICE: the real MNIST test set was not found (looked in {', '.join(str(p) for p in MNIST_CANDIDATES)}); "
            f"{len(_NOT_RUN)} real-data check(s) were not run: {', '.join(_NOT_RUN)}. The readers were tested on "
            "IDX files the tests wrote. Put t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in data/mnist "
            "(data/README.md) to run them.", yellow=True, bold=True)


@pytest.fixture
def boolean_spec():
    """A small Boolean spec: n = 3 inputs in {0,1}, 3-8-1 ReLU, sigma_b > 0 (no degenerate input)."""
    from volume.spec import BooleanCube, ExperimentSpec, FCN, Prior

    return ExperimentSpec(architecture=FCN(hidden=(8,)), prior=Prior(sigma_w=1.5, sigma_b=0.5),
                          inputs=BooleanCube(n=3), seed=1, block_size=512, name="tiny")


def tiny_tables(tmp_path: Path, spec) -> tuple[Path, np.ndarray]:
    """A directory ``tmp_path/tables`` holding the table 'tiny' (blocks 0 and 1 of ``spec``) for
    the service tests, and the labels of every draw in it."""
    from volume.sampler import Sampler
    from volume.table import FrequencyTable

    tables = tmp_path / "tables"
    tables.mkdir()
    labels = np.concatenate([Sampler(spec).labels(b) for b in (0, 1)])
    FrequencyTable.from_labels(spec, labels, [0, 1]).save(tables / "tiny.h5")
    return tables, labels


@pytest.fixture(params=["auto", "torch"], ids=["compiled", "torch"])
def both_backends(request, monkeypatch):
    """Run a test with the default backend ('auto': the compiled kernel where it applies) and
    with the PyTorch backend forced (VOLUME_BACKEND). Use with
    ``pytestmark = pytest.mark.usefixtures("both_backends")``."""
    monkeypatch.setenv("VOLUME_BACKEND", request.param)
    return request.param
