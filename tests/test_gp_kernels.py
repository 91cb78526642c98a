"""NNGP kernels: the analytic recursion against Monte-Carlo kernels of sampled networks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from volume.errors import VolumeError
from volume.gp.kernels import analytic_kernel, empirical_kernel, nngp_layer, spec_kernel
from volume.inputs import load_inputs
from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Prior


def _zscores(ek, K):
    se = ek.stderr
    assert np.all(se[K != 0] > 0)
    return np.where(se > 0, (ek.K - K) / np.where(se > 0, se, 1.0), 0.0)


def test_relu_and_erf_steps_match_numerical_integration():
    # independent reference: E[phi(u)phi(v)] = E_u[phi(u) E[phi(v) | u]] by nested adaptive quadrature
    from scipy.integrate import quad
    from scipy.stats import norm

    for act, phi in (("relu", lambda u: max(u, 0.0)), ("erf", math.erf)):
        for kxx, kyy, kxy in ((1.0, 2.0, 0.7), (3.0, 1.0, -1.7)):
            a, s = kxy / kxx, math.sqrt(kyy - kxy**2 / kxx)

            def inner(u):
                return quad(lambda e: phi(a * u + s * e) * norm.pdf(e), -12, 12, points=[-a * u / s], epsabs=1e-10)[0]

            sd = math.sqrt(kxx)
            e = quad(lambda u: phi(u) * inner(u) * norm.pdf(u / sd) / sd, -12 * sd, 12 * sd, points=[0.0])[0]
            ref = 0.3**2 + 1.3**2 * e
            got = nngp_layer(np.array(kxy), np.array(kxx), np.array(kyy), act, 1.3, 0.3)
            assert got == pytest.approx(ref, rel=1e-6), (act, kxx, kyy, kxy)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_analytic_matches_wide_network_empirical_kernel(activation):
    spec = ExperimentSpec(architecture=FCN(hidden=(512, 512), activation=activation),
                          prior=Prior(sigma_w=1.4, sigma_b=0.3), inputs=BooleanCube(n=4, encoding="pm1"), seed=3)
    K = analytic_kernel(spec)
    ek = empirical_kernel(spec, n_networks=256, block_size=64)
    z = _zscores(ek, K)
    assert np.abs(z).max() < 5.0
    # the comparison has power: a kernel with a 5% different sigma_w is rejected
    wrong = analytic_kernel(spec.replace(prior=Prior(sigma_w=1.4 * 1.05, sigma_b=0.3)))
    assert np.abs(_zscores(ek, wrong)).max() > 5.0


def test_one_hidden_layer_empirical_kernel_is_unbiased_at_any_width():
    # with one hidden layer the conditional kernel's mean is exactly the NNGP kernel
    spec = ExperimentSpec(architecture=FCN(hidden=(5,)), prior=Prior(sigma_w=1.0, sigma_b=0.2),
                          inputs=BooleanCube(n=3), seed=0)
    K = analytic_kernel(spec)
    ek = empirical_kernel(spec, n_networks=20000, block_size=2000)
    assert np.abs(_zscores(ek, K)).max() < 5.0
    assert ek.n_networks == 20000


def _one_conv_kernel(x, k, sw, sb):
    """Closed form for conv(k x k, 'same') -> relu -> flatten -> dense: the readout averages the
    arc-cosine kernel of each pixel's pre-activations (Novak et al. 2019, no pooling)."""
    m, c, h, w = x.shape
    pad = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    patches = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(k) for j in range(k)], axis=1)
    patches = patches.reshape(m, -1, h * w)  # (m, c k^2, pixels)
    kp = sb**2 + sw**2 * np.einsum("apq,bpq->abq", patches, patches) / (c * k * k)
    d = np.einsum("aaq->aq", kp)
    norm = np.sqrt(d[:, None, :] * d[None, :, :])
    cos = np.clip(kp / norm, -1, 1)
    t = np.arccos(cos)
    e = norm * (np.sin(t) + (np.pi - t) * cos) / (2 * np.pi)
    return sb**2 + sw**2 * e.mean(axis=2)


def test_cnn_empirical_kernel_matches_closed_form(mnist_dir):
    spec = ExperimentSpec(architecture=CNN(channels=(4,), kernel_size=3, pool="none", activation="relu"),
                          prior=Prior(sigma_w=1.2, sigma_b=0.1),
                          inputs=ImageSubset(dataset="mnist", path=str(mnist_dir), count=6), seed=2)
    inputs = load_inputs(spec.inputs)
    K = _one_conv_kernel(inputs.x.astype(np.float64), 3, 1.2, 0.1)
    ek = empirical_kernel(spec, inputs, n_networks=512, block_size=128)
    assert np.abs(_zscores(ek, K)).max() < 5.0
    assert np.abs(ek.K - K).max() < 0.05 * K.max()
    # the analytic CNN kernel (volume.layers' conv step) agrees with this closed form
    np.testing.assert_allclose(analytic_kernel(spec, inputs), K, rtol=1e-9, atol=1e-12)


def test_blocking_map_fn_and_determinism():
    spec = ExperimentSpec(architecture=FCN(hidden=(16, 16)), prior=Prior(sigma_w=1.0, sigma_b=0.1),
                          inputs=BooleanCube(n=4), seed=5)
    a = analytic_kernel(spec)
    b = analytic_kernel(spec, memory_bytes=1)  # one row per block
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-15)
    calls = []

    def my_map(func, items):
        calls.append(len(items))
        return [func(i) for i in reversed(items)]  # order of results must not matter

    e1 = empirical_kernel(spec, n_networks=96, block_size=32)
    e2 = empirical_kernel(spec, n_networks=96, block_size=32, map_fn=my_map, memory_bytes=4096)
    assert calls == [3]
    np.testing.assert_allclose(e1.K, e2.K, rtol=1e-12)
    np.testing.assert_allclose(e1.stderr, e2.stderr, rtol=1e-9, atol=1e-15)
    e3 = empirical_kernel(spec, n_networks=96, block_size=32, seed=6)
    assert not np.allclose(e1.K, e3.K)


def test_zero_input_has_zero_variance_without_bias():
    spec = ExperimentSpec.from_dict({"architecture": {"hidden": [40, 40]}, "prior": {"sigma_b": 0.0},
                                     "inputs": {"kind": "boolean", "n": 3}})
    K = analytic_kernel(spec)
    assert np.all(K[0] == 0) and np.all(K[:, 0] == 0)
    ek = empirical_kernel(spec, n_networks=8, block_size=8)
    assert np.all(ek.K[0] == 0)


def test_kernel_errors_are_clear():
    tanh = ExperimentSpec(architecture=FCN(hidden=(8,), activation="tanh"), inputs=BooleanCube(n=2))
    with pytest.raises(VolumeError, match="empirical"):
        analytic_kernel(tanh)
    with pytest.raises(VolumeError, match="n_networks"):
        empirical_kernel(tanh, n_networks=1)
    with pytest.raises(VolumeError, match="'analytic'"):
        spec_kernel(tanh, "exact")
    argmax = tanh.replace(output=tanh.output.__class__(kind="argmax", classes=3))
    with pytest.raises(VolumeError, match="threshold"):
        spec_kernel(argmax)
