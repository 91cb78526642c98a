"""Kernels of the Gaussian process that a wide network's output follows under the prior.

Analytic NNGP kernel (Neal 1996, Williams 1997, Lee et al. 2018, as used by Valle-Perez et al.
2019 and Mingard et al. 2021; CNNs: Novak et al. 2019, Garriga-Alonso et al. 2019). For an FCN
with d input features,

    K^0(x, x') = sigma_b^2 + sigma_w^2 x.x' / d                      (first pre-activation)
    K^{l+1}    = sigma_b^2 + sigma_w^2 E_{(u,u') ~ N(0, K^l)} [phi(u) phi(u')]

    ReLU:  E[...] = sqrt(K_xx K_x'x') (sin t + (pi - t) cos t) / (2 pi),
           cos t = K_xx' / sqrt(K_xx K_x'x')                          (Cho & Saul 2009)
    erf:   E[...] = (2/pi) arcsin(2 K_xx' / sqrt((1 + 2 K_xx)(1 + 2 K_x'x')))  (Williams 1997)

applied once per hidden layer; the result is the kernel of the output unit. A CNN (conv
'same', average or no 2x2 pooling, flatten, dense) carries, for each pair of inputs, the
covariances of pixel pairs (q, q + D) through its conv layers; each layer kind's step is its
own (``volume.layers``, whose docstring gives the formulas), the closed forms are the
activations' (``volume.activations``). Uniform priors have the same variances and hence, in
the infinite-width limit, the same kernel. There is no closed form for tanh or for max
pooling: use the empirical kernel (:func:`analytic_unsupported` says why).

Empirical (Monte-Carlo) kernel of any spec: the mean over sampled networks of the output
covariance *given* the last hidden layer h_L (width = fan-in of the output layer),

    K_hat(x, x') = mean_i [ sigma_w^2 h_L^i(x).h_L^i(x') / width + sigma_b^2 ],

with its standard error (standard deviation over networks / sqrt(n)). Networks come from
the project's own batched machinery (``volume.sampler.block_standard`` / ``volume.layers.run``) and
block b of draws is block b of the random stream (all layers in full), so draw i of block b is
the same network the torch sampler draws wherever it does not use the input basis. For a single hidden layer and a
Gaussian prior the estimate is unbiased at any width; deeper networks approach the NNGP
kernel as width -> infinity (error O(1/width)).

Both kernels are computed in row blocks, so memory stays at the M x M result (float64) plus a
bounded working set; kernels of several thousand inputs fit in a few hundred MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from volume.checks import positive_int
from volume.errors import VolumeError
from volume.inputs import InputSet, load_inputs
from volume.limits import input_shape
from volume.activations import ACTIVATIONS, with_kernel
from volume.layers import features, nngp_chain, pair_elements, run, walk
from volume.models import Layer, layer_shapes, scale_params
from volume.sampler import block_standard
from volume.spec import FCN, ExperimentSpec

#: bytes of working memory a kernel computation aims to stay within (besides its result)
DEFAULT_MEMORY = 256 * 2**20

MapFn = Callable[[Callable[[Any], Any], Sequence[Any]], list]


class KernelError(VolumeError):
    """A kernel cannot be computed for this spec, or a given kernel is unusable."""


# --------------------------------------------------------------------------- analytic
def nngp_layer(kxy: np.ndarray, kxx: np.ndarray, kyy: np.ndarray, activation: str,
               sigma_w: float, sigma_b: float) -> np.ndarray:
    """One step of the dense NNGP recursion: K^{l+1} = sigma_b^2 + sigma_w^2 E[phi(u) phi(u')]
    (the activation's closed form, ``volume.activations``).

    ``kxx`` and ``kyy`` are the variances of the two arguments, broadcast against ``kxy``."""
    _activation(activation)
    return sigma_b**2 + sigma_w**2 * ACTIVATIONS[activation].expectation(kxy, kxx, kyy)


def _activation(name: str):
    act = ACTIVATIONS[name]
    if act.expectation is None:
        raise KernelError(
            f"architecture.activation = {name!r} has no closed-form NNGP kernel here: "
            f"use activation {' or '.join(repr(a) for a in with_kernel())}, or kernel='empirical'")
    return act


def analytic_unsupported(spec: ExperimentSpec) -> str:
    """Why the analytic kernel cannot be computed for ``spec`` (empty string if it can): the
    activation's closed form (``volume.activations``) or a layer's step (``volume.layers``)."""
    name = spec.architecture.activation
    if ACTIVATIONS[name].expectation is None:
        return (f"architecture.activation = {name!r} has no closed-form NNGP kernel: "
                f"use activation {' or '.join(repr(a) for a in with_kernel())}, or kernel='empirical'")
    for layer in layer_shapes(spec, input_shape(spec)):
        if layer.nngp_unsupported():
            return layer.nngp_unsupported()
    return ""


def analytic_kernel(spec: ExperimentSpec, inputs: InputSet | None = None, *,
                    memory_bytes: int = DEFAULT_MEMORY) -> np.ndarray:
    """The NNGP kernel (M, M) float64 of the output of ``spec``'s network (FCN, or CNN with
    average or no pooling) on its input set.

    See the module docstring for the recursion; each layer's step is its own
    (``volume.layers``). The diagonal follows its own pass over the pairs (x, x) (so K_xx is not
    subject to the arccos round-off, and the off-diagonal pass takes its variances from it);
    rows are computed in blocks of at most ``memory_bytes`` of temporaries.
    """
    inputs = inputs if inputs is not None else load_inputs(spec.inputs)
    why = analytic_unsupported(spec)
    if why:
        raise KernelError(why)
    act = _activation(spec.architecture.activation)
    layers = layer_shapes(spec, inputs.shape)
    x = np.asarray(inputs.x, dtype=np.float64)
    m = x.shape[0]
    sw, sb = spec.prior.sigma_w, spec.prior.sigma_b
    per_pair = 8 * 8 * pair_elements(layers, inputs.shape)  # float64 moments and a few temporaries
    rows = max(1, min(m, memory_bytes // max(1, per_pair * m)))
    diag_rows = max(1, min(m, memory_bytes // max(1, per_pair)))
    parts = [nngp_chain(layers, x[r0:r0 + diag_rows], x[r0:r0 + diag_rows], act, sw, sb, diagonal=True)
             for r0 in range(0, m, diag_rows)]
    diag = np.concatenate([p[0] for p in parts])
    variances = [None if parts[0][1][i] is None else np.concatenate([p[1][i] for p in parts])
                 for i in range(len(layers))]
    out = np.empty((m, m), dtype=np.float64)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        var = [None if v is None else (v[r0:r1], v) for v in variances]
        out[r0:r1] = nngp_chain(layers, x[r0:r1], x, act, sw, sb, diagonal=False, variances=var)[0]
    idx = np.arange(m)
    out[idx, idx] = diag
    return out


# --------------------------------------------------------------------------- empirical
@dataclass(frozen=True)
class EmpiricalKernel:
    """Monte-Carlo kernel: mean ``K`` (M, M) and its standard error ``stderr`` over ``n_networks``."""

    K: np.ndarray
    stderr: np.ndarray
    n_networks: int
    blocks: tuple[int, ...]
    block_size: int
    seed: int
    meta: dict = field(default_factory=dict)


@dataclass
class _Moments:
    """Sums over networks of G_i = h_i h_i^T / width and of G_i^2 (elementwise), float64."""

    s1: np.ndarray
    s2: np.ndarray
    n: int

    def __add__(self, other: "_Moments") -> "_Moments":
        return _Moments(self.s1 + other.s1, self.s2 + other.s2, self.n + other.n)


def _activation_size(layers: list[Layer], input_shape: tuple[int, ...]) -> int:
    """Largest number of activations one network holds per input (for memory budgeting)."""
    return max([math.prod(input_shape)] + [layer.weight_shape[0] * layer.positions(shape)
                                           for layer, shape in walk(layers, input_shape)])


def _hidden_features(spec: ExperimentSpec, hidden: list[Layer], params: dict[str, torch.Tensor],
                     x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Last hidden layer h_L (B, M, width) of the stacked networks, inputs in chunks."""
    batch = params["weight0"].shape[0]
    parts = []
    for start in range(0, x.shape[0], chunk):
        xs = x[start:start + chunk]
        if not hidden:  # no hidden layer: the output layer reads the inputs themselves
            h = xs.reshape(1, xs.shape[0], -1).expand(batch, -1, -1)
        else:
            pairs = ((params[f"weight{i}"], params[f"bias{i}"]) for i in range(len(hidden)))
            h = features(run(hidden, pairs, xs, ACTIVATIONS[spec.architecture.activation]), batch)
        parts.append(h)
    return torch.cat(parts, dim=1)


class KernelBlockTask:
    """Picklable task: the kernel moments of a group of blocks of networks (for ``map_fn``).

    Block b draws ``block_size`` networks from the random stream of block b under ``seed``
    (``volume.sampler.block_standard``, the sampler's stream, all layers in full) and evaluates the
    hidden layers with the layers' forward; networks and inputs are processed in sub-batches that
    keep the working set within ``memory_bytes``.
    """

    def __init__(self, spec: ExperimentSpec, x: np.ndarray, block_size: int, seed: int,
                 memory_bytes: int = DEFAULT_MEMORY):
        self.spec = spec
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.block_size = block_size
        self.seed = seed
        self.memory_bytes = memory_bytes

    def __call__(self, blocks: Iterable[int]) -> _Moments:
        spec = self.spec
        x = torch.from_numpy(self.x)
        m = x.shape[0]
        layers = layer_shapes(spec, tuple(self.x.shape[1:]))
        hidden = [Layer(lyr.kind, lyr.weight_shape, lyr.fan_in, lyr.pool, last=False) for lyr in layers[:-1]]
        width = layers[-1].fan_in
        per_input = 4 * 3 * _activation_size(layers, tuple(self.x.shape[1:]))
        sub = max(1, min(self.block_size, self.memory_bytes // max(1, per_input * m), self.memory_bytes // (8 * m * width)))
        chunk = max(1, min(m, self.memory_bytes // max(1, per_input * sub)))
        rows = max(1, min(m, self.memory_bytes // (8 * 2 * sub * m)))
        s1 = np.zeros((m, m), dtype=np.float64)
        s2 = np.zeros((m, m), dtype=np.float64)
        n = 0
        with torch.no_grad():
            for b in blocks:
                params = scale_params(spec, layers, block_standard(spec, layers, int(b), 0, self.block_size, seed=self.seed))
                for start in range(0, self.block_size, sub):
                    p = {k: v[start:start + sub] for k, v in params.items()}
                    h = _hidden_features(spec, hidden, p, x, chunk).to(torch.float64)
                    for r0 in range(0, m, rows):
                        g = torch.matmul(h[:, r0:r0 + rows], h.transpose(1, 2)) / width  # (b, R, M)
                        s1[r0:r0 + rows] += g.sum(0).numpy()
                        s2[r0:r0 + rows] += (g * g).sum(0).numpy()
                    n += h.shape[0]
        return _Moments(s1, s2, n)


def _in_process_reduce(func: Callable[[Any], _Moments], items: Sequence[Any]) -> _Moments:
    total: _Moments | None = None
    for item in items:  # reduce as results arrive: holds two M x M sums, not one per task
        part = func(item)
        total = part if total is None else total + part
    assert total is not None
    return total


def empirical_kernel(spec: ExperimentSpec, inputs: InputSet | None = None, *, n_networks: int = 1024,
                     block_size: int | None = None, seed: int | None = None, blocks_per_task: int = 1,
                     map_fn: MapFn | None = None, memory_bytes: int = DEFAULT_MEMORY) -> EmpiricalKernel:
    """Monte-Carlo kernel of any spec from ``n_networks`` sampled networks (rounded up to whole blocks).

    Parameters: ``block_size`` networks per block (default ``min(spec.block_size, 256, n_networks)``),
    ``seed`` (default ``spec.seed``); block b uses the random stream's block b, so the result
    depends only on (spec, seed, block_size, number of blocks). ``map_fn(func, items) -> list``
    distributes the tasks (groups of ``blocks_per_task`` blocks), e.g. ``volume.jobs.ray_map``;
    the default evaluates them here one after another. Each task returns two M x M float64
    sums, so a ``map_fn`` that gathers all results holds 16 M^2 bytes per task.
    """
    positive_int(n_networks, "n_networks (networks of the empirical kernel; its standard error needs two)", 2,
                 KernelError)
    block_size = min(spec.block_size, 256, n_networks) if block_size is None else block_size
    positive_int(block_size, "block_size", 1, KernelError)
    positive_int(blocks_per_task, "blocks_per_task", 1, KernelError)
    seed = spec.seed if seed is None else int(seed)
    inputs = inputs if inputs is not None else load_inputs(spec.inputs)
    n_blocks = -(-n_networks // block_size)
    blocks = tuple(range(n_blocks))
    tasks = [blocks[i:i + blocks_per_task] for i in range(0, n_blocks, blocks_per_task)]
    task = KernelBlockTask(spec, inputs.x, block_size, seed, memory_bytes)
    if map_fn is None:
        mom = _in_process_reduce(task, tasks)
    else:
        parts = list(map_fn(task, tasks))
        if len(parts) != len(tasks):
            raise KernelError(f"map_fn returned {len(parts)} results for {len(tasks)} tasks")
        mom = parts[0]
        for p in parts[1:]:
            mom = mom + p
    return finish_moments(spec, mom, blocks, block_size, seed)


def finish_moments(spec: ExperimentSpec, mom: _Moments, blocks: tuple[int, ...], block_size: int,
                   seed: int) -> EmpiricalKernel:
    """Mean and standard error of Phi_i = sigma_w^2 G_i + sigma_b^2 from the sums of G_i, G_i^2."""
    n = mom.n
    sw2, sb2 = spec.prior.sigma_w**2, spec.prior.sigma_b**2
    mean_g = mom.s1 / n
    var_g = np.maximum(mom.s2 / n - mean_g**2, 0.0) * (n / (n - 1))
    K = sw2 * mean_g + sb2
    K = (K + K.T) / 2
    stderr = sw2 * np.sqrt(var_g / n)
    return EmpiricalKernel(K=K, stderr=stderr, n_networks=n, blocks=blocks, block_size=block_size, seed=seed,
                           meta={"method": "empirical"})


def _depth(spec: ExperimentSpec) -> int:
    arch = spec.architecture
    return len(arch.hidden) if isinstance(arch, FCN) else len(arch.channels) + len(arch.dense)


def spec_kernel(spec: ExperimentSpec, kind: str = "analytic", inputs: InputSet | None = None,
                **empirical_kw: Any) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Kernel of ``kind`` ('analytic' or 'empirical') for a spec: (K, its standard error or
    None, JSON-able metadata)."""
    if spec.output.kind != "threshold":
        raise KernelError("the GP path models one threshold output (output.kind = 'threshold'); "
                          f"this spec has output.kind = {spec.output.kind!r}")
    if kind not in ("analytic", "empirical"):
        raise KernelError(f"kernel = {kind!r}: use 'analytic' (FCN or CNN without max pooling; relu/erf) or 'empirical' (any spec)")
    if kind == "analytic" and empirical_kw:
        raise KernelError(f"options {sorted(empirical_kw)} apply to kernel='empirical' only")
    try:
        with np.errstate(over="raise"):
            if kind == "analytic":
                K, stderr, meta = analytic_kernel(spec, inputs), None, {"kernel": "analytic"}
            else:
                ek = empirical_kernel(spec, inputs, **empirical_kw)
                K, stderr, meta = ek.K, ek.stderr, {"kernel": "empirical", "n_networks": ek.n_networks,
                                                    "block_size": ek.block_size, "seed": ek.seed,
                                                    "stderr_max": float(ek.stderr.max())}
    except (OverflowError, FloatingPointError):
        K = None
    if K is None or not np.all(np.isfinite(K)):
        raise KernelError(f"the {kind} kernel overflows float64 (prior.sigma_w = {spec.prior.sigma_w:g}, "
                          f"prior.sigma_b = {spec.prior.sigma_b:g}, {_depth(spec)} hidden layers): the variances grow "
                          "like sigma_w^(2 x depth); use smaller standard deviations")
    return K, stderr, meta


__all__ = ["analytic_kernel", "analytic_unsupported", "empirical_kernel", "nngp_layer", "spec_kernel", "EmpiricalKernel",
           "KernelBlockTask", "KernelError"]
