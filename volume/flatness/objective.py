"""The training objective of one network as a function of a flat parameter vector.

Flatness measures, reparametrizations and training all look at the same thing: the
loss L(theta) = (1/N) sum_i l(f_theta(x_i), y_i) and the 0-1 error of one network of a
spec on a fixed data set S = {(x_i, y_i)}. Here theta is one flat vector (the
parameters weight0, bias0, weight1, ... of :class:`volume.models.Network`, in that
order, each flattened row-major), so that Hessians, perturbations and paths are plain
vector operations.

Losses (``loss``): 'ce' is the cross-entropy, binary with logits for a threshold output
(l = log(1 + e^z) - y z) and softmax cross-entropy for an argmax output; 'mse' is the
squared error against +-1 targets for a threshold output ((z - (2y - 1))^2) and against
one-hot targets for an argmax output (||z - e_y||^2).

Everything is evaluated in chunks of ``chunk`` examples (the full data set is used,
never a minibatch, but memory stays bounded); the chunks' sums are added and divided
by N. Stacked evaluations (``errors``, ``labels``) take B parameter vectors at once
through the batched forward of :mod:`volume.models`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from volume.errors import VolumeError
from volume.models import Layer, forward, labels_from_outputs, layer_shapes, param_names
from volume.spec import LOSSES, ExperimentSpec


def example_losses(spec: ExperimentSpec, z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example losses (..., M) of outputs z (..., M, units) against integer labels y (M,)."""
    if loss not in LOSSES:
        raise VolumeError(f"loss {loss!r} is unknown: use one of {', '.join(LOSSES)}")
    if spec.output.kind == "threshold":
        z0 = z[..., 0]
        if loss == "ce":
            return F.binary_cross_entropy_with_logits(z0, y.to(z0.dtype).expand_as(z0), reduction="none")
        return (z0 - (2 * y.to(z0.dtype) - 1)) ** 2
    onehot = F.one_hot(y.long(), spec.output.classes).to(z.dtype)
    if loss == "ce":
        return -(torch.log_softmax(z, dim=-1) * onehot).sum(-1)
    return ((z - onehot) ** 2).sum(-1)


class Objective:
    """Loss and 0-1 error of one network of ``spec`` on data (x, y); see the module docstring.

    x: (N, *input_shape) inputs; y: (N,) integer labels; ``dtype`` is the precision of
    every evaluation (use float64 for reference computations).
    """

    def __init__(self, spec: ExperimentSpec, x, y, loss: str = "ce", *, chunk: int = 4096,
                 dtype: torch.dtype = torch.float32):
        if chunk < 1:
            raise VolumeError(f"chunk = {chunk}: must be >= 1 (examples evaluated at once)")
        self.spec = spec
        self.dtype = dtype
        self.x = torch.as_tensor(np.asarray(x), dtype=dtype)
        self.y = torch.as_tensor(np.asarray(y)).long()
        if self.x.shape[0] != self.y.shape[0]:
            raise VolumeError(f"data: {self.x.shape[0]} inputs but {self.y.shape[0]} labels; give one label per input")
        if self.x.shape[0] == 0:
            raise VolumeError("data: the training set is empty; give at least one example")
        if int(self.y.max()) >= spec.output.classes or int(self.y.min()) < 0:
            raise VolumeError(f"labels must lie in 0..{spec.output.classes - 1} (output.classes)")
        example_losses(spec, torch.zeros(1, 1, spec.output.units, dtype=dtype), self.y[:1], loss)
        self.loss_kind = loss
        self.chunk = chunk
        self.input_shape = tuple(self.x.shape[1:])
        self.layers: list[Layer] = layer_shapes(spec, self.input_shape)
        self.names = param_names(self.layers)
        self.shapes = [l.weight_shape if n.startswith("weight") else l.bias_shape
                       for l in self.layers for n in ("weight", "bias")]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.n_params = sum(self.sizes)

    @property
    def n_examples(self) -> int:
        return int(self.x.shape[0])

    # ---- flat vectors <-> parameter dicts -------------------------------------------
    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flat vector (P,) of one network's parameters (no draw dimension), a new tensor."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise VolumeError(f"parameters lack {missing}: expected {', '.join(self.names)}")
        return torch.cat([torch.as_tensor(params[n]).reshape(-1).to(self.dtype) for n in self.names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stacked parameter dict from theta (P,) or (B, P): every tensor gets a draw dim."""
        t = theta if theta.dim() == 2 else theta[None]
        if t.shape[1] != self.n_params:
            raise VolumeError(f"parameter vector has {t.shape[1]} entries; this network has {self.n_params}")
        out, off = {}, 0
        for n, s, k in zip(self.names, self.shapes, self.sizes):
            out[n] = t[:, off:off + k].reshape(t.shape[0], *s)
            off += k
        return out

    def params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameter dict of one network (no draw dim), copies, as Network.load_draw takes them."""
        return {n: v[0].detach().clone() for n, v in self.unflatten(theta.reshape(-1)).items()}

    # ---- evaluations ------------------------------------------------------------------
    def outputs(self, theta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs (B, M, units) of stacked thetas (B, P) (or (P,) -> B = 1) on x (default: data)."""
        x = self.x if x is None else torch.as_tensor(x, dtype=self.dtype)
        return forward(self.spec, self.layers, self.unflatten(theta.to(self.dtype)), x)

    def loss_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Sum of the per-example losses of ONE network theta (P,) on (x, y): differentiable."""
        z = forward(self.spec, self.layers, self.unflatten(theta), x)[0]
        return example_losses(self.spec, z, y, self.loss_kind).sum()

    def chunks(self):
        for s in range(0, self.n_examples, self.chunk):
            yield self.x[s:s + self.chunk], self.y[s:s + self.chunk]

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """L(theta) = mean loss over the whole data set, differentiable in theta (P,)."""
        theta = theta.to(self.dtype)
        return sum(self.loss_sum(theta, xb, yb) for xb, yb in self.chunks()) / self.n_examples

    def grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L(theta), grad L(theta)), both detached."""
        t = theta.detach().to(self.dtype).requires_grad_(True)
        value = self.loss(t)
        (g,) = torch.autograd.grad(value, t)
        return value.detach(), g.detach()

    @torch.no_grad()
    def losses(self, thetas: torch.Tensor) -> torch.Tensor:
        """Mean losses (B,) of stacked thetas (B, P)."""
        thetas = thetas.to(self.dtype)
        total = torch.zeros(thetas.shape[0], dtype=self.dtype)
        for xb, yb in self.chunks():
            z = forward(self.spec, self.layers, self.unflatten(thetas), xb)
            total += example_losses(self.spec, z, yb, self.loss_kind).sum(-1)
        return total / self.n_examples

    @torch.no_grad()
    def errors(self, thetas: torch.Tensor) -> torch.Tensor:
        """0-1 errors (B,) (fraction of the data misclassified) of stacked thetas (B, P) or (P,)."""
        thetas = thetas.to(self.dtype)
        thetas = thetas if thetas.dim() == 2 else thetas[None]
        wrong = torch.zeros(thetas.shape[0], dtype=torch.float64)
        for xb, yb in self.chunks():
            lab = labels_from_outputs(self.spec, forward(self.spec, self.layers, self.unflatten(thetas), xb))
            wrong += (lab.long() != yb[None]).sum(-1).double()
        return wrong / self.n_examples

    @torch.no_grad()
    def labels(self, theta: torch.Tensor, x) -> np.ndarray:
        """Labels (M,) uint8 of ONE network theta (P,) on inputs x (the function it computes)."""
        x = torch.as_tensor(np.asarray(x), dtype=self.dtype)
        out = [labels_from_outputs(self.spec, forward(self.spec, self.layers, self.unflatten(theta.to(self.dtype)),
                                                     x[s:s + self.chunk]))[0]
               for s in range(0, x.shape[0], self.chunk)]
        return torch.cat(out).numpy().astype(np.uint8)
