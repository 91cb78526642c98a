"""epsilon-sharpness of Keskar et al. (2017) and its magnitude-aware (adaptive) variant.

Keskar et al., "On Large-Batch Training for Deep Learning: Generalization Gap and Sharp
Minima" (ICLR 2017), eq. (3), in the full parameter space (their A = I):

    phi(theta*, eps) = (max_{delta in C_eps} L(theta* + delta) - L(theta*)) / (1 + L(theta*)) * 100,
    C_eps = {delta : |delta_i| <= eps (|theta*_i| + 1)}.

The '+1' makes the box at least eps wide for small weights, and is exactly what breaks
invariance under the rescalings that leave the function unchanged (Dinh et al. 2017).
The adaptive variant uses the box |delta_i| <= eps |theta*_i| (as in adaptive sharpness,
Kwon et al. 2021): a positive diagonal reparametrization theta -> T theta maps the box
of T theta onto T times the box of theta, so the value is invariant under alpha-rescaling
of ReLU layers.

The maximum is found by projected sign-gradient ascent (the box's own geometry; the
iterates of a positively rescaled problem correspond exactly, so adaptive sharpness
stays invariant in practice too): delta <- clip(delta + step * b * sign(grad L(theta* + delta)), -b, b)
for ``steps`` steps from delta = 0 and from ``restarts`` seeded uniform random points of the
box; the largest loss seen is kept. It is a lower bound on the true maximum (which for a
convex loss lies at a vertex of the box). There is no Monte-Carlo error: the value is a
deterministic function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from volume.errors import VolumeError


@dataclass(frozen=True)
class Sharpness:
    value: float  # phi in percent
    base_loss: float  # L(theta*)
    max_loss: float  # largest L(theta* + delta) found
    delta: torch.Tensor  # the maximising perturbation


def sharpness_box(theta: torch.Tensor, eps: float, adaptive: bool = False) -> torch.Tensor:
    """Half-widths b of the box: eps (|theta| + 1), or eps |theta| when adaptive."""
    if not eps > 0:
        raise VolumeError(f"sharpness eps = {eps}: must be > 0 (relative size of the box)")
    return eps * theta.abs() if adaptive else eps * (theta.abs() + 1)


def sharpness(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *, eps: float = 1e-3,
              adaptive: bool = False, steps: int = 20, step: float = 0.25, restarts: int = 0,
              seed: int = 0) -> Sharpness:
    """phi(theta*, eps) of ``loss`` (a differentiable function of a flat vector); see module docstring."""
    if steps < 1 or restarts < 0 or not step > 0:
        raise VolumeError(f"steps = {steps}, restarts = {restarts}, step = {step}: need steps >= 1, "
                          "restarts >= 0, step > 0")
    theta = torch.as_tensor(theta).detach().reshape(-1).clone()
    b = sharpness_box(theta, eps, adaptive)
    with torch.no_grad():
        base = float(loss(theta))
    best, best_delta = base, torch.zeros_like(theta)
    gen = torch.Generator().manual_seed(seed)
    for r in range(restarts + 1):
        delta = torch.zeros_like(theta) if r == 0 else (torch.rand(theta.shape, generator=gen, dtype=torch.float64)
                                                        .to(theta.dtype) * 2 - 1) * b
        for _ in range(steps):
            d = delta.clone().requires_grad_(True)
            value = loss(theta + d)
            (g,) = torch.autograd.grad(value, d)
            if float(value.detach()) > best:
                best, best_delta = float(value.detach()), delta.clone()
            delta = torch.clamp(delta + step * b * torch.sign(g), -b, b)
        with torch.no_grad():
            value = float(loss(theta + delta))
        if value > best:
            best, best_delta = value, delta.clone()
    return Sharpness(100.0 * (best - base) / (1.0 + base), base, best, best_delta)
