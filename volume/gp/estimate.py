"""Entry point: log P(f) of a labelling of a spec's input set under its NNGP (GP approximation).

``log_prior(spec, labels, ...)`` builds the kernel (analytic NNGP, empirical Monte-Carlo, or a
given matrix), runs EP (``volume.gp.ep``) and optionally the importance-sampling correction,
and returns a :class:`GPLogPrior` whose ``to_dict()`` is JSON-able (the HTTP service returns
it as is). Labels may be a 0/1 vector, a '0'/'1' string, a hex key, a target rule ('parity',
'ge5', 'bits:...'; see ``volume.inputs.resolve_labels``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from volume.checks import json_safe, positive_int
from volume.gp.ep import ep_log_p, importance_log_p
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
    """GP estimate of ln P(f). ``log_p`` is the IS-corrected value when importance sampling
    was asked and some sample had weight, else the EP value; -inf (None in ``to_dict``) when
    f labels 1 an input whose output is always exactly 0."""

    log_p: float
    log_p_ep: float
    n_inputs: int
    n_deterministic: int
    converged: bool
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

    @property
    def impossible(self) -> bool:
        return self.log_p == -math.inf

    def to_dict(self) -> dict:
        d = asdict(self)
        d["impossible"] = self.impossible
        d["log10_p"] = self.log_p / math.log(10)
        return json_safe(d)


def log_prior(spec: ExperimentSpec, labels: Any, *, likelihood: str = "heaviside", importance_samples: int = 0,
              seed: int = 0, kernel: str = "analytic", kernel_matrix: np.ndarray | None = None,
              kernel_samples: int = 1024, kernel_block_size: int | None = None, kernel_seed: int | None = None,
              map_fn: MapFn | None = None,
              damping: float = 0.9, tol: float = 1e-6, max_iter: int = 1000) -> GPLogPrior:
    """GP estimate of ln P(f) for ``labels`` on ``spec``'s input set (see the module docstring).

    ``kernel``: 'analytic' (FCN relu/erf) or 'empirical' (``kernel_samples`` networks,
    ``kernel_block_size`` per block, networks seeded by ``kernel_seed`` (default ``spec.seed``),
    distributed by ``map_fn``, e.g. ``volume.jobs.ray_map``); ``kernel_matrix`` overrides
    both with a precomputed (M, M) kernel. ``importance_samples`` > 0 adds the importance-
    sampling correction (proposal: the EP posterior; random numbers from ``seed``).
    """
    inputs = load_inputs(spec.inputs)
    lab = resolve_labels(labels, inputs)
    if kernel_matrix is not None:
        K = np.asarray(kernel_matrix, dtype=np.float64)
        if K.shape != (inputs.n_inputs, inputs.n_inputs):
            raise KernelError(f"kernel_matrix has shape {K.shape} but the spec's input set has "
                              f"{inputs.n_inputs} inputs: give the ({inputs.n_inputs}, {inputs.n_inputs}) kernel of this spec")
        meta = {"kernel": "given"}
    else:
        kw = {} if kernel == "analytic" else {"n_networks": kernel_samples, "block_size": kernel_block_size,
                                              "seed": kernel_seed, "map_fn": map_fn}
        K, _, meta = spec_kernel(spec, kernel, inputs, **kw)
    positive_int(importance_samples, "importance_samples", minimum=0)
    ep = ep_log_p(K, lab, likelihood=likelihood, damping=damping, tol=tol, max_iter=max_iter)
    out = GPLogPrior(log_p=ep.log_z, log_p_ep=ep.log_z, n_inputs=inputs.n_inputs, n_deterministic=ep.n_deterministic,
                     converged=ep.converged, iterations=ep.iterations, max_change=ep.max_change, jitter=ep.jitter,
                     likelihood=likelihood, kernel=meta["kernel"], kernel_meta=meta,
                     importance_samples=importance_samples, seed=seed)
    if importance_samples and not ep.impossible:
        res = importance_log_p(K, lab, ep, importance_samples, seed=seed)
        out.log_p_is, out.is_stderr, out.is_ess, out.is_accepted = res.log_p, res.stderr, res.ess, res.accepted
        if math.isfinite(res.log_p):
            out.is_correction = res.log_p - ep.log_z
            out.log_p = res.log_p
    return out


__all__ = ["log_prior", "resolve_labels", "GPLogPrior"]
