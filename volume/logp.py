"""One entry point for ln P(f): ``log_p(spec, function, method=...)``.

Methods (each answers ln P(f) of ``function`` on the spec's input set under its prior):

* ``'count'``: from a :class:`~volume.table.FrequencyTable` of the spec: ln(n_f / N) with the
  log of the Wilson interval and the delta-method error sqrt((1 - p) / n_f); for n_f = 0 the
  log of the one-sided upper bound 1 - alpha^(1/N) (``upper_bound`` is True, no stderr).
* ``'ep'``: the NNGP kernel and expectation propagation, ``volume.gp.estimate.log_prior(spec,
  labels, importance_samples=0)`` (the infinite-width limit; threshold outputs only).
* ``'gp'``: ``volume.gp.estimate.log_prior(spec, labels)`` with its own defaults, the best GP
  estimate the library has (its ``method`` and ``stderr`` when it reports them).
* ``'nested'``: the finite network's own volume by subset simulation with preconditioned
  Crank-Nicolson (or elliptical slice sampling) moves in parameter space (:mod:`volume.nested`),
  error bar from R independent replicas; ``interval`` is log_p +- t_{R-1} SE (Student t: the SE
  is estimated from R values); ``reason`` carries the estimator's flags (replica-spread fallback,
  stuck pCN chains) even where there is an SE.
* ``'auto'`` (default): ``'count'`` when a table is given and holds f at least ``min_count``
  times (then the counting error, about 1/sqrt(n_f) nats, is at most 0.1), else ``'nested'``.

The answer is a :class:`LogP`; ``to_dict()`` is strict JSON (no NaN or infinity: null plus a
``reason``), returned as is by the CLI (``volume logp``) and the service (``POST /logp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from volume.checks import json_safe
from volume.errors import VolumeError
from volume.spec import ExperimentSpec

METHODS = ("auto", "count", "ep", "gp", "nested")
MIN_COUNT = 100
"""'auto' counts when the table holds f at least this many times."""


@dataclass
class LogP:
    """ln P(f) by ``method``: ``log_p`` (-inf: impossible; an upper bound when ``upper_bound``),
    ``stderr`` (None where the method gives none; ``reason`` says why), ``interval`` (ln of a
    confidence interval, counting only) and the method's ``diagnostics``."""

    method: str
    log_p: float
    stderr: float | None = None
    upper_bound: bool = False
    interval: tuple[float, float] | None = None
    reason: str | None = None
    function: str = ""
    n_inputs: int = 0
    diagnostics: dict = field(default_factory=dict)

    @property
    def log10_p(self) -> float:
        return self.log_p / math.log(10)

    def to_dict(self) -> dict:
        """Strict JSON: non-finite numbers become null (``reason`` then says why)."""
        d = json_safe({"method": self.method, "log_p": self.log_p, "log10_p": self.log10_p,
                       "stderr": self.stderr, "upper_bound": self.upper_bound, "interval": self.interval,
                       "impossible": self.log_p == -math.inf, "reason": self.reason, "function": self.function,
                       "n_inputs": self.n_inputs, "diagnostics": self.diagnostics})
        if self.log_p == -math.inf and not self.reason:
            d["reason"] = "P(f) = 0"
        return d


def resolve_function(spec: ExperimentSpec, function: Any, inputs=None, *, allow_file: bool = False) -> np.ndarray:
    """(M,) uint8 labels of ``function`` on the spec's inputs: a label vector, '0'/'1' (or
    base-36 for k classes) text, a hex key or a target rule; '@FILE' where ``allow_file`` (the
    command line). The project's one resolver: :func:`volume.inputs.resolve_labels`."""
    from volume.inputs import load_inputs, resolve_labels

    inputs = inputs if inputs is not None else load_inputs(spec.inputs)
    return resolve_labels(function, inputs, spec.output.classes, allow_file=allow_file)


def _load_table(spec: ExperimentSpec, table: Any):
    from volume.table import FrequencyTable

    if table is None:
        raise VolumeError("method 'count' needs a table of the spec (--table T.h5): sample one with `volume sample`")
    t = table if isinstance(table, FrequencyTable) else FrequencyTable.load(Path(table))
    if t.spec_id != spec.spec_id:
        raise VolumeError(f"the table is of spec {t.spec_id} but the spec is {spec.spec_id}: "
                          "give a table sampled from this spec")
    if t.n_samples == 0:
        raise VolumeError("the table is empty: sample into it first (volume sample)")
    return t


def count_log_p(table, labels: np.ndarray, confidence: float = 0.95) -> LogP:
    """ln P(f) from counts (module docstring)."""
    from volume.estimate import unseen_upper_bound, wilson_interval
    from volume.keys import pack_labels

    n = table.n_samples
    n_f = int(table.lookup_keys(pack_labels(labels[None], table.classes))[0])
    diag = {"count": n_f, "n_samples": n, "confidence": confidence}
    if n_f == 0:
        ub = math.log(unseen_upper_bound(n, confidence))
        return LogP("count", ub, None, True, (-math.inf, ub),
                    f"f was never drawn in {n} draws: ln P is the {100 * confidence:g}% upper bound", diagnostics=diag)
    p = n_f / n
    lo, hi = wilson_interval(n_f, n, confidence)
    return LogP("count", math.log(p), math.sqrt((1 - p) / n_f), False, (math.log(lo), math.log(hi)), diagnostics=diag)


def _gp_log_p(spec: ExperimentSpec, labels: np.ndarray, method: str) -> LogP:
    from volume.gp.estimate import log_prior

    if spec.output.kind != "threshold":
        raise VolumeError(f"method {method!r} (the GP estimate) needs a threshold output; "
                          "use method 'nested' for argmax outputs")
    from volume.gp.kernels import analytic_unsupported

    # the analytic NNGP kernel where there is one (FCN or CNN without max pooling, relu/erf), else the empirical kernel
    kw: dict = {} if not analytic_unsupported(spec) else {"kernel": "empirical"}
    res = log_prior(spec, labels, importance_samples=0, **kw) if method == "ep" else log_prior(spec, labels, **kw)
    d = res.to_dict()
    stderr = getattr(res, "stderr", None)
    if stderr is None and method == "gp":
        stderr = getattr(res, "is_stderr", None)
    reason = None
    if res.log_p == -math.inf:
        reason = "f labels 1 an input whose output is always exactly 0 (zero prior variance)"
    elif stderr is None:
        reason = ("deterministic approximation of the infinite-width limit: no Monte-Carlo error; its bias "
                  "against the finite network is not included")
    if not getattr(res, "reliable", True):  # the GP estimator's own diagnostic failure is passed on, not dropped
        reason = "; ".join(r for r in (getattr(res, "reason", "") or "not reliable by its diagnostics", reason) if r)
    d["gp_method"] = getattr(res, "method", "ep" if method == "ep" or not res.importance_samples else "ep+is")
    return LogP(method, float(res.log_p), None if stderr is None else float(stderr), reason=reason, diagnostics=d)


def log_p(spec: ExperimentSpec, function: Any, method: str = "auto", *, table: Any = None, seed: int = 0,
          confidence: float = 0.95, min_count: int = MIN_COUNT, settings: Any = None, map_fn: Any = None) -> LogP:
    """ln P(f) of ``function`` on ``spec``'s inputs by ``method`` (module docstring).

    ``table``: a FrequencyTable or the path of one ('count', 'auto'); ``seed``, ``settings``
    (:class:`volume.nested.NestedSettings`) and ``map_fn`` (e.g. ``volume.jobs.ray_map``, to run
    the replicas as Ray tasks) are for 'nested'."""
    if method not in METHODS:
        raise VolumeError(f"method {method!r} is unknown: use one of {', '.join(METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise VolumeError(f"seed = {seed!r}: give an integer >= 0")
    labels = resolve_function(spec, function)
    from volume.keys import labels_to_text

    text = labels_to_text(labels)
    t = _load_table(spec, table) if (method == "count" or (method == "auto" and table is not None)) else None
    if method == "auto":
        if t is not None:
            counted = count_log_p(t, labels, confidence)
            if counted.diagnostics["count"] >= min_count:
                counted.diagnostics["auto"] = f"counted (n_f >= {min_count})"
                return _named(counted, text)
        method = "nested"
    if method == "count":
        res = count_log_p(t, labels, confidence)
    elif method in ("ep", "gp"):
        res = _gp_log_p(spec, labels, method)
    else:
        from volume.nested import NestedSettings, join_reasons, nested_log_p

        r = nested_log_p(spec, labels, settings or NestedSettings(), seed=seed, map_fn=map_fn)
        reason = r.reason
        if r.converged and r.stderr is None:
            reason = join_reasons("one replica: no error bar (use replicas >= 2)", reason)
        interval = None
        if r.converged and r.stderr is not None and math.isfinite(r.log_p):
            from scipy.stats import t as student_t

            # the SE comes from R replicas: a Student-t interval with R - 1 degrees of freedom
            half = float(student_t.ppf(0.5 + confidence / 2, len(r.replicas) - 1)) * r.stderr
            interval = (r.log_p - half, min(r.log_p + half, 0.0))  # ln P <= 0
        res = LogP("nested", r.log_p, r.stderr, upper_bound=not r.converged, interval=interval, reason=reason,
                   diagnostics=r.to_dict())
    return _named(res, text)


def _named(res: LogP, text: str) -> LogP:
    res.function = text
    res.n_inputs = len(text)
    return res


__all__ = ["log_p", "LogP", "count_log_p", "resolve_function", "METHODS"]
