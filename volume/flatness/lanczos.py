"""Extreme eigenvalues of a symmetric operator known only through matrix-vector products.

* :func:`lanczos_top`: the k largest (algebraic) eigenvalues and eigenvectors by the
  implicitly restarted Lanczos method of ARPACK (``scipy.sparse.linalg.eigsh``,
  which='LA'), started from a seeded Gaussian vector so the result is reproducible.
* :func:`power_iteration`: v <- Av / ||Av||, Rayleigh quotient v^T A v; converges to the
  eigenvalue of largest magnitude at rate |lambda_2 / lambda_1| per step. Stops when the
  Rayleigh quotient changes by less than tol (relative) between steps and the residual
  ||Av - lambda v|| is below sqrt(tol) |lambda| (v is then an eigenvector); otherwise it
  reports ``converged=False`` after ``maxiter`` steps.

Example (a diagonal matrix)::

    A = scipy.sparse.linalg.aslinearoperator(np.diag([3.0, 1.0, 2.0]))
    vals, vecs = lanczos_top(A, k=1, seed=0)     # vals == [3.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

from volume.errors import VolumeError


def lanczos_top(op: LinearOperator, k: int = 1, *, tol: float = 1e-6, maxiter: int | None = None,
                ncv: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k largest eigenvalues (descending) and their eigenvectors (columns) of symmetric ``op``.

    ``ncv`` is the number of Lanczos vectors kept between restarts (ARPACK's default,
    max(2k + 1, 20), when None); each restart costs about ncv - k products, so a small ncv
    is cheaper when the top eigenvalue is well separated."""
    n = op.shape[0]
    if not 1 <= k < n:
        raise VolumeError(f"k = {k}: Lanczos finds 1 <= k < {n} (the operator's size) eigenvalues")
    if ncv is not None and not k < ncv <= n:
        raise VolumeError(f"ncv = {ncv}: must satisfy k < ncv <= {n}")
    v0 = np.random.default_rng(seed).standard_normal(n)
    if not np.all(np.isfinite(op.matvec(v0))):
        raise VolumeError("the operator returned NaN or inf on a finite vector: its eigenvalues are undefined "
                          "(non-finite parameters or loss?)")
    try:
        vals, vecs = eigsh(op, k=k, which="LA", tol=tol, maxiter=maxiter, ncv=ncv, v0=v0)
    except ArpackNoConvergence:
        raise VolumeError(f"Lanczos did not converge to tol={tol} in maxiter={maxiter} restarts: "
                          "raise maxiter or tol") from None
    except ArpackError as e:
        raise VolumeError(f"Lanczos (ARPACK) failed: {e}") from None
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


@dataclass(frozen=True)
class PowerResult:
    value: float  # Rayleigh quotient at the last vector
    vector: torch.Tensor
    iterations: int
    converged: bool


def power_iteration(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, *, tol: float = 1e-6,
                    maxiter: int = 1000, seed: int = 0, dtype: torch.dtype = torch.float64) -> PowerResult:
    """Dominant eigenvalue of a symmetric operator by power iteration (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    v /= v.norm()
    value = None
    for it in range(1, maxiter + 1):
        w = matvec(v)
        new = float(torch.dot(v, w))
        if not math.isfinite(new):
            raise VolumeError(f"power iteration: the operator returned NaN or inf at step {it}: the eigenvalue is "
                              "undefined (non-finite parameters or loss?)")
        norm = w.norm()
        if norm == 0:
            return PowerResult(0.0, v, it, True)
        # settled: the Rayleigh quotient stopped moving and v is an eigenvector to sqrt(tol)
        # (residual |Av - lambda v| <= sqrt(tol) |lambda|, so the quotient is within ~tol
        # lambda^2 / gap); the quotient alone can stall between eigenvalues of opposite sign
        settled = value is not None and abs(new - value) <= tol * abs(new)
        if settled and float((w - new * v).norm()) <= math.sqrt(tol) * abs(new):
            return PowerResult(new, w / norm, it, True)
        v = w / norm
        value = new
    return PowerResult(float(value), v, maxiter, False)
