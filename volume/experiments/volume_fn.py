"""One injectable estimator of ln P(f) for the experiments: ``volume_fn(spec, labels) -> Volume``.

Experiments never call an estimator directly; they ask :func:`make_volume_fn` for the
function of a config's ``volume_method`` and record, per function, the value, its standard
error and the method that produced it. Methods available here:

* ``'table'``: counted from a prior table, ln(n_f / N), standard error sqrt((1 - p) / n_f)
  (binomial, delta method); a function the table never drew gets the one-sided 95% upper
  bound ln(1 - 0.05^(1/N)) and method ``'table-bound'`` (an upper bound, no error bar).
* ``'gp'``: the GP estimate ``volume.gp.estimate.log_prior`` with the spec's analytic NNGP
  kernel (computed once), by its default method (EP-guided sequential importance sampling,
  with its standard error; the method that answered is recorded, and a value whose
  diagnostics failed has no error bar and a method name ending in ``(unreliable)``). With
  ``importance_samples`` > 0 the older EP + importance sampling instead (method ``'ep+is'``);
  when those samples have fewer than MIN_ESS effective samples the EP value is kept, method
  ``'ep(is-ess<50)'``.
* ``'nested'``: the finite network's own volume by nested sampling in parameter space
  (``volume.nested``; ``volume.experiments.volumes.NestedVolume``), with its standard error
  from independent replicas.
* ``'auto'``: ``'table'`` where the table holds the function, ``'gp'`` where it does not.

:func:`stderr_of` reads a standard error from any of the estimators' result types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from volume.errors import VolumeError
from volume.spec import ExperimentSpec
from volume.table import FrequencyTable

VOLUME_METHODS = ("table", "gp", "auto", "nested")
MIN_ESS = 50  # importance sampling with fewer effective samples is not trusted: EP is kept, flagged


@dataclass(frozen=True)
class Volume:
    """ln P(f) of one function: value, standard error (None: none known) and the method used."""

    log_p: float
    stderr: float | None
    method: str
    detail: dict | None = None  # estimator diagnostics worth a column (nested: the replicas' mean and sd)


VolumeFn = Callable[[ExperimentSpec, np.ndarray], Volume]


def stderr_of(result: Any) -> float | None:
    """Standard error of ln P(f) from an estimator's result: ``.stderr`` (the issue-9/10 entry
    point) or ``.is_stderr`` (``volume.gp.estimate.GPLogPrior``); None when neither is finite."""
    for name in ("stderr", "is_stderr"):
        v = getattr(result, name, None)
        if v is not None and math.isfinite(float(v)):
            return float(v)
    return None


def log_count_se(n_f: int | float, n: int | float) -> float:
    """Standard error of ln(n_f / n) for a multinomial cell with n_f of n draws (delta method):
    sqrt((1 - p) / n_f) = sqrt(1/n_f - 1/n)."""
    return math.sqrt(max(1.0 / n_f - 1.0 / n, 0.0))


def counted(table: FrequencyTable, labels: np.ndarray) -> Volume:
    """ln P(f) counted from ``table`` (see module docstring); 'table-bound' if never drawn."""
    from volume.experiments.volumes import table_log_prior

    log_p, seen = table_log_prior(table, np.asarray(labels))
    if not seen:
        return Volume(log_p, None, "table-bound")
    return Volume(log_p, log_count_se(math.exp(log_p) * table.n_samples, table.n_samples), "table")


def _estimator(spec: ExperimentSpec, importance_samples: int, seed: int) -> VolumeFn:
    """The GP estimator for functions a table cannot count (``log_prior``'s default method,
    or EP + IS when ``importance_samples`` > 0)."""
    from volume.experiments.volumes import GPVolume

    gp = GPVolume(spec, importance_samples=importance_samples, seed=seed)

    def fn(s: ExperimentSpec, labels: np.ndarray) -> Volume:
        res = gp.result(labels)
        if not importance_samples:
            if res.reliable:
                return Volume(float(res.log_p), res.stderr, res.method)
            return Volume(float(res.log_p), None, f"{res.method}(unreliable)")
        return _checked_is(res.log_p_is, stderr_of(res), res.is_ess, float(res.log_p_ep))

    return fn


def _checked_is(log_p_is: float | None, stderr: float | None, ess: float | None, log_p_ep: float) -> Volume:
    """The importance-sampled value if it has MIN_ESS effective samples and a finite error, else EP, flagged."""
    if log_p_is is not None and math.isfinite(log_p_is) and stderr is not None and (ess or 0) >= MIN_ESS:
        return Volume(float(log_p_is), stderr, "ep+is")
    return Volume(log_p_ep, None, f"ep(is-ess<{MIN_ESS})")


def make_volume_fn(method: str, spec: ExperimentSpec, *, table: FrequencyTable | None = None,
                   importance_samples: int = 0, seed: int = 0, nested: dict | None = None) -> VolumeFn:
    """``volume_fn(spec, labels) -> Volume`` for ``method`` in :data:`VOLUME_METHODS` (module docstring).

    ``table`` is the prior table of ``spec`` ('table' and 'auto' need it); ``nested`` overrides
    fields of :class:`volume.nested.NestedSettings` for 'nested' (default
    :data:`volume.experiments.volumes.NESTED_SETTINGS`)."""
    if method not in VOLUME_METHODS:
        raise VolumeError(f"volume method {method!r} is unknown: use one of {', '.join(VOLUME_METHODS)}")
    if method in ("table", "auto") and table is None:
        raise VolumeError(f"volume method {method!r} needs a prior table of the spec (prior_blocks > 0)")
    if method == "table":
        return lambda s, labels: counted(table, labels)
    if method == "nested":
        from volume.experiments.volumes import NestedVolume

        nested_volume = NestedVolume(spec, seed=seed, **(nested or {}))

        def by_nested(s: ExperimentSpec, labels: np.ndarray) -> Volume:
            log_p, se = nested_volume(labels)
            mean, sd = nested_volume.replica_stats(labels)
            return Volume(log_p, None if not math.isfinite(se) else se, nested_volume.method(labels),
                          {"replica_mean": mean, "replica_sd": sd})

        return by_nested
    rare = _estimator(spec, importance_samples, seed)
    if method == "gp":
        return rare

    def auto(s: ExperimentSpec, labels: np.ndarray) -> Volume:
        v = counted(table, labels)
        return v if v.method == "table" else rare(s, labels)

    return auto


def gp_log_p_subset(K: np.ndarray, indices: np.ndarray, labels: np.ndarray, *,
                    importance_samples: int = 0, seed: int = 0, method: str = "auto") -> Volume:
    """ln P(sign z_I = labels), z ~ N(0, K): the GP prior mass of the functions with these labels
    on the inputs I (the others free; marginalising a Gaussian is taking the sub-kernel K_II).
    With I = S and the training labels this is P(U) (Valle-Perez et al. 2019). EP on K_II, with
    the importance-sampling correction and its standard error when ``importance_samples`` > 0;
    otherwise ``volume.gp.score.score`` by ``method`` (default 'auto': EP-SIS with its standard
    error, no error bar where its diagnostics fail)."""
    from volume.gp.ep import ep_log_p, importance_log_p
    from volume.gp.score import score

    idx = np.asarray(indices, dtype=np.int64)
    train_labels = np.asarray(labels)
    K_ss = np.asarray(K, dtype=np.float64)[np.ix_(idx, idx)]
    if not importance_samples:
        est = score(K_ss, train_labels, method=method, seed=seed)
        if est.reliable:
            return Volume(float(est.log_p), est.stderr, est.method)
        return Volume(float(est.log_p), None, f"{est.method}(unreliable)")
    ep = ep_log_p(K_ss, train_labels)
    if not ep.impossible:
        res = importance_log_p(K_ss, train_labels, ep, importance_samples, seed=seed)
        return _checked_is(res.log_p, stderr_of(res), res.ess, float(ep.log_z))
    return Volume(float(ep.log_z), None, "ep")
