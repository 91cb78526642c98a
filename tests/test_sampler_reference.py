"""The sampler's labels equal those of a straightforward, independent float64 re-implementation
of the documented prior: the stream layout of ``volume.models.draw_standard`` read with a
plain loop, the prior's scaling applied explicitly, and one network evaluated at a time.

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

from volume.inputs import load_inputs
from volume.models import UNIT
from volume.sampler import Sampler
from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Output, Prior

DOCUMENTED_UNIT = 32  # the stream layout; changing it changes every table


def _stream(spec: ExperimentSpec, block: int, shapes: list[tuple[tuple[int, ...], tuple[int, ...]]]):
    """Standard draws of a block read from the documented layout: per unit of 32 draws, one
    generator call per tensor in the order weight0, bias0 (if sigma_b > 0), weight1, ..."""
    seed = int(np.random.SeedSequence([spec.seed, block]).generate_state(1, dtype=np.uint64)[0])
    gen = torch.Generator().manual_seed(seed)
    n = spec.block_size
    draws = [[np.empty((n, *ws)), np.zeros((n, bs[0]))] for ws, bs in shapes]
    for lo in range(0, n, DOCUMENTED_UNIT):
        hi = min(lo + DOCUMENTED_UNIT, n)
        for wb in draws:
            for k in ((0, 1) if spec.prior.sigma_b > 0 else (0,)):
                t = torch.empty(hi - lo, *wb[k].shape[1:])
                if spec.prior.kind == "gaussian":
                    t.normal_(generator=gen)
                else:
                    t.uniform_(-math.sqrt(3), math.sqrt(3), generator=gen)
                wb[k][lo:hi] = t.double().numpy()
    return draws


def _act(name: str, z: np.ndarray) -> np.ndarray:
    return {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "erf": erf}[name](z)


def reference_fcn(spec: ExperimentSpec, x: np.ndarray, block: int) -> np.ndarray:
    """float64 outputs (B, M, units) of an FCN block, one network at a time."""
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    widths = [x.shape[1], *spec.architecture.hidden, spec.output.units]
    shapes = [((o, i), (o,)) for i, o in zip(widths[:-1], widths[1:])]
    draws = _stream(spec, block, shapes)
    out = []
    for j in range(spec.block_size):
        h = x
        for li, (w, b) in enumerate(draws):
            z = h @ (w[j] * spec.prior.sigma_w / math.sqrt(w.shape[2])).T + spec.prior.sigma_b * b[j]
            h = z if li == len(draws) - 1 else _act(spec.architecture.activation, z)
        out.append(h)
    return np.stack(out)


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


def test_documented_unit():
    assert UNIT == DOCUMENTED_UNIT


@pytest.mark.parametrize("name", list(FCN_SPECS))
@pytest.mark.parametrize("dense", [True, False])
def test_fcn_labels_match_reference(name, dense):
    spec = FCN_SPECS[name]
    if spec is None:
        from conftest import EXAMPLES

        spec = ExperimentSpec.load(EXAMPLES / "boolean7.toml")
    spec = spec.replace(block_size=2 * UNIT + 6, seed=3)
    inputs = load_inputs(spec.inputs)
    sampler = Sampler(spec, inputs, sub_batch=UNIT - 3, dense=dense)
    assert sampler.dense == dense
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
    assert not sampler.dense
    assert_labels_match(spec, sampler.labels(2), reference_cnn(spec, inputs.x, 2))
