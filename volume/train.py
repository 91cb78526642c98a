"""Training networks to zero training error, and tables of the functions optimizers find.

Mingard et al., "Is SGD a Bayesian sampler? Well, almost" (JMLR 2021) compare the
probability P_opt(f) that an optimizer, started from a prior draw, converges to a
function f with the prior probability P(f). This module provides both halves of P_opt:

* :func:`train`: one network of a spec from given initial parameters, trained on a
  training set with SGD (optional momentum), Adam or SAM (Foret et al. 2021: the gradient
  is taken at theta + rho g/||g||, g the minibatch gradient, and applied by SGD), with the
  cross-entropy or the squared loss (:mod:`volume.flatness.objective`), until the 0-1
  error on the whole training set is zero (checked after every epoch, and before the
  first) or ``max_epochs`` epochs have run. It returns the parameters, the training
  curve and the function on the full input set (labels and packed key).
* :class:`TrainingRun`: the block function of a spec with ``spec.training``. Block b is
  ``spec.block_size`` trainings; initialisation i is draw i of the prior block b (the same
  random stream, ``volume.sampler.block_standard``, as :class:`volume.sampler.Sampler`, all
  layers in full, so P and P_opt start from the same draws wherever the sampler does not use
  the input basis), and the minibatch order of training i is seeded by the i-th of
  ``block_size`` 62-bit integers of ``SeedSequence([seed, b, 1])``.
  A block is therefore a pure function of (spec, b), and tables of optimizer-found
  functions merge like prior tables; the spec (training included) is part of the table's
  identity, so tables of different optimizers or training sets never merge.

Only converged trainings (zero training error) enter a table; ``TrainingRun.block``
reports how many did not converge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from volume.checks import training_indices
from volume.errors import VolumeError
from volume.flatness.objective import Objective
from volume.inputs import InputSet, load_inputs, target_labels
from volume.keys import key_to_hex, pack_labels
from volume.models import layer_shapes, scale_params
from volume.sampler import block_standard
from volume.spec import ExperimentSpec, SpecError, Training
from volume.table import FrequencyTable


@dataclass
class TrainResult:
    theta: torch.Tensor  # flat parameters (P,) after training
    params: dict[str, torch.Tensor]  # the same as a dict weight0, bias0, ... (Network.load_draw form, no draw dim)
    labels: np.ndarray  # (M,) uint8: the function on the full input set
    key: np.ndarray  # (key_bytes,) uint8 packed labels, the table key
    converged: bool  # zero training error reached
    epochs: int
    steps: int
    curve: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, train_error

    @property
    def key_hex(self) -> str:
        return key_to_hex(self.key)


def _optimizer(training: Training, theta: torch.Tensor) -> torch.optim.Optimizer:
    if training.optimizer == "adam":
        return torch.optim.Adam([theta], lr=training.lr)
    return torch.optim.SGD([theta], lr=training.lr, momentum=training.momentum)


def sam_gradient(loss_fn, theta: torch.Tensor, rho: float) -> torch.Tensor:
    """SAM's gradient (Foret et al. 2021, eq. 3): grad L at theta + rho g / ||g||, g = grad L(theta)."""
    t = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(t), t)
    e = rho * g / (g.norm() + 1e-12)
    t2 = (theta.detach() + e).requires_grad_(True)
    (g2,) = torch.autograd.grad(loss_fn(t2), t2)
    return g2


def train(objective: Objective, theta0: torch.Tensor, training: Training, x_all, *,
          generator: torch.Generator) -> TrainResult:
    """Train one network from ``theta0`` (flat, not modified) on ``objective``'s data; see module docstring.

    ``generator`` seeds the minibatch order; ``x_all`` are the inputs on which the found
    function is read off (the full input set)."""
    n = objective.n_examples
    bs = min(training.batch_size, n)
    theta = torch.as_tensor(theta0).detach().reshape(-1).to(objective.dtype).clone().requires_grad_(True)
    opt = _optimizer(training, theta)
    curve: list[dict] = []
    steps = 0

    def record(epoch: int) -> float:
        with torch.no_grad():
            loss = float(objective.loss(theta))
        err = float(objective.errors(theta.detach())[0])
        curve.append({"epoch": epoch, "loss": loss, "train_error": err})
        return err

    err = record(0)
    epoch = 0
    while err > 0 and epoch < training.max_epochs:
        epoch += 1
        perm = torch.randperm(n, generator=generator)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            xb, yb = objective.x[idx], objective.y[idx]

            def batch_loss(t):
                return objective.loss_sum(t, xb, yb) / len(idx)

            opt.zero_grad(set_to_none=True)
            if training.optimizer == "sam":
                theta.grad = sam_gradient(batch_loss, theta, training.rho)
            else:
                batch_loss(theta).backward()
            opt.step()
            steps += 1
        err = record(epoch)
    final = theta.detach().clone()
    labels = objective.labels(final, x_all)
    return TrainResult(theta=final, params=objective.params(final), labels=labels,
                       key=pack_labels(labels[None], objective.spec.output.classes)[0],
                       converged=err == 0, epochs=epoch, steps=steps, curve=curve)


def training_data(spec: ExperimentSpec, inputs: InputSet) -> tuple[np.ndarray, np.ndarray]:
    """(train_indices, target labels on the full input set) of ``spec.training``, validated."""
    tr = spec.training
    if tr is None:
        raise SpecError("spec field 'training' is missing: optimizer-found functions need a [training] section")
    try:
        idx = training_indices(tr.train_indices, inputs.n_inputs, "spec field 'training.train_indices'")
    except VolumeError as e:
        raise SpecError(str(e)) from None
    if not tr.target:
        raise SpecError("spec field 'training.target' is empty: name the target rule, e.g. 'parity' or 'bits:0110...'")
    y = target_labels(inputs, tr.target, spec.output.classes)
    return idx, y


class TrainingRun:
    """Blocks of trainings of one spec with ``spec.training`` (see module docstring)."""

    def __init__(self, spec: ExperimentSpec, inputs: InputSet | None = None, *, dtype: torch.dtype = torch.float32):
        self.spec = spec
        self.inputs = inputs if inputs is not None else load_inputs(spec.inputs)
        self.train_indices, self.target = training_data(spec, self.inputs)
        self.test_indices = np.setdiff1d(np.arange(self.inputs.n_inputs), self.train_indices)
        self.layers = layer_shapes(spec, self.inputs.shape)
        self.objective = Objective(spec, self.inputs.x[self.train_indices], self.target[self.train_indices],
                                   spec.training.loss, dtype=dtype)

    def initialisations(self, block: int) -> tuple[torch.Tensor, list[int]]:
        """Flat initial parameters (block_size, P) and minibatch seeds of block ``block``."""
        n = self.spec.block_size
        params = scale_params(self.spec, self.layers, block_standard(self.spec, self.layers, block, 0, n))
        seeds = (np.random.SeedSequence([self.spec.seed, block, 1]).generate_state(n, dtype=np.uint64)
                 >> np.uint64(2)).tolist()
        flat = torch.cat([params[n].reshape(self.spec.block_size, -1) for n in self.objective.names], dim=1)
        return flat, seeds

    def results(self, block: int, indices=None) -> list[TrainResult]:
        """Train initialisations ``indices`` (default all) of block ``block``."""
        flat, seeds = self.initialisations(block)
        idx = range(self.spec.block_size) if indices is None else indices
        return [train(self.objective, flat[i], self.spec.training, self.inputs.x,
                      generator=torch.Generator().manual_seed(seeds[i])) for i in idx]

    def test_error(self, labels: np.ndarray) -> float:
        """Fraction of the inputs outside the training set where ``labels`` differ from the target."""
        if self.test_indices.size == 0:
            return float("nan")
        return float(np.mean(labels[self.test_indices] != self.target[self.test_indices]))

    def block(self, block: int) -> tuple[np.ndarray, int]:
        """(labels (K, M) of the K converged trainings of block ``block``, number not converged)."""
        res = self.results(block)
        ok = [r.labels for r in res if r.converged]
        labels = np.stack(ok) if ok else np.zeros((0, self.inputs.n_inputs), np.uint8)
        return labels, len(res) - len(ok)

    def keys(self, block: int) -> np.ndarray:
        """Packed keys of the functions found in block ``block`` (converged trainings only):
        the same interface as :meth:`volume.sampler.Sampler.keys`, so jobs draw optimizer
        tables exactly as they draw prior tables."""
        return pack_labels(self.block(block)[0], self.spec.output.classes)

    def table(self, blocks) -> FrequencyTable:
        """FrequencyTable of the functions found in ``blocks`` (converged trainings only)."""
        blocks = [int(b) for b in blocks]
        labels = [self.block(b)[0] for b in blocks]
        return FrequencyTable.from_labels(self.spec, np.concatenate(labels), blocks)


def optimizer_table(spec: ExperimentSpec, blocks) -> FrequencyTable:
    """P_opt table of ``spec`` (which must have a training section) over ``blocks``."""
    if spec.training is None:
        raise SpecError("spec field 'training' is missing: a table of optimizer-found functions needs it")
    return TrainingRun(spec).table(blocks)

