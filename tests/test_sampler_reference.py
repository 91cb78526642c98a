"""The sampler's labels equal those of a straightforward, independent float64 re-implementation
of the documented prior: random stream 2 computed from its definition (tests/stream_reference.py),
the prior's scaling applied explicitly, and one network evaluated at a time. Every backend is
checked: the compiled kernel (where it applies) and the torch dense and general paths.

float32 and float64 sums round differently, so a label may differ where the output is within
rounding of the decision boundary; the tests allow that only where the float64 margin is
below 1e-4 of the outputs' scale, and check that such entries are rare.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import erf

import stream_reference
from volume import fused
from volume.inputs import load_inputs
from volume.sampler import Sampler
from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Output, Prior

def _stream(spec: ExperimentSpec, block: int, shapes: list[tuple[tuple[int, ...], tuple[int, ...]]]):
    """float64 standard draws of a block in stream order: per layer [weights (n, *shape),
    biases (n, out)] (biases zero and not drawn when sigma_b = 0)."""
    biased = spec.prior.sigma_b > 0
    sizes = [(math.prod(ws), bs[0] if biased else 0) for ws, bs in shapes]
    z = stream_reference.standard(spec.prior.kind, sum(a + b for a, b in sizes), spec.seed, block,
                                  range(spec.block_size))
    n, pos, draws = spec.block_size, 0, []
    for (ws, bs), (nw, nb) in zip(shapes, sizes):
        w = z[:, pos:pos + nw].reshape(n, *ws)
        b = z[:, pos + nw:pos + nw + nb] if biased else np.zeros((n, bs[0]))
        pos += nw + nb
        draws.append([w, b])
    return draws


def _act(name: str, z: np.ndarray) -> np.ndarray:
    return {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "erf": erf}[name](z)


def reference_fcn(spec: ExperimentSpec, x: np.ndarray, block: int) -> np.ndarray:
    """float64 outputs (B, M, units) of an FCN block, one network at a time."""
    return stream_reference.fcn_outputs(spec, x, block, range(spec.block_size))


def reference_cnn(spec: ExperimentSpec, x: np.ndarray, block: int) -> np.ndarray:
    """float64 outputs of a CNN block (conv 'same', activation, pooling; dense), one network at a time."""
    arch = spec.architecture
    c, hgt, wid = x.shape[1:]
    shapes = []
    for ch in arch.channels:
        shapes.append(((ch, c, arch.kernel_size, arch.kernel_size), (ch,)))
        c = ch
        if arch.pool != "none":
            hgt, wid = hgt // 2, wid // 2
    d = c * hgt * wid
    for o in [*arch.dense, spec.output.units]:
        shapes.append(((o, d), (o,)))
        d = o
    draws = _stream(spec, block, shapes)
    act = {"relu": torch.relu, "tanh": torch.tanh, "erf": torch.erf}[arch.activation]
    xt = torch.from_numpy(x).double()
    out = []
    for j in range(spec.block_size):
        h = xt
        for li, (w, b) in enumerate(draws):
            fan_in = math.prod(w.shape[2:])
            wj = torch.from_numpy(w[j]) * spec.prior.sigma_w / math.sqrt(fan_in)
            bj = torch.from_numpy(b[j]) * spec.prior.sigma_b
            if wj.dim() == 4:
                h = act(F.conv2d(h, wj, bj, padding=arch.kernel_size // 2))
                h = {"max": F.max_pool2d, "avg": F.avg_pool2d}[arch.pool](h, 2) if arch.pool != "none" else h
                continue
            h = h.reshape(h.shape[0], -1) @ wj.T + bj
            if li < len(draws) - 1:
                h = act(h)
        out.append(h.numpy())
    return np.stack(out)


def assert_labels_match(spec: ExperimentSpec, labels: np.ndarray, z: np.ndarray) -> None:
    scale = np.std(z)
    if spec.output.kind == "threshold":
        ref = (z[..., 0] > 0).astype(np.uint8)
        margin = np.abs(z[..., 0])
    else:
        ref = z.argmax(-1).astype(np.uint8)
        top = np.sort(z, axis=-1)
        margin = top[..., -1] - top[..., -2]
    clear = margin > 1e-4 * scale
    assert clear.mean() > 0.99, "almost every output is far from the decision boundary"
    np.testing.assert_array_equal(labels[clear], ref[clear])
    assert len(np.unique(ref, axis=0)) > 1


FCN_SPECS = {
    "boolean7": None,  # examples/boolean7.toml with a small block
    "relu-b0-pm1": ExperimentSpec(architecture=FCN(hidden=(16, 16)), inputs=BooleanCube(n=5, encoding="pm1")),
    "tanh-gauss-b": ExperimentSpec(architecture=FCN(hidden=(20,), activation="tanh"),
                                   prior=Prior(sigma_w=2.0, sigma_b=0.5), inputs=BooleanCube(n=5)),
    "erf-uniform-b": ExperimentSpec(architecture=FCN(hidden=(12, 8), activation="erf"),
                                    prior=Prior(kind="uniform", sigma_w=1.5, sigma_b=0.8), inputs=BooleanCube(n=4)),
    "relu-argmax-b": ExperimentSpec(architecture=FCN(hidden=(10,)), prior=Prior(sigma_b=0.3),
                                    inputs=BooleanCube(n=4), output=Output(kind="argmax", classes=4)),
    "perceptron": ExperimentSpec(architecture=FCN(hidden=()), prior=Prior(sigma_b=1.0), inputs=BooleanCube(n=3)),
}


UNIT = 32
# (backend, dense, stream): the compiled kernel; the torch dense and general paths with the
# compiled generator (where built) and with the stream of volume.stream in numpy/torch
PATHS = [("compiled", None, "auto"), ("torch", True, "auto"), ("torch", False, "auto"), ("torch", True, "numpy")]


@pytest.mark.parametrize("name,backend,dense,stream", [
    (name, b, d, st) for name in FCN_SPECS for b, d, st in PATHS
    if b == "torch" or not fused.unsupported(FCN_SPECS[name] or ExperimentSpec())])
def test_fcn_labels_match_reference(name, backend, dense, stream, monkeypatch):
    monkeypatch.setenv("VOLUME_STREAM", stream)
    spec = FCN_SPECS[name]
    if spec is None:
        from conftest import EXAMPLES

        spec = ExperimentSpec.load(EXAMPLES / "boolean7.toml")
    spec = spec.replace(block_size=2 * UNIT + 6, seed=3)
    inputs = load_inputs(spec.inputs)
    sampler = Sampler(spec, inputs, sub_batch=UNIT - 3, dense=dense, backend=backend)
    assert sampler.backend == backend
    for block in (0, 5):
        labels = sampler.labels(block)
        assert_labels_match(spec, labels, reference_fcn(spec, inputs.x, block))
        if spec.prior.sigma_b == 0 and spec.inputs.encoding == "01":  # input 0 has output exactly 0
            assert not labels[:, 0].any()


@pytest.mark.parametrize("output", [Output(), Output(kind="argmax", classes=10)])
def test_cnn_labels_match_reference(output, mnist_dir):
    spec = ExperimentSpec(architecture=CNN(channels=(3, 4), kernel_size=3, pool="max", dense=(6,)),
                          prior=Prior(sigma_w=1.2, sigma_b=0.1), output=output, block_size=UNIT + 4,
                          inputs=ImageSubset(dataset="mnist", path=str(mnist_dir), count=16, normalise="standard"))
    inputs = load_inputs(spec.inputs)
    sampler = Sampler(spec, inputs, sub_batch=5)
    assert not sampler.dense and sampler.backend == "torch"
    assert_labels_match(spec, sampler.labels(2), reference_cnn(spec, inputs.x, 2))
