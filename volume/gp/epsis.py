"""EP-guided sequential importance sampling (EP-SIS) for ln P(x > 0), x ~ N(0, Sigma).

Plain importance sampling from the EP posterior q = N(m, S) (``volume.gp.ep.importance_log_p``)
fails on rare labellings: most draws fall outside the orthant and get weight 0, and the few
inside carry weights spread over many orders of magnitude. EP-SIS builds the proposal one
variable at a time, in the greedy order of minimax tilting (``volume.gp.tilting.ordered_cholesky``),
and each conditional keeps the *exact* constraint of its own variable and EP's Gaussian sites
for the variables still to come:

    q_k(x_k | x_<k)  proportional to  G(x_k | x_<k) / s_k(x_k) * 1[x_k > 0],

where G = N(m, S) is the EP posterior (prior times all sites s_j(x) = exp(-tau_j x^2/2 + nu_j x))
and s_k is divided out so that constraint k is not counted twice (truncating G itself counts it
twice, and was measured to fail badly on rare labellings). With S = C C^T (C lower) the
conditional G(x_k | x_<k) is N(a_k, C_kk^2), a_k = m_k + sum_{j<k} C_kj e_j,
e_j = (x_j - a_j) / C_jj; removing the site gives precision p_k = 1/C_kk^2 - tau_k (> 0: the
conditional precision of the prior with the later sites) and mean m~_k = (a_k / C_kk^2 - nu_k) / p_k,
so x_k = m~_k + s_k t, s_k = p_k^-1/2, t ~ N(0, 1) truncated to t > -m~_k / s_k (inversion in log
space). Every draw satisfies all the constraints; the weight against the prior N(0, Sigma)
restricted to the orthant is (Sigma = L L^T in the same order)

    ln w = -|L^-1 x|^2 / 2 - sum ln L_kk + sum_k [ t_k^2 / 2 + ln s_k + ln Phi(m~_k / s_k) ],

and E[w] = P(x > 0) exactly, whatever EP's sites are (EP only makes the variance small: when
EP's Gaussian sites describe the later constraints well, the weights are nearly constant).
This is the separation-of-variables construction of Genz (1992) and Botev (2017) with the
conditionals taken from EP instead of the prior (Botev: prior conditionals with a mean tilt).
The estimate, its standard error, ESS and Pareto k-hat come from ``volume.gp.diagnostics``.
Cost: EP (O(d^3) per sweep), two Cholesky factors, and O(n d^2) for n draws as blocked matrix
products. Random numbers: PCG64 seeded by ``seed`` in fixed chunks of ``CHUNK`` draws.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import log_ndtr

from volume.errors import VolumeError
from volume.gp.diagnostics import WeightSummary, summarize
from volume.gp.ep import EPResult, _posterior, ep_log_p, psd_cholesky
from volume.gp.tilting import (Tilt, ordered_cholesky, sequential_draws, solve_tilt, tilted_draws, tilted_log_density,
                               truncated_normal_above, unit_lower)


DEFENSIVE = 0.1  # share of the draws from the minimax-tilted proposal (defensive mixture)


@dataclass
class EPProposal:
    """Everything that does not depend on the random draws (reusable across seeds)."""

    L: np.ndarray  # Cholesky of Sigma[perm][:, perm]
    perm: np.ndarray
    mean: np.ndarray  # EP posterior mean, permuted
    C: np.ndarray  # Cholesky of the EP posterior covariance, permuted
    tau: np.ndarray  # EP site precisions, permuted
    nu: np.ndarray  # EP site precision-times-means, permuted
    ep: EPResult
    N: np.ndarray  # unit-diagonal strict part of L (tilting's coordinates)
    tilt: Tilt
    seconds: dict = field(default_factory=dict)

    @property
    def prec(self) -> np.ndarray:
        return 1.0 / np.diag(self.C) ** 2 - self.tau  # conditional precision without site k (> 0)


def ep_proposal(sigma: np.ndarray, *, ep: EPResult | None = None, **ep_kw) -> EPProposal:
    """Order and factor ``sigma``, solve Botev's tilt, run EP on it (all labels 1, or take ``ep``),
    and factor the EP posterior covariance S = Sigma - Sigma S^1/2 B^-1 S^1/2 Sigma."""
    t0 = time.perf_counter()
    L, perm = ordered_cholesky(sigma)
    N = unit_lower(L)
    t1 = time.perf_counter()
    tilt = solve_tilt(N)
    t2 = time.perf_counter()
    d = sigma.shape[0]
    if ep is None:
        ep = ep_log_p(sigma, np.ones(d, dtype=np.int64), **ep_kw)
    if len(ep.kept) != d:
        raise VolumeError("EP-SIS needs a reduced orthant problem (no zero-variance inputs): use volume.gp.orthant")
    Sj = sigma + ep.jitter * np.eye(d)
    _, _, _, V = _posterior(Sj, ep.tau, ep.nu)
    S = Sj - V.T @ V
    S = (S + S.T) / 2
    C, _ = psd_cholesky(S[np.ix_(perm, perm)])
    t3 = time.perf_counter()
    return EPProposal(L, perm, ep.mu[perm], C, ep.tau[perm], ep.nu[perm], ep, N, tilt,
                      {"order_factor": t1 - t0, "tilt": t2 - t1, "ep_proposal": t3 - t2})


def sis_draws(prop: EPProposal, n_samples: int, seed) -> np.ndarray:
    """n draws x (permuted coordinates) from the sequential EP proposal (module docstring); the
    sampler's stored values are the residuals e = C^-1 (x - m)."""
    C, m, nu = prop.C, prop.mean, prop.nu
    cdiag = np.diag(C)
    prec = prop.prec
    sd = 1.0 / np.sqrt(prec)
    X = np.empty((n_samples, len(m)))

    def step(k, lin, log_u, rows):
        mc = m[k] + lin  # conditional mean of x_k under the EP posterior
        mean = (mc / cdiag[k] ** 2 - nu[k]) / prec[k]  # ... with site k removed
        t, _ = truncated_normal_above(-mean / sd[k], log_u)
        x = np.maximum(mean + sd[k] * t, 0.0)
        X[rows, k] = x
        return (x - mc) / cdiag[k]

    sequential_draws(C - np.diag(cdiag), n_samples, seed, step)
    return X


def sis_log_density(X: np.ndarray, prop: EPProposal) -> np.ndarray:
    """ln q(x) of the sequential EP proposal at the rows of X (without -d/2 ln 2 pi); -inf outside
    the orthant. e = C^-1 (x - m) recovers the draw's residuals, a = x - diag(C) e its conditional means."""
    C, m, nu = prop.C, prop.mean, prop.nu
    cdiag = np.diag(C)
    prec = prop.prec
    sd = 1.0 / np.sqrt(prec)
    E = solve_triangular(C, (X - m).T, lower=True, check_finite=False).T
    a = X - cdiag * E
    mean = (a / cdiag ** 2 - nu) / prec
    t = (X - mean) / sd
    out = np.sum(-0.5 * t * t - np.log(sd) - log_ndtr(mean / sd), axis=1)
    return np.where(np.all(X >= 0.0, axis=1), out, -np.inf)


def ep_sis_log_weights(prop: EPProposal, n_samples: int, seed: int, defensive: float = DEFENSIVE) -> np.ndarray:
    """Log-weights of n draws from the defensive mixture (1 - a) q_EP + a q_tilt (module docstring):
    round(a n) draws from the tilted proposal (stream (seed, 1)), the rest from q_EP (stream (seed, 0)),
    each weighted by the prior over the mixture density (deterministic-mixture / balance heuristic)."""
    if not 0.0 <= defensive < 1.0:
        raise VolumeError(f"defensive = {defensive!r}: the tilted share must be in [0, 1)")
    L = prop.L
    n_t = int(round(defensive * n_samples)) if defensive > 0 else 0
    n_t = min(max(n_t, 1 if defensive > 0 else 0), n_samples - 1)
    X = sis_draws(prop, n_samples - n_t, [seed, 0])
    Z = solve_triangular(L, X.T, lower=True, check_finite=False).T
    if n_t:
        Zt = tilted_draws(prop.N, prop.tilt.mu, n_t, [seed, 1])[0]
        X = np.vstack([X, np.maximum(Zt @ L.T, 0.0)])
        Z = np.vstack([Z, Zt])
    log_det = float(np.log(np.diag(L)).sum())
    lp = -0.5 * np.einsum("ij,ij->i", Z, Z) - log_det
    lq = sis_log_density(X, prop)
    if n_t:
        lq_t = tilted_log_density(Z, prop.N, prop.tilt.mu) - log_det
        lq = np.logaddexp(math.log1p(-defensive) + lq, math.log(defensive) + lq_t)
    return lp - lq


@dataclass
class EPSISResult:
    log_p: float
    stderr: float
    log_p_ep: float
    ep_converged: bool
    summary: WeightSummary
    reliable: bool
    reason: str
    n_samples: int
    defensive: float = DEFENSIVE
    seconds: dict = field(default_factory=dict)

    def diagnostics(self) -> dict:
        s = self.summary
        return {"ess": s.ess, "pareto_k": s.khat, "pareto_k_threshold": s.khat_threshold, "log_w_sd": s.log_w_sd,
                "n_samples": self.n_samples, "ep_log_p": self.log_p_ep, "ep_converged": self.ep_converged,
                "defensive": self.defensive, "reliable": self.reliable, "reason": self.reason}


def ep_sis_log_p(sigma: np.ndarray, n_samples: int = 2048, *, seed: int = 0,
                 proposal: EPProposal | None = None, defensive: float = DEFENSIVE) -> EPSISResult:
    """EP-SIS estimate of ln P(x > 0), x ~ N(0, sigma), with its standard error and diagnostics."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise VolumeError(f"samples = {n_samples!r}: EP-SIS needs an integer >= 2")
    d = sigma.shape[0]
    if d == 0:
        s = summarize(np.zeros(n_samples))
        return EPSISResult(0.0, 0.0, 0.0, True, s, True, "", n_samples)
    prop = proposal if proposal is not None else ep_proposal(sigma)
    secs = dict(prop.seconds)
    t0 = time.perf_counter()
    lw = ep_sis_log_weights(prop, n_samples, seed, defensive)
    secs["sample"] = time.perf_counter() - t0
    s = summarize(lw)
    reasons = [s.reason] if s.reason else []
    if not prop.ep.converged:
        reasons.append(f"EP did not converge (max change {prop.ep.max_change:.2g}); the proposal may be poor")
    return EPSISResult(s.log_z, s.stderr, prop.ep.log_z, prop.ep.converged, s, not s.reason, "; ".join(reasons),
                       n_samples, defensive, secs)


__all__ = ["ep_sis_log_p", "ep_proposal", "ep_sis_log_weights", "sis_draws", "sis_log_density", "EPProposal",
           "EPSISResult", "DEFENSIVE"]
