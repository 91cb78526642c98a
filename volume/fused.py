"""The compiled FCN sampler (``volume._fused``, built from volume/csrc at install) and its
fallback notice.

``FusedFCN(spec, layers, x)`` computes the packed keys of a block's draws in one call of
the C kernel (volume/csrc/kernel.h): per draw, the random stream's standard numbers
(volume.stream, Philox4x32-10 and Box-Muller in float32), the forward pass over the whole
input set with vectorised, register-blocked arithmetic (AVX-512, AVX2 or portable code,
chosen at run time from the CPU) and the labels packed into the key, without leaving the
core's cache. It supports FCNs with ReLU activations, either output rule and either
prior; :func:`unsupported` says why anything else is not.

If the extension was not built (no working C compiler at install), :func:`available` is
False and :func:`notice` gives the one-line message that the PyTorch path is used.
"""

from __future__ import annotations

import math

import numpy as np

from volume.keys import bits_per_label, key_bytes
from volume.models import Layer
from volume.spec import FCN, ExperimentSpec
from volume.stream import block_key

try:
    from volume import _fused
except ImportError as e:  # the optional extension was not built
    _fused = None
    _IMPORT_ERROR = str(e)
else:
    _IMPORT_ERROR = ""


def available() -> bool:
    return _fused is not None


def isas() -> list[str]:
    """Instruction sets the kernel can use on this CPU, best first (empty if not built)."""
    return list(_fused.isas()) if _fused is not None else []


def notice() -> str:
    """One line saying why the compiled sampler is not used (empty if it is available)."""
    if _fused is not None:
        return ""
    return ("volume: the compiled sampler (volume._fused) is not built, so the PyTorch sampler is used "
            f"(same draws, slower); reinstall with a working C compiler (`pip install -e .`) to build it ({_IMPORT_ERROR})")


def unsupported(spec: ExperimentSpec, device: str = "cpu") -> str:
    """Why the compiled kernel cannot draw ``spec`` (empty string if it can)."""
    if not isinstance(spec.architecture, FCN):
        return "the compiled sampler draws FCNs only"
    if spec.architecture.activation != "relu":
        return f"the compiled sampler supports activation 'relu', not {spec.architecture.activation!r}"
    if not str(device).startswith("cpu"):
        return "the compiled sampler runs on the CPU"
    if len(spec.architecture.hidden) + 1 > 64:
        return "the compiled sampler supports at most 64 layers"
    return ""


def standard(kind: str, n_params: int, key: tuple[int, int], start: int, stop: int, isa: str = "auto") -> np.ndarray:
    """The kernel's standard numbers (stop - start, P) float32: the stream of volume.stream."""
    out = np.empty((stop - start, n_params), dtype=np.float32)
    _fused.standard(out, n_params, int(kind == "uniform"), key[0], key[1], start, stop, isa)
    return out


class FusedFCN:
    """Keys of blocks of an FCN spec drawn by the compiled kernel.

    ``layers`` and ``x`` (M, d) are the sampler's (for image inputs of a Gaussian prior,
    the input basis of volume.basis and a first layer of fan-in d drawn in it). For ReLU
    with sigma_b = 0 the weights are not scaled: the labels are invariant to a positive
    scale of each layer (see volume.sampler).
    """

    def __init__(self, spec: ExperimentSpec, layers: list[Layer], x: np.ndarray, isa: str = "auto"):
        why = unsupported(spec)
        if why:
            raise ValueError(why)
        if _fused is None:
            raise ValueError(notice())
        self.spec = spec
        prior = spec.prior
        self.m = x.shape[0]
        x = np.asarray(x, dtype=np.float32).reshape(self.m, -1)
        mp = -(-self.m // 16) * 16
        self.xt = np.zeros((x.shape[1], mp), dtype=np.float32)  # inputs along the vector lanes, padded
        self.xt[:, :self.m] = x.T
        self.dims = [x.shape[1]] + [layer.weight_shape[0] for layer in layers]
        homogeneous = spec.architecture.activation == "relu" and prior.sigma_b == 0
        self.scales = [0.0 if homogeneous else prior.sigma_w / math.sqrt(layer.fan_in) for layer in layers]
        self.classes = spec.output.classes
        self.key_bytes = key_bytes(self.m, self.classes)
        self.isa = isa

    def keys(self, block: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Keys (stop - start, key_bytes) of draws [start, stop) of block ``block``."""
        spec = self.spec
        stop = spec.block_size if stop is None else stop
        out = np.empty((stop - start, self.key_bytes), dtype=np.uint8)
        k0, k1 = block_key(spec.seed, block)
        _fused.fcn_keys(out, self.xt, self.dims, self.scales, float(spec.prior.sigma_b), int(spec.prior.sigma_b > 0),
                        int(spec.prior.kind == "uniform"), int(spec.output.kind == "argmax"),
                        bits_per_label(self.classes), self.m, k0, k1, start, stop, self.isa)
        return out
