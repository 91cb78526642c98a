"""GP posterior on a training set: predictions against direct Gaussian conditioning and
rejection sampling; PAC-Bayes bound against volume.estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from volume.errors import FunctionError, VolumeError
from volume.estimate import pac_bayes_bound
from volume.gp.ep import ep_log_p
from volume.gp.posterior import gp_posterior, pac_bayes_bound_log


def _kernel(m, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, 3))
    return x @ x.T / 3 + 0.2 * np.eye(m) + 0.2


def test_p_u_and_predictions_against_direct_conditioning():
    K = _kernel(12)
    train = np.array([0, 2, 3, 7, 9])
    target = (np.random.default_rng(1).random(12) < 0.5).astype(int)
    res = gp_posterior(K, train, target[train], target)
    ep = ep_log_p(K[np.ix_(train, train)], target[train])
    assert res.log_p_u_ep == pytest.approx(ep.log_z, abs=1e-12)
    assert gp_posterior(K, train, target[train], method="ep").log_p_u == pytest.approx(ep.log_z, abs=1e-12)
    assert res.log_p_u_method == "ep-sis" and res.log_p_u_reliable
    assert abs(res.log_p_u - ep.log_z) < 0.1 and res.log_p_u_stderr < 0.02
    # direct reference: q(z_S) = N(mu, Sigma) with Sigma = (K_SS^-1 + diag tau)^-1, extended by conditioning
    kss = K[np.ix_(train, train)]
    test = res.test_indices
    sigma = np.linalg.inv(np.linalg.inv(kss) + np.diag(ep.tau))
    mu = sigma @ ep.nu
    a = np.linalg.solve(kss, K[np.ix_(train, test)])
    mean = a.T @ mu
    var = np.diag(K)[test] - np.einsum("ij,ij->j", a, (kss - sigma) @ a)
    from scipy.special import ndtr

    np.testing.assert_allclose(res.p_one, ndtr(mean / np.sqrt(var)), atol=1e-8)
    np.testing.assert_array_equal(res.predicted, (mean > 0).astype(np.uint8))
    assert res.predicted_error == pytest.approx(np.mean(res.predicted != target[test]))


def test_expected_error_against_rejection_sampling():
    K = _kernel(8, seed=4)
    train = np.array([0, 1, 2])
    target = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    res = gp_posterior(K, train, target[train], target)
    z = np.random.default_rng(0).multivariate_normal(np.zeros(8), K, size=300000)
    lab = (z > 0).astype(int)
    keep = np.all(lab[:, train] == target[train], axis=1)
    assert res.log_p_u == pytest.approx(math.log(keep.mean()), abs=0.05)
    err = np.mean(lab[keep][:, res.test_indices] != target[res.test_indices])  # exact Bayesian error
    assert res.expected_error == pytest.approx(err, abs=0.02)


def _bound_decimal(log_p_u: float, m: int, delta: float) -> float:
    """Independent reference: the bound's direct form, 1 - (P(U) delta / 2m)^(1/(m-1)), in
    60-digit decimal arithmetic (no underflow), from -ln(1 - eps) = (ln 1/P(U) + ln 2m/delta)/(m-1)."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60
    p_u = Decimal(log_p_u).exp()
    return float(1 - (p_u * Decimal(delta) / (2 * m)) ** (Decimal(1) / (m - 1)))


def test_pac_bayes_bound_in_log_space():
    for log_p_u, m, delta in ((math.log(0.3), 10, 0.05), (math.log(1e-5), 100, 0.05), (-230.0, 1000, 0.01),
                              (-5000.0, 10000, 0.05), (-1e5, 200000, 0.1)):  # the last two: P(U) < 1e-308
        assert pac_bayes_bound_log(log_p_u, m, delta) == pytest.approx(_bound_decimal(log_p_u, m, delta), rel=1e-12)
    assert pac_bayes_bound(1e-5, 100) == pytest.approx(_bound_decimal(math.log(1e-5), 100, 0.05), rel=1e-12)
    assert pac_bayes_bound_log(-math.inf, 10) == 1.0 and pac_bayes_bound(0.0, 10) == 1.0
    K = _kernel(10)
    res = gp_posterior(K, np.arange(6), np.ones(6, int), np.ones(10, int), delta=0.1)
    assert res.pac_bayes_bound == pytest.approx(_bound_decimal(res.log_p_u, 6, 0.1), rel=1e-12)


def test_bad_training_sets():
    K = _kernel(6)
    with pytest.raises(VolumeError, match="0..5"):
        gp_posterior(K, [0, 9], [1, 1])
    with pytest.raises(VolumeError, match="repeat"):
        gp_posterior(K, [1, 1], [1, 1])
    with pytest.raises(FunctionError, match="2 labels"):
        gp_posterior(K, [0, 1], [1, 1, 0])
    with pytest.raises(FunctionError, match="disagree"):
        gp_posterior(K, [0, 1], [1, 1], np.zeros(6, int))
