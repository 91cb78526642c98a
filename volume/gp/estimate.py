"""Entry point: log P(f) of a labelling of a spec's input set under its NNGP (GP approximation).

``log_prior(spec, labels, ...)`` builds the kernel (analytic NNGP, empirical Monte-Carlo, or a
given matrix), estimates ln P(sign z = f) by the chosen method (``volume.gp.score``: by default
EP-guided sequential importance sampling with its standard error and diagnostics, falling back
visibly), and returns a :class:`GPLogPrior` whose ``to_dict()`` is JSON-able (the HTTP service
returns it as is) and whose ``row()`` is a flat dict for pandas. ``log_prior_many`` scores many
labellings (a list, an array, every function of a table) with one kernel.
Labels may be a 0/1 vector, a '0'/'1' string, a hex key, a target rule ('parity',
'ge5', 'bits:...'; see ``volume.inputs.resolve_labels``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from volume.checks import json_safe, positive_int
from volume.errors import FunctionError, VolumeError
from volume.gp.score import METHODS, OrthantEstimate, score, score_many
from volume.gp.kernels import KernelError, MapFn, spec_kernel
from volume.inputs import InputSet, load_inputs
from volume.inputs import resolve_labels as _resolve
from volume.spec import ExperimentSpec


def resolve_labels(labels: Any, inputs: InputSet, *, allow_file: bool = False) -> np.ndarray:
    """(M,) 0/1 labels from a vector, '0'/'1' text, hex key, target rule or (``allow_file``)
    '@FILE': :func:`volume.inputs.resolve_labels`, the project's one resolver, for 2 classes."""
    return _resolve(labels, inputs, 2, allow_file=allow_file)


@dataclass
class GPLogPrior:
    """GP estimate of ln P(f). ``log_p`` is the number of ``method`` (see ``volume.gp.score``);
    ``stderr`` its standard error (None when the method gives none: EP, or a visible fallback);
    ``reliable`` False, with ``reason``, when the diagnostics cannot back the number; -inf (None in
    ``to_dict``) when the labelling is impossible (``reason`` says why)."""

    log_p: float
    log_p_ep: float | None
    n_inputs: int
    n_deterministic: int
    converged: bool | None
    iterations: int
    max_change: float
    jitter: float
    likelihood: str
    kernel: str
    kernel_meta: dict
    log_p_is: float | None = None
    is_correction: float | None = None  # log_p_is - log_p_ep
    is_stderr: float | None = None
    is_ess: float | None = None
    is_accepted: float | None = None
    importance_samples: int = 0
    seed: int = 0
    method: str = "ep"
    method_requested: str = "ep"
    stderr: float | None = None
    reliable: bool = True
    reason: str = ""
    samples: int = 0
    n_duplicates: int = 0
    diagnostics: dict = field(default_factory=dict)

    @property
    def impossible(self) -> bool:
        return self.log_p == -math.inf

    def to_dict(self) -> dict:
        d = json_safe(asdict(self))
        d["impossible"] = self.impossible
        d["log10_p"] = self.log_p / math.log(10)
        return json_safe(d)

    def row(self) -> dict:
        """A flat row for a table (pandas.DataFrame(rows)): the headline numbers only."""
        return {"log_p": self.to_dict()["log_p"], "stderr": self.stderr, "method": self.method,
                "reliable": self.reliable, "reason": self.reason, "log_p_ep": self.to_dict()["log_p_ep"],
                "ess": self.diagnostics.get("ess"), "pareto_k": self.diagnostics.get("pareto_k"),
                "n_inputs": self.n_inputs, "samples": self.samples, "seed": self.seed}


def spec_kernel_matrix(spec: ExperimentSpec, inputs: InputSet, *, kernel: str = "analytic",
                       kernel_matrix: np.ndarray | None = None, kernel_samples: int = 1024,
                       kernel_block_size: int | None = None, kernel_seed: int | None = None,
                       map_fn: MapFn | None = None) -> tuple[np.ndarray, dict]:
    """(K, meta) of a spec's input set: ``kernel_matrix`` checked against the input count, or the
    analytic / empirical kernel (see :func:`log_prior`)."""
    if kernel_matrix is not None:
        K = np.asarray(kernel_matrix, dtype=np.float64)
        if K.shape != (inputs.n_inputs, inputs.n_inputs):
            raise KernelError(f"kernel_matrix has shape {K.shape} but the spec's input set has "
                              f"{inputs.n_inputs} inputs: give the ({inputs.n_inputs}, {inputs.n_inputs}) kernel of this spec")
        return K, {"kernel": "given"}
    kw = {} if kernel == "analytic" else {"n_networks": kernel_samples, "block_size": kernel_block_size,
                                          "seed": kernel_seed, "map_fn": map_fn}
    K, _, meta = spec_kernel(spec, kernel, inputs, **kw)
    return K, meta


def _method(method: str | None, importance_samples: int) -> str:
    positive_int(importance_samples, "importance_samples", minimum=0)
    if method is None:  # the old interface: importance_samples > 0 asked for EP + IS
        return "ep-is" if importance_samples else "auto"
    if method not in METHODS:
        raise VolumeError(f"method = {method!r}: use one of {', '.join(METHODS)}")
    return method


def _from_estimate(est: OrthantEstimate, *, likelihood: str, meta: dict, importance_samples: int) -> GPLogPrior:
    out = GPLogPrior(log_p=est.log_p, log_p_ep=est.log_p_ep, n_inputs=est.n_inputs,
                     n_deterministic=est.n_deterministic, converged=est.ep_converged, iterations=est.ep_iterations,
                     max_change=est.ep_max_change, jitter=est.jitter, likelihood=likelihood, kernel=meta["kernel"],
                     kernel_meta=meta, importance_samples=importance_samples, seed=est.seed, method=est.method,
                     method_requested=est.method_requested, stderr=est.stderr, reliable=est.reliable,
                     reason=est.reason, samples=est.samples, n_duplicates=est.n_duplicates,
                     diagnostics=est.diagnostics)
    if est.impossible and est.log_p_ep is None:
        out.log_p_ep = -math.inf
    res = est.is_result
    if res is not None:
        out.log_p_is, out.is_stderr, out.is_ess, out.is_accepted = res.log_p, res.stderr, res.ess, res.accepted
        if math.isfinite(res.log_p) and est.log_p_ep is not None:
            out.is_correction = res.log_p - est.log_p_ep
    return out


def log_prior(spec: ExperimentSpec, labels: Any, *, likelihood: str = "heaviside", importance_samples: int = 0,
              seed: int = 0, kernel: str = "analytic", kernel_matrix: np.ndarray | None = None,
              kernel_samples: int = 1024, kernel_block_size: int | None = None, kernel_seed: int | None = None,
              map_fn: MapFn | None = None, damping: float = 0.9, tol: float = 1e-6, max_iter: int = 1000,
              method: str | None = None, samples: int | None = None) -> GPLogPrior:
    """GP estimate of ln P(f) for ``labels`` on ``spec``'s input set (see the module docstring).

    ``method``: 'auto' (default: EP-guided sequential importance sampling with its standard
    error, falling back visibly), 'ep', 'ep-is', 'ep-sis' or 'tilting' (``volume.gp.score``);
    ``samples`` draws of the Monte-Carlo methods, random numbers from ``seed``.
    ``importance_samples`` > 0 without ``method`` asks for EP + importance sampling (the old
    interface). ``kernel``: 'analytic' (FCN or CNN without max pooling; relu/erf) or 'empirical' (``kernel_samples``
    networks, ``kernel_block_size`` per block, seeded by ``kernel_seed`` (default ``spec.seed``),
    distributed by ``map_fn``, e.g. ``volume.jobs.ray_map``); ``kernel_matrix`` overrides both
    with a precomputed (M, M) kernel.
    """
    inputs = load_inputs(spec.inputs)
    lab = resolve_labels(labels, inputs)
    method = _method(method, importance_samples)
    if method == "ep-is" and samples is None:
        samples = importance_samples or None
    K, meta = spec_kernel_matrix(spec, inputs, kernel=kernel, kernel_matrix=kernel_matrix,
                                 kernel_samples=kernel_samples, kernel_block_size=kernel_block_size,
                                 kernel_seed=kernel_seed, map_fn=map_fn)
    est = score(K, lab, method=method, samples=samples, seed=seed, likelihood=likelihood,
                damping=damping, tol=tol, max_iter=max_iter)
    return _from_estimate(est, likelihood=likelihood, meta=meta, importance_samples=importance_samples)


def log_prior_many(spec: ExperimentSpec, labels: Any, *, likelihood: str = "heaviside", seed: int = 0,
                   method: str = "auto", samples: int | None = None, kernel: str = "analytic",
                   kernel_matrix: np.ndarray | None = None, kernel_samples: int = 1024,
                   kernel_block_size: int | None = None, kernel_seed: int | None = None,
                   map_fn: MapFn | None = None, score_map_fn: MapFn | None = None) -> list[GPLogPrior]:
    """:func:`log_prior` for many labellings of one spec, the kernel built and checked once.

    ``labels``: an (F, M) 0/1 array, a list of labellings in any form ``resolve_labels`` takes, a
    FrequencyTable of this spec's input set (every function it counted, most frequent first) or
    a path to an HDF5 table. ``map_fn`` distributes the empirical kernel, ``score_map_fn`` the
    scoring (groups of labellings as tasks, e.g. ``volume.jobs.ray_map``); results are the same
    either way. ``[r.row() for r in result]`` feeds ``pandas.DataFrame``."""
    inputs = load_inputs(spec.inputs)
    rows = labellings(labels, inputs)
    method = _method(method, 0)
    K, meta = spec_kernel_matrix(spec, inputs, kernel=kernel, kernel_matrix=kernel_matrix,
                                 kernel_samples=kernel_samples, kernel_block_size=kernel_block_size,
                                 kernel_seed=kernel_seed, map_fn=map_fn)
    dicts = score_many(K, rows, map_fn=score_map_fn, method=method, samples=samples, seed=seed, likelihood=likelihood)
    return [_from_dict(d, likelihood=likelihood, meta=meta) for d in dicts]


def _from_dict(d: dict, *, likelihood: str, meta: dict) -> GPLogPrior:
    def num(x):
        return -math.inf if x is None else x

    return GPLogPrior(log_p=num(d["log_p"]), log_p_ep=d["log_p_ep"], n_inputs=d["n_inputs"],
                      n_deterministic=d["n_deterministic"], converged=d["ep_converged"], iterations=d["ep_iterations"],
                      max_change=d["ep_max_change"], jitter=d["jitter"], likelihood=likelihood, kernel=meta["kernel"],
                      kernel_meta=meta, seed=d["seed"], method=d["method"], method_requested=d["method_requested"],
                      stderr=d["stderr"], reliable=d["reliable"], reason=d["reason"], samples=d["samples"],
                      n_duplicates=d["n_duplicates"], diagnostics=d["diagnostics"])


def labellings(labels: Any, inputs: InputSet) -> np.ndarray:
    """(F, M) uint8 labellings from an array, a list of labellings, a FrequencyTable or a table path."""
    from volume.keys import unpack_keys
    from volume.table import FrequencyTable

    if isinstance(labels, (str, Path)) and str(labels).endswith((".h5", ".hdf5")):
        labels = FrequencyTable.load(labels)
    if isinstance(labels, FrequencyTable):
        if labels.n_inputs != inputs.n_inputs or labels.spec.output.classes != 2:
            raise FunctionError(f"the table has {labels.n_inputs} inputs and {labels.spec.output.classes} classes; "
                                f"the spec has {inputs.n_inputs} inputs and a threshold output: use a table of this spec")
        order = np.argsort(-labels.counts, kind="stable")
        return unpack_keys(labels.keys[order], labels.n_inputs)
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        return np.stack([resolve_labels(row, inputs) for row in labels]) if len(labels) else labels.astype(np.uint8)
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
        raise FunctionError("labels: give a list of labellings, an (F, M) array or a table")
    out = [resolve_labels(x, inputs) for x in labels]
    if not out:
        raise FunctionError("labels: the list of labellings is empty")
    return np.stack(out)


__all__ = ["log_prior", "log_prior_many", "labellings", "resolve_labels", "spec_kernel_matrix", "GPLogPrior"]
