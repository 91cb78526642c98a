"""Float64 reference of random stream 2 and of the FCN forward pass, written independently of
volume.stream / volume.sampler from the definition in DESIGN.md ("Random stream"):

Philox4x32-10 (Salmon et al. 2011) of counter (q, i, 0, 0) under the key of (seed, block);
Box-Muller on 24-bit uniforms (or the uniform map) in float64; the first layer of a Gaussian
FCN on image inputs in the basis A = U S of the inputs; one network at a time in float64.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85


def philox(counter: list[np.ndarray], key: tuple[int, int]) -> list[np.ndarray]:
    """Philox4x32-10 on uint64 arrays holding 32-bit words: ten rounds of two 32 x 32 -> 64-bit
    products, their halves xored with the other words and the key, the key bumped by W."""
    x = [np.asarray(c, dtype=np.uint64) for c in counter]
    k = [int(key[0]), int(key[1])]
    low = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        a = x[0] * np.uint64(M0)
        b = x[2] * np.uint64(M1)
        x = [(b >> np.uint64(32)) ^ x[1] ^ np.uint64(k[0]), b & low,
             (a >> np.uint64(32)) ^ x[3] ^ np.uint64(k[1]), a & low]
        k = [(k[0] + W0) % 2**32, (k[1] + W1) % 2**32]
    return x


def key_of(seed: int, block: int) -> tuple[int, int]:
    s = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return int(s[0]), int(s[1])


def standard(kind: str, n_params: int, seed: int, block: int, draws: range) -> np.ndarray:
    """float64 (len(draws), P) standard numbers of the given draws of a block."""
    groups = (n_params + 3) // 4
    q = np.tile(np.arange(groups, dtype=np.uint64), len(draws))
    i = np.repeat(np.asarray(list(draws), dtype=np.uint64), groups)
    zero = np.zeros_like(q)
    x = philox([q, i, zero, zero], key_of(seed, block))
    k = [(w >> np.uint64(8)).astype(np.float64) for w in x]  # 24-bit integers
    if kind == "uniform":
        z = np.stack([math.sqrt(3) * (2 * kj + 1 - 2**24) / 2**24 for kj in k], axis=-1)
    else:
        out = []
        for a, b in ((k[0], k[1]), (k[2], k[3])):
            r = np.sqrt(-2 * np.log((a + 1) / 2**24))
            t = 2 * math.pi * b / 2**24
            out += [r * np.cos(t), r * np.sin(t)]
        z = np.stack(out, axis=-1)
    return z.reshape(len(draws), 4 * groups)[:, :n_params]


def basis(x: np.ndarray) -> np.ndarray:
    """U S of the thin SVD of x (M, d), numerical rank, each column of U signed so that its
    largest entry in size is positive (float64; the sampler rounds it to float32)."""
    u, s, _ = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    r = int((s > s[0] * max(x.shape) * np.finfo(float).eps).sum())
    u = u[:, :r] * s[:r]
    for j in range(r):
        if u[np.argmax(np.abs(u[:, j])), j] < 0:
            u[:, j] = -u[:, j]
    return u


def fcn_outputs(spec, x: np.ndarray, block: int, draws: range, in_basis: bool = False) -> np.ndarray:
    """float64 outputs (len(draws), M, units) of an FCN spec, one network at a time.
    ``in_basis``: the first layer is drawn on A = basis(x) with fan-in d (Gaussian prior)."""
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    d = x.shape[1]
    if in_basis:
        x = basis(x).astype(np.float32).astype(np.float64)
    widths = [x.shape[1], *spec.architecture.hidden, spec.output.units]
    fan_in = [d, *widths[1:-1]]
    biased = spec.prior.sigma_b > 0
    n_params = sum(o * i + (o if biased else 0) for i, o in zip(widths[:-1], widths[1:]))
    z = standard(spec.prior.kind, n_params, spec.seed, block, draws)
    act = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "erf": erf}[spec.architecture.activation]
    out = []
    for row in z:
        h, pos = x, 0
        for li, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
            w = row[pos:pos + o * i].reshape(o, i) * spec.prior.sigma_w / math.sqrt(fan_in[li])
            pos += o * i
            b = np.zeros(o)
            if biased:
                b = row[pos:pos + o] * spec.prior.sigma_b
                pos += o
            h = h @ w.T + b
            if li < len(widths) - 2:
                h = act(h)
        out.append(h)
    return np.stack(out)
