"""The GP posterior on a training set S: P(U), predictions off S, generalization error, PAC-Bayes.

With z ~ N(0, K) over all inputs and the training labels y_S (Valle-Perez et al. 2019):

* P(U) = P(sign z_S = y_S), the prior mass of the functions that agree with S, is the orthant
  probability under the marginal kernel K_SS, estimated by ``volume.gp.score.score`` (by default
  EP-guided sequential importance sampling, with its standard error and diagnostics; ``method='ep'``
  for EP alone). EP (``volume.gp.ep``) always runs too: its sites give the predictions.
* The EP posterior q(z_S) = N(mu, Sigma) extends to the other inputs T by Gaussian
  conditioning (R&W Alg. 3.6): with sites (tau, nu), L = chol(I + S^1/2 K_SS S^1/2),
      mean_T = K_TS (nu - S^1/2 L^-T L^-1 S^1/2 K_SS nu),
      var_T  = diag K_TT - |L^-1 S^1/2 K_ST|^2 (column norms).
  Predicted label = 1[mean_T > 0]. Under the step likelihood the posterior probability of
  label 1 at t is P(z_t > 0) = Phi(mean_t / sqrt(var_t)) (probit: sqrt(1 + var_t)).
* Expected (Bayesian) generalization error against a target g on T:
      E_{f ~ P(f|S)} eps(f) = mean_t P(label_t != g_t),
  since eps(f) is linear in the labels. The error of the predicted labels is given too.
* PAC-Bayes bound (Valle-Perez et al. 2019; McAllester 1999), with m = |S|:
      -ln(1 - eps) <= (ln(1/P(U)) + ln(2m/delta)) / (m - 1),
  evaluated from log P(U) so that P(U) far below the smallest double still gives a bound.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import asdict, dataclass

import numpy as np
from scipy.linalg import cho_solve, solve_triangular
from scipy.special import ndtr

from volume.checks import json_safe, training_indices
from volume.errors import FunctionError
from volume.gp.ep import LIKELIHOODS, EPResult, check_kernel, check_labels, cholesky_lower, ep_log_p
from volume.estimate import pac_bayes_bound_log
from volume.gp.score import score


def predictive(K: np.ndarray, train: np.ndarray, test: np.ndarray, ep: EPResult) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and variance of z on ``test`` given EP sites on ``train`` (module docstring).

    Training inputs that EP dropped (zero prior variance) are uncorrelated with everything,
    so they do not enter; test inputs of zero variance get mean 0, variance 0."""
    kept = train[ep.kept]
    k_ss = K[np.ix_(kept, kept)] + ep.jitter * np.eye(len(kept))
    k_st = K[np.ix_(kept, test)]
    var_prior = np.diag(K)[test].copy()
    if len(kept) == 0:
        return np.zeros(len(test)), var_prior
    sw = np.sqrt(ep.tau)
    B = sw[:, None] * k_ss * sw[None, :]
    B[np.diag_indices_from(B)] += 1.0
    L = cholesky_lower(B)
    z = sw * cho_solve((L, True), sw * (k_ss @ ep.nu), check_finite=False)
    mean = k_st.T @ (ep.nu - z)
    v = solve_triangular(L, sw[:, None] * k_st, lower=True, check_finite=False)
    var = np.maximum(var_prior - np.einsum("ij,ij->j", v, v), 0.0)
    return mean, var


@dataclass
class GPPosterior:
    """GP estimates for a training set; ``to_dict()`` gives JSON-able values."""

    log_p_u: float  # estimate of ln P(U) by ``log_p_u_method``; -inf if impossible
    train_size: int
    test_size: int
    converged: bool
    iterations: int
    jitter: float
    likelihood: str
    predicted: np.ndarray  # (test_size,) predicted labels 1[mean > 0]
    p_one: np.ndarray  # (test_size,) posterior probability of label 1
    test_indices: np.ndarray
    expected_error: float | None = None  # Bayesian generalization error against the target
    predicted_error: float | None = None  # error of the predicted labels against the target
    pac_bayes_bound: float | None = None
    delta: float = 0.05
    log_p_u_ep: float | None = None  # EP's ln P(U)
    log_p_u_stderr: float | None = None  # standard error of log_p_u (None: no error bar)
    log_p_u_method: str = "ep"
    log_p_u_reliable: bool = True
    log_p_u_reason: str = ""
    log_p_u_diagnostics: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("predicted", "p_one", "test_indices"):
            d[k] = np.asarray(d[k]).tolist()
        d = json_safe(d)
        d["log10_p_u"] = self.log_p_u / math.log(10) if math.isfinite(self.log_p_u) else None
        return d


def gp_posterior(K, train_indices, train_labels, target=None, *, likelihood: str = "heaviside",
                 delta: float = 0.05, method: str = "auto", samples: int | None = None, seed: int = 0,
                 **ep_kw) -> GPPosterior:
    """P(U), predictions on the inputs outside S, generalization error and PAC-Bayes bound.

    ``K`` is the kernel over all M inputs; ``train_indices`` (m,) distinct indices of S,
    ``train_labels`` (m,) 0/1; ``target`` (M,) 0/1 labels of all inputs (only those off S are
    used) or None. ``method``, ``samples``, ``seed``: how ln P(U) is estimated
    (``volume.gp.score.score``); ``ep_kw`` go to :func:`volume.gp.ep.ep_log_p`."""
    K = check_kernel(K)
    m_all = K.shape[0]
    idx = training_indices(train_indices, m_all)
    lab = check_labels(train_labels, idx.size)
    test = np.setdiff1d(np.arange(m_all), idx)
    ep = ep_log_p(K[np.ix_(idx, idx)], lab, likelihood=likelihood, **ep_kw)
    noise = LIKELIHOODS[likelihood]
    if ep.impossible:
        p_one = np.full(len(test), np.nan)
        predicted = np.zeros(len(test), dtype=np.uint8)
    else:
        mean, var = predictive(K, idx, test, ep)
        scale = np.sqrt(noise + var)
        with np.errstate(divide="ignore", invalid="ignore"):
            p_one = np.where(scale > 0, ndtr(mean / np.where(scale > 0, scale, 1.0)), (mean > 0).astype(float))
        predicted = (mean > 0).astype(np.uint8)
    est = score(K[np.ix_(idx, idx)], lab, method=method, samples=samples, seed=seed, likelihood=likelihood,
                checked=True, **ep_kw)
    out = GPPosterior(log_p_u=est.log_p, log_p_u_ep=ep.log_z, log_p_u_stderr=est.stderr, log_p_u_method=est.method,
                      log_p_u_reliable=est.reliable, log_p_u_reason=est.reason, log_p_u_diagnostics=est.diagnostics,
                      train_size=int(idx.size), test_size=int(len(test)), converged=ep.converged,
                      iterations=ep.iterations, jitter=ep.jitter, likelihood=likelihood, predicted=predicted,
                      p_one=p_one, test_indices=test, delta=delta)
    if idx.size >= 2:
        out.pac_bayes_bound = pac_bayes_bound_log(est.log_p, int(idx.size), delta)
    if target is not None:
        tgt = np.asarray(target)
        if tgt.shape != (m_all,):
            raise FunctionError(f"target has shape {tgt.shape}; give {m_all} labels, one per input")
        if not np.array_equal(tgt[idx], lab):
            raise FunctionError("the training labels disagree with the target on the training inputs")
        t = tgt[test].astype(np.int64)
        if len(test) and not ep.impossible and not est.impossible:
            out.expected_error = float(np.mean(np.where(t == 1, 1.0 - p_one, p_one)))
            out.predicted_error = float(np.mean(predicted != t))
    return out


__all__ = ["gp_posterior", "predictive", "pac_bayes_bound_log", "GPPosterior"]
