"""Architectures as stacked parameter draws, their batched forward, and single-network modules.

A network is a list of layers, each with a weight and a bias (``layer_shapes``).
FCN: dense layers; weight (out, in), fan_in = in. CNN: conv layers, weight
(C_out, C_in, k, k), fan_in = C_in k^2, 'same' padding, activation, optional 2x2 pooling;
then dense layers. The last layer has ``spec.output.units`` outputs and no activation.

``forward(spec, params, x)`` evaluates B networks at once: every tensor in ``params`` has a
leading draw dimension B, and there is no Python loop over draws (dense layers are one
batched matmul; conv layers are one grouped convolution with groups = B).

The standard (unit-variance) draws of a network are scaled by sigma_w / sqrt(fan_in) and
sigma_b (:func:`scale_params`). Tables (the sampler, optimizer tables, the empirical kernel)
take their standard draws from the counter-based random stream
(``volume.sampler.block_standard``, :mod:`volume.stream`); :func:`draw_standard` /
:func:`draw_params` draw single networks or small batches from a ``torch.Generator`` (units of
``UNIT`` draws, one generator call per parameter tensor and unit, biases not drawn when
sigma_b = 0) for training inits, flatness measures and tests.

``Network`` is the same architecture as an ``nn.Module`` for one parameter set (training,
Hessians); its forward is the batched forward with B = 1, so the two always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from volume.activations import ACTIVATIONS
from volume.spec import CNN, FCN, ExperimentSpec



@dataclass(frozen=True)
class Layer:
    kind: str  # "dense" | "conv"
    weight_shape: tuple[int, ...]
    fan_in: int
    pool: str = "none"  # after the activation, conv layers only
    last: bool = False

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (self.weight_shape[0],)

    @property
    def n_params(self) -> int:
        return math.prod(self.weight_shape) + self.weight_shape[0]


def layer_shapes(spec: ExperimentSpec, input_shape: tuple[int, ...]) -> list[Layer]:
    """The layers of ``spec.architecture`` on inputs of ``input_shape``."""
    arch = spec.architecture
    units = spec.output.units
    layers: list[Layer] = []
    if isinstance(arch, FCN):
        d = math.prod(input_shape)
        widths = list(arch.hidden) + [units]
        for i, w in enumerate(widths):
            layers.append(Layer("dense", (w, d), d, last=i == len(widths) - 1))
            d = w
        return layers
    assert isinstance(arch, CNN)
    c, h, w = input_shape
    k = arch.kernel_size
    for ch in arch.channels:
        pool = arch.pool if (arch.pool != "none" and h >= 2 and w >= 2) else "none"
        layers.append(Layer("conv", (ch, c, k, k), c * k * k, pool=pool))
        c = ch
        if pool != "none":
            h, w = h // 2, w // 2
    d = c * h * w
    widths = list(arch.dense) + [units]
    for i, wd in enumerate(widths):
        layers.append(Layer("dense", (wd, d), d, last=i == len(widths) - 1))
        d = wd
    return layers


def param_names(layers: list[Layer]) -> list[str]:
    return [n for i in range(len(layers)) for n in (f"weight{i}", f"bias{i}")]


def n_params(layers: list[Layer]) -> int:
    return sum(layer.n_params for layer in layers)


UNIT = 32
"""Draws per unit of the random stream (see :func:`draw_standard`); part of the stream layout."""


def fill_standard_(t: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Fill contiguous ``t`` in place with unit-variance draws: N(0, 1) (``kind='gaussian'``)
    or U(-sqrt 3, sqrt 3) (``'uniform'``), one generator call over all of ``t``."""
    if kind == "gaussian":
        return t.normal_(generator=generator)
    return t.uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=generator)


def stream_tensors(spec: ExperimentSpec, layers: list[Layer], batch: int,
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Empty buffers for ``batch`` draws, in stream order: weight0 (batch, *shape), bias0
    (batch, out) [only if sigma_b > 0], weight1, ... (see :func:`draw_standard`)."""
    out: list[torch.Tensor] = []
    for layer in layers:
        out.append(torch.empty(batch, *layer.weight_shape, dtype=dtype))
        if spec.prior.sigma_b > 0:
            out.append(torch.empty(batch, *layer.bias_shape, dtype=dtype))
    return out


def fill_unit_(spec: ExperimentSpec, tensors: list[torch.Tensor], lo: int, hi: int,
               generator: torch.Generator) -> None:
    """Draw one unit, draws ``lo:hi`` of the stream-order ``tensors``: one generator call
    per tensor, in order (weight0, bias0, weight1, ...)."""
    for t in tensors:
        fill_standard_(t[lo:hi], spec.prior.kind, generator)


def draw_standard(spec: ExperimentSpec, layers: list[Layer], batch: int, generator: torch.Generator,
                  dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """``batch`` unscaled (unit-variance) parameter draws, as the stream-order tensors of
    :func:`stream_tensors`.

    Stream layout (the randomness contract of the whole project): draws come in units of
    ``UNIT`` consecutive draws (the last unit of a batch holds the remainder). Units are
    drawn in order from ``generator``; within unit [lo, hi) the generator fills, one call
    each and in this order, weight0[lo:hi] (shape (hi-lo, *weight_shape), row-major),
    bias0[lo:hi], weight1[lo:hi], bias1[lo:hi], ...; biases are not drawn at all when
    sigma_b == 0 (they are zero). A fill is ``normal_`` (Gaussian prior) or
    ``uniform_(-sqrt 3, sqrt 3)`` (uniform prior). Draw i therefore depends only on the
    generator's seed, on i and on the unit it sits in, never on how a caller groups draws
    into sub-batches; the first k*UNIT draws of a batch are the same for every batch size.
    """
    tensors = stream_tensors(spec, layers, batch, dtype)
    for lo in range(0, batch, UNIT):
        fill_unit_(spec, tensors, lo, min(lo + UNIT, batch), generator)
    return tensors


def scale_params(spec: ExperimentSpec, layers: list[Layer], tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stream-order standard draws -> the named parameters of the prior (new tensors):
    weight_i * sigma_w / sqrt(fan_in_i), bias_i * sigma_b (zeros when sigma_b == 0)."""
    prior = spec.prior
    it = iter(tensors)
    out: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        w = next(it)
        out[f"weight{i}"] = w * (prior.sigma_w / math.sqrt(layer.fan_in))
        if prior.sigma_b > 0:
            out[f"bias{i}"] = next(it) * prior.sigma_b
        else:
            out[f"bias{i}"] = w.new_zeros(w.shape[0], *layer.bias_shape)
    return out


def draw_params(spec: ExperimentSpec, layers: list[Layer], batch: int, generator: torch.Generator,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``batch`` parameter sets from the prior, stacked along dim 0 (weights (batch, out, in)).

    Weights ~ N(0, sigma_w^2 / fan_in) and biases ~ N(0, sigma_b^2), or uniform with the
    same variances: the standard draws of :func:`draw_standard` (whose docstring gives the
    stream layout) scaled by sigma_w / sqrt(fan_in) and sigma_b.
    """
    return scale_params(spec, layers, draw_standard(spec, layers, batch, generator, dtype))


def forward(spec: ExperimentSpec, layers: list[Layer], params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs (B, M, units) of B stacked networks on inputs x (M, *input_shape)."""
    act = ACTIVATIONS[spec.architecture.activation].fn()
    batch = params["weight0"].shape[0]
    m = x.shape[0]
    h: torch.Tensor | None = None  # dense: (B, M, d); conv: (M, B*C, H, W)
    conv_done = False
    for i, layer in enumerate(layers):
        w, b = params[f"weight{i}"], params[f"bias{i}"]
        if layer.kind == "conv":
            co = layer.weight_shape[0]
            inp = x if h is None else h
            groups = 1 if h is None else batch
            h = F.conv2d(inp, w.reshape(batch * co, *layer.weight_shape[1:]), b.reshape(batch * co),
                         padding=layer.weight_shape[-1] // 2, groups=groups)
            h = act(h)
            if layer.pool == "max":
                h = F.max_pool2d(h, 2)
            elif layer.pool == "avg":
                h = F.avg_pool2d(h, 2)
            continue
        if layer.kind == "dense" and h is not None and h.dim() == 4 and not conv_done:
            h = h.reshape(m, batch, -1).transpose(0, 1)  # (B, M, C*H*W), channel-major like flatten
            conv_done = True
        if h is None:
            z = torch.matmul(x.reshape(m, -1), w.transpose(1, 2))  # (B, M, out)
        else:
            z = torch.bmm(h, w.transpose(1, 2))
        z = z + b[:, None, :]
        h = z if layer.last else act(z)
    assert h is not None
    return h


def labels_from_outputs(spec: ExperimentSpec, z: torch.Tensor) -> torch.Tensor:
    """(B, M, units) outputs -> (B, M) uint8 labels: 1[z > 0] or argmax."""
    if spec.output.kind == "threshold":
        return (z[..., 0] > 0).to(torch.uint8)
    return z.argmax(dim=-1).to(torch.uint8)


class Network(torch.nn.Module):
    """One network of the spec's architecture, parameters named weight0, bias0, ...

    ``forward(x)`` takes x of shape (M, *input_shape) and returns (M, units)."""

    def __init__(self, spec: ExperimentSpec, input_shape: tuple[int, ...]):
        super().__init__()
        self.spec = spec
        self.input_shape = tuple(input_shape)
        self.layers = layer_shapes(spec, self.input_shape)
        for i, layer in enumerate(self.layers):
            self.register_parameter(f"weight{i}", torch.nn.Parameter(torch.zeros(layer.weight_shape)))
            self.register_parameter(f"bias{i}", torch.nn.Parameter(torch.zeros(layer.bias_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {n: p.unsqueeze(0) for n, p in self.named_parameters()}
        return forward(self.spec, self.layers, params, x)[0]

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return labels_from_outputs(self.spec, self.forward(x)[None])[0]

    @torch.no_grad()
    def load_draw(self, params: dict[str, torch.Tensor], i: int = 0) -> "Network":
        """Copy draw i of stacked ``params`` into this module."""
        for n, p in self.named_parameters():
            p.copy_(params[n][i])
        return self

    @torch.no_grad()
    def sample_prior_(self, generator: torch.Generator) -> "Network":
        """Draw this network's parameters from the spec's prior."""
        return self.load_draw(draw_params(self.spec, self.layers, 1, generator))


def build_network(spec: ExperimentSpec, input_shape: tuple[int, ...]) -> Network:
    return Network(spec, input_shape)
