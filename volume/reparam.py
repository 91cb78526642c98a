"""Reparametrizations that leave a ReLU network's function unchanged, and paths between minima.

Parameters are dicts weight0, bias0, weight1, ... of ONE network (the form of
:class:`volume.models.Network`: dense weights (out, in), conv weights (C_out, C_in, k, k)).
Every function returns new tensors; the caller's dict and tensors are never modified.

* alpha-rescaling (Dinh et al., "Sharp Minima Can Generalize For Deep Nets", ICML 2017):
  relu(a z) = a relu(z) for a > 0, so W_l, b_l -> a W_l, a b_l and W_{l+1} -> W_{l+1} / a
  computes the same function for any hidden layer l, while the Hessian's blocks scale by
  a^-2 (layer l) and a^2 (layer l+1): lambda_max, the trace and epsilon-sharpness can be made
  as large as one likes. ``alpha`` may be one number or one per unit (channel) of layer l.
* Symmetry removal (Pittorino et al., "Deep networks on toroids", ICML 2022): ``normalise``
  scales each hidden unit's incoming weights and bias to unit Euclidean norm, layer by
  layer from the input, moving the scale into the next layer's weights; the last layer
  carries the overall scale. ``align`` permutes the hidden units of one network to match
  another, layer by layer, maximising the total cosine similarity of incoming
  weight+bias vectors (Hungarian assignment, scipy.optimize.linear_sum_assignment).
* Paths between two minima: the straight line, and the geodesic between normalised
  networks (per-unit spherical interpolation of the unit incoming vectors of every hidden
  unit, the last layer interpolated linearly). The error barrier of a path is the largest
  rise of the error along it above the higher of its two ends,
  max_t E(t) - max(E(0), E(1)) (>= 0).

All of this needs a positively homogeneous activation (ReLU; max- or average-pooling
keeps the homogeneity), otherwise a VolumeError says so. Which parameters a unit's scale or
position touches is each layer kind's rescaling rule (``volume.layers``: ``rescale_out`` /
``rescale_in``, ``permute_out`` / ``permute_in``; a dense layer after a conv layer reads its
units' C*H*W flattened features channel-major).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from volume.activations import ACTIVATIONS
from volume.errors import VolumeError
from volume.layers import of_weight
from volume.spec import ExperimentSpec

Params = dict[str, torch.Tensor]


def _n_layers(params: Params) -> int:
    n = 0
    while f"weight{n}" in params:
        n += 1
    if n == 0 or any(f"bias{i}" not in params for i in range(n)):
        raise VolumeError("parameters must be a dict weight0, bias0, weight1, bias1, ... of one network")
    return n


def _copy(params: Params) -> Params:
    return {k: torch.as_tensor(v).detach().clone() for k, v in params.items()}


def _check_relu(spec: ExperimentSpec) -> None:
    if not ACTIVATIONS[spec.architecture.activation].homogeneous:
        ok = [a for a in ACTIVATIONS if ACTIVATIONS[a].homogeneous]
        raise VolumeError(f"architecture.activation = {spec.architecture.activation!r}: rescaling and "
                          f"normalisation keep the function only for a positively homogeneous activation ({', '.join(ok)})")


def _check_hidden(params: Params, layer: int) -> int:
    n = _n_layers(params)
    if not 0 <= layer < n - 1:
        raise VolumeError(f"layer = {layer}: must be a hidden layer, 0..{n - 2} (the last layer has no activation)")
    return n


def _layer(p: Params, layer: int):
    """The layer object (volume.layers) of weight ``layer``: its rescaling rule."""
    try:
        return of_weight(p[f"weight{layer}"], layer)
    except ValueError as e:
        raise VolumeError(str(e)) from None


def _scale_units(p: Params, layer: int, s: torch.Tensor) -> None:
    """In place on the copy p: unit u of ``layer`` gets incoming * s[u], outgoing / s[u]."""
    p[f"weight{layer}"], p[f"bias{layer}"] = _layer(p, layer).rescale_out(p[f"weight{layer}"], p[f"bias{layer}"], s)
    try:
        p[f"weight{layer + 1}"] = _layer(p, layer + 1).rescale_in(p[f"weight{layer + 1}"], s)
    except ValueError as e:
        raise VolumeError(str(e)) from None


def _permute_units(p: Params, layer: int, perm: torch.Tensor) -> None:
    """In place on the copy p: unit u of ``layer`` becomes old unit perm[u]."""
    p[f"weight{layer}"], p[f"bias{layer}"] = _layer(p, layer).permute_out(p[f"weight{layer}"], p[f"bias{layer}"], perm)
    try:
        p[f"weight{layer + 1}"] = _layer(p, layer + 1).permute_in(p[f"weight{layer + 1}"], perm)
    except ValueError as e:
        raise VolumeError(str(e)) from None


def alpha_rescale(spec: ExperimentSpec, params: Params, layer: int, alpha) -> Params:
    """Dinh et al.'s rescaling of hidden ``layer`` by alpha > 0 (a number or one per unit)."""
    _check_relu(spec)
    _check_hidden(params, layer)
    p = _copy(params)
    units = p[f"weight{layer}"].shape[0]
    a = torch.as_tensor(alpha, dtype=p[f"weight{layer}"].dtype).reshape(-1)
    if a.numel() == 1:
        a = a.expand(units)
    if a.numel() != units or not bool(torch.all(a > 0)) or not bool(torch.all(torch.isfinite(a))):
        raise VolumeError(f"alpha must be > 0 and finite, one number or {units} (one per unit of layer {layer})")
    _scale_units(p, layer, a)
    return p


def unit_norms(params: Params, layer: int) -> torch.Tensor:
    """Norms of the incoming weight+bias vectors of the units of ``layer``."""
    w = params[f"weight{layer}"]
    return torch.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(1) + params[f"bias{layer}"] ** 2)


def normalise(spec: ExperimentSpec, params: Params) -> Params:
    """The normalised representative: every hidden unit's incoming weight+bias vector has
    unit norm (dead all-zero units are left as they are); same function."""
    _check_relu(spec)
    p = _copy(params)
    for layer in range(_n_layers(p) - 1):
        norms = unit_norms(p, layer)
        _scale_units(p, layer, torch.where(norms > 0, 1.0 / norms, torch.ones_like(norms)))
    return p


def _unit_vectors(p: Params, layer: int) -> torch.Tensor:
    w = p[f"weight{layer}"]
    return torch.cat([w.reshape(w.shape[0], -1), p[f"bias{layer}"][:, None]], dim=1)


@dataclass(frozen=True)
class Alignment:
    params: Params  # the second network, its hidden units permuted to match the first
    permutations: list[np.ndarray]  # per hidden layer: unit u of the result is old unit perm[u]
    similarity: list[float]  # per hidden layer: mean cosine similarity of matched units


def align(spec: ExperimentSpec, reference: Params, other: Params) -> Alignment:
    """Permute ``other``'s hidden units to match ``reference`` (see module docstring)."""
    n = _n_layers(reference)
    if _n_layers(other) != n or any(reference[k].shape != other[k].shape for k in reference):
        raise VolumeError("align: the two networks have different shapes; they must be of the same architecture")
    p = _copy(other)
    perms, sims = [], []
    for layer in range(n - 1):
        a = torch.nn.functional.normalize(_unit_vectors(reference, layer).double(), dim=1)
        b = torch.nn.functional.normalize(_unit_vectors(p, layer).double(), dim=1)
        cos = (a @ b.T).numpy()
        rows, cols = linear_sum_assignment(cos, maximize=True)
        perm = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)
        _permute_units(p, layer, perm)
        perms.append(perm.numpy())
        sims.append(float(cos[rows, cols].mean()))
    return Alignment(p, perms, sims)


def linear_path(a: Params, b: Params, ts) -> list[Params]:
    """theta(t) = (1 - t) theta_a + t theta_b at each t."""
    return [{k: (1 - float(t)) * a[k] + float(t) * b[k] for k in a} for t in ts]


def _slerp(u: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """Row-wise spherical interpolation of unit vectors (linear where they coincide)."""
    cos = (u * v).sum(1).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    small = omega < 1e-6
    s = torch.sin(omega).where(~small, torch.ones_like(omega))
    ca = torch.where(small, torch.full_like(omega, 1 - t), torch.sin((1 - t) * omega) / s)
    cb = torch.where(small, torch.full_like(omega, t), torch.sin(t * omega) / s)
    return ca[:, None] * u + cb[:, None] * v


def geodesic_path(spec: ExperimentSpec, a: Params, b: Params, ts) -> list[Params]:
    """Geodesic between the normalised representatives of a and b (see module docstring)."""
    na, nb = normalise(spec, a), normalise(spec, b)
    n = _n_layers(na)
    out = []
    for t in ts:
        p = {}
        for layer in range(n):
            w = na[f"weight{layer}"]
            if layer < n - 1:
                u = _slerp(_unit_vectors(na, layer), _unit_vectors(nb, layer), float(t))
                p[f"weight{layer}"] = u[:, :-1].reshape(w.shape)
                p[f"bias{layer}"] = u[:, -1].clone()
            else:
                p[f"weight{layer}"] = (1 - float(t)) * w + float(t) * nb[f"weight{layer}"]
                p[f"bias{layer}"] = (1 - float(t)) * na[f"bias{layer}"] + float(t) * nb[f"bias{layer}"]
        out.append(p)
    return out


@dataclass(frozen=True)
class PathErrors:
    ts: np.ndarray
    errors: np.ndarray
    barrier: float  # max_t E(t) - max(E(0), E(1))


def path_barrier(errors_of, path: list[Params], ts) -> PathErrors:
    """Errors along a path (``errors_of`` maps a list of parameter dicts to errors) and its barrier."""
    e = np.asarray(errors_of(path), dtype=np.float64)
    return PathErrors(np.asarray(list(ts), dtype=np.float64), e, float(max(0.0, e.max() - max(e[0], e[-1]))))
