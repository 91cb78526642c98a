"""Architectures as stacked parameter draws, their batched forward, and single-network modules.

A network is a list of layer objects (``layer_shapes``; each kind's shapes, draw order,
forward, NNGP kernel step and rescaling rule live in :mod:`volume.layers`).
FCN: dense layers; weight (out, in), fan_in = in. CNN: conv layers, weight
(C_out, C_in, k, k), fan_in = C_in k^2, 'same' padding, activation, optional 2x2 pooling;
then dense layers. The last layer has ``spec.output.units`` outputs and no activation.

``forward(spec, params, x)`` evaluates B networks at once: every tensor in ``params`` has a
leading draw dimension B, and there is no Python loop over draws (dense layers are one
batched matmul; conv layers are one grouped convolution with groups = B); it is the same
code (:func:`volume.layers.run`) the sampler, training, flatness measures and the nested
estimator run.

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

import torch

from volume import layers as _layers
from volume.activations import ACTIVATIONS
from volume.layers import Layer, layer_shapes
from volume.spec import ExperimentSpec

__all__ = ["Layer", "layer_shapes", "param_names", "n_params", "UNIT", "stream_tensors", "draw_standard",
           "draw_params", "scale_params", "stream_pairs", "forward", "labels_from_outputs", "Network",
           "build_network"]


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
    biased = spec.prior.sigma_b > 0
    return [torch.empty(batch, *shape, dtype=dtype) for layer in layers for shape in layer.stream_shapes(biased)]


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
    out: dict[str, torch.Tensor] = {}
    for i, (layer, (w, b)) in enumerate(zip(layers, stream_pairs(spec, tensors))):
        out[f"weight{i}"], out[f"bias{i}"] = layer.scale(w, b, prior.sigma_w, prior.sigma_b)
    return out


def stream_pairs(spec: ExperimentSpec, tensors: list[torch.Tensor]):
    """Stream-order tensors -> (weight, bias or None) per layer (the bias is not drawn when sigma_b = 0)."""
    it = iter(tensors)
    for w in it:
        yield w, (next(it) if spec.prior.sigma_b > 0 else None)


def draw_params(spec: ExperimentSpec, layers: list[Layer], batch: int, generator: torch.Generator,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``batch`` parameter sets from the prior, stacked along dim 0 (weights (batch, out, in)).

    Weights ~ N(0, sigma_w^2 / fan_in) and biases ~ N(0, sigma_b^2), or uniform with the
    same variances: the standard draws of :func:`draw_standard` (whose docstring gives the
    stream layout) scaled by sigma_w / sqrt(fan_in) and sigma_b.
    """
    return scale_params(spec, layers, draw_standard(spec, layers, batch, generator, dtype))


def forward(spec: ExperimentSpec, layers: list[Layer], params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs (B, M, units) of B stacked networks on inputs x (M, *input_shape): the layers'
    own batched forwards (:func:`volume.layers.run`; the sampler runs the same code)."""
    act = ACTIVATIONS[spec.architecture.activation]
    pairs = ((params[f"weight{i}"], params[f"bias{i}"]) for i in range(len(layers)))
    return _layers.features(_layers.run(layers, pairs, x, act), params["weight0"].shape[0])


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
