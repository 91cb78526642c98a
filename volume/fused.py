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


CHUNK = getattr(_fused, "CHUNK", 64)  # inputs per chunk of the kernel's forward pass (kernel.h CHUNK)
VECTOR_WIDTH = {"avx512": 16, "avx2": 8, "generic": 4}  # floats per vector of each instruction set
PLAN_GAIN = 0.7  # use a first-layer plan when it needs at most this fraction of the dense FMAs (measured:
# 0.36 of them on boolean7 gives +4-5% draws/s, 0.6-0.67 on pm1 cubes +0.4-3%, 0.47 on raw MNIST +70%)


def aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data start on an ``align``-byte boundary: the kernel
    loads whole vectors of xt and px with aligned loads, and uses such arrays in place (others
    it copies on every call)."""
    a = np.asarray(a)
    raw = np.empty(a.nbytes + align, dtype=np.uint8)
    off = -raw.ctypes.data % align
    out = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def colex_order(x: np.ndarray) -> np.ndarray:
    """np.lexsort(x.T): the rows of x (m, d) sorted by (x_{d-1}, ..., x_0), ties in index order.

    lexsort makes one stable pass per coordinate (0.5 s for 10,000 x 661 inputs); here the last
    coordinate is sorted first and only the rows it leaves tied are sorted by the rest, so inputs
    whose last coordinate already tells them apart (an input basis, volume.basis) cost one sort."""
    m, d = x.shape
    if d == 0:
        return np.arange(m)
    order = np.argsort(x[:, d - 1], kind="stable")
    last = x[order, d - 1]
    tie = last[1:] == last[:-1]  # sorted rows i and i + 1 agree on x_{d-1}
    if d == 1 or not tie.any():
        return order
    in_tie = np.zeros(m, dtype=bool)
    in_tie[1:] |= tie
    in_tie[:-1] |= tie
    at = np.flatnonzero(in_tie)  # sorted positions of tied rows (each tie a contiguous run)
    run = np.concatenate(([0], np.cumsum(~tie)))[at]  # which run of equal x_{d-1}
    rows = order[at]  # in index order within each run (the sort is stable)
    order[at] = rows[np.lexsort((*x[rows, :d - 1].T, run))]  # keys of their own dtypes: no float64 copy
    return order


def _first_equal(rows: np.ndarray) -> np.ndarray:
    """For each row of ``rows`` (n, w) uint32, the index of the first row equal to it (bit for bit).

    Rows are told apart by a 64-bit hash (two sums of the words times odd constants, mod 2^32)
    sorted as integers, and the answer is then checked word for word; only if two different rows
    share a hash are they compared as byte strings (np.unique over the rows, ~10x slower)."""
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    mult = np.random.default_rng(0x9E3779B9).integers(0, 2 ** 31, size=(rows.shape[1], 2), dtype=np.uint32) * 2 + 1
    h = np.zeros((n, 2), dtype=np.uint32)
    for c0 in range(0, rows.shape[1], 4096):  # bounded temporaries; uint32 arithmetic wraps (mod 2^32)
        h += rows[:, c0:c0 + 4096] @ mult[c0:c0 + 4096]
    _, first, which = np.unique(h.view(np.uint64).ravel(), return_index=True, return_inverse=True)
    same = first[which.ravel()]
    if np.array_equal(rows[same], rows):
        return same
    _, first, which = np.unique(np.ascontiguousarray(rows).view(np.dtype((np.void, 4 * rows.shape[1]))).ravel(),
                                return_index=True, return_inverse=True)
    return first[which.ravel()]


def _layout(xs: np.ndarray, vw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The plan of first_layer_plan as whole arrays, for the sorted inputs xs (mp, d): per
    vector v (vw lanes), k0[v] (coordinates k0 .. d-1 are the same in every lane), first[v]
    (the first vector of its chunk whose lanes agree with v's on k0 and on x_0 .. x_{k0-1}: the
    group that shares its prefix), and steps (nv, d): the FMAs the plan makes for v, coordinate
    k of v's prefix (if v is the first of its group) and of its suffix, zero coordinates skipped."""
    mp, d = xs.shape
    lanes = xs.reshape(mp // vw, vw, d)
    nv = lanes.shape[0]
    const = np.all(lanes == lanes[:, :1], axis=1)  # (nv, d): coordinate k is the same in every lane
    tail = np.where(const.all(axis=1), d, np.argmin(const[:, ::-1], axis=1))  # constant coordinates at the end
    k0 = d - tail
    before = np.arange(d) < k0[:, None]
    # the group's key: the chunk, k0 and every lane's x_0 .. x_{k0-1} (bytes: -0.0 is not 0.0)
    rows = np.zeros((nv, 2 + vw * d), dtype=np.uint32)
    rows[:, 0] = np.arange(nv) * vw // CHUNK
    rows[:, 1] = k0
    rows[:, 2:] = np.where(before[:, None, :], lanes.view(np.uint32), 0).reshape(nv, -1)
    first = _first_equal(rows)
    steps = np.any(lanes != 0, axis=1) & (~before | (first == np.arange(nv))[:, None])
    return lanes, k0, first, steps


def first_layer_fmas(xs: np.ndarray, vw: int) -> int:
    """The vector FMAs per unit of first_layer_plan's plan for the sorted inputs ``xs`` (mp, d),
    without building the plan (whole-array operations: FusedFCN decides on them first)."""
    return int(np.count_nonzero(_layout(xs, vw)[3]))


def first_layer_plan(x: np.ndarray, vw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The first layer's work shared between inputs, for the kernel at ``vw`` floats per vector.

    The kernel computes each input's first-layer sum as the chain acc = 0; acc += W[:, k] x_k
    for k = 0 .. d-1 (one FMA per step, inputs along the vector lanes). Inputs that agree on
    x_0 .. x_k agree on the chain up to k, and a step with x_k = 0 leaves it unchanged (it adds
    a zero: at most the sign of a zero sum changes, which neither the ReLU nor z > 0 sees). So:
    sort the inputs by (x_{d-1}, ..., x_0) (colex order: on the Boolean cube the lanes of a
    vector then differ in the first coordinates and agree on the last ones); in each vector of
    ``vw`` inputs, the coordinates from k0 on are the same in every lane; vectors of a chunk
    whose lanes agree on x_0 .. x_{k0-1} form a group and share that prefix of the chain, and
    each vector then continues it with its own constant coordinates, all zero steps skipped.
    On the {0,1} 7-cube at vw = 16 that is 20 vector FMAs per unit instead of 56 (32 on the
    {-1,+1} cube, where nothing is zero); on raw images nothing is shared but the pixels that are
    0 in all the images of a vector are skipped (about half on MNIST); in an input basis
    (volume.basis) nothing is zero or shared, and the dense product is used.

    Returns (order, xs, plan, px, fmas): the inputs' columns in the permuted order (order[j] =
    the input in column j), the permuted inputs (mp, d) padded with zero rows, the int32
    program of kernel.h's plan_rows for each chunk in turn, the lane vectors (n, vw) float32
    it refers to, and the vector FMAs per unit it costs (the dense product: mp / vw * d).
    """
    order, xs = sorted_inputs(x)
    return (order, xs) + plan_program(xs, vw)


def sorted_inputs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, xs): the inputs x (m, d) in colex order (colex_order), padded with zero rows to
    a multiple of 16, float32 (first_layer_plan's order and xs)."""
    x = np.asarray(x, dtype=np.float32)
    m, d = x.shape
    order = colex_order(x)
    xs = np.zeros((-(-m // 16) * 16, d), dtype=np.float32)
    xs[:m] = x[order]
    return order, xs


def plan_program(xs: np.ndarray, vw: int, layout: tuple | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(plan, px, fmas) of first_layer_plan for the sorted, padded inputs xs (mp, d).

    The lane vectors are numbered in the order the plan first uses them, the groups of a chunk
    in the order of their first vectors, a group's vectors in chunk order. The work is whole-
    array operations (_layout, and one np.unique over the used lane vectors) and a loop over the
    vectors that joins slices (it was a Python loop per step: 1.5 s at 10,000 MNIST inputs)."""
    mp, d = xs.shape
    lanes, k0, first, steps = _layout(xs, vw) if layout is None else layout  # layout: _layout(xs, vw), if known
    nv = lanes.shape[0]
    v_of, k_of = np.nonzero(steps)  # the plan's steps, vector by vector, k ascending: prefix, then suffix
    if len(k_of):
        cols = np.ascontiguousarray(lanes[v_of, :, k_of]).view(np.uint32)  # (steps, vw): each step's lane vector
        same = _first_equal(cols)  # the first step with the same lane vector
        seen = np.flatnonzero(same == np.arange(len(same)))  # steps that use a lane vector first
        number = np.zeros(len(same), dtype=np.int64)
        number[seen] = np.arange(len(seen))  # numbered by first use
        px = cols[seen].view(np.float32)
        j_of = number[same]
    else:
        px, j_of = np.zeros((1, vw), np.float32), np.zeros(0, np.int64)
    pairs = np.stack([k_of, j_of], axis=1).astype(np.int32).ravel()
    end = 2 * np.cumsum(np.count_nonzero(steps, axis=1))  # vector v's steps: pairs[end[v-1]:end[v]]
    n_pre = np.count_nonzero(steps & (np.arange(d) < k0[:, None]), axis=1)  # 0 unless v starts its group
    parts: list[np.ndarray] = []
    per_chunk = CHUNK // vw
    for v0 in range(0, nv, per_chunk):
        vs = range(v0, min(v0 + per_chunk, nv))
        heads = [v for v in vs if first[v] == v]
        parts.append(np.array([len(heads)], np.int32))
        for g in heads:
            start = end[g - 1] if g else 0
            members = [v for v in vs if first[v] == g]
            parts += [np.array([n_pre[g]], np.int32), pairs[start:start + 2 * n_pre[g]], np.array([len(members)], np.int32)]
            for v in members:
                s0 = (end[v - 1] if v else 0) + (2 * n_pre[v])
                parts += [np.array([v - v0, (end[v] - s0) // 2], np.int32), pairs[s0:end[v]]]
    return np.concatenate(parts).astype(np.int32), np.ascontiguousarray(px, dtype=np.float32), len(k_of)


class FusedFCN:
    """Keys of blocks of an FCN spec drawn by the compiled kernel.

    ``layers`` and ``x`` (M, d) are the sampler's (for image inputs of a Gaussian prior,
    the input basis of volume.basis and a first layer of fan-in d drawn in it). For ReLU
    with sigma_b = 0 the weights are not scaled: the labels are invariant to a positive
    scale of each layer (see volume.sampler).
    """

    def __init__(self, spec: ExperimentSpec, layers: list[Layer], x: np.ndarray, isa: str = "auto",
                 first_layer: str = "auto", skip_zeros: bool | str = "auto"):
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
        # the first layer from a plan (first_layer_plan) where it saves work: "auto", "plan", "dense"
        if first_layer not in ("auto", "plan", "dense"):
            raise ValueError(f"first_layer: 'auto', 'plan' or 'dense', not {first_layer!r}")
        self.plan = None  # (pos, plan, px) for the kernel
        if isa == "auto" and isas():
            isa = isas()[0]  # pinned: a plan is laid out for one vector width, and the kernel must use that one
        vw = VECTOR_WIDTH.get(isa)  # None: the kernel names the bad isa
        if first_layer != "dense" and len(layers) >= 2 and vw and getattr(_fused, "FIRST_LAYER_PLAN", 0):
            order, xs = sorted_inputs(x)
            layout = _layout(xs, vw)  # the decision first (first_layer_fmas), then the plan if it saves work
            if first_layer == "plan" or np.count_nonzero(layout[3]) <= PLAN_GAIN * (mp // vw) * x.shape[1]:
                plan, px, _ = plan_program(xs, vw, layout)
                pos = np.empty(self.m, dtype=np.int32)
                pos[order] = np.arange(self.m, dtype=np.int32)
                self.xt = xs.T
                self.plan = (pos, plan, aligned(px))
        self.xt = aligned(self.xt)  # once: the kernel uses 64-byte aligned arrays in place
        self.dims = [x.shape[1]] + [layer.weight_shape[0] for layer in layers]
        homogeneous = spec.architecture.activation == "relu" and prior.sigma_b == 0
        self.scales = [0.0 if homogeneous else prior.sigma_w / math.sqrt(layer.fan_in) for layer in layers]
        self.classes = spec.output.classes
        self.key_bytes = key_bytes(self.m, self.classes)
        self.isa = isa
        # the last hidden layer over only its input's nonzero (unit, vector) pairs (kernel.h; the same
        # keys): "auto" where the first layer has a plan, inputs on a grid whose vectors are subcubes
        # (boolean7 +6%, boolean9 +11%); not on images in a basis, where few pairs are zero (-1.5%)
        if skip_zeros not in ("auto", True, False):
            raise ValueError(f"skip_zeros: 'auto', True or False, not {skip_zeros!r}")
        self.skip_zeros = self.plan is not None if skip_zeros == "auto" else skip_zeros
        self.pairs_left_out = 0  # (unit, vector) pairs of the last hidden layer left out by the last keys() call

    def keys(self, block: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Keys (stop - start, key_bytes) of draws [start, stop) of block ``block``."""
        spec = self.spec
        stop = spec.block_size if stop is None else stop
        out = np.empty((stop - start, self.key_bytes), dtype=np.uint8)
        k0, k1 = block_key(spec.seed, block)
        args = (out, self.xt, self.dims, self.scales, float(spec.prior.sigma_b), int(spec.prior.sigma_b > 0),
                int(spec.prior.kind == "uniform"), int(spec.output.kind == "argmax"), bits_per_label(self.classes),
                self.m, k0, k1, start, stop, self.isa, *(self.plan or (None, None, None)))
        if getattr(_fused, "SKIP_ZEROS", 0):
            _, self.pairs_left_out = _fused.fcn_keys(*args, skip_zeros=self.skip_zeros)
        else:  # an extension built before the skipping (its keys are the same)
            _fused.fcn_keys(*args[:15], *(self.plan or ()))
        return out
