"""All flatness measures of one minimum, as one flat record (a CSV row's worth).

Given the training objective and a minimum theta*, compute lambda_max (Lanczos), the
Hutchinson trace with its standard error, Keskar's epsilon-sharpness, adaptive
sharpness, the local energy at each sigma with its standard error, and lambda_max of the
normalised representative (:func:`volume.reparam.normalise`), which is invariant under
rescaling by construction. Every estimator takes the same ``seed``, so a minimum and its
rescaled copy are measured with the same random vectors.
"""

from __future__ import annotations

import torch

from volume.experiments.config import Measures
from volume.flatness.hessian import HessianOperator, hessian_trace, lambda_max
from volume.flatness.local_energy import local_energy
from volume.flatness.objective import Objective
from volume.flatness.sharpness import sharpness
from volume.reparam import normalise

MEASURE_NAMES = ("lambda_max", "trace", "keskar", "adaptive", "lambda_max_normalised")


def local_energy_names(m: Measures) -> list[str]:
    return [f"local_energy_{s:g}" for s in m.local_energy_sigmas]


def measure(objective: Objective, theta: torch.Tensor, m: Measures, seed: int) -> dict[str, float]:
    """The record of one minimum (see module docstring)."""
    op = HessianOperator(objective, theta)
    rec: dict[str, float] = {"lambda_max": lambda_max(op, tol=m.lanczos_tol, seed=seed)}
    rec["trace"], rec["trace_se"] = hessian_trace(op, samples=m.hutchinson_samples, seed=seed)
    rec["keskar"] = sharpness(objective.loss, theta, eps=m.sharpness_eps, steps=m.sharpness_steps, seed=seed).value
    rec["adaptive"] = sharpness(objective.loss, theta, eps=m.adaptive_eps, adaptive=True,
                                steps=m.sharpness_steps, seed=seed).value
    le = local_energy(objective.errors, theta, m.local_energy_sigmas, draws=m.local_energy_draws, seed=seed)
    for name, v, se in zip(local_energy_names(m), le.delta, le.se):
        rec[name], rec[name + "_se"] = float(v), float(se)
    normed = objective.flatten(normalise(objective.spec, objective.params(theta)))
    rec["lambda_max_normalised"] = lambda_max(HessianOperator(objective, normed), tol=m.lanczos_tol, seed=seed)
    return rec
