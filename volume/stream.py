"""The random stream: the standard parameter draws of block b, the same on every device.

Random-stream version 2 (``volume.spec.RANDOM_STREAM_VERSION``; DESIGN.md "Random stream").
Draw i (0 <= i < block_size) of block b of a spec with seed s has P standard numbers
z_0 .. z_{P-1}, its parameters in stream order (weight0 row-major, bias0 if sigma_b > 0,
weight1, ...; see :func:`volume.models.stream_tensors`). They come from the counter-based
generator Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3";
the generator of cuRAND and of PyTorch's CUDA sampler):

* key (k0, k1) = the two 32-bit words of ``numpy.random.SeedSequence([s, b]).generate_state(2, uint32)``;
* number group q = 0, 1, ... of draw i uses counter (q, i, 0, 0) and gives four 32-bit words
  x0, x1, x2, x3 = Philox4x32-10(counter, key);
* Gaussian prior: k_j = floor(x_j / 2^8) (24 bits); u = (k0 + 1) 2^-24 in (0, 1], t = k1 2^-24
  in [0, 1); z_{4q} = sqrt(-2 ln u) cos(2 pi t), z_{4q+1} = sqrt(-2 ln u) sin(2 pi t)
  (Box-Muller), and the same with (k2, k3) for z_{4q+2}, z_{4q+3};
* uniform prior: z_{4q+j} = sqrt(3) (2 k_j + 1 - 2^24) 2^-24, uniform on (-sqrt 3, sqrt 3)
  with unit variance (the numerator is an odd integer below 2^24 in size: exact in float32);
* numbers past P in the last group are discarded.

Every implementation (this module: numpy uint64 on the CPU, torch int64 on other devices; the
compiled kernel ``volume/csrc/kernel.h``; the Triton kernel of volume/triton_stream.py; the
float64 reference in tests/stream_reference.py) computes the same 32-bit words exactly; u and t
are exact in float32, so implementations differ only in the last bits of ln, sqrt, cos and sin.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10
_MASK = 0xFFFFFFFF


def block_key(seed: int, block: int) -> tuple[int, int]:
    """Philox key (k0, k1) of block ``block`` of a run with ``seed``."""
    if block < 0:
        raise ValueError(f"block id must be >= 0, got {block}")
    k = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return int(k[0]), int(k[1])


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * m, a int64 holding uint32 values.
    The multiplier is split in 16-bit halves so that no int64 product overflows."""
    p_lo = a * (m & 0xFFFF)
    p_hi = a * (m >> 16)
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & _MASK
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32(c: list[torch.Tensor], key: tuple[int, int]) -> list[torch.Tensor]:
    """Philox4x32-10 of counters ``c`` (four int64 tensors of uint32 values) under ``key``."""
    c0, c1, c2, c3 = c
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(c0, PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W[0]) & _MASK, (k1 + PHILOX_W[1]) & _MASK
    return [c0, c1, c2, c3]


def _philox_numpy(c: list[np.ndarray], key: tuple[int, int]) -> list[np.ndarray]:
    """:func:`philox4x32` on uint64 numpy arrays of uint32 values (exact 64-bit products)."""
    c0, c1, c2, c3 = c
    k0, k1 = key
    m0, m1, mask, s = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1]), np.uint64(_MASK), np.uint64(32)
    for _ in range(PHILOX_ROUNDS):
        p0 = c0 * m0
        p1 = c2 * m1
        c0, c1, c2, c3 = (p1 >> s) ^ c1 ^ np.uint64(k0), p1 & mask, (p0 >> s) ^ c3 ^ np.uint64(k1), p0 & mask
        k0, k1 = (k0 + PHILOX_W[0]) & _MASK, (k1 + PHILOX_W[1]) & _MASK
    return [c0, c1, c2, c3]


def block_words(n_params: int, key: tuple[int, int], start: int, stop: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The Philox words of draws [start, stop): int64 (stop - start, 4 * ceil(P / 4)),
    word j of draw i at [i - start, j]. On the CPU the words are computed with numpy's
    uint64 arithmetic (several times faster than torch's int64 kernels there)."""
    n, groups = stop - start, -(-n_params // 4)
    if torch.device(device).type == "cpu":
        q = np.broadcast_to(np.arange(groups, dtype=np.uint64), (n, groups))
        i = np.broadcast_to(np.arange(start, stop, dtype=np.uint64)[:, None], (n, groups))
        zero = np.zeros((n, groups), dtype=np.uint64)
        w = np.stack(_philox_numpy([q, i, zero, zero], key), axis=-1).reshape(n, 4 * groups)
        return torch.from_numpy(w.view(np.int64))
    q = torch.arange(groups, dtype=torch.int64, device=device).expand(n, groups)
    i = torch.arange(start, stop, dtype=torch.int64, device=device)[:, None].expand(n, groups)
    zero = torch.zeros((), dtype=torch.int64, device=device).expand(n, groups)
    return torch.stack(philox4x32([q, i, zero, zero], key), dim=-1).reshape(n, 4 * groups)


def standard_from_words(words: torch.Tensor, kind: str, n_params: int, dtype: torch.dtype) -> torch.Tensor:
    """Words (n, 4G) -> standard numbers (n, P) of ``kind`` ('gaussian' | 'uniform'), see the
    module docstring. u is exact in float32; the angle 2 pi t is reduced exactly to a quadrant
    n = round(4 t) and a remainder in [-pi/4, pi/4] (as in the compiled kernel), so that
    float32 cos and sin stay within a few ulp; float64 throughout when ``dtype`` is float64."""
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    k = words >> 8
    if kind == "uniform":
        z = (2.0 * k.to(ct) + (1.0 - 2.0 ** 24)).mul_(math.sqrt(3.0) * 2.0 ** -24)
    else:
        k = k.view(k.shape[0], -1, 2)
        r = torch.log((k[..., 0].to(ct) + 1.0).mul_(2.0 ** -24)).mul_(-2.0).sqrt_()
        quadrant = (k[..., 1] + (1 << 21)) >> 22
        a = (k[..., 1] - (quadrant << 22)).to(ct).mul_(math.pi / 2 * 2.0 ** -22)
        c, s = torch.cos(a), torch.sin(a)
        swap = (quadrant & 1).bool()
        cos = torch.where(swap, s, c).mul_(1.0 - ((quadrant + 1) & 2).to(ct))
        sin = torch.where(swap, c, s).mul_(1.0 - (quadrant & 2).to(ct))
        z = torch.stack([r * cos, r * sin], dim=-1).view(words.shape[0], -1)
    return z[:, :n_params].to(dtype)


def standard_draws(kind: str, n_params: int, key: tuple[int, int], start: int, stop: int,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard numbers (stop - start, P) of draws [start, stop) of the block with ``key``."""
    return standard_from_words(block_words(n_params, key, start, stop, device), kind, n_params, dtype)
