"""log P(f) of a labelling under z ~ N(0, K) by expectation propagation (EP).

P(f) = P(sign z = f) = integral of N(z; 0, K) prod_i t_i(z_i) dz is an orthant probability
(Valle-Perez et al. 2019, Mingard et al. 2021). With y_i = 2 f_i - 1 the site likelihoods are

    heaviside: t_i(z) = 1[y_i z > 0]              (the network's own rule, label = 1[z > 0])
    probit:    t_i(z) = Phi(y_i z)                (= heaviside with unit Gaussian output noise,
                                                   i.e. the orthant probability of K + I)

EP (Minka 2001; Rasmussen & Williams 2006, ch. 3.6) replaces each t_i by a Gaussian site
with natural parameters (tau_i, nu_i), matching the moments of the tilted marginals
N(z_i; m_i, v_i) t_i(z_i) of the cavity N(m_i, v_i). For likelihood noise s^2 (0 heaviside,
1 probit) and c = y m / sqrt(s^2 + v), r = N(c)/Phi(c) (R&W eq. 3.58):

    log Z_i = log Phi(c),   mean = m + y v r / sqrt(s^2 + v),
    var = v - v^2 r (c + r) / (s^2 + v).

Both likelihoods are log-concave, so every site precision tau_i >= 0. Updates are parallel
(all sites from the current marginals), damped, and followed by a recomputation of the
posterior N(mu, Sigma) through the Cholesky factor of B = I + S^1/2 K S^1/2 (eigenvalues >= 1,
always well conditioned; R&W Alg. 3.5), so each sweep costs O(M^3) in BLAS-3 and nothing
ever inverts K. The EP estimate of log Z is R&W eq. 3.65 (as in GPML's infEP). A sequential
variant (rank-one updates, R&W Alg. 3.5 proper) has the same fixed point and serves as a
reference.

Numerical care: the kernel is validated once (symmetric, finite, PSD by Cholesky with the
smallest relative jitter from 0, 1e-12, ..., 1e-6 times the mean variance that works; that
jitter is reported and used throughout); tilted moments use erfcx (no overflow or
cancellation of N(c)/Phi(c)); damping shrinks automatically when the site updates grow.
Cholesky factors and triangular solves go through torch's LAPACK (float64), one thread for
matrices under ``SMALL_MATRIX`` rows (see ``blas_threads``).

Inputs with zero prior variance (e.g. x = 0 when sigma_b = 0: the network's output there is
exactly 0, so its label is always 0) are deterministic: a labelling that gives one of them
label 1 has probability 0 (log P = -inf), otherwise they are dropped and EP runs on the rest.

Importance sampling (``importance_log_p``) corrects EP: with the EP posterior
q = N(mu, Sigma) as proposal, Z = E_q[N(z; 0, K) prod t_i(z_i) / q(z)]; the estimate is
log mean w, its standard error by the delta method, sd(w) / (sqrt(n) mean(w)).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import cho_solve, solve_triangular
from scipy.special import erfcx, log_ndtr

from volume.checks import positive_int
from volume.threads import torch_threads
from volume.errors import FunctionError, VolumeError
from volume.gp.kernels import KernelError

LIKELIHOODS = {"heaviside": 0.0, "probit": 1.0}
JITTERS = (0.0, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6)
#: prior variance (relative to the largest) at or below which an input is deterministic
ZERO_VARIANCE = 1e-13
SMALL_MATRIX = 512
_SQRT_2_PI = math.sqrt(2.0 / math.pi)


# --------------------------------------------------------------------------- validation
def check_labels(labels, n_inputs: int) -> np.ndarray:
    """Labels as a (M,) int array of 0/1; FunctionError naming the problem otherwise."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n_inputs:
        raise FunctionError(f"labels have shape {lab.shape}; the kernel has {n_inputs} inputs, "
                            f"so give {n_inputs} labels (one per input, in input order)")
    if lab.dtype == bool:
        lab = lab.astype(np.int64)
    if lab.size and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0 or lab.max() > 1):
        bad = sorted(set(np.unique(lab).tolist()) - {0, 1})[:5]
        raise FunctionError(f"labels must be 0 or 1 (binary threshold output); found {bad}")
    return lab.astype(np.int64)


def check_kernel(K) -> np.ndarray:
    """K as a float64 (M, M) symmetric finite array; KernelError naming the problem otherwise."""
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise KernelError(f"kernel has shape {K.shape}; it must be a square (M, M) matrix over the inputs")
    if not np.all(np.isfinite(K)):
        raise KernelError("kernel has NaN or infinite entries: recompute it (check sigma_w, sigma_b and the inputs)")
    scale = max(float(np.abs(K).max(initial=0.0)), 1e-300)
    asym = float(np.abs(K - K.T).max(initial=0.0))
    if asym > 1e-8 * scale:
        raise KernelError(f"kernel is not symmetric (max |K - K^T| = {asym:.3g}, max |K| = {scale:.3g}): "
                          "a covariance matrix must satisfy K = K^T")
    if np.any(np.diag(K) < 0):
        raise KernelError(f"kernel has a negative variance on its diagonal (min {np.diag(K).min():.3g}): "
                          "it is not a covariance matrix")
    return (K + K.T) / 2


@contextmanager
def blas_threads(m: int):
    """One torch thread for matrices below SMALL_MATRIX rows: measured here, threaded LAPACK on
    a 128 x 128 Cholesky + triangular solve was ~100x slower than one thread (2 busy cores)."""
    with torch_threads(1 if m < SMALL_MATRIX else None):
        yield


def cholesky_lower(A: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of a symmetric float64 matrix, or None if it is not positive
    definite. Uses torch's LAPACK binding: on small machines the threaded potrf bundled
    with scipy was measured 10-20x slower than torch's."""
    L, info = torch.linalg.cholesky_ex(torch.from_numpy(np.ascontiguousarray(A, dtype=np.float64)))
    return None if int(info) != 0 else L.numpy()


def psd_cholesky(K: np.ndarray) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of K + j I for the smallest j = rel * mean(diag K), rel in
    ``JITTERS``, that works, and j. KernelError (with the smallest eigenvalue) if none does."""
    m = K.shape[0]
    scale = float(np.trace(K)) / max(m, 1)
    if m == 0:
        return np.zeros((0, 0)), 0.0
    for rel in JITTERS:
        j = rel * scale
        L = cholesky_lower(K + j * np.eye(m))
        if L is not None:
            return L, j
    lam = float(np.linalg.eigvalsh(K)[0])
    raise KernelError(
        f"kernel is not positive semi-definite: smallest eigenvalue {lam:.3g} (mean variance {scale:.3g}); "
        f"a jitter of {JITTERS[-1]:g} x mean variance does not fix it. Recompute the kernel in float64, "
        "or use the analytic kernel, or more networks for the empirical one"
    )


# --------------------------------------------------------------------------- tilted moments
def tilted_moments(y: np.ndarray, m: np.ndarray, v: np.ndarray, noise: float):
    """log Z_i, mean and variance of N(z; m, v) Phi(y z / s) (s = sqrt(noise); s = 0: step)."""
    den = np.sqrt(noise + v)
    c = y * m / den
    log_z = log_ndtr(c)
    r = _SQRT_2_PI / erfcx(-c / math.sqrt(2.0))  # N(c)/Phi(c), stable for all c
    mean = m + y * v * r / den
    shrink = np.clip(r * (c + r), 0.0, 1.0 - 1e-15)
    var = v - v * v * shrink / (noise + v)
    return log_z, mean, np.maximum(var, v * 1e-15)


# --------------------------------------------------------------------------- EP
@dataclass
class EPResult:
    """EP approximation on the non-deterministic inputs ``kept`` (indices into the labels)."""

    log_z: float
    converged: bool
    iterations: int
    max_change: float
    jitter: float
    likelihood: str
    kept: np.ndarray
    n_deterministic: int
    tau: np.ndarray = field(repr=False)  # site precisions (on kept)
    nu: np.ndarray = field(repr=False)  # site precision-times-means (on kept)
    mu: np.ndarray = field(repr=False)  # posterior means of z (on kept)
    var: np.ndarray = field(repr=False)  # posterior variances of z (on kept)
    chol_k: np.ndarray | None = field(default=None, repr=False)  # Cholesky of K + jitter on kept
    impossible: bool = False  # a deterministic input is labelled 1: P(f) = 0


def _posterior(K: np.ndarray, tau: np.ndarray, nu: np.ndarray):
    """Marginals (mu, var) of N(mu, Sigma), Sigma = (K^-1 + diag tau)^-1, and log|B|/2, via
    L = chol(I + S^1/2 K S^1/2), V = L^-1 S^1/2 K, Sigma = K - V^T V (R&W Alg. 3.5)."""
    sw = np.sqrt(tau)
    W = sw[:, None] * K
    B = W * sw[None, :]
    B[np.diag_indices_from(B)] += 1.0
    L = cholesky_lower(B)
    if L is None:  # cannot happen for tau >= 0 and PSD K, unless round-off breaks the kernel
        raise KernelError("EP: I + S^1/2 K S^1/2 is not positive definite; the kernel is not PSD to working precision")
    V = torch.linalg.solve_triangular(torch.from_numpy(L), torch.from_numpy(W), upper=False).numpy()
    var = np.maximum(np.diag(K) - np.einsum("ij,ij->j", V, V), 1e-300)
    mu = K @ nu - V.T @ (V @ nu)
    return mu, var, float(np.log(np.diag(L)).sum()), V


def _log_z_ep(y, mu, var, tau, nu, half_logdet_b, noise) -> float:
    """R&W eq. 3.65 (GPML infEP) with zero prior mean, cavities from the current marginals."""
    tau_c = 1.0 / var - tau
    nu_c = mu / var - nu
    log_zi, _, _ = tilted_moments(y, nu_c / tau_c, 1.0 / tau_c, noise)
    return float(
        log_zi.sum() - half_logdet_b + 0.5 * nu @ mu
        + 0.5 * nu_c @ ((tau / tau_c * nu_c - 2.0 * nu) / (tau + tau_c))
        - 0.5 * np.sum(nu * nu / (tau_c + tau))
        + 0.5 * np.sum(np.log1p(tau / tau_c))
    )


def _site_update(y, mu, var, tau, nu, noise):
    """New site parameters from the current marginals (exact moment matching, no damping)."""
    tau_c = np.maximum(1.0 / var - tau, 1e-300)
    nu_c = mu / var - nu
    _, mean, v_hat = tilted_moments(y, nu_c / tau_c, 1.0 / tau_c, noise)
    tau_new = np.maximum(1.0 / v_hat - tau_c, 0.0)
    nu_new = mean / v_hat - nu_c
    return tau_new, nu_new


def _split_deterministic(K: np.ndarray, lab: np.ndarray):
    d = np.diag(K)
    zero = d <= ZERO_VARIANCE * max(float(d.max(initial=0.0)), 1e-300)
    return np.flatnonzero(~zero), bool(np.any(lab[zero] == 1)), int(zero.sum())


def ep_log_p(K, labels, *, likelihood: str = "heaviside", damping: float = 0.9, tol: float = 1e-6,
             max_iter: int = 1000, method: str = "parallel") -> EPResult:
    """EP estimate of log P(sign z = labels), z ~ N(0, K) (see the module docstring).

    ``damping`` is the initial step (new sites = (1-step) old + step * moment-matched);
    the step shrinks by 0.7 (down to 0.05) whenever the largest site change grows.
    Converged when the largest change of tau * var and of nu * sqrt(var) and of log Z between
    sweeps are all below ``tol``. ``method='sequential'`` updates one site at a time with
    rank-one updates of Sigma (no damping; the reference, O(M^2) per site).
    """
    if likelihood not in LIKELIHOODS:
        raise VolumeError(f"likelihood = {likelihood!r}: use one of {', '.join(LIKELIHOODS)}")
    if not 0 < damping <= 1:
        raise VolumeError(f"damping = {damping!r}: the EP step must be in (0, 1]")
    if method not in ("parallel", "sequential"):
        raise VolumeError(f"method = {method!r}: use 'parallel' or 'sequential'")
    K = check_kernel(K)
    lab = check_labels(labels, K.shape[0])
    noise = LIKELIHOODS[likelihood]
    kept, impossible, n_det = _split_deterministic(K, lab)
    empty = np.zeros(0)
    if impossible and noise == 0.0:
        return EPResult(-math.inf, True, 0, 0.0, 0.0, likelihood, kept, n_det, empty, empty, empty, empty,
                        impossible=True)
    # under probit a deterministic z = 0 gives each label probability Phi(0) = 1/2
    det_log = (n_det * math.log(0.5)) if noise > 0 else 0.0
    Kk = K[np.ix_(kept, kept)]
    with blas_threads(len(kept)):
        chol, jitter = psd_cholesky(Kk)
    Kk = Kk + jitter * np.eye(len(kept))
    y = 2.0 * lab[kept] - 1.0
    if len(kept) == 0:
        return EPResult(det_log, True, 0, 0.0, jitter, likelihood, kept, n_det, empty, empty, empty, empty, chol)
    run = _ep_sequential if method == "sequential" else _ep_parallel
    with blas_threads(len(kept)):
        log_z, tau, nu, mu, var, converged, it, change = run(Kk, y, noise, damping, tol, max_iter)
    return EPResult(log_z + det_log, converged, it, change, jitter, likelihood, kept, n_det, tau, nu, mu, var, chol)


def _ep_parallel(K, y, noise, damping, tol, max_iter):
    m = K.shape[0]
    tau, nu = np.zeros(m), np.zeros(m)
    mu, var = np.zeros(m), np.diag(K).copy()
    step = damping
    log_z = _log_z_ep(y, mu, var, tau, nu, 0.0, noise)
    prev_change, change, converged, it = math.inf, math.inf, False, 0
    for it in range(1, max_iter + 1):
        tau_new, nu_new = _site_update(y, mu, var, tau, nu, noise)
        change = float(max(np.max(np.abs(tau_new - tau) * var), np.max(np.abs(nu_new - nu) * np.sqrt(var))))
        if change > prev_change:
            step = max(0.05, step * 0.7)
        prev_change = change
        tau = (1 - step) * tau + step * tau_new
        nu = (1 - step) * nu + step * nu_new
        mu, var, _, log_z, converged = _end_sweep(K, y, tau, nu, noise, log_z, change, tol)
        if converged:
            break
    return log_z, tau, nu, mu, var, converged, it, change


def _end_sweep(K, y, tau, nu, noise, log_z, change, tol):
    """Posterior from the sites, new log Z, and whether sites and log Z have settled."""
    mu, var, half_logdet, V = _posterior(K, tau, nu)
    new_log_z = _log_z_ep(y, mu, var, tau, nu, half_logdet, noise)
    done = change < tol and abs(new_log_z - log_z) < tol * max(1.0, abs(new_log_z))
    return mu, var, V, new_log_z, done


def _ep_sequential(K, y, noise, damping, tol, max_iter):
    m = K.shape[0]
    tau, nu = np.zeros(m), np.zeros(m)
    sigma = K.copy()
    mu = np.zeros(m)
    log_z, converged, change, sweep = -math.inf, False, math.inf, 0
    for sweep in range(1, max_iter + 1):
        change = 0.0
        for i in range(m):
            tau_c = 1.0 / sigma[i, i] - tau[i]
            nu_c = mu[i] / sigma[i, i] - nu[i]
            _, mean, v_hat = tilted_moments(y[i:i + 1], np.array([nu_c / tau_c]), np.array([1.0 / tau_c]), noise)
            t_new = max(1.0 / v_hat[0] - tau_c, 0.0)
            d_tau = t_new - tau[i]
            change = max(change, abs(d_tau) * sigma[i, i], abs(mean[0] / v_hat[0] - nu_c - nu[i]) * math.sqrt(sigma[i, i]))
            tau[i] = t_new
            nu[i] = mean[0] / v_hat[0] - nu_c
            s_i = sigma[:, i].copy()
            sigma -= (d_tau / (1.0 + d_tau * s_i[i])) * np.outer(s_i, s_i)
            mu = sigma @ nu
        # recompute Sigma from scratch after each sweep (R&W Alg. 3.5)
        mu, var, V, log_z, converged = _end_sweep(K, y, tau, nu, noise, log_z, change, tol)
        sigma = K - V.T @ V
        if converged:
            break
    return log_z, tau, nu, mu, var, converged, sweep, change


# --------------------------------------------------------------------------- importance sampling
@dataclass(frozen=True)
class ISResult:
    log_p: float  # log of the importance-sampling estimate of P(f)
    stderr: float  # standard error of log_p (delta method); inf when no sample had weight
    ess: float  # effective sample size (sum w)^2 / sum w^2
    n_samples: int
    accepted: float  # fraction of proposals with nonzero weight (inside the orthant)


def importance_log_p(K, labels, ep: EPResult, n_samples: int, *, seed: int = 0,
                     chunk: int | None = None) -> ISResult:
    """Importance-sampling estimate of log P(f) with the EP posterior q = N(mu, Sigma) as proposal.

    With K_j = L_K L_K^T (the jittered kernel EP used) and A = I + L_K^T S L_K = L_A L_A^T,
    Sigma = L_K A^-1 L_K^T, so z = L_K u with u = L_A^-T (L_A^-1 L_K^T nu + eps), eps ~ N(0, I),
    and log N(z; 0, K_j) - log q(z) = |eps|^2/2 - |u|^2/2 - sum log diag L_A: no second jitter,
    no inverse of K. Weights w = that ratio times prod t_i(z_i).
    """
    positive_int(n_samples, "importance_samples (0 for none)", minimum=2)
    lab = check_labels(labels, np.asarray(K).shape[0])
    if ep.impossible:
        return ISResult(-math.inf, 0.0, 0.0, n_samples, 0.0)
    m = len(ep.kept)
    noise = LIKELIHOODS[ep.likelihood]
    det_log = ep.n_deterministic * math.log(0.5) if noise > 0 else 0.0
    if m == 0:
        return ISResult(det_log, 0.0, float(n_samples), n_samples, 1.0)
    with blas_threads(m):
        y = 2.0 * lab[ep.kept] - 1.0
        Lk = ep.chol_k
        A = Lk.T @ (ep.tau[:, None] * Lk)
        A[np.diag_indices_from(A)] += 1.0
        La = cholesky_lower(A)
        if La is None:
            raise KernelError("importance sampling: I + L^T S L is not positive definite (round-off); use fewer inputs")
        a = cho_solve((La, True), Lk.T @ ep.nu, check_finite=False)  # = L_K^-1 mu
        half_logdet_a = float(np.log(np.diag(La)).sum())
        rng = np.random.default_rng(seed)
        chunk = chunk or max(1, min(n_samples, 2**24 // max(m, 1)))
        logw = np.empty(n_samples)
        for s0 in range(0, n_samples, chunk):
            s1 = min(n_samples, s0 + chunk)
            eps = rng.standard_normal((s1 - s0, m))
            u = a[None, :] + solve_triangular(La, eps.T, lower=True, trans="T", check_finite=False).T
            z = u @ Lk.T
            lw = 0.5 * np.einsum("ij,ij->i", eps, eps) - 0.5 * np.einsum("ij,ij->i", u, u) - half_logdet_a
            if noise == 0.0:
                lw = np.where(np.all(y[None, :] * z > 0, axis=1), lw, -np.inf)
            else:
                lw = lw + log_ndtr(y[None, :] * z / math.sqrt(noise)).sum(axis=1)
            logw[s0:s1] = lw
    finite = np.isfinite(logw)
    accepted = float(finite.mean())
    if not finite.any():
        return ISResult(-math.inf, math.inf, 0.0, n_samples, 0.0)
    top = float(logw[finite].max())
    w = np.exp(logw - top)  # zeros where -inf
    mean_w = float(w.mean())
    log_p = top + math.log(mean_w) + det_log
    stderr = float(w.std(ddof=1) / (math.sqrt(n_samples) * mean_w))
    ess = float(w.sum() ** 2 / np.sum(w * w))
    return ISResult(log_p, stderr, ess, n_samples, accepted)


__all__ = ["ep_log_p", "importance_log_p", "EPResult", "ISResult", "check_kernel", "check_labels",
           "psd_cholesky", "tilted_moments", "LIKELIHOODS"]
