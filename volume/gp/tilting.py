"""Minimax exponential tilting (Botev 2017) for ln P(x > 0), x ~ N(0, Sigma): the orthant probability.

Z. I. Botev, "The normal law under linear restrictions: simulation and estimation via minimax
tilting", J. R. Stat. Soc. B 79 (2017) 125-148. Here the box is one-sided, l = 0, u = +inf
(``volume.gp.orthant`` turns P(sign z = f) into this form with Sigma = D K D).

1. **Order and factor.** Sigma[pi, pi] = L L^T with the variables taken greedily (Gibbons /
   Genz's order, as in Botev's ``cholperm``): at step k the next variable is the one whose
   conditional lower bound, given the previous ones at their truncated-normal means, leaves it
   the smallest probability. With x = L z, z ~ N(0, I), and L~ = diag(L)^-1 L = I + N
   (N strictly lower), the constraints read z_k >= -(N z)_k =: -c_k(z).
2. **Tilt.** Sample z_k sequentially from N(mu_k, 1) truncated to z_k >= -c_k; the likelihood ratio
   against N(0, I) restricted to the constraints is w = exp(psi(z; mu)),

       psi(z; mu) = sum_k [ mu_k^2 / 2 - mu_k z_k + ln Phi(mu_k + c_k(z)) ],   E[w] = P.

   The tilt is the saddle point (x*, mu*) of psi: grad psi = 0, i.e.
       d/dx: -mu + N^T p = 0,     d/dmu: mu - x + p = 0,    p_k = phi(a_k) / Phi(-a_k),
       a_k = -c_k(x) - mu_k,
   solved by Newton's method (Jacobian: dp_k/da_k... = q_k = a_k p_k - p_k^2, so
   J = [[N^T Q N, (Q N - I)^T], [Q N - I, I + Q]], Q = diag(q); the mu-block is diagonal, so
   each step solves the (d-1) x (d-1) Schur complement N^T Q N - (QN - I)^T (I+Q)^-1 (QN - I)).
   As in Botev, x_d = mu_d = 0. At the saddle point psi(z; mu*) <= psi(x*; mu*) for every
   feasible z (Botev's Theorem 2), so **ln P <= psi* = psi(x*; mu*)**: a deterministic upper
   bound, and the weights are bounded (the estimator's relative error is bounded; vanishing
   in some regimes).
3. **Estimate.** n draws; ln P_hat = ln mean w, with standard error, ESS and Pareto k-hat
   from ``volume.gp.diagnostics``. A ln P_hat above psi* (beyond its error bar) fails the
   diagnostics: it cannot happen when the saddle point is right.

Costs: ordering O(d^3 / 6) memory-bound (a row update per step), Newton O(d^3) per step, and
sampling O(n d^2) as blocked matrix products (``BLOCK`` variables at a time). Random numbers:
uniforms from numpy's PCG64 seeded by ``seed``, drawn in chunks of ``CHUNK`` samples, so the
result depends only on (Sigma, n, seed), never on memory or threads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_solve
from scipy.special import erfcx, log_ndtr, ndtri_exp

from volume.errors import VolumeError
from volume.gp.diagnostics import WeightSummary, summarize
from volume.gp.ep import cholesky_lower

CHUNK = 1024  # samples drawn together (fixed: part of the random stream)
BLOCK = 64  # variables per blocked matrix product while sampling
_SQRT_2_PI = math.sqrt(2.0 / math.pi)


def mills(a: np.ndarray) -> np.ndarray:
    """phi(a) / Phi(-a) = E[T | T > a] for T ~ N(0, 1), stable for all a (erfcx)."""
    return _SQRT_2_PI / erfcx(np.asarray(a, dtype=np.float64) / math.sqrt(2.0))


# --------------------------------------------------------------------------- 1. order and factor
def ordered_cholesky(sigma: np.ndarray, *, reorder: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(L, perm) with sigma[perm][:, perm] = L L^T, perm the greedy order of the module docstring
    (the identity order when ``reorder`` is False). Diagonal entries are floored at 1e-12 times
    the mean variance (the caller adds the kernel's jitter first)."""
    d = sigma.shape[0]
    S = np.array(sigma, dtype=np.float64, copy=True)
    L = np.zeros((d, d))
    perm = np.arange(d)
    zbar = np.zeros(d)  # truncated-normal means of the chosen variables (standardized)
    resid = np.diag(S).copy()  # conditional variances Sigma_ii - sum_j<k L_ij^2
    shift = np.zeros(d)  # sum_j<k L_ij zbar_j
    floor = 1e-12 * float(np.mean(np.diag(S))) if d else 0.0
    for k in range(d):
        if reorder and k < d - 1:
            s = np.sqrt(np.maximum(resid[k:], floor))
            a = -shift[k:] / s  # standardized lower bound: prob of the interval = Phi(-a)
            j = k + int(np.argmax(a))
            if j != k:
                for arr in (resid, shift, perm):
                    arr[[k, j]] = arr[[j, k]]
                S[[k, j], :] = S[[j, k], :]
                S[:, [k, j]] = S[:, [j, k]]
                L[[k, j], :k] = L[[j, k], :k]
        lkk = math.sqrt(max(resid[k], floor))
        L[k, k] = lkk
        if k + 1 < d:
            col = (S[k + 1:, k] - L[k + 1:, :k] @ L[k, :k]) / lkk
            L[k + 1:, k] = col
            resid[k + 1:] -= col * col
        zbar[k] = float(mills(-shift[k] / lkk))
        if k + 1 < d:
            shift[k + 1:] += L[k + 1:, k] * zbar[k]
    return L, perm


# --------------------------------------------------------------------------- 2. tilt
def _psi_parts(x: np.ndarray, mu: np.ndarray, N: np.ndarray):
    """a_k = -c_k(x) - mu_k, p = Mills(a), q = dp/da... as used by psi, its gradient and Jacobian."""
    c = N @ x
    a = -c - mu
    p = mills(a)
    q = a * p - p * p  # d p / d a; in (-1, 0)
    return a, p, q


def psi(x: np.ndarray, mu: np.ndarray, N: np.ndarray) -> float:
    """psi(x; mu) = sum_k mu_k^2/2 - mu_k x_k + ln Phi(mu_k + c_k(x))."""
    c = N @ x
    return float(np.sum(0.5 * mu * mu - mu * x + log_ndtr(mu + c)))


def _gradient(y: np.ndarray, N: np.ndarray):
    d = N.shape[0]
    n = d - 1
    x = np.zeros(d)
    mu = np.zeros(d)
    x[:n], mu[:n] = y[:n], y[n:]
    a, p, q = _psi_parts(x, mu, N)
    gx = -mu[:n] + (N.T @ p)[:n]
    gm = (mu - x + p)[:n]
    return np.concatenate([gx, gm]), q


def _newton_step(y: np.ndarray, N: np.ndarray, g: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Newton direction by the Schur complement of the diagonal mu-block (module docstring).

    With N' = N[:n, :n] (n = d - 1), e = 1 + q[:n], r = q[:n] / e and v = N[d-1, :n], the Schur
    complement simplifies to -(I + (I + N')^T |R| (I + N') + |q_d| v v^T): negative definite, so
    one symmetric product and one Cholesky factorization per step."""
    d = N.shape[0]
    n = d - 1
    gx, gm = g[:n], g[n:]
    e = 1.0 + q[:n]
    r = q[:n] / e
    A = np.empty((d, n))
    A[:n] = N[:n, :n]
    A[np.arange(n), np.arange(n)] = 1.0
    A[:n] *= np.sqrt(-np.minimum(r, 0.0))[:, None]
    A[n] = N[n, :n] * math.sqrt(max(-float(q[n]), 0.0))
    H = A.T @ A
    H[np.diag_indices_from(H)] += 1.0
    mx_t_gm = N[:n, :n].T @ (q[:n] * gm / e) - gm / e  # mx^T E^-1 gm, mx = Q'N' - I
    rhs = gx - mx_t_gm  # -schur dx = gx - mx^T E^-1 gm
    Lh = cholesky_lower(H)
    if Lh is None:
        raise np.linalg.LinAlgError("Newton system is not positive definite")
    dx = cho_solve((Lh, True), rhs, check_finite=False)
    mx_dx = q[:n] * (N[:n, :n] @ dx) - dx
    dmu = (-gm - mx_dx) / e
    return np.concatenate([dx, dmu])


@dataclass
class Tilt:
    x: np.ndarray  # saddle point, whitened coordinates (length d, x_d = 0)
    mu: np.ndarray  # tilt (length d, mu_d = 0)
    psi_star: float  # psi(x*; mu*) >= ln P
    grad_norm: float
    iterations: int
    converged: bool
    feasible: bool  # x* satisfies the constraints (L x* >= 0)


def solve_tilt(N: np.ndarray, *, tol: float = 1e-9, max_iter: int = 100) -> Tilt:
    """Saddle point of psi by damped Newton (backtracking on |grad|), from x = mu = 0 (as Botev)."""
    d = N.shape[0]
    if d == 1:
        x, mu = np.zeros(1), np.zeros(1)
        return Tilt(x, mu, psi(x, mu, N), 0.0, 0, True, True)
    n = d - 1
    y = np.zeros(2 * n)
    g, q = _gradient(y, N)
    gn = float(np.max(np.abs(g)))
    it, converged = 0, gn < tol
    for it in range(1, max_iter + 1):
        if converged:
            it -= 1
            break
        try:
            step = _newton_step(y, N, g, q)
        except np.linalg.LinAlgError:
            step = -g
        if not np.all(np.isfinite(step)):
            step = -g
        t = 1.0
        while True:
            y_new = y + t * step
            g_new, q_new = _gradient(y_new, N)
            gn_new = float(np.max(np.abs(g_new)))
            if np.isfinite(gn_new) and (gn_new < gn or t < 1e-6):
                break
            t *= 0.5
        y, g, q, gn = y_new, g_new, q_new, gn_new
        converged = gn < tol
    x = np.zeros(d)
    mu = np.zeros(d)
    x[:n], mu[:n] = y[:n], y[n:]
    lx = (x + N @ x)[:n]  # (diag(L)^-1 L) x >= 0; x_d is free, so row d can always be met
    feasible = bool(np.all(lx >= -1e-8 * max(1.0, float(np.max(np.abs(lx), initial=0.0)))))
    return Tilt(x, mu, psi(x, mu, N), gn, it, converged, feasible)


# --------------------------------------------------------------------------- 3. sample
def truncated_normal_above(lo: np.ndarray, log_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, ln P(T' >= lo)): T ~ N(0, 1) truncated to T >= lo by inversion in log space,
    Phi(-T) = U Phi(-lo), i.e. T = -ndtri_exp(ln U + ln Phi(-lo)) (exact in the far tail)."""
    log_mass = log_ndtr(-lo)
    return np.maximum(-ndtri_exp(log_u + log_mass), lo), log_mass  # max: round-off at the boundary


def sequential_draws(M: np.ndarray, n_samples: int, seed, step) -> None:
    """The sequential sampler shared by tilting and EP-SIS. For chunks of ``CHUNK`` draws (uniforms
    from PCG64 seeded by ``seed``) and each variable k in turn, lin = V[:, :k] @ M[k, :k] is formed
    by blocked matrix products (``BLOCK`` variables at a time) from the values V stored so far, and
    V[:, k] = step(k, lin, ln U_k, rows), ``rows`` the slice of the draws in this chunk."""
    d = M.shape[0]
    rng = np.random.default_rng(seed)
    for s0 in range(0, n_samples, CHUNK):
        s1 = min(n_samples, s0 + CHUNK)
        m = s1 - s0
        log_u = np.log(rng.random((m, d)))
        V = np.empty((m, d))
        for b0 in range(0, d, BLOCK):
            b1 = min(d, b0 + BLOCK)
            A = V[:, :b0] @ M[b0:b1, :b0].T if b0 else np.zeros((m, b1 - b0))
            for k in range(b0, b1):
                lin = A[:, k - b0]
                if k > b0:
                    lin = lin + V[:, b0:k] @ M[k, b0:k]
                V[:, k] = step(k, lin, log_u[:, k], slice(s0, s1))


def tilted_draws(N: np.ndarray, mu: np.ndarray, n_samples: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """(Z, log-weights psi(Z; mu)): n draws z (whitened coordinates, x = L z) from the tilted
    truncated normals, drawn sequentially: z_k = mu_k + T, T ~ N(0, 1) truncated to
    T >= a_k = -c_k - mu_k, c = N z."""
    Z = np.empty((n_samples, N.shape[0]))
    lw = np.zeros(n_samples)

    def step(k, c, log_u, rows):
        t, log_mass = truncated_normal_above(-c - mu[k], log_u)
        z = mu[k] + t
        lw[rows] += 0.5 * mu[k] ** 2 - mu[k] * z + log_mass
        Z[rows, k] = z
        return z

    sequential_draws(N, n_samples, seed, step)
    return Z, lw


def tilted_log_weights(N: np.ndarray, mu: np.ndarray, n_samples: int, seed) -> np.ndarray:
    """The log-weights of :func:`tilted_draws`."""
    return tilted_draws(N, mu, n_samples, seed)[1]


def tilted_log_density(Z: np.ndarray, N: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """ln of the tilted proposal's density at the rows of Z (whitened coordinates, without the
    common -d/2 ln 2 pi): sum_k -(z_k - mu_k)^2 / 2 - ln Phi(mu_k + c_k(z)); -inf outside the orthant."""
    C = Z @ N.T
    out = np.sum(-0.5 * (Z - mu) ** 2 - log_ndtr(mu + C), axis=1)
    return np.where(np.all(Z + C >= -1e-9 * (1.0 + np.abs(C)), axis=1), out, -np.inf)


@dataclass
class TiltingResult:
    """ln P(x > 0) by minimax tilting; ``summary`` holds the estimate and its diagnostics."""

    log_p: float
    stderr: float
    upper_bound: float  # psi*: ln P <= upper_bound (Botev's bound)
    summary: WeightSummary
    tilt_converged: bool
    tilt_iterations: int
    tilt_grad: float
    feasible: bool
    reliable: bool
    reason: str
    n_samples: int
    seconds: dict = field(default_factory=dict)

    def diagnostics(self) -> dict:
        s = self.summary
        return {"ess": s.ess, "pareto_k": s.khat, "pareto_k_threshold": s.khat_threshold, "log_w_sd": s.log_w_sd,
                "upper_bound": self.upper_bound, "tilt_converged": self.tilt_converged,
                "tilt_iterations": self.tilt_iterations, "tilt_gradient": self.tilt_grad,
                "n_samples": self.n_samples, "reliable": self.reliable, "reason": self.reason}


def unit_lower(L: np.ndarray) -> np.ndarray:
    """N = diag(L)^-1 L - I: the strictly lower part of the unit-diagonal factor."""
    N = L / np.diag(L)[:, None]
    np.fill_diagonal(N, 0.0)
    return N


def prepare(sigma: np.ndarray, *, reorder: bool = True):
    """Ordered factor, its unit-diagonal strict part N and the tilt of ``sigma`` (steps 1 and 2)."""
    t0 = time.perf_counter()
    L, perm = ordered_cholesky(sigma, reorder=reorder)
    N = unit_lower(L)
    t1 = time.perf_counter()
    tilt = solve_tilt(N)
    t2 = time.perf_counter()
    return N, perm, tilt, {"order_factor": t1 - t0, "tilt": t2 - t1}


def tilting_log_p(sigma: np.ndarray, n_samples: int = 2048, *, seed: int = 0, reorder: bool = True,
                  prepared=None) -> TiltingResult:
    """Minimax-tilting estimate of ln P(x > 0), x ~ N(0, sigma) (module docstring).

    ``prepared``: the output of :func:`prepare` for this sigma, to reuse it across seeds."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise VolumeError(f"samples = {n_samples!r}: minimax tilting needs an integer >= 2")
    d = sigma.shape[0]
    if d == 0:
        s = summarize(np.zeros(n_samples))
        return TiltingResult(0.0, 0.0, 0.0, s, True, 0, 0.0, True, True, "", n_samples)
    N, perm, tilt, secs = prepared if prepared is not None else prepare(sigma, reorder=reorder)
    secs = dict(secs)
    t0 = time.perf_counter()
    lw = tilted_log_weights(N, tilt.mu, n_samples, seed)
    secs["sample"] = time.perf_counter() - t0
    s = summarize(lw)
    reasons = [s.reason] if s.reason else []
    if not tilt.converged:
        reasons.append(f"the tilt's Newton solve did not converge (|grad| = {tilt.grad_norm:.2g})")
    if not tilt.feasible:
        reasons.append("the saddle point is outside the orthant (the kernel may be singular)")
    if math.isfinite(s.log_z) and s.log_z > tilt.psi_star + 3 * s.stderr + 1e-9 * max(1.0, abs(tilt.psi_star)):
        reasons.append(f"estimate {s.log_z:.4g} exceeds the upper bound psi* = {tilt.psi_star:.4g}")
    return TiltingResult(s.log_z, s.stderr, tilt.psi_star, s, tilt.converged, tilt.iterations, tilt.grad_norm,
                         tilt.feasible, not reasons, "; ".join(reasons), n_samples, secs)


__all__ = ["tilting_log_p", "prepare", "ordered_cholesky", "solve_tilt", "tilted_log_weights", "tilted_draws",
           "tilted_log_density", "unit_lower", "psi", "sequential_draws", "truncated_normal_above",
           "TiltingResult", "Tilt", "mills"]
