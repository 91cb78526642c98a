"""Local energy of Pittorino et al. (2021, 2022): the rise of the training error under
multiplicative Gaussian noise on the weights.

    delta E_train(theta*, sigma) = E_xi[E_train(theta* + sigma xi (.) |theta*|)] - E_train(theta*),
    xi ~ N(0, I),

with E_train the 0-1 training error (fraction of the training set misclassified) and (.)
the elementwise product. Because the noise is proportional to |theta_i|, a positive
diagonal reparametrization theta -> T theta maps the perturbed network to T times the
perturbed network of the same xi: under alpha-rescaling of ReLU layers (which computes
the same function) the value is unchanged draw by draw.

The expectation is a Monte-Carlo mean over ``draws`` xi, with standard error
std / sqrt(draws). The same xi are used at every sigma (common random numbers), so the
curve over sigma is smooth. Draw i is xi_i = numpy ``default_rng([seed, i]).standard_normal(P)``,
a pure function of (seed, i), so the result does not depend on ``batch``, the number of
draws evaluated at once as stacked networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from volume.checks import finite_params, positive_int
from volume.errors import VolumeError


@dataclass(frozen=True)
class LocalEnergy:
    sigmas: np.ndarray  # (S,)
    delta: np.ndarray  # (S,) mean rise of the training error
    se: np.ndarray  # (S,) its standard error
    base_error: float  # E_train(theta*)


def local_energy(errors: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, sigmas: Sequence[float], *,
                 draws: int = 100, seed: int = 0, batch: int = 256) -> LocalEnergy:
    """The curve sigma -> delta E_train (see module docstring); ``errors`` maps stacked
    flat parameters (B, P) to 0-1 training errors (B,)."""
    sig = np.asarray(list(sigmas), dtype=np.float64).reshape(-1)
    if sig.size == 0 or np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise VolumeError(f"local energy sigmas = {sigmas!r}: give finite values >= 0 (noise std relative to |theta|)")
    positive_int(draws, "local energy draws", minimum=2)
    positive_int(batch, "local energy batch")
    theta = torch.as_tensor(theta).detach().reshape(-1)
    finite_params(theta)
    base = float(errors(theta[None])[0])
    rise = np.empty((sig.size, draws))
    for start in range(0, draws, batch):
        k = min(batch, draws - start)
        xi = torch.from_numpy(np.stack([np.random.default_rng([seed, i]).standard_normal(theta.numel())
                                        for i in range(start, start + k)])).to(theta.dtype)
        for s, sigma in enumerate(sig):
            thetas = theta[None] + float(sigma) * xi * theta.abs()[None]
            rise[s, start:start + k] = errors(thetas).double().numpy() - base
    return LocalEnergy(sig, rise.mean(1), rise.std(1, ddof=1) / np.sqrt(draws), base)
