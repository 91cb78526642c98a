"""ln P(sign z = f), z ~ N(0, K), by a chosen method, with its standard error and diagnostics.

Methods (``METHODS``):

    ep        expectation propagation (``volume.gp.ep``): fast, deterministic, no error bar; measured
              0.2-0.5 nats low on constant labellings and up to 0.65 nats high on simple rules
              (benchmarks/RESULTS.md, issue 9).
    ep-is     EP + importance sampling from the EP posterior: honest only for moderate probabilities;
              on rare labellings almost no draw lands in the orthant.
    ep-sis    EP-guided sequential importance sampling (``volume.gp.epsis``): every draw satisfies
              the constraints; standard error, ESS and Pareto k-hat. The most accurate per second
              on every case measured (Boolean 40-512 inputs, MNIST 1,000-5,000 images).
    tilting   Botev's minimax exponential tilting (``volume.gp.tilting``): independent of EP, with a
              deterministic upper bound; accurate on 40-128 Boolean inputs and on equicorrelated
              kernels, heavy-tailed weights (flagged) on rare labellings of 256+ inputs and MNIST.
    auto      ep-sis; if its diagnostics fail, tilting; if those fail too, the EP value marked
              unreliable, with no error bar and the reasons. Above ``MAX_SAMPLING_INPUTS`` inputs,
              EP alone (marked unreliable).

Every method first reduces the problem with ``volume.gp.orthant.reduce_orthant`` (zero-variance
inputs, duplicated inputs), so an impossible labelling is -inf with its reason under every method.
The probit likelihood (label noise) is the heaviside orthant of K + I, exactly.

``score_many`` scores many labellings of one kernel, validating and jittering the kernel once,
in process or through ``map_fn`` (e.g. ``volume.jobs.ray_map``), with results independent of how
the labellings are split (each labelling's random numbers come from ``seed`` alone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from volume.checks import json_safe
from volume.errors import VolumeError
from volume.gp.ep import LIKELIHOODS, check_kernel, check_labels, ep_log_p, importance_log_p, psd_cholesky
from volume.gp.orthant import reduce_orthant

METHODS = ("auto", "ep", "ep-is", "ep-sis", "tilting")
DEFAULT_SAMPLES = 2048
#: above this many inputs 'auto' uses EP alone (the samplers hold a few M x M matrices)
MAX_SAMPLING_INPUTS = 6000


@dataclass
class OrthantEstimate:
    """ln P(sign z = f) and how it was obtained. ``stderr`` is None when the method gives no
    error bar (EP, or a fallback); ``reliable`` says whether the number can be backed."""

    log_p: float
    stderr: float | None
    method: str  # the method whose number log_p is
    method_requested: str
    reliable: bool
    reason: str  # why not reliable / why -inf ('' otherwise)
    n_inputs: int
    n_deterministic: int
    n_duplicates: int
    samples: int
    seed: int
    log_p_ep: float | None = None
    ep_converged: bool | None = None
    ep_iterations: int = 0
    ep_max_change: float = 0.0
    jitter: float = 0.0
    diagnostics: dict = field(default_factory=dict)
    ep: Any = field(default=None, repr=False)  # the EPResult (for the IS fields of GPLogPrior)
    is_result: Any = field(default=None, repr=False)

    @property
    def impossible(self) -> bool:
        return self.log_p == -math.inf

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("ep", "is_result")}
        return json_safe(d)


def _check_method(method: str, samples: int | None) -> int:
    if method not in METHODS:
        raise VolumeError(f"method = {method!r}: use one of {', '.join(METHODS)}")
    if samples is None:
        return DEFAULT_SAMPLES
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 2:
        raise VolumeError(f"samples = {samples!r}: give an integer >= 2")
    return int(samples)


def score(K, labels, *, method: str = "auto", samples: int | None = None, seed: int = 0,
          likelihood: str = "heaviside", checked: bool = False, **ep_kw) -> OrthantEstimate:
    """ln P(sign z = labels), z ~ N(0, K) (probit: K + I) by ``method`` (module docstring).

    ``samples``: draws of the Monte-Carlo methods (default ``DEFAULT_SAMPLES``); ``seed`` their
    random numbers; ``ep_kw`` go to :func:`volume.gp.ep.ep_log_p` (damping, tol, max_iter).
    ``checked``: K is already a checked symmetric float64 array (``score_many``)."""
    n = _check_method(method, samples)
    if likelihood not in LIKELIHOODS:
        raise VolumeError(f"likelihood = {likelihood!r}: use one of {', '.join(LIKELIHOODS)}")
    K = K if checked else check_kernel(K)
    lab = check_labels(labels, K.shape[0])
    if LIKELIHOODS[likelihood] > 0:
        K = K + LIKELIHOODS[likelihood] * np.eye(K.shape[0])
    orth = reduce_orthant(K, lab)
    base = dict(n_inputs=int(K.shape[0]), n_deterministic=orth.n_deterministic, n_duplicates=orth.n_duplicates,
                seed=seed, method_requested=method)
    if orth.impossible:
        return OrthantEstimate(-math.inf, 0.0, "exact", reliable=True,
                               reason=orth.reason, samples=0, **base)
    d = len(orth.kept)
    if d == 0:
        return OrthantEstimate(0.0, 0.0, "exact", reliable=True, reason="", samples=0, **base)
    sigma = orth.sigma
    ones = np.ones(d, dtype=np.int64)
    if method == "tilting":
        return _tilting(sigma, n, seed, base)
    if method == "auto" and d > MAX_SAMPLING_INPUTS:
        ep = ep_log_p(sigma, ones, **ep_kw)
        return _ep_estimate(ep, base, reliable=False, samples=0,
                            reason=f"{d} inputs: above {MAX_SAMPLING_INPUTS} only EP runs (no error bar)")
    ep = ep_log_p(sigma, ones, **ep_kw)
    if method == "ep":
        reason = "" if ep.converged else f"EP did not converge (max change {ep.max_change:.2g})"
        return _ep_estimate(ep, base, reliable=ep.converged, reason=reason, samples=0)
    if method == "ep-is":
        res = importance_log_p(sigma, ones, ep, n, seed=seed)
        out = _ep_estimate(ep, base, reliable=False, reason="", samples=n)
        out.is_result = res
        if math.isfinite(res.log_p):
            out.log_p, out.stderr = res.log_p, res.stderr
            out.diagnostics.update({"ess": res.ess, "accepted": res.accepted})
            out.method = "ep-is"
            ok = res.ess >= 30
            out.reliable = ok
            out.reason = "" if ok else f"only {res.ess:.1f} effective samples of {n}: the error bar is not trustworthy"
        else:
            out.reason = f"no importance sample of {n} had weight: EP value kept, no error bar"
        return out
    # ep-sis, or auto
    from volume.gp.epsis import ep_proposal, ep_sis_log_p

    sis = ep_sis_log_p(sigma, n, seed=seed, proposal=ep_proposal(sigma, ep=ep))
    out = _ep_estimate(ep, base, reliable=sis.reliable, reason=sis.reason, samples=n)
    out.log_p, out.stderr, out.method = sis.log_p, sis.stderr, "ep-sis"
    out.diagnostics.update(sis.diagnostics())
    if sis.reliable or method == "ep-sis":
        return out
    tilt = _tilting(sigma, n, seed, base)
    tilt.log_p_ep, tilt.ep_converged, tilt.ep = ep.log_z, ep.converged, ep
    tilt.diagnostics["ep-sis"] = sis.diagnostics()
    if tilt.reliable:
        tilt.reason = f"ep-sis failed its diagnostics ({sis.reason}); tilting used"
        return tilt
    fallback = _ep_estimate(ep, base, reliable=False, samples=n,
                            reason=f"no Monte-Carlo method passed its diagnostics (ep-sis: {sis.reason}; "
                                   f"tilting: {tilt.reason}): the EP value, without an error bar")
    fallback.diagnostics.update({"ep-sis": sis.diagnostics(), "tilting": tilt.diagnostics})
    return fallback


def _ep_estimate(ep, base: dict, *, reliable: bool, reason: str, samples: int) -> OrthantEstimate:
    return OrthantEstimate(ep.log_z, None, "ep", reliable=reliable, reason=reason, samples=samples,
                           log_p_ep=ep.log_z, ep_converged=ep.converged, ep_iterations=ep.iterations,
                           ep_max_change=ep.max_change, jitter=ep.jitter,
                           diagnostics={"ep_converged": ep.converged, "ep_iterations": ep.iterations}, ep=ep, **base)


def _tilting(sigma: np.ndarray, n: int, seed: int, base: dict) -> OrthantEstimate:
    from volume.gp.tilting import tilting_log_p

    _, jitter = psd_cholesky(sigma)
    res = tilting_log_p(sigma + jitter * np.eye(len(sigma)), n, seed=seed)
    return OrthantEstimate(res.log_p, res.stderr, "tilting", reliable=res.reliable, reason=res.reason, samples=n,
                           jitter=jitter, diagnostics=res.diagnostics(), **base)


# --------------------------------------------------------------------------- many labellings
@dataclass(frozen=True)
class _ScoreTask:
    """Picklable task for ``map_fn``: score a group of labellings of one kernel."""

    K: np.ndarray
    options: dict

    def __call__(self, labels: np.ndarray) -> list[dict]:
        return [score(self.K, lab, checked=True, **self.options).to_dict() for lab in labels]


def score_many(K, labels: Sequence | np.ndarray, *, map_fn: Callable | None = None, group: int = 16,
               **options) -> list[dict]:
    """``score(K, f).to_dict()`` for every row f of ``labels`` (F, M), the kernel checked once.

    ``map_fn(func, items) -> list`` (e.g. ``volume.jobs.ray_map``) runs groups of ``group``
    labellings as tasks; the results are the same as in process (same ``seed`` for each)."""
    K = check_kernel(K)
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise VolumeError(f"labels have shape {lab.shape}: give a (functions, inputs) array, one labelling per row")
    _check_method(options.get("method", "auto"), options.get("samples"))
    for i, row in enumerate(lab):
        try:
            check_labels(row, K.shape[0])
        except VolumeError as e:
            raise type(e)(f"labelling {i}: {e}") from None
    task = _ScoreTask(K, options)
    groups = [lab[i:i + group] for i in range(0, len(lab), group)]
    parts = [task(g) for g in groups] if map_fn is None else list(map_fn(task, groups))
    return [row for part in parts for row in part]


__all__ = ["score", "score_many", "OrthantEstimate", "METHODS", "DEFAULT_SAMPLES", "MAX_SAMPLING_INPUTS"]
