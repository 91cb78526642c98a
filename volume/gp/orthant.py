"""The labelled orthant problem P(sign z = f), z ~ N(0, K), reduced to its non-degenerate core.

With y_i = 2 f_i - 1 and D = diag(y), P(sign z = f) = P(x > 0) for x = D z ~ N(0, D K D): a
one-sided box probability that every estimator here (EP, importance sampling, minimax tilting)
works on. Before any estimator runs, ``reduce_orthant`` removes what makes the problem
degenerate, exactly:

* inputs of zero prior variance (K_ii <= 1e-13 max K): z_i = 0 always, so the network's label
  there is 0 (label = 1[z > 0]); label 1 makes P(f) = 0, label 0 is certain and is dropped;
* pairs of inputs with correlation r_ij = K_ij / sqrt(K_ii K_jj) = +1 (to 1e-10; e.g. the same
  image twice): z_i = c z_j with c > 0, so sign z_i = sign z_j. Opposite labels make P(f) = 0;
  equal labels are one constraint, and the duplicate is dropped. Correlation -1 (z_i = -c z_j,
  e.g. x and -x under an odd network without biases) is the same with the label test reversed.

The result carries ln P = -inf and the reason when the labelling is impossible, otherwise the
indices kept and the labelled covariance D K D on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volume.gp.kernels import KernelError

#: prior variance (relative to the largest) at or below which an input is deterministic
ZERO_VARIANCE = 1e-13
#: |correlation| at or above 1 - this: two inputs carry the same (or the opposite) output
DUPLICATE_TOL = 1e-10


@dataclass
class Orthant:
    kept: np.ndarray  # indices (into the labels) of the inputs that remain
    sigma: np.ndarray | None  # D K D on ``kept`` (None when impossible)
    n_deterministic: int
    n_duplicates: int
    impossible: bool
    reason: str  # why ln P = -inf ('' otherwise)


def duplicate_pairs(K: np.ndarray, candidates: np.ndarray, tol: float = DUPLICATE_TOL, rows: int = 512):
    """Pairs (i, j, sign), i < j in ``candidates``, whose correlation is +-1 to ``tol`` (row blocks,
    so memory stays O(rows x M))."""
    idx = np.asarray(candidates)
    s = 1.0 / np.sqrt(np.diag(K)[idx])
    out = []
    for r0 in range(0, len(idx), rows):
        r1 = min(len(idx), r0 + rows)
        c = K[np.ix_(idx[r0:r1], idx)] * s[r0:r1, None] * s[None, :]
        if np.any(np.abs(c) > 1.0 + 1e-8):
            a, b = np.unravel_index(int(np.argmax(np.abs(c))), c.shape)
            raise KernelError(f"kernel is not positive semi-definite: inputs {int(idx[r0 + a])} and {int(idx[b])} have "
                              f"correlation {c[a, b]:.6g} (|K_ij| > sqrt(K_ii K_jj)); recompute the kernel")
        ii, jj = np.nonzero(np.abs(c) >= 1.0 - tol)
        for a, b in zip(ii.tolist(), jj.tolist()):
            if r0 + a < b:
                out.append((int(idx[r0 + a]), int(idx[b]), 1 if c[a, b] > 0 else -1))
    return out


def reduce_orthant(K: np.ndarray, lab: np.ndarray) -> Orthant:
    """The non-degenerate core of P(sign z = lab) (module docstring). ``K`` is a checked
    symmetric float64 kernel, ``lab`` checked 0/1 labels of the same length."""
    d = np.diag(K)
    zero = d <= ZERO_VARIANCE * max(float(d.max(initial=0.0)), 1e-300)
    n_det = int(zero.sum())
    bad = np.flatnonzero(zero & (lab == 1))
    empty = np.zeros(0, dtype=np.int64)
    if len(bad):
        return Orthant(empty, None, n_det, 0, True,
                       f"input {int(bad[0])} has zero prior variance (its output is always exactly 0, so its label "
                       f"is always 0) but the labelling gives it label 1")
    live = np.flatnonzero(~zero)
    drop = set()
    for i, j, sign in duplicate_pairs(K, live):
        if j in drop:
            continue
        same = lab[i] == lab[j]
        if (sign > 0) != same:
            what = "identical outputs (correlation +1)" if sign > 0 else "opposite outputs (correlation -1)"
            return Orthant(empty, None, n_det, 0, True,
                           f"inputs {i} and {j} have {what} but are labelled {int(lab[i])} and {int(lab[j])}")
        drop.add(j)
    kept = np.array([i for i in live.tolist() if i not in drop], dtype=np.int64)
    y = 2.0 * lab[kept] - 1.0
    sigma = K[np.ix_(kept, kept)] * y[:, None] * y[None, :]
    return Orthant(kept, sigma, n_det, len(drop), False, "")


__all__ = ["reduce_orthant", "duplicate_pairs", "Orthant", "ZERO_VARIANCE", "DUPLICATE_TOL"]
