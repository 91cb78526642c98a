"""Shared fixtures: small specs, the MNIST test images beside the repository, a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
EXAMPLES = REPO / "examples"


@pytest.fixture
def mnist_dir() -> Path:
    assert (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), f"MNIST test images expected in {MNIST_DIR}"
    return MNIST_DIR


@pytest.fixture
def boolean_spec():
    """A small Boolean spec: n = 3 inputs in {0,1}, 3-8-1 ReLU, sigma_b > 0 (no degenerate input)."""
    from volume.spec import BooleanCube, ExperimentSpec, FCN, Prior

    return ExperimentSpec(architecture=FCN(hidden=(8,)), prior=Prior(sigma_w=1.5, sigma_b=0.5),
                          inputs=BooleanCube(n=3), seed=1, block_size=512, name="tiny")


@pytest.fixture(params=["auto", "torch"], ids=["compiled", "torch"])
def both_backends(request, monkeypatch):
    """Run a test with the default backend ('auto': the compiled kernel where it applies) and
    with the PyTorch backend forced (VOLUME_BACKEND). Use with
    ``pytestmark = pytest.mark.usefixtures("both_backends")``."""
    monkeypatch.setenv("VOLUME_BACKEND", request.param)
    return request.param
