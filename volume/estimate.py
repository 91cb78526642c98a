"""Estimates from a FrequencyTable: P(f) with intervals, unseen mass, entropy, the
posterior on a training set S, the Bayesian generalization error and the PAC-Bayes bound.

Every probability carries its sample count and an interval (DESIGN.md, "Mathematics"):

* P(f) = n_f / N with the Wilson score interval (Wilson 1927). For n_f = 0 the point
  estimate is 0 and the upper bound is the exact one-sided Clopper-Pearson bound
  1 - alpha^(1/N) (about 3/N at 95%, the "rule of three").
* Unseen mass (Good 1953, Turing): the probability that the next draw is a function not
  yet seen is estimated by N_1 / N, N_1 = number of functions seen exactly once.
* Posterior on S (training inputs with labels): U(S) = functions that agree with S.
  P(U) = n_U / N (Wilson); for f in U, P(f | S) = P(f) / P(U) = n_f / n_U.
* Generalization error of f: eps(f) = fraction of the inputs outside S where f differs
  from the target. The Bayesian (posterior-averaged) error is sum_f P(f|S) eps(f);
  its standard error is std(eps over the n_U consistent draws) / sqrt(n_U).
* PAC-Bayes bound (Valle-Perez, Camargo & Louis 2019, after McAllester 1999): with
  probability >= 1 - delta over training sets of size m,
  -ln(1 - eps_bar) <= (ln(1 / P(U)) + ln(2m / delta)) / (m - 1).
* Tables of optimizer-found functions (spec with ``training``) hold P_opt(f | S) for the spec's
  own S: every function in them agrees with S by construction, so they give the optimizer's
  distribution over functions and its test error, but not P(U), the Bayesian posterior or the
  PAC-Bayes bound (those need prior draws). :func:`posterior` answers the former (``kind =
  'optimizer'``, with the trainings that failed to reach zero error) and refuses other training sets.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Iterable

import numpy as np

from volume.checks import training_indices
from volume.errors import FunctionError, VolumeError
from volume.frames import Estimates
from volume.keys import key_to_hex, labels_to_text, lz_complexity, parse_function, unpack_keys
from volume.results import PosteriorResult, PriorEstimate
from volume.table import FrequencyTable


def _check_confidence(confidence: float) -> None:
    if not (0.0 < confidence < 1.0):
        raise VolumeError(f"confidence = {confidence!r} is invalid: it must be strictly between 0 and 1 (e.g. 0.95)")


def wilson_interval(count: int | np.ndarray, n: int, confidence: float = 0.95) -> tuple:
    """Wilson score interval for a binomial proportion count / n (two-sided).

    centre = (p + z^2/2n) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2),
    z = Phi^-1(1 - (1 - confidence)/2). For count = 0 the lower end is 0 and the upper end
    is the one-sided exact bound 1 - (1 - confidence)^(1/n) (see :func:`unseen_upper_bound`).
    """
    _check_confidence(confidence)
    if n <= 0:
        raise VolumeError("an interval needs n >= 1 samples; the table is empty: sample first")
    k = np.asarray(count, dtype=np.float64)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)  # stdlib: the client needs no scipy
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(np.maximum(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    lo = np.clip(centre - half, 0.0, 1.0)
    hi = np.clip(centre + half, 0.0, 1.0)
    zero = k == 0
    lo = np.where(zero, 0.0, lo)
    hi = np.where(zero, unseen_upper_bound(n, confidence), hi)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def unseen_upper_bound(n: int, confidence: float = 0.95) -> float:
    """Largest P(f) consistent at this confidence with f never appearing in n draws:
    (1 - P)^n = alpha  =>  P = 1 - alpha^(1/n)."""
    _check_confidence(confidence)
    return float(-math.expm1(math.log(1 - confidence) / n))


def prior_estimates(table: FrequencyTable, functions: Iterable, confidence: float = 0.95) -> Estimates:
    """P(f) with Wilson intervals for functions given as label vectors, text or hex (a list
    with ``to_dataframe()``)."""
    n = table.n_samples
    labels = [parse_function(f, table.n_inputs, table.classes) for f in functions]
    if not labels:
        return Estimates()
    stacked = np.stack(labels)
    counts = table.lookup_keys(table.keys_of(stacked))
    lo, hi = wilson_interval(counts, n, confidence)
    return Estimates([
        PriorEstimate(
            function=labels_to_text(lab), hex="0x" + key_to_hex(table.keys_of([lab])[0]), count=int(c), n_samples=n,
            p=float(c) / n, lower=float(l), upper=float(h), confidence=confidence, seen=bool(c > 0),
            lz_complexity=lz_complexity(lab),
        )
        for lab, c, l, h in zip(stacked, counts, np.atleast_1d(lo), np.atleast_1d(hi))
    ])


def top_estimates(table: FrequencyTable, k: int = 10, confidence: float = 0.95) -> Estimates:
    keys, _ = table.top(k)
    return prior_estimates(table, unpack_keys(keys, table.n_inputs, table.classes), confidence)


def good_turing_unseen(table: FrequencyTable) -> float:
    """Good-Turing estimate N_1 / N of the total probability of functions not yet seen."""
    n = table.n_samples
    if n == 0:
        raise VolumeError("the table is empty: sample first")
    return float(np.count_nonzero(table.counts == 1)) / n


def entropy_bits(table: FrequencyTable) -> dict:
    """Plug-in entropy of the empirical distribution (bits) and its Miller-Madow
    correction H + (U - 1) / (2 N ln 2); both are lower than the true entropy while many
    functions are unseen, so the Good-Turing unseen mass is reported with them."""
    n = table.n_samples
    if n == 0:
        raise VolumeError("the table is empty: sample first")
    p = table.counts.astype(np.float64) / n
    h = float(-(p * np.log2(p)).sum())
    return {"plugin": h, "miller_madow": h + (table.n_distinct - 1) / (2 * n * math.log(2))}


def pac_bayes_bound_log(log_p_u: float, m: int, delta: float = 0.05) -> float:
    """Upper bound on the expected generalization error of the Bayesian classifier from
    ln P(U): eps <= 1 - exp(-(ln(1/P(U)) + ln(2m/delta)) / (m - 1)) (Valle-Perez et al. 2019).
    Log space, because a GP's P(U) on a large training set is below the smallest double;
    1.0 when P(U) = 0."""
    if m < 2:
        raise VolumeError("the PAC-Bayes bound needs a training set of at least 2 inputs")
    if not (0 < delta < 1):
        raise VolumeError(f"delta = {delta!r} must be strictly between 0 and 1")
    if not math.isfinite(log_p_u):
        return 1.0
    return float(-math.expm1(-(-log_p_u + math.log(2 * m / delta)) / (m - 1)))


def pac_bayes_bound(p_u: float, m: int, delta: float = 0.05) -> float:
    """:func:`pac_bayes_bound_log` of a probability P(U)."""
    return pac_bayes_bound_log(math.log(p_u) if p_u > 0 else -math.inf, m, delta)


def _check_optimizer_training_set(table: FrequencyTable, idx: np.ndarray, lab: np.ndarray) -> None:
    """An optimizer table answers only for the training set its spec trained on."""
    from volume.inputs import load_inputs, target_labels

    tr = table.spec.training
    own = np.sort(np.asarray(tr.train_indices, dtype=np.int64))
    why = (f"the table holds functions {tr.optimizer} found after training to zero error on the spec's own "
           f"training set ({own.size} inputs labelled by {tr.target[:40]!r}); ")
    if not np.array_equal(np.sort(idx), own):
        raise VolumeError(why + "a posterior on another training set is not defined by these draws: give --train "
                          "with exactly the spec's training.train_indices, or use a prior table of the same network "
                          "(the spec without [training])")
    y = target_labels(load_inputs(table.spec.inputs), tr.target, table.classes)
    if not np.array_equal(y[idx], lab):
        raise VolumeError(why + "the training labels given differ from that target's on S: give the spec's target")


def _consistent(table: FrequencyTable, train_indices: np.ndarray, train_labels: np.ndarray,
                chunk: int = 1 << 16):
    """Yield (labels, counts) chunks of the table's functions that agree with S."""
    for start in range(0, table.n_distinct, chunk):
        labels = unpack_keys(table.keys[start:start + chunk], table.n_inputs, table.classes)
        ok = np.all(labels[:, train_indices] == train_labels[None, :], axis=1)
        if ok.any():
            yield labels[ok], table.counts[start:start + chunk][ok]


def check_training_set(table: FrequencyTable, train_indices, train_labels) -> tuple[np.ndarray, np.ndarray]:
    m = table.n_inputs
    idx = training_indices(train_indices, m)
    lab = parse_function(train_labels, idx.size, table.classes) if isinstance(train_labels, str) else np.asarray(train_labels)
    if lab.shape != idx.shape:
        raise FunctionError(f"{lab.size} training labels given for {idx.size} training indices: give one label per index")
    if lab.size and (lab.min() < 0 or lab.max() >= table.classes):
        raise FunctionError(f"training labels must lie in 0..{table.classes - 1}")
    return idx, lab.astype(np.uint8)


def posterior(table: FrequencyTable, train_indices, train_labels, target=None, *, confidence: float = 0.95,
              delta: float = 0.05, top: int = 10) -> PosteriorResult:
    """Posterior over functions with zero error on S = (train_indices, train_labels).

    ``target`` (labels, text or hex of a function on all inputs) gives the generalization
    error on the inputs outside S; without it only P(U) and the consistent functions are
    reported. See the module docstring for the formulas."""
    n = table.n_samples
    if n == 0:
        raise VolumeError("the table is empty: sample first")
    idx, lab = check_training_set(table, train_indices, train_labels)
    optimizer = table.spec.training is not None
    if optimizer:
        _check_optimizer_training_set(table, idx, lab)
    test = np.setdiff1d(np.arange(table.n_inputs), idx)
    tgt = None if target is None else parse_function(target, table.n_inputs, table.classes)
    if tgt is not None and not np.array_equal(tgt[idx], lab):
        raise FunctionError("the target disagrees with the training labels on S: the training labels must be the target's")
    n_u = 0
    n_fun = 0
    err_counts: dict[float, int] = {}
    err_sum = 0.0
    err_sq = 0.0
    best_labels: list[np.ndarray] = []
    best_counts: list[np.ndarray] = []
    for labels, counts in _consistent(table, idx, lab):
        n_u += int(counts.sum())
        n_fun += labels.shape[0]
        if tgt is not None and test.size:
            e = np.mean(labels[:, test] != tgt[None, test], axis=1)
            c = counts.astype(np.float64)
            err_sum += float((e * c).sum())
            err_sq += float((e * e * c).sum())
            vals, inv = np.unique(e, return_inverse=True)
            for val, cnt in zip(vals, np.bincount(inv, weights=c)):
                err_counts[float(val)] = err_counts.get(float(val), 0) + int(round(cnt))
        order = np.argsort(-counts.astype(np.float64), kind="stable")[:top]
        best_labels.append(labels[order])
        best_counts.append(counts[order])
    lo, hi = wilson_interval(n_u, n, confidence)
    result = PosteriorResult(
        n_samples=n, n_consistent=n_u, n_consistent_functions=n_fun, p_u=n_u / n, p_u_lower=lo, p_u_upper=hi,
        confidence=confidence, train_size=int(idx.size), test_size=int(test.size),
    )
    if optimizer:
        if n_u != n:
            raise VolumeError(f"optimizer table: {n - n_u} of {n} counted functions disagree with the training set "
                              "they were trained on; the table is corrupt")
        result.kind, result.n_failed = "optimizer", table.n_failed
        result.p_u = result.p_u_lower = result.p_u_upper = None
        result.notes = [
            "P_opt(f|S) of the functions an optimizer found: every counted training agrees with S, so P(U) "
            "and the PAC-Bayes bound (which need the prior mass of the functions that agree with S) are not "
            "computed; use a prior table of the same network (the spec without [training])",
            f"{table.n_failed} of {table.n_attempts} trainings did not reach zero training error and are "
            "not in P_opt(f|S)"]
    elif idx.size >= 2:
        result.pac_bayes_bound = pac_bayes_bound(n_u / n, idx.size, delta)
        result.pac_bayes_bound_conservative = pac_bayes_bound(lo, idx.size, delta) if lo > 0 else 1.0
    if n_u and tgt is not None and test.size:
        mean = err_sum / n_u
        var = max(err_sq / n_u - mean * mean, 0.0)
        result.expected_error = mean
        result.expected_error_stderr = math.sqrt(var / n_u)
        result.error_distribution = [{"error": e, "posterior": c / n_u, "count": c} for e, c in sorted(err_counts.items())]
    if best_labels:
        labels = np.concatenate(best_labels)
        counts = np.concatenate(best_counts)
        order = np.argsort(-counts.astype(np.float64), kind="stable")[:top]
        for lab_f, c in zip(labels[order], counts[order]):
            entry = {"function": labels_to_text(lab_f), "count": int(c), "posterior": int(c) / n_u}
            if not optimizer:
                entry["prior"] = int(c) / n
            if tgt is not None and test.size:
                entry["error"] = float(np.mean(lab_f[test] != tgt[test]))
            result.top.append(entry)
    return result
