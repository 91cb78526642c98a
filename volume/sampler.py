"""Sampling blocks of prior draws and the functions they induce.

Block b of a spec is ``spec.block_size`` draws whose standard numbers come from the
counter-based random stream of :mod:`volume.stream` (random stream 2: Philox4x32-10 keyed by
(seed, b), counters (number group, draw)): draw i's parameters are a pure function of
(spec, b, i), whatever sub-batch, backend, device or worker evaluates it. For image inputs of
a Gaussian FCN the first layer is drawn in the basis of the input set (:mod:`volume.basis`):
r = rank(X) numbers per hidden unit instead of d, the same distribution of functions.

Two backends compute a block's keys (``Sampler(backend=...)``; the environment variable
``VOLUME_BACKEND`` sets the default, the CLI's ``--backend`` sets that):

* ``compiled`` (:mod:`volume.fused`): the C kernel draws each draw's numbers and evaluates it
  on the whole input set in cache, vectorised, and writes its key; FCNs with ReLU;
* ``torch``: the reference path, any architecture and device: the stream in torch/numpy
  integer arithmetic (:func:`block_standard`), sub-batches small enough for the activations
  to stay in cache, evaluated either by the general path (scale with
  :func:`volume.models.scale_params`, run :func:`volume.models.forward`) or, for FCNs, the
  dense path (:class:`DenseStack`): the same layer forwards (:mod:`volume.layers`:
  activations kept as (draws, units, M), the first layer one matrix product
  W0 (n*h, d) @ X^T (d, M) for the whole sub-batch, later layers one batched product, biases
  through ``addmm``/``baddbmm``) writing into buffers reused between sub-batches, activations
  in place, parameters scaled in place. For ReLU with
  sigma_b = 0 the weights are not scaled: relu(c z) = c relu(z) for c > 0, so the output is
  the scaled network's times a positive constant and the labels (sign or argmax) are the same.
* ``auto`` (default): ``compiled`` where it applies and is built, else ``torch`` (with a
  one-line notice when the extension is missing).

The backends sum in different orders and compute ln, sqrt, cos and sin to float32 accuracy
in different ways, so for the same draw their outputs differ by rounding (about 1e-6
relative): the labels agree except where an output is that close to a decision boundary
(tests/test_fused.py measures it against a float64 reference). Within one backend the result
of a draw does not depend on the sub-batch it is evaluated in.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

from volume import fused, triton_stream
from volume.activations import ACTIVATIONS
from volume.basis import basis_layers, uses_basis
from volume.checks import positive_int
from volume.errors import VolumeError
from volume.inputs import InputSet, load_inputs
from volume.keys import pack_labels, unpack_keys
from volume.layers import run as run_layers
from volume.layers import walk
from volume.models import Layer, forward, labels_from_outputs, layer_shapes, scale_params, stream_pairs
from volume.spec import CNN, FCN, ExperimentSpec
from volume.stream import block_key, standard_draws

DEFAULT_SUB_BATCH = 64
"""Largest sub-batch chosen automatically (``Sampler(sub_batch=None)``)."""

CACHE_BYTES = 2 << 20
"""Working-set target of an automatically chosen sub-batch (about one core's L2 cache)."""

BACKENDS = ("auto", "compiled", "torch")
BACKEND_ENV = "VOLUME_BACKEND"
STREAM_ENV = "VOLUME_STREAM"

_NOTICE_GIVEN = False


class BackendError(VolumeError, ValueError):
    """A backend that cannot draw the spec here (the CLI prints it as one line)."""


def stream_sizes(spec: ExperimentSpec, layers: list[Layer]) -> list[tuple[int, ...]]:
    """Shapes (per draw) of the stream-order tensors: weight0, bias0 (if sigma_b > 0), weight1, ..."""
    return [shape for layer in layers for shape in layer.stream_shapes(spec.prior.sigma_b > 0)]


def block_standard(spec: ExperimentSpec, layers: list[Layer], block: int, start: int, stop: int, *,
                   seed: int | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Standard (unscaled) parameters of draws [start, stop) of block ``block`` (seed default
    ``spec.seed``), as stream-order tensors (n, *shape): the random stream of volume.stream.

    In float32 on the CPU the numbers come from the compiled kernel's generator where it is
    built (about 10x faster than the numpy/torch integer arithmetic of volume.stream, the
    same numbers to float32 rounding); ``VOLUME_STREAM=numpy`` forces volume.stream. On a
    CUDA device they come from the Triton kernel of :mod:`volume.triton_stream` where Triton
    is installed, else from volume.stream's torch integer arithmetic on the device."""
    shapes = stream_sizes(spec, layers)
    sizes = [math.prod(s) for s in shapes]
    key = block_key(spec.seed if seed is None else seed, block)
    kind = torch.device(device).type
    if fused.available() and dtype == torch.float32 and kind == "cpu" and os.environ.get(STREAM_ENV, "auto") != "numpy":
        z = torch.from_numpy(fused.standard(spec.prior.kind, sum(sizes), key, start, stop))
    elif kind == "cuda" and dtype == torch.float32 and triton_stream.available():
        z = triton_stream.standard_draws(spec.prior.kind, sum(sizes), key, start, stop, device)
    else:
        z = standard_draws(spec.prior.kind, sum(sizes), key, start, stop, device, dtype)
    n = stop - start
    return [t.reshape(n, *shape).contiguous() for t, shape in zip(z.split(sizes, dim=1), shapes)]


def resolve_backend(backend: str | None) -> str:
    backend = os.environ.get(BACKEND_ENV, "auto") if backend is None else backend
    if backend not in BACKENDS:
        raise BackendError(f"backend = {backend!r} is invalid: choose one of {', '.join(BACKENDS)} "
                         f"(argument backend= or the environment variable {BACKEND_ENV})")
    return backend


class DenseStack:
    """The dense evaluation path for FCNs (see the module docstring).

    ``run(tensors, out)`` evaluates the n draws held in stream-order standard draws
    ``tensors`` (scaled here, in place, unless the ReLU/sigma_b = 0 invariance makes scaling
    unnecessary) and writes their labels (n, M) into the uint8 tensor ``out``. The forward is
    the layers' own (:func:`volume.layers.run`) writing into activation buffers
    (max_batch, units, M), allocated once and reused, with the activation in place.
    """

    def __init__(self, spec: ExperimentSpec, layers: list[Layer], x: torch.Tensor, max_batch: int):
        self.spec = spec
        self.layers = layers
        self.m = x.shape[0]
        self.xt = layers[0].inputs(x)  # (d, M)
        self.act = ACTIVATIONS[spec.architecture.activation]
        self.homogeneous = self.act.homogeneous and spec.prior.sigma_b == 0
        self.h = [torch.empty(max_batch, layer.weight_shape[0], self.m, dtype=x.dtype, device=x.device)
                  for layer in layers]

    def run(self, tensors: list[torch.Tensor], out: torch.Tensor) -> None:
        prior = self.spec.prior
        pairs = list(stream_pairs(self.spec, tensors))
        if not self.homogeneous:
            for layer, (w, b) in zip(self.layers, pairs):
                layer.scale_(w, b, prior.sigma_w, prior.sigma_b)
        h = run_layers(self.layers, pairs, self.xt, self.act, self.h, prepared=True)  # (n, units, M)
        if self.spec.output.kind == "threshold":
            torch.gt(h[:, 0, :], 0, out=out.view(torch.bool))
        else:
            out.copy_(h.argmax(dim=1))


def activation_bytes(layers: list[Layer], input_shape: tuple[int, ...], m: int) -> int:
    """Bytes (float32) of one draw's activations on M inputs plus its parameters."""
    elems = sum(layer.weight_shape[0] * layer.positions(shape) for layer, shape in walk(layers, input_shape))
    return 4 * (elems * m + sum(layer.n_params for layer in layers))


def auto_sub_batch(spec: ExperimentSpec, layers: list[Layer], input_shape: tuple[int, ...], m: int) -> int:
    """Sub-batch whose working set is about ``CACHE_BYTES``: at most ``DEFAULT_SUB_BATCH``
    and the block size, at least 1."""
    s = CACHE_BYTES // max(1, activation_bytes(layers, input_shape, m))
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

    ``sub_batch``: draws evaluated at once by the torch backend (default:
    :func:`auto_sub_batch`); it changes speed and memory, never the labels. ``dense``: use the
    FCN dense path of the torch backend (default: for every FCN); ``dense=False`` forces the
    general path. ``backend``: 'auto' | 'compiled' | 'torch' (see the module docstring);
    ``isa``: the compiled kernel's instruction set ('auto' | 'avx512' | 'avx2' | 'generic').
    ``basis=False`` draws the first layer in full even where the input basis applies (other
    draws, the same distribution; for tests and comparisons).
    """

    def __init__(self, spec: ExperimentSpec, inputs: InputSet | None = None, *,
                 sub_batch: int | None = None, device: str = "cpu", dense: bool | None = None,
                 backend: str | None = None, isa: str = "auto", basis: bool | None = None):
        global _NOTICE_GIVEN
        if spec.training is not None:
            raise ValueError("this spec describes optimizer-found functions (spec.training); use volume.train")
        if sub_batch is not None:
            positive_int(sub_batch, "sub_batch (--sub-batch; leave it out to choose it automatically)")
        check_device(device)
        backend = resolve_backend(backend)
        self.spec = spec
        self.inputs = inputs if inputs is not None else load_inputs(spec.inputs)
        self.layers = layer_shapes(spec, self.inputs.shape)
        x = self.inputs.x
        self.basis = uses_basis(spec) if basis is None else bool(basis) and uses_basis(spec)
        if self.basis:
            self.layers, x = basis_layers(self.layers, x)
            self.basis = x is not self.inputs.x
        if sub_batch is None:
            sub_batch = auto_sub_batch(spec, self.layers, tuple(x.shape[1:]), self.inputs.n_inputs)
        self.sub_batch = min(sub_batch, spec.block_size)
        self.device = torch.device(device)
        self.x = torch.as_tensor(x, device=self.device)
        is_fcn = isinstance(spec.architecture, FCN)
        if dense and not is_fcn:
            raise ValueError("dense=True needs an FCN architecture")
        self.dense = is_fcn if dense is None else bool(dense)
        assert isinstance(spec.architecture, (FCN, CNN))
        why = fused.unsupported(spec, device) or fused.notice()
        if backend == "compiled" and why:
            raise BackendError(f"backend 'compiled' cannot draw this spec: {why}; use --backend torch or auto")
        if backend == "auto" and dense is not False and not why:
            backend = "compiled"
        elif backend == "auto":
            if fused.notice() and not fused.unsupported(spec, device) and not _NOTICE_GIVEN:
                print(fused.notice(), file=sys.stderr)
                _NOTICE_GIVEN = True
            backend = "torch"
        self.backend = backend
        self._fused = fused.FusedFCN(spec, self.layers, np.asarray(x), isa) if backend == "compiled" else None
        self._stack = (DenseStack(spec, self.layers, self.x, self.sub_batch)
                       if self.dense and self._fused is None else None)

    @property
    def n_inputs(self) -> int:
        return self.inputs.n_inputs

    def labels(self, block: int) -> np.ndarray:
        """Labels (block_size, M) uint8 of block ``block``."""
        spec = self.spec
        if self._fused is not None:
            return unpack_keys(self._fused.keys(block), self.n_inputs, spec.output.classes)
        out = np.empty((spec.block_size, self.n_inputs), dtype=np.uint8)
        out_t = torch.from_numpy(out)
        with torch.no_grad():
            for start in range(0, spec.block_size, self.sub_batch):
                stop = min(start + self.sub_batch, spec.block_size)
                n = stop - start
                tensors = block_standard(spec, self.layers, block, start, stop, device=self.device)
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
        if self._fused is not None:
            return self._fused.keys(block)
        return pack_labels(self.labels(block), self.spec.output.classes)


def sample_block(spec: ExperimentSpec, block: int, **kwargs) -> np.ndarray:
    """Labels of one block (convenience wrapper around :class:`Sampler`)."""
    return Sampler(spec, **kwargs).labels(block)
