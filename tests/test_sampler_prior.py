"""The sampler draws from the stated prior: weight and bias moments, and, for a perceptron,
label frequencies against closed-form probabilities (Gaussian orthant probabilities, and an
exact integral for the uniform prior)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from volume.inputs import load_inputs
from volume.models import Network, draw_params, layer_shapes, scale_params
from volume.sampler import Sampler, block_standard
from volume.stream import block_key
from volume.spec import FCN, BooleanCube, ExperimentSpec, Prior

pytestmark = pytest.mark.usefixtures("both_backends")  # compiled kernel and torch path

Z = 4.5  # tolerance in standard errors (all checks together fail by chance with p < 1e-4)


def _check_moments(x: np.ndarray, var: float, kind: str, what: str) -> None:
    """Mean 0 and variance ``var`` within Z standard errors; uniform draws also bounded."""
    x = x.astype(np.float64).ravel()
    n = x.size
    assert abs(x.mean()) < Z * math.sqrt(var / n), what
    m2 = np.mean(x**2)
    se2 = math.sqrt(max(np.mean(x**4) - m2**2, 1e-300) / n)  # standard error of the second moment
    assert abs(m2 - var) < Z * se2, f"{what}: second moment {m2:.5f} vs {var:.5f} (se {se2:.2e})"
    m4 = np.mean(x**4)
    se4 = math.sqrt(np.var(x**4) / n)
    kurtosis = 9 / 5 if kind == "uniform" else 3.0  # E x^4 / var^2 of the uniform and the Gaussian
    assert abs(m4 - kurtosis * var**2) < Z * se4, f"{what}: fourth moment {m4:.5f} vs {kurtosis * var**2:.5f}"
    if kind == "uniform":
        a = math.sqrt(3 * var)
        assert np.all(np.abs(x) <= a * (1 + 1e-6)) and np.abs(x).max() > 0.99 * a, what


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
@pytest.mark.parametrize("sigma_b", [0.0, 0.6])
def test_sampler_parameter_moments(kind, sigma_b):
    """Parameters of a block, as the sampler's stream produces them, have the prior's moments."""
    spec = ExperimentSpec(architecture=FCN(hidden=(30, 20)), prior=Prior(kind=kind, sigma_w=1.7, sigma_b=sigma_b),
                          inputs=BooleanCube(n=5), block_size=700)
    layers = layer_shapes(spec, (5,))
    params = scale_params(spec, layers, block_standard(spec, layers, 1, 0, spec.block_size))
    for i, layer in enumerate(layers):
        _check_moments(params[f"weight{i}"].numpy(), 1.7**2 / layer.fan_in, kind, f"weight{i}")
        b = params[f"bias{i}"].numpy()
        if sigma_b == 0:
            assert not b.any()
        else:
            _check_moments(b, sigma_b**2, kind, f"bias{i}")
    # independence between draws and between entries: correlation of neighbours is ~0
    w = params["weight1"].numpy().reshape(spec.block_size, -1)
    for a, c in ((w[:-1, 0], w[1:, 0]), (w[:, 0], w[:, 1])):
        assert abs(np.corrcoef(a, c)[0, 1]) < Z / math.sqrt(len(a))


def test_network_sample_prior_draws_one_network_from_the_prior():
    spec = ExperimentSpec(architecture=FCN(hidden=(8,)), prior=Prior(sigma_w=1.3, sigma_b=0.4), inputs=BooleanCube(n=3))
    net = Network(spec, (3,))
    gen = torch.Generator().manual_seed(11)
    w0, b1 = [], []
    for _ in range(400):
        net.sample_prior_(gen)
        w0.append(net.weight0.detach().clone().numpy())
        b1.append(net.bias1.detach().clone().numpy())
    _check_moments(np.stack(w0), 1.3**2 / 3, "gaussian", "weight0")
    _check_moments(np.stack(b1), 0.4**2, "gaussian", "bias1")
    # one network is draw 0 of a batch of one from the same generator
    net.sample_prior_(torch.Generator().manual_seed(5))
    p = draw_params(spec, layer_shapes(spec, (3,)), 1, torch.Generator().manual_seed(5))
    for name, t in net.named_parameters():
        assert torch.equal(t.detach(), p[name][0])


def _frequencies(spec: ExperimentSpec, blocks: int) -> np.ndarray:
    sampler = Sampler(spec)
    return np.concatenate([sampler.labels(b) for b in range(blocks)]).astype(np.float64)


def _assert_prob(freq: float, p: float, n: int, what: str) -> None:
    se = math.sqrt(p * (1 - p) / n)
    assert abs(freq - p) < Z * se, f"{what}: frequency {freq:.4f} vs closed form {p:.4f} (se {se:.4f})"


@pytest.mark.parametrize("encoding", ["01", "pm1"])
def test_perceptron_pairwise_orthant_probabilities(encoding):
    """Perceptron z = w.x + b: z ~ N(0, K), K = sigma_b^2 + sigma_w^2 x.x'/d, so for two inputs
    P(z_i > 0, z_j > 0) = 1/4 + arcsin(rho_ij) / (2 pi) (Sheppard's formula) and P(z_i > 0) = 1/2."""
    sw, sb = 1.3, 0.7
    spec = ExperimentSpec(architecture=FCN(hidden=()), prior=Prior(sigma_w=sw, sigma_b=sb),
                          inputs=BooleanCube(n=2, encoding=encoding), block_size=4096, seed=2)
    x = load_inputs(spec.inputs).x.astype(np.float64)
    k = sb**2 + sw**2 * x @ x.T / x.shape[1]
    lab = _frequencies(spec, 6)
    n = lab.shape[0]
    for i in range(4):
        _assert_prob(lab[:, i].mean(), 0.5, n, f"P(z_{i} > 0)")
        for j in range(i + 1, 4):
            rho = k[i, j] / math.sqrt(k[i, i] * k[j, j])
            _assert_prob(np.mean(lab[:, i] * lab[:, j]), 0.25 + math.asin(rho) / (2 * math.pi), n, f"pair {i},{j}")


def test_perceptron_function_probabilities_on_two_inputs():
    """One input bit in {0, 1}: z = (b, w + b). The four functions have probabilities
    P(11) = P(00) = 1/4 + arcsin(rho)/(2 pi), P(01) = P(10) = 1/4 - arcsin(rho)/(2 pi),
    rho = sigma_b / sqrt(sigma_b^2 + sigma_w^2)."""
    sw, sb = 1.0, 0.8
    spec = ExperimentSpec(architecture=FCN(hidden=()), prior=Prior(sigma_w=sw, sigma_b=sb),
                          inputs=BooleanCube(n=1), block_size=4096, seed=4)
    lab = _frequencies(spec, 6)
    n = lab.shape[0]
    code = (lab[:, 0] * 2 + lab[:, 1]).astype(int)
    q = math.asin(sb / math.sqrt(sb**2 + sw**2)) / (2 * math.pi)
    for f, p in {0: 0.25 + q, 3: 0.25 + q, 1: 0.25 - q, 2: 0.25 - q}.items():
        _assert_prob(np.mean(code == f), p, n, f"function {f:02b}")


def test_perceptron_uniform_prior_exact_probability():
    """Uniform prior, one input bit in {0, 1}: b ~ U(-a_b, a_b), w ~ U(-a_w, a_w) with
    a = sigma sqrt 3 (fan_in 1); P(b > 0, w + b > 0) = int_0^{a_b} P(w > -b) db / (2 a_b)."""
    sw, sb = 1.0, 0.6
    spec = ExperimentSpec(architecture=FCN(hidden=()), prior=Prior(kind="uniform", sigma_w=sw, sigma_b=sb),
                          inputs=BooleanCube(n=1), block_size=4096, seed=6)
    aw, ab = sw * math.sqrt(3), sb * math.sqrt(3)
    p11 = quad(lambda b: min(1.0, (aw + b) / (2 * aw)), 0, ab)[0] / (2 * ab)
    lab = _frequencies(spec, 6)
    _assert_prob(np.mean(lab[:, 0] * lab[:, 1]), p11, lab.shape[0], "P(11), uniform prior")
    _assert_prob(lab[:, 0].mean(), 0.5, lab.shape[0], "P(b > 0)")


def test_block_key_is_a_function_of_seed_and_block():
    assert block_key(0, 1) == block_key(0, 1)
    assert len({block_key(0, 1), block_key(0, 2), block_key(1, 1), block_key(1, 0)}) == 4
