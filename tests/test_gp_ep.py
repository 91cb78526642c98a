"""EP for log P(f): against closed-form and numerical orthant probabilities, IS, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from volume.errors import FunctionError, VolumeError
from volume.gp.ep import ep_log_p, importance_log_p

# Stated tolerance of EP against the exact orthant probability on these small, moderately
# correlated cases: |log P_EP - log P| <= EP_ABS + EP_REL |log P| (EP is an approximation).
EP_ABS, EP_REL = 0.05, 0.02


def _orthant(K, labels):
    """Independent reference: P(y_i z_i > 0 for all i) = Phi_M(0; 0, D K D) (Genz, scipy)."""
    y = 2.0 * np.asarray(labels) - 1.0
    cov = K * np.outer(y, y)
    mvn = multivariate_normal(mean=np.zeros(len(y)), cov=cov, abseps=1e-12, releps=1e-5, maxpts=200000)
    return math.log(mvn.cdf(np.zeros(len(y))))


def _random_kernel(rng, m, rank=3, ridge=0.3, offset=0.3):
    x = rng.standard_normal((m, rank))
    return x @ x.T / rank + ridge * np.eye(m) + offset


def test_closed_forms_for_one_two_three_inputs():
    r = ep_log_p(np.array([[2.5]]), [0])
    assert r.log_z == pytest.approx(math.log(0.5), abs=1e-9)  # EP is exact for one input
    for rho in (-0.8, -0.3, 0.0, 0.4, 0.9):
        exact = math.log(0.25 + math.asin(rho) / (2 * math.pi))  # Sheppard's formula
        r = ep_log_p(np.array([[1.0, rho], [rho, 1.0]]), [1, 1])
        assert r.converged
        assert r.log_z == pytest.approx(exact, abs=EP_ABS)
    c = np.array([[1.0, 0.3, -0.2], [0.3, 1.0, 0.5], [-0.2, 0.5, 1.0]])
    exact = math.log(1 / 8 + (math.asin(0.3) + math.asin(-0.2) + math.asin(0.5)) / (4 * math.pi))
    assert ep_log_p(c * 4.0, [1, 1, 1]).log_z == pytest.approx(exact, abs=EP_ABS)  # scale-free


@pytest.mark.parametrize("m", [4, 6, 8])
def test_heaviside_and_probit_against_genz(m):
    rng = np.random.default_rng(m)
    K = _random_kernel(rng, m)
    for _ in range(2):
        lab = rng.integers(0, 2, m)
        ref = _orthant(K, lab)
        got = ep_log_p(K, lab)
        assert got.converged
        assert abs(got.log_z - ref) <= EP_ABS + EP_REL * abs(ref)
        # probit likelihood = orthant probability of K + I
        ref_p = _orthant(K + np.eye(m), lab)
        assert ep_log_p(K, lab, likelihood="probit").log_z == pytest.approx(ref_p, abs=EP_ABS + EP_REL * abs(ref_p))


def test_importance_sampling_corrects_ep_within_its_error_bar():
    rng = np.random.default_rng(11)
    m = 8
    K = _random_kernel(rng, m, ridge=0.1, offset=0.6)  # strongly correlated: EP is off by a few %
    lab = np.array([1, 0, 1, 1, 0, 1, 1, 1])
    ref = _orthant(K, lab)
    ep = ep_log_p(K, lab)
    res = importance_log_p(K, lab, ep, 40000, seed=1)
    assert 0 < res.accepted <= 1 and res.ess > 100
    assert abs(res.log_p - ref) < 4 * res.stderr + 2e-3
    assert abs(res.log_p - ref) < abs(ep.log_z - ref) + 4 * res.stderr
    again = importance_log_p(K, lab, ep, 40000, seed=1)
    assert again.log_p == res.log_p  # seeded


def test_sequential_and_parallel_ep_share_the_fixed_point():
    rng = np.random.default_rng(3)
    K = _random_kernel(rng, 30)
    lab = rng.integers(0, 2, 30)
    a = ep_log_p(K, lab, tol=1e-9)
    b = ep_log_p(K, lab, method="sequential", tol=1e-9)
    assert a.converged and b.converged
    assert a.log_z == pytest.approx(b.log_z, abs=1e-6)
    np.testing.assert_allclose(a.mu, b.mu, atol=1e-5)


def test_brute_force_monte_carlo_on_a_singular_kernel():
    # rank-2 kernel of 5 inputs: needs jitter; reference by direct sampling of z ~ N(0, K)
    x = np.array([[1.0, 0.2], [0.8, 0.6], [0.3, 1.0], [-0.2, 1.0], [0.9, -0.1]])
    K = x @ x.T
    lab = np.array([1, 1, 1, 1, 1])
    z = np.random.default_rng(0).standard_normal((400000, 2)) @ x.T
    p = np.mean(np.all(z > 0, axis=1))
    r = ep_log_p(K, lab)
    assert r.jitter > 0
    assert r.log_z == pytest.approx(math.log(p), abs=0.15)
    res = importance_log_p(K, lab, r, 20000, seed=0)
    assert res.log_p == pytest.approx(math.log(p), abs=4 * res.stderr + 0.02)


def test_zero_variance_input_is_deterministic_label_zero():
    rng = np.random.default_rng(2)
    K = np.zeros((5, 5))
    K[1:, 1:] = _random_kernel(rng, 4)
    lab = np.array([0, 1, 0, 1, 1])
    r = ep_log_p(K, lab)
    assert r.n_deterministic == 1
    assert r.log_z == pytest.approx(ep_log_p(K[1:, 1:], lab[1:]).log_z, abs=1e-12)
    bad = ep_log_p(K, np.array([1, 1, 0, 1, 1]))
    assert bad.impossible and bad.log_z == -math.inf
    # under the probit likelihood the deterministic input contributes Phi(0) = 1/2
    pr = ep_log_p(K, np.array([1, 1, 0, 1, 1]), likelihood="probit")
    assert pr.log_z == pytest.approx(ep_log_p(K[1:, 1:], lab[1:], likelihood="probit").log_z + math.log(0.5))


def test_bad_input_is_a_clear_volume_error():
    K = _random_kernel(np.random.default_rng(0), 4)
    with pytest.raises(FunctionError, match="4 labels"):
        ep_log_p(K, [0, 1, 1])
    with pytest.raises(FunctionError, match="0 or 1"):
        ep_log_p(K, [0, 1, 2, 1])
    with pytest.raises(VolumeError, match="not positive semi-definite"):
        ep_log_p(np.array([[1.0, 2.0], [2.0, 1.0]]), [0, 1])  # positive variances, eigenvalue -1
    with pytest.raises(VolumeError, match="negative variance"):
        ep_log_p(K - 2.0 * np.eye(4), [0, 1, 1, 0])
    with pytest.raises(VolumeError, match="not symmetric"):
        ep_log_p(K + np.triu(np.ones((4, 4)), 1), [0, 1, 1, 0])
    with pytest.raises(VolumeError, match="square"):
        ep_log_p(K[:3], [0, 1, 1])
    with pytest.raises(VolumeError, match="NaN"):
        ep_log_p(np.full((2, 2), np.nan), [0, 1])
    with pytest.raises(VolumeError, match="likelihood"):
        ep_log_p(K, [0, 1, 1, 0], likelihood="logit")
    with pytest.raises(VolumeError, match="importance_samples"):
        importance_log_p(K, [0, 1, 1, 0], ep_log_p(K, [0, 1, 1, 0]), 1)
