"""Labels of a block are a pure function of (spec, b): the same for every sub-batch size,
thread count and process, and the draws of any slice of a block are that slice of the block."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from volume.models import layer_shapes
from volume.sampler import Sampler, block_standard
from volume.stream import block_key
from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Output, Prior

UNIT = 32
SUB_BATCHES = (1, 7, UNIT, UNIT + 5, 10_000)


def _specs(mnist_dir):
    return {
        "relu-b0": ExperimentSpec(architecture=FCN(hidden=(12, 9)), inputs=BooleanCube(n=5), block_size=3 * UNIT + 11),
        "tanh-uniform-argmax": ExperimentSpec(
            architecture=FCN(hidden=(10,), activation="tanh"), prior=Prior(kind="uniform", sigma_w=1.4, sigma_b=0.3),
            inputs=BooleanCube(n=4, encoding="pm1"), output=Output(kind="argmax", classes=3), block_size=2 * UNIT + 3),
        "cnn": ExperimentSpec(architecture=CNN(channels=(3,), kernel_size=3, pool="max"), prior=Prior(sigma_b=0.2),
                              inputs=ImageSubset(dataset="mnist", path=str(mnist_dir), count=12), block_size=UNIT + 9),
    }


@pytest.mark.parametrize("name", ["relu-b0", "tanh-uniform-argmax", "cnn"])
def test_labels_do_not_depend_on_sub_batch_or_threads(name, mnist_dir, monkeypatch):
    monkeypatch.setenv("VOLUME_BACKEND", "torch")  # sub-batches are the torch backend's
    spec = _specs(mnist_dir)[name]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = Sampler(spec, sub_batch=1).labels(3)
        assert ref.shape == (spec.block_size, spec.n_inputs) and ref.dtype == np.uint8
        assert len(np.unique(ref, axis=0)) > 1  # a block is not one repeated function
        for sb in SUB_BATCHES:
            assert Sampler(spec, sub_batch=sb).labels(3).tobytes() == ref.tobytes(), f"sub_batch={sb}"
        torch.set_num_threads(2)
        assert Sampler(spec, sub_batch=UNIT + 5).labels(3).tobytes() == ref.tobytes()
    finally:
        torch.set_num_threads(threads)
    assert not np.array_equal(Sampler(spec).labels(4), ref)  # another block, other draws


def test_labels_are_the_same_in_another_process():
    spec = ExperimentSpec(architecture=FCN(hidden=(8,)), inputs=BooleanCube(n=4), block_size=50, seed=7)
    code = ("import sys; from volume.spec import ExperimentSpec; from volume.sampler import Sampler; "
            "s = ExperimentSpec.from_json(sys.stdin.read()); "
            "sys.stdout.write(Sampler(s, sub_batch=3).keys(2).tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code], input=spec.to_json(), capture_output=True, text=True, check=True)
    assert out.stdout == Sampler(spec).keys(2).tobytes().hex()


@pytest.mark.parametrize("sigma_b", [0.0, 0.5])
def test_any_slice_of_a_block_has_the_draws_of_the_whole_block(sigma_b):
    """Draws [start, stop) read on their own are rows start..stop of the block's draws."""
    spec = ExperimentSpec(architecture=FCN(hidden=(6,)), prior=Prior(sigma_b=sigma_b), inputs=BooleanCube(n=3),
                          block_size=2 * UNIT + 13, seed=5)
    layers = layer_shapes(spec, (3,))
    full = block_standard(spec, layers, 9, 0, spec.block_size)
    assert len(full) == (4 if sigma_b > 0 else 2)
    for sb in (1, 5, UNIT + 1, spec.block_size):
        for start in range(0, spec.block_size, sb):
            stop = min(start + sb, spec.block_size)
            for t, part in zip(full, block_standard(spec, layers, 9, start, stop)):
                assert torch.equal(part, t[start:stop]), (sb, start)


def test_sampler_rejects_bad_arguments(mnist_dir):
    spec = _specs(mnist_dir)["cnn"]
    with pytest.raises(ValueError, match="sub_batch"):
        Sampler(spec, sub_batch=0)
    with pytest.raises(ValueError, match="FCN"):
        Sampler(spec, dense=True)
    with pytest.raises(ValueError, match="block id"):
        block_key(0, -1)
