"""The activation functions a spec may name, in one table: their names (what
``architecture.activation`` accepts), the torch functions that compute them (out of place for
the general forward, in place for the sampler's buffers), whether they are positively
homogeneous, phi(a x) = a phi(x) for a > 0 (what alpha-rescaling and symmetry removal need),
and the closed form of the NNGP kernel's Gaussian expectation where one exists:

    E[phi(u) phi(u')],  (u, u') ~ N(0, [[k_xx, k_xy], [k_xy, k_yy]])

    ReLU:  sqrt(k_xx k_yy) (sin t + (pi - t) cos t) / (2 pi),  cos t = k_xy / sqrt(k_xx k_yy)
           (arc-cosine kernel of degree 1, Cho & Saul 2009)
    erf:   (2/pi) arcsin(2 k_xy / sqrt((1 + 2 k_xx)(1 + 2 k_yy)))          (Williams 1997)

Adding an activation means adding a row here: its torch name, its homogeneity and, for the
analytic kernel (``volume.layers``, ``volume.gp.kernels``), its expectation (``None``: the
analytic kernel refuses the activation and names the empirical one). Torch is imported only
when a function is asked for, so that ``volume.spec`` can validate names without it.

>>> sorted(ACTIVATIONS), ACTIVATIONS["relu"].homogeneous, ACTIVATIONS["tanh"].expectation is None
(['erf', 'relu', 'tanh'], True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def relu_expectation(kxy: np.ndarray, kxx: np.ndarray, kyy: np.ndarray) -> np.ndarray:
    """E[relu(u) relu(u')] for (u, u') ~ N(0, [[kxx, kxy], [kxy, kyy]]) (arc-cosine kernel of degree 1)."""
    norm = np.sqrt(kxx * kyy)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norm > 0, kxy / norm, 0.0)
    np.clip(cos, -1.0, 1.0, out=cos)
    theta = np.arccos(cos)
    return norm * (np.sqrt(1.0 - cos * cos) + (np.pi - theta) * cos) / (2.0 * np.pi)


def erf_expectation(kxy: np.ndarray, kxx: np.ndarray, kyy: np.ndarray) -> np.ndarray:
    """E[erf(u) erf(u')] for (u, u') ~ N(0, [[kxx, kxy], [kxy, kyy]]) (Williams 1997)."""
    arg = 2.0 * kxy / np.sqrt((1.0 + 2.0 * kxx) * (1.0 + 2.0 * kyy))
    return (2.0 / np.pi) * np.arcsin(np.clip(arg, -1.0, 1.0))


@dataclass(frozen=True)
class Activation:
    name: str  # also the name of the torch function and, with '_', of the in-place Tensor method
    homogeneous: bool  # positively homogeneous: phi(a x) = a phi(x) for a > 0
    expectation: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None  # (kxy, kxx, kyy)

    def fn(self):
        """The out-of-place torch function (``torch.relu`` ...)."""
        import torch

        return getattr(torch, self.name)

    def inplace(self):
        """The in-place Tensor method (``torch.Tensor.relu_`` ...)."""
        import torch

        return getattr(torch.Tensor, self.name + "_")


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", homogeneous=True, expectation=relu_expectation),
    Activation("tanh", homogeneous=False),
    Activation("erf", homogeneous=False, expectation=erf_expectation),
)}


def with_kernel() -> list[str]:
    """Names of the activations that have a closed-form NNGP expectation."""
    return [a.name for a in ACTIVATIONS.values() if a.expectation is not None]
