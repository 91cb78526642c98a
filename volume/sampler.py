"""Sampling blocks of prior draws and the functions they induce.

Block b of a spec is ``spec.block_size`` draws whose parameters come from one generator,
``block_generator(spec.seed, b)``, seeded by ``block_seed(seed, b)`` (the first 64-bit word
of numpy ``SeedSequence([seed, b])``), in the stream layout of
:func:`volume.models.draw_standard`: units of ``UNIT`` draws, each unit filling weight0,
bias0 (only if sigma_b > 0), weight1, ... with one generator call per tensor. So the
parameters of block b are exactly ``draw_params(spec, layers, block_size,
block_generator(seed, b))``, and the labels of a block are a pure function of (spec, b):
the same whatever sub-batch size evaluates it, whichever worker runs it, however often it
is retried.

A block is evaluated in sub-batches small enough for the activations to stay in cache;
the draws of a sub-batch are generated just before it is evaluated (:class:`BlockStream`),
into buffers that are reused for the whole block.

Two evaluation paths give the same function for the same draws:

* the general path (any architecture): scale the draws (:func:`volume.models.scale_params`)
  and run :func:`volume.models.forward`;
* the dense path (FCNs, :class:`DenseStack`): activations are kept as (draws, units, M),
  so the first layer is one matrix product W0 (n*h, d) @ X^T (d, M) for the whole
  sub-batch, later layers one batched product W_l @ H_{l-1}, biases enter through
  ``addmm``/``baddbmm`` and activations are applied in place. For ReLU with sigma_b = 0 the
  scaling of the weights is skipped: relu(c z) = c relu(z) for c > 0, so every
  pre-activation, and the output, is the scaled network's times the positive constant
  prod_l sigma_w / sqrt(fan_in_l), and the labels (sign or argmax) are unchanged.

The two paths sum in different orders, so in float32 they can disagree where an output is
within rounding (about 1e-6 relative) of a decision boundary; both are exact evaluations of
the same prior up to that rounding. Within one path the result of a draw does not depend on
the sub-batch it is evaluated in (tests/test_sampler_determinism.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from volume.activations import ACTIVATIONS
from volume.checks import positive_int
from volume.errors import VolumeError
from volume.inputs import InputSet, load_inputs
from volume.keys import pack_labels
from volume.models import (UNIT, Layer, fill_unit_, forward, labels_from_outputs, layer_shapes, scale_params,
                           stream_tensors)
from volume.spec import CNN, FCN, ExperimentSpec

DEFAULT_SUB_BATCH = 64
"""Largest sub-batch chosen automatically (``Sampler(sub_batch=None)``)."""

CACHE_BYTES = 2 << 20
"""Working-set target of an automatically chosen sub-batch (about one core's L2 cache)."""


def block_seed(seed: int, block: int) -> int:
    """64-bit seed of block ``block`` of a run with ``seed``."""
    if block < 0:
        raise ValueError(f"block id must be >= 0, got {block}")
    return int(np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint64)[0])


def block_generator(seed: int, block: int) -> torch.Generator:
    """The generator whose stream (see :func:`volume.models.draw_standard`) gives block ``block``."""
    return torch.Generator(device="cpu").manual_seed(block_seed(seed, block))


class BlockStream:
    """The standard draws of one block, produced unit by unit as sub-batches ask for them.

    ``fill(tensors, start, stop)`` writes draws [start, stop) of the block into the first
    stop - start rows of stream-order buffers (:func:`volume.models.stream_tensors`).
    Calls must come in increasing, contiguous order (start = the previous stop). A unit that
    lies wholly inside [start, stop) is drawn straight into the buffers; a unit cut by a
    sub-batch boundary is drawn once into a scratch unit and copied out piece by piece. The
    values are those of ``draw_standard(spec, layers, block_size, block_generator(seed, b))``.
    """

    def __init__(self, spec: ExperimentSpec, layers: list[Layer], block: int, dtype: torch.dtype = torch.float32):
        self.spec = spec
        self.layers = layers
        self.size = spec.block_size
        self.generator = block_generator(spec.seed, block)
        self.dtype = dtype
        self.position = 0  # next draw to hand out
        self.next_unit = 0  # next unit to draw from the generator
        self._scratch: list[torch.Tensor] | None = None
        self._scratch_unit = -1

    def _unit_bounds(self, u: int) -> tuple[int, int]:
        return u * UNIT, min((u + 1) * UNIT, self.size)

    def fill(self, tensors: list[torch.Tensor], start: int, stop: int) -> None:
        if start != self.position or not start < stop <= self.size:
            raise ValueError(f"draws [{start}, {stop}) asked for; the stream is at draw {self.position} "
                             f"of a block of {self.size}")
        for u in range(start // UNIT, (stop - 1) // UNIT + 1):
            lo, hi = self._unit_bounds(u)
            if start <= lo and hi <= stop:  # whole unit: draw in place
                assert u == self.next_unit
                fill_unit_(self.spec, [t[lo - start:hi - start] for t in tensors], 0, hi - lo, self.generator)
                self.next_unit += 1
                continue
            if self._scratch_unit != u:
                assert u == self.next_unit
                if self._scratch is None:
                    self._scratch = stream_tensors(self.spec, self.layers, UNIT, self.dtype)
                fill_unit_(self.spec, self._scratch, 0, hi - lo, self.generator)
                self._scratch_unit = u
                self.next_unit += 1
            a, z = max(lo, start), min(hi, stop)
            for t, s in zip(tensors, self._scratch):
                t[a - start:z - start].copy_(s[a - lo:z - lo])
        self.position = stop


class DenseStack:
    """The dense evaluation path for FCNs (see the module docstring).

    ``run(tensors, out)`` evaluates the n draws held in stream-order standard draws
    ``tensors`` (scaled here, in place, unless the ReLU/sigma_b = 0 invariance makes scaling
    unnecessary) and writes their labels (n, M) into the uint8 tensor ``out``. Activation
    buffers (max_batch, units, M) are allocated once and reused.
    """

    def __init__(self, spec: ExperimentSpec, layers: list[Layer], x: torch.Tensor, max_batch: int):
        self.spec = spec
        self.layers = layers
        self.m = x.shape[0]
        self.xt = x.reshape(self.m, -1).t().contiguous()  # (d, M)
        self.act_ = ACTIVATIONS[spec.architecture.activation].inplace()
        self.biased = spec.prior.sigma_b > 0
        self.homogeneous = ACTIVATIONS[spec.architecture.activation].homogeneous and not self.biased
        self.h = [torch.empty(max_batch, layer.weight_shape[0], self.m, dtype=x.dtype, device=x.device)
                  for layer in layers]

    def run(self, tensors: list[torch.Tensor], out: torch.Tensor) -> None:
        prior = self.spec.prior
        n = tensors[0].shape[0]
        it = iter(tensors)
        h: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            w = next(it)
            b = next(it) if self.biased else None
            if not self.homogeneous:
                w.mul_(prior.sigma_w / math.sqrt(layer.fan_in))
                if b is not None:
                    b.mul_(prior.sigma_b)
            o = layer.weight_shape[0]
            dst = self.h[i][:n]
            if h is None:  # first layer: one product for the whole sub-batch
                w2, d2 = w.view(n * o, -1), dst.view(n * o, self.m)
                if b is None:
                    torch.mm(w2, self.xt, out=d2)
                else:
                    torch.addmm(b.reshape(n * o, 1), w2, self.xt, out=d2)
            elif b is None:
                torch.bmm(w, h, out=dst)
            else:
                torch.baddbmm(b.view(n, o, 1), w, h, out=dst)
            if not layer.last:
                self.act_(dst)
            h = dst
        assert h is not None
        if self.spec.output.kind == "threshold":
            torch.gt(h[:, 0, :], 0, out=out.view(torch.bool))
        else:
            out.copy_(h.argmax(dim=1))


def activation_bytes(layers: list[Layer], input_shape: tuple[int, ...], m: int) -> int:
    """Bytes (float32) of one draw's activations on M inputs plus its parameters."""
    elems = 0
    shape = tuple(input_shape)
    for layer in layers:
        if layer.kind == "conv":
            c, h, w = layer.weight_shape[0], shape[-2], shape[-1]
            elems += c * h * w
            shape = (c, h // 2, w // 2) if layer.pool != "none" else (c, h, w)
        else:
            elems += layer.weight_shape[0]
    return 4 * (elems * m + sum(layer.n_params for layer in layers))


def auto_sub_batch(spec: ExperimentSpec, layers: list[Layer], input_shape: tuple[int, ...], m: int) -> int:
    """Sub-batch whose working set is about ``CACHE_BYTES``: a multiple of ``UNIT`` when
    that fits, at most ``DEFAULT_SUB_BATCH`` and the block size, at least 1."""
    s = CACHE_BYTES // max(1, activation_bytes(layers, input_shape, m))
    if s >= UNIT:
        s -= s % UNIT
    return max(1, min(s, DEFAULT_SUB_BATCH, spec.block_size))


def check_device(device: str) -> None:
    """Refuse a device this machine does not have: 'cpu', or 'cuda'/'cuda:K' with K < the GPU count."""
    name, _, index = str(device).partition(":")
    if name == "cpu" and not index:
        return
    if name != "cuda" or (index and not index.isdigit()):
        raise VolumeError(f"device {device!r} is unknown: use cpu, cuda or cuda:K")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(index or 0) >= count:
        raise VolumeError(f"device {device!r} was asked for but this machine has {count} CUDA device(s): "
                          "use --device cpu (the default)")


class Sampler:
    """Evaluates blocks of one spec; holds the input set, layer shapes and buffers between blocks.

    ``sub_batch``: draws evaluated at once (default: :func:`auto_sub_batch`); it changes
    speed and memory, never the labels. ``dense``: use the FCN dense path (default: for
    every FCN); ``dense=False`` forces the general path.
    """

    def __init__(self, spec: ExperimentSpec, inputs: InputSet | None = None, *,
                 sub_batch: int | None = None, device: str = "cpu", dense: bool | None = None):
        if spec.training is not None:
            raise ValueError("this spec describes optimizer-found functions (spec.training); use volume.train")
        if sub_batch is not None:
            positive_int(sub_batch, "sub_batch (--sub-batch; leave it out to choose it automatically)")
        check_device(device)
        self.spec = spec
        self.inputs = inputs if inputs is not None else load_inputs(spec.inputs)
        self.layers = layer_shapes(spec, self.inputs.shape)
        if sub_batch is None:
            sub_batch = auto_sub_batch(spec, self.layers, self.inputs.shape, self.inputs.n_inputs)
        self.sub_batch = min(sub_batch, spec.block_size)
        self.device = torch.device(device)
        self.x = torch.as_tensor(self.inputs.x, device=self.device)
        is_fcn = isinstance(spec.architecture, FCN)
        if dense and not is_fcn:
            raise ValueError("dense=True needs an FCN architecture")
        self.dense = is_fcn if dense is None else bool(dense)
        assert isinstance(spec.architecture, (FCN, CNN))
        self._buffers = stream_tensors(spec, self.layers, self.sub_batch)
        on_device = self.device.type != "cpu"
        self._device_buffers = [t.to(self.device) for t in self._buffers] if on_device else self._buffers
        self._stack = DenseStack(spec, self.layers, self.x, self.sub_batch) if self.dense else None

    @property
    def n_inputs(self) -> int:
        return self.inputs.n_inputs

    def labels(self, block: int) -> np.ndarray:
        """Labels (block_size, M) uint8 of block ``block``."""
        spec = self.spec
        stream = BlockStream(spec, self.layers, block)
        out = np.empty((spec.block_size, self.n_inputs), dtype=np.uint8)
        out_t = torch.from_numpy(out)
        with torch.no_grad():
            for start in range(0, spec.block_size, self.sub_batch):
                stop = min(start + self.sub_batch, spec.block_size)
                n = stop - start
                stream.fill(self._buffers, start, stop)
                tensors = [d[:n].copy_(t[:n]) if d is not t else t[:n]
                           for d, t in zip(self._device_buffers, self._buffers)]
                if self._stack is not None:
                    if self.device.type == "cpu":
                        self._stack.run(tensors, out_t[start:stop])
                    else:
                        lab = torch.empty(n, self.n_inputs, dtype=torch.uint8, device=self.device)
                        self._stack.run(tensors, lab)
                        out_t[start:stop].copy_(lab)
                else:
                    z = forward(spec, self.layers, scale_params(spec, self.layers, tensors), self.x)
                    out_t[start:stop].copy_(labels_from_outputs(spec, z))
        return out

    def keys(self, block: int) -> np.ndarray:
        """Packed keys (block_size, key_bytes) of block ``block``."""
        return pack_labels(self.labels(block), self.spec.output.classes)


def sample_block(spec: ExperimentSpec, block: int, **kwargs) -> np.ndarray:
    """Labels of one block (convenience wrapper around :class:`Sampler`)."""
    return Sampler(spec, **kwargs).labels(block)
