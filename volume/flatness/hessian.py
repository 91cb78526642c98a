"""The Hessian of the training loss as an operator, and the measures built on it.

H = grad^2 L(theta*) with L the mean loss over the WHOLE training set
(:class:`volume.flatness.objective.Objective`). H is never formed: a Hessian-vector
product is computed exactly (no finite differences, Pearlmutter 1994) with ``torch.func``,
one chunk of the data at a time and summed:

* mode 'reverse' (default): the vector-Jacobian product of the gradient map,
  ``vjp(grad L_chunk, theta*)``, built once per chunk and reused for every vector;
  v^T H = (H v)^T because H is symmetric. Holding the graphs costs memory proportional to
  the activations of the data set, and saves the forward and first backward pass on every
  product (about 2x faster than rebuilding a double-backward graph each time,
  benchmarks/flatness.py).
* mode 'forward': forward-over-reverse, jvp(grad L_chunk, theta*; v), rebuilt for every
  product; no memory kept between products.

``matmat`` applies H to many vectors at once (``torch.func.vmap`` over the vectors).

Measures (DESIGN.md, "Flatness at theta*"), each a thin combination of this operator with
an algorithm from :mod:`volume.flatness.lanczos` or :mod:`volume.flatness.hutchinson`:

* ``lambda_max``: the largest eigenvalue, by Lanczos (ARPACK ``eigsh``) or power iteration;
* ``top_eigenvalues``: the k largest (algebraic) eigenvalues, by Lanczos;
* ``hessian_trace``: tr H by Hutchinson, tr H = E[v^T H v], v Rademacher, with its standard error;
* ``hessian_frobenius``: ||H||_F^2 = E||Hv||^2, v ~ N(0, I), with its standard error.

Example::

    obj = Objective(spec, x_train, y_train, loss="ce")
    op = HessianOperator(obj, theta)
    lam = lambda_max(op, seed=0)          # float
    tr, se = hessian_trace(op, samples=100, seed=0)
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch.func import grad, jvp, vjp, vmap

from volume.checks import finite_params
from volume.errors import VolumeError
from volume.flatness.hutchinson import frobenius_squared, hutchinson_trace
from volume.flatness.lanczos import lanczos_top, power_iteration
from volume.flatness.objective import Objective


class HessianOperator:
    """H = grad^2 L at theta, applied to vectors; see the module docstring.

    The operator holds a detached copy of theta in the objective's precision; the
    caller's tensor is never changed.
    """

    def __init__(self, objective: Objective, theta: torch.Tensor, *, mode: str = "reverse"):
        theta = torch.as_tensor(theta).detach().reshape(-1)
        if theta.numel() != objective.n_params:
            raise VolumeError(f"theta has {theta.numel()} entries; the network has {objective.n_params}")
        finite_params(theta)
        if mode not in ("reverse", "forward"):
            raise VolumeError(f"mode {mode!r} is unknown: use 'reverse' (cached vjp of the gradient) or 'forward' (jvp)")
        self.objective = objective
        self.theta = theta.to(objective.dtype).clone()
        self.size = objective.n_params
        self.mode = mode
        self.n_products = 0  # Hessian-vector products applied so far

        def chunk_loss(t, xb, yb):
            return objective.loss_sum(t, xb, yb) / objective.n_examples

        self._grad = grad(chunk_loss)
        self._vjps = None

    def _chunk_products(self):
        """One function v -> H_chunk v per chunk of the data."""
        if self.mode == "forward":
            return [lambda v, xb=xb, yb=yb: jvp(lambda t: self._grad(t, xb, yb), (self.theta,), (v,))[1]
                    for xb, yb in self.objective.chunks()]
        if self._vjps is None:
            self._vjps = [vjp(lambda t, xb=xb, yb=yb: self._grad(t, xb, yb), self.theta)[1]
                          for xb, yb in self.objective.chunks()]
        return [lambda v, f=f: f(v)[0] for f in self._vjps]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Hv for one vector v (P,)."""
        v = torch.as_tensor(v, dtype=self.objective.dtype).reshape(-1)
        self.n_products += 1
        return sum(f(v) for f in self._chunk_products()).detach()

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """H V^T for vectors V (K, P) -> (K, P)."""
        vs = torch.as_tensor(vs, dtype=self.objective.dtype)
        self.n_products += vs.shape[0]
        return sum(vmap(f)(vs) for f in self._chunk_products()).detach()

    def dense(self) -> torch.Tensor:
        """The full (P, P) matrix, column by column (small networks only: tests, references)."""
        return self.matmat(torch.eye(self.size, dtype=self.objective.dtype)).T

    def linear_operator(self) -> LinearOperator:
        """scipy LinearOperator (float64 in and out) for ARPACK."""
        def mv(v):
            return self.matvec(torch.from_numpy(np.asarray(v, dtype=np.float64).ravel())).double().numpy()
        return LinearOperator((self.size, self.size), matvec=mv, dtype=np.float64)


def lambda_max(op: HessianOperator, *, method: str = "lanczos", tol: float = 1e-6, maxiter: int | None = None,
               ncv: int | None = 8, seed: int = 0) -> float:
    """Largest eigenvalue of H: 'lanczos' (algebraic maximum, ARPACK, ``ncv`` Lanczos vectors
    per restart) or 'power' (power iteration, which converges to the eigenvalue of largest
    magnitude: the same at a minimum, where H is positive semi-definite up to small
    negative eigenvalues)."""
    if method == "lanczos":
        ncv = None if ncv is None else min(ncv, op.size)
        return float(lanczos_top(op.linear_operator(), k=1, tol=tol, maxiter=maxiter, ncv=ncv, seed=seed)[0][0])
    if method == "power":
        res = power_iteration(op.matvec, op.size, tol=tol, maxiter=maxiter or 1000, seed=seed, dtype=op.objective.dtype)
        if not res.converged:
            raise VolumeError(f"power iteration did not converge to tol={tol} in {res.iterations} steps (last Rayleigh "
                              f"quotient {res.value:.6g}): raise maxiter or tol, or use method='lanczos'")
        return res.value
    raise VolumeError(f"method {method!r} is unknown: use 'lanczos' or 'power'")


def top_eigenvalues(op: HessianOperator, k: int, *, tol: float = 1e-6, seed: int = 0) -> np.ndarray:
    """The k largest eigenvalues of H, descending (Lanczos)."""
    return lanczos_top(op.linear_operator(), k=k, tol=tol, seed=seed)[0]


def hessian_trace(op: HessianOperator, *, samples: int = 100, seed: int = 0, batch: int = 32) -> tuple[float, float]:
    """Hutchinson estimate of tr H and its standard error."""
    return hutchinson_trace(op.matmat, op.size, samples=samples, seed=seed, batch=batch, dtype=op.objective.dtype)


def hessian_frobenius(op: HessianOperator, *, samples: int = 100, seed: int = 0,
                      batch: int = 32) -> tuple[float, float]:
    """Estimate of ||H||_F^2 = E||Hv||^2 (v ~ N(0, I)) and its standard error."""
    return frobenius_squared(op.matmat, op.size, samples=samples, seed=seed, batch=batch, dtype=op.objective.dtype)
