"""Labels of a block are a pure function of (spec, b): the same for every sub-batch size,
thread count and process, and the draws follow the documented stream layout."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from volume.models import UNIT, draw_params, draw_standard, layer_shapes
from volume.sampler import BlockStream, Sampler, block_generator
from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Output, Prior

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
def test_labels_do_not_depend_on_sub_batch_or_threads(name, mnist_dir):
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
def test_block_stream_gives_the_draws_of_draw_standard(sigma_b):
    """Sub-batches generated on the fly, cutting units anywhere, give exactly the block's draws."""
    spec = ExperimentSpec(architecture=FCN(hidden=(6,)), prior=Prior(sigma_b=sigma_b), inputs=BooleanCube(n=3),
                          block_size=2 * UNIT + 13, seed=5)
    layers = layer_shapes(spec, (3,))
    full = draw_standard(spec, layers, spec.block_size, block_generator(spec.seed, 9))
    assert len(full) == (4 if sigma_b > 0 else 2)
    for sb in (1, 5, UNIT, UNIT + 1, spec.block_size):
        stream = BlockStream(spec, layers, 9)
        bufs = [torch.empty(sb, *t.shape[1:]) for t in full]
        for start in range(0, spec.block_size, sb):
            stop = min(start + sb, spec.block_size)
            stream.fill(bufs, start, stop)
            for t, b in zip(full, bufs):
                assert torch.equal(b[:stop - start], t[start:stop]), (sb, start)
        with pytest.raises(ValueError):
            stream.fill(bufs, 0, 1)  # a stream is read once, in order


def test_first_units_do_not_depend_on_batch_size():
    spec = ExperimentSpec(architecture=FCN(hidden=(5,)), prior=Prior(sigma_b=1.0), inputs=BooleanCube(n=2))
    layers = layer_shapes(spec, (2,))
    a = draw_params(spec, layers, 2 * UNIT, block_generator(0, 1))
    b = draw_params(spec, layers, 5 * UNIT + 3, block_generator(0, 1))
    for k in a:
        assert torch.equal(a[k], b[k][:2 * UNIT])


def test_sampler_rejects_bad_arguments(mnist_dir):
    spec = _specs(mnist_dir)["cnn"]
    with pytest.raises(ValueError, match="sub_batch"):
        Sampler(spec, sub_batch=0)
    with pytest.raises(ValueError, match="FCN"):
        Sampler(spec, dense=True)
    with pytest.raises(ValueError, match="block id"):
        block_generator(0, -1)
