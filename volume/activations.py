"""The activation functions a spec may name, in one table: their names (what
``architecture.activation`` accepts), the torch functions that compute them (out of place for
``volume.models``, in place for the sampler's buffers) and whether they are positively
homogeneous, phi(a x) = a phi(x) for a > 0 (what alpha-rescaling and symmetry removal need).
The analytic NNGP kernel's closed forms (``volume.gp.kernels``) exist for 'relu' and 'erf'.

Adding an activation means adding a row here (and, for the analytic kernel, its expectation).
Torch is imported only when a function is asked for, so that ``volume.spec`` can validate
names without it.

>>> sorted(ACTIVATIONS), ACTIVATIONS["relu"].homogeneous
(['erf', 'relu', 'tanh'], True)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Activation:
    name: str  # also the name of the torch function and, with '_', of the in-place Tensor method
    homogeneous: bool  # positively homogeneous: phi(a x) = a phi(x) for a > 0

    def fn(self):
        """The out-of-place torch function (``torch.relu`` ...)."""
        import torch

        return getattr(torch, self.name)

    def inplace(self):
        """The in-place Tensor method (``torch.Tensor.relu_`` ...)."""
        import torch

        return getattr(torch.Tensor, self.name + "_")


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("relu", homogeneous=True),
    Activation("tanh", homogeneous=False),
    Activation("erf", homogeneous=False),
)}
