"""Stochastic estimators of matrix functionals from matrix-vector products.

* Trace (Hutchinson 1990): for v with E[v v^T] = I, E[v^T A v] = tr A. Rademacher v
  (entries +-1) gives the smallest variance among i.i.d. choices,
  Var = 2 (||A||_F^2 - sum_i A_ii^2).
* Squared Frobenius norm: for v ~ N(0, I), E||Av||^2 = E[v^T A^T A v] = tr(A^T A) = ||A||_F^2.

Both return (mean, standard error) over ``samples`` independent vectors, SE = sample
std / sqrt(samples). Vectors come from ``numpy.random.default_rng(seed)``, in batches of
``batch`` applied through ``matmat`` (K, n) -> (K, n).

Example::

    A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    est, se = hutchinson_trace(lambda V: V @ A, 3, samples=10, seed=0)   # est == 6 exactly (diagonal A)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from volume.checks import positive_int

MatMat = Callable[[torch.Tensor], torch.Tensor]


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


def _samples(matmat: MatMat, n: int, samples: int, seed: int, batch: int, dtype, kind: str, stat) -> np.ndarray:
    positive_int(samples, "samples")
    positive_int(batch, "batch")
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, samples, batch):
        k = min(batch, samples - start)
        if kind == "rademacher":
            v = rng.integers(0, 2, size=(k, n)).astype(np.float64) * 2 - 1
        else:
            v = rng.standard_normal((k, n))
        vt = torch.from_numpy(v).to(dtype)
        out.append(stat(vt, matmat(vt)).double().numpy())
    return np.concatenate(out)


def hutchinson_trace(matmat: MatMat, n: int, *, samples: int = 100, seed: int = 0, batch: int = 32,
                     dtype: torch.dtype = torch.float64) -> tuple[float, float]:
    """(estimate of tr A, its standard error) from Rademacher probes v^T A v."""
    x = _samples(matmat, n, samples, seed, batch, dtype, "rademacher", lambda v, av: (v * av).sum(1))
    return _mean_se(x)


def frobenius_squared(matmat: MatMat, n: int, *, samples: int = 100, seed: int = 0, batch: int = 32,
                      dtype: torch.dtype = torch.float64) -> tuple[float, float]:
    """(estimate of ||A||_F^2, its standard error) from Gaussian probes ||Av||^2."""
    x = _samples(matmat, n, samples, seed, batch, dtype, "gaussian", lambda v, av: (av * av).sum(1))
    return _mean_se(x)
