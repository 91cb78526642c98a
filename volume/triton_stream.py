"""Random stream 2 on a GPU: a Triton kernel for the standard numbers of a block's draws.

The kernel computes exactly the words of :mod:`volume.stream` (Philox4x32-10 of counters
(q, i, 0, 0) under the block's key, with 32-bit ``umulhi``) and the same transform in float32
(Box-Muller with exact quadrant reduction, or the uniform map), one program per (draw, group
of BLOCK counters), numbers kept in registers until they are stored in stream order. It is
what ``volume.sampler.block_standard`` uses on a CUDA device when Triton is installed (the
torch int64 path of volume.stream otherwise moves ~1 KB of memory per number). Without a GPU
it runs on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton
is imported), which is how tests/test_triton_stream.py checks it against the float64 reference.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional
    triton = None


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _stream_kernel(out_ptr, n_params, n_groups, start, k0, k1, UNIFORM: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0)
        q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        zero = tl.zeros([BLOCK], dtype=tl.uint32)
        c0 = q.to(tl.uint32)
        c1 = zero + (start + i).to(tl.uint32)
        c2 = zero
        c3 = zero
        key0 = zero + k0.to(tl.uint32)
        key1 = zero + k1.to(tl.uint32)
        m0 = tl.full([BLOCK], 0xD2511F53, tl.uint32)
        m1 = tl.full([BLOCK], 0xCD9E8D57, tl.uint32)
        w0 = tl.full([BLOCK], 0x9E3779B9, tl.uint32)
        w1 = tl.full([BLOCK], 0xBB67AE85, tl.uint32)
        for _ in tl.static_range(10):
            hi0 = tl.umulhi(c0, m0)
            lo0 = c0 * m0
            hi1 = tl.umulhi(c2, m1)
            lo1 = c2 * m1
            c0, c1, c2, c3 = hi1 ^ c1 ^ key0, lo1, hi0 ^ c3 ^ key1, lo0
            key0 = key0 + w0
            key1 = key1 + w1
        x0 = (c0 >> 8).to(tl.int32)
        x1 = (c1 >> 8).to(tl.int32)
        x2 = (c2 >> 8).to(tl.int32)
        x3 = (c3 >> 8).to(tl.int32)
        if UNIFORM:
            s = 1.7320508075688772 / 16777216.0
            z0 = (2 * x0 + (1 - 16777216)).to(tl.float32) * s
            z1 = (2 * x1 + (1 - 16777216)).to(tl.float32) * s
            z2 = (2 * x2 + (1 - 16777216)).to(tl.float32) * s
            z3 = (2 * x3 + (1 - 16777216)).to(tl.float32) * s
        else:
            z0, z1 = _box_muller(x0, x1)
            z2, z3 = _box_muller(x2, x3)
        base = out_ptr + i.to(tl.int64) * n_params + 4 * q
        tl.store(base, z0, mask=4 * q < n_params)
        tl.store(base + 1, z1, mask=4 * q + 1 < n_params)
        tl.store(base + 2, z2, mask=4 * q + 2 < n_params)
        tl.store(base + 3, z3, mask=4 * q + 3 < n_params)

    @triton.jit
    def _box_muller(ka, kb):
        r = tl.sqrt(-2.0 * tl.log((ka + 1).to(tl.float32) * (1.0 / 16777216.0)))
        n = (kb + (1 << 21)) >> 22  # quadrant round(4 t)
        a = (kb - (n << 22)).to(tl.float32) * (1.5707963267948966 / 4194304.0)
        c = tl.cos(a)
        s = tl.sin(a)
        swap = (n & 1) != 0
        cc = tl.where(swap, s, c) * (1.0 - ((n + 1) & 2).to(tl.float32))
        ss = tl.where(swap, c, s) * (1.0 - (n & 2).to(tl.float32))
        return r * cc, r * ss


def standard_draws(kind: str, n_params: int, key: tuple[int, int], start: int, stop: int,
                   device: torch.device | str, block: int = 128) -> torch.Tensor:
    """float32 (stop - start, P) standard numbers of draws [start, stop) on ``device`` (CUDA, or
    CPU under TRITON_INTERPRET=1): the same numbers as volume.stream.standard_draws."""
    if triton is None:
        raise RuntimeError("Triton is not installed (pip install triton)")
    n, groups = stop - start, math.ceil(n_params / 4)
    out = torch.empty((n, n_params), dtype=torch.float32, device=device)
    grid = (n, triton.cdiv(groups, block))
    _stream_kernel[grid](out, n_params, groups, start, key[0], key[1], UNIFORM=kind == "uniform", BLOCK=block)
    return out
