"""Random stream 2 and the compiled kernel against the float64 reference (tests/stream_reference.py).

* Philox4x32-10 reproduces the published known-answer vectors (Random123's kat_vectors), and
  volume.stream's words (numpy on the CPU, torch int64 on any device) equal the reference's;
* the kernel's standard numbers (every instruction set this CPU runs) equal the reference's to
  float32 rounding;
* the kernel's keys equal the float64 reference's labels except where an output is within
  1e-4 of its scale from the decision boundary (the documented rounding boundary), and such
  draws are rare; the compiled and torch backends agree the same way draw for draw;
* without the extension the sampler falls back to PyTorch with a one-line notice.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import stream_reference as ref
from volume import fused
from volume import sampler as sampler_mod
from volume.inputs import load_inputs
from volume.keys import unpack_keys
from volume.sampler import BackendError, Sampler
from volume.spec import FCN, BooleanCube, ExperimentSpec, ImageSubset, Output, Prior
from volume.stream import block_key, block_words, philox4x32, standard_draws

KAT = [  # (counter, key, output) of Philox4x32-10, Random123 1.09 kat_vectors
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
ISAS = fused.isas()
needs_kernel = pytest.mark.skipif(not fused.available(), reason=fused.notice() or "compiled kernel built")


def test_compiled_extension_is_built():
    """A fresh install builds the kernel (set VOLUME_ALLOW_NO_COMPILER=1 on a machine without one)."""
    if os.environ.get("VOLUME_ALLOW_NO_COMPILER"):
        return
    assert fused.available(), fused.notice()
    assert "generic" in ISAS


@pytest.mark.parametrize("counter,key,out", KAT)
def test_philox_known_answers(counter, key, out):
    assert tuple(int(w[0]) for w in ref.philox([[c] for c in counter], key)) == out
    words = philox4x32([torch.tensor([c], dtype=torch.int64) for c in counter], key)
    assert tuple(int(w) for w in words) == out


def test_stream_words_equal_the_reference():
    key = block_key(3, 5)
    q = np.tile(np.arange(7, dtype=np.uint64), 6)
    i = np.repeat(np.arange(10, 16, dtype=np.uint64), 7)
    want = np.stack(ref.philox([q, i, 0 * q, 0 * q], key), axis=-1).reshape(6, 28)
    assert np.array_equal(block_words(27, key, 10, 16).numpy().astype(np.uint64), want)  # numpy path
    t = [torch.from_numpy(a.astype(np.int64)) for a in (q, i, 0 * q, 0 * q)]
    got = torch.stack(philox4x32(t, key), dim=-1).reshape(6, 28)  # the torch path (GPUs)
    assert np.array_equal(got.numpy().astype(np.uint64), want)
    assert ref.key_of(3, 5) == key


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_standard_numbers_equal_the_reference(kind):
    want = ref.standard(kind, 1001, 2, 7, range(3, 40))
    got = standard_draws(kind, 1001, block_key(2, 7), 3, 40, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    got32 = standard_draws(kind, 1001, block_key(2, 7), 3, 40).numpy()
    assert np.all(np.abs(got32 - want) <= 1e-6 * np.maximum(1, np.abs(want)))
    for isa in ISAS:
        k = fused.standard(kind, 1001, block_key(2, 7), 3, 40, isa)
        assert np.all(np.abs(k - want) <= 1e-6 * np.maximum(1, np.abs(want))), isa
    if kind == "gaussian":  # the stream is N(0, 1): moments of 37k numbers within 5 standard errors
        assert abs(want.mean()) < 5 / np.sqrt(want.size) and abs(want.var() - 1) < 5 * np.sqrt(2 / want.size)
    else:
        assert np.abs(want).max() < np.sqrt(3) and abs(want.var() - 1) < 5 * np.sqrt(0.8 / want.size)


def _specs(mnist_dir):
    return {
        "boolean7": ExperimentSpec(architecture=FCN(hidden=(40, 40)), inputs=BooleanCube(n=7), block_size=300, seed=4),
        "bias-uniform-pm1": ExperimentSpec(architecture=FCN(hidden=(13, 9)), inputs=BooleanCube(n=5, encoding="pm1"),
                                           prior=Prior(kind="uniform", sigma_w=1.3, sigma_b=0.7), block_size=200),
        "argmax": ExperimentSpec(architecture=FCN(hidden=(11,)), inputs=BooleanCube(n=4), prior=Prior(sigma_b=0.4),
                                 output=Output(kind="argmax", classes=3), block_size=200),
        "mnist-basis": ExperimentSpec(architecture=FCN(hidden=(17, 6)), prior=Prior(sigma_w=1.2, sigma_b=0.2),
                                      inputs=ImageSubset(dataset="mnist", path=str(mnist_dir), count=37),
                                      block_size=100, seed=2),
    }


def _margins(spec, z):
    if spec.output.kind == "threshold":
        return (z[..., 0] > 0).astype(np.uint8), np.abs(z[..., 0])
    top = np.sort(z, axis=-1)
    return z.argmax(-1).astype(np.uint8), top[..., -1] - top[..., -2]


@needs_kernel
@pytest.mark.parametrize("name", ["boolean7", "bias-uniform-pm1", "argmax", "mnist-basis"])
def test_compiled_keys_equal_the_float64_reference_except_at_the_boundary(name, mnist_dir):
    spec = _specs(mnist_dir)[name]
    inputs = load_inputs(spec.inputs)
    s = Sampler(spec, inputs, backend="compiled")
    assert s.basis == (name == "mnist-basis")
    z = ref.fcn_outputs(spec, inputs.x, 1, range(spec.block_size), in_basis=s.basis)
    want, margin = _margins(spec, z)
    clear = margin > 1e-4 * np.std(z)
    assert clear.mean() > 0.99  # (input 0 of the 01 cube has output exactly 0 when sigma_b = 0)
    for isa in ISAS:
        s = Sampler(spec, inputs, backend="compiled", isa=isa)
        got = unpack_keys(s.keys(1), spec.n_inputs, spec.output.classes)
        np.testing.assert_array_equal(got[clear], want[clear], err_msg=isa)
        assert (got != want).mean() < 1e-3, isa
    assert len(np.unique(want, axis=0)) > 1


@needs_kernel
def test_compiled_and_torch_backends_agree_draw_for_draw():
    """Same draws, same keys, except where the float64 output is within rounding of 0."""
    spec = ExperimentSpec(architecture=FCN(hidden=(40, 40)), inputs=BooleanCube(n=7, encoding="pm1"),
                          prior=Prior(sigma_b=0.3), block_size=1000, seed=9)
    a = Sampler(spec, backend="compiled").keys(2)
    b = Sampler(spec, backend="torch").keys(2)
    differ = np.flatnonzero((a != b).any(axis=1))
    assert len(differ) <= 5
    if len(differ):
        inputs = load_inputs(spec.inputs)
        z = ref.fcn_outputs(spec, inputs.x, 2, [int(i) for i in differ])[..., 0]
        la, lb = (unpack_keys(k[differ], spec.n_inputs) for k in (a, b))
        assert np.all(np.abs(z[la != lb]) < 1e-4 * np.abs(z).std())


_GRID = np.stack(np.meshgrid(*[[0.0, 0.7, -1.3]] * 4, indexing="ij"), -1).reshape(-1, 4)  # 81 inputs, not a cube
_PLAN_CASES = {  # (hidden widths, inputs, prior, output): every branch of the first-layer plan
    "cube01": ((40, 40), BooleanCube(n=7), Prior(), Output()),
    "cube01-bias": ((40, 40), BooleanCube(n=7), Prior(sigma_b=0.3), Output()),
    "cube-pm1": ((13, 9), BooleanCube(n=6, encoding="pm1"), Prior(), Output()),
    "cube-pm1-bias-uniform": ((13, 9), BooleanCube(n=5, encoding="pm1"), Prior(kind="uniform", sigma_b=0.7), Output()),
    "cube-small-one-hidden": ((21,), BooleanCube(n=3), Prior(sigma_b=0.2), Output()),  # 8 inputs: padding lanes
    "cube-one-hidden-argmax": ((11,), BooleanCube(n=4), Prior(sigma_b=0.4), Output(kind="argmax", classes=3)),
    "grid-bias": ((17, 6), _GRID, Prior(sigma_b=0.5), Output()),
    "gaussian-inputs": ((17, 6), np.random.default_rng(0).normal(size=(50, 5)), Prior(sigma_b=0.5), Output()),
}


@needs_kernel
@pytest.mark.parametrize("name", list(_PLAN_CASES))
def test_first_layer_plan_gives_the_dense_keys_bit_for_bit(name):
    """The first layer from its plan (shared prefixes, zero coordinates skipped, inputs permuted)
    gives exactly the dense product's keys, on every instruction set."""
    hidden, inputs, prior, output = _PLAN_CASES[name]
    cube = isinstance(inputs, BooleanCube)
    spec = ExperimentSpec(architecture=FCN(hidden=hidden), inputs=inputs if cube else BooleanCube(n=4),
                          prior=prior, output=output, block_size=300, seed=5)
    s = Sampler(spec, backend="compiled")
    x = np.asarray(s.x) if cube else np.asarray(inputs, dtype=np.float32)
    for isa in ISAS:
        dense = fused.FusedFCN(spec, s.layers, x, isa, first_layer="dense")
        planned = fused.FusedFCN(spec, s.layers, x, isa, first_layer="plan")
        assert dense.plan is None and planned.plan is not None
        want = dense.keys(3)
        assert len(np.unique(want, axis=0)) > 20, isa
        np.testing.assert_array_equal(planned.keys(3), want, err_msg=isa)
    if cube and inputs.n == 7 and inputs.encoding == "01":  # the sampler picks it where it saves work
        assert s._fused.plan is not None


_SKIP_CASES = {  # hidden layers, inputs, prior, least fraction of the pairs left out at 16 lanes
    "boolean7": ((40, 40), BooleanCube(n=7), Prior(), 0.12),
    "boolean7-bias": ((40, 40), BooleanCube(n=7), Prior(sigma_b=0.3), 0.12),
    "boolean9-wide": ((70, 40), BooleanCube(n=9), Prior(sigma_b=0.1), 0.15),
    "three-hidden": ((20, 30, 25), BooleanCube(n=6), Prior(sigma_b=0.2), 0.05),  # the layer before is hidden
    "one-hidden": ((30,), BooleanCube(n=6), Prior(sigma_b=0.2), 0.15),  # its input: the inputs (no plan)
    "pm1-uniform": ((24, 24), BooleanCube(n=6, encoding="pm1"), Prior(kind="uniform", sigma_b=0.5), 0.03),
    "grid-bias": ((30, 12), _GRID, Prior(sigma_b=0.5), 0.08),
    "gaussian-inputs": ((30, 12), np.random.default_rng(1).normal(size=(200, 3)), Prior(sigma_b=2.0), 0.2),
}


@needs_kernel
@pytest.mark.parametrize("name", list(_SKIP_CASES))
def test_skipping_zero_pairs_gives_the_same_keys(name):
    """The last hidden layer over only the (unit, input vector) pairs of its input that are
    nonzero in some lane (kernel.h) gives exactly the dense layer's keys, on every instruction
    set, with and without a first-layer plan, and leaves pairs out (16% of them on boolean7)."""
    hidden, inputs, prior, min_left_out = _SKIP_CASES[name]
    cube = isinstance(inputs, BooleanCube)
    spec = ExperimentSpec(architecture=FCN(hidden=hidden), inputs=inputs if cube else BooleanCube(n=4),
                          prior=prior, block_size=400, seed=11)
    s = Sampler(spec, backend="compiled")
    x = np.asarray(s.x) if cube else np.asarray(inputs, dtype=np.float32)
    pairs = 400 * (hidden[-2] if len(hidden) > 1 else x.shape[1]) * -(-len(x) // 16)  # (unit, 16-lane vector)
    for isa in ISAS:
        for first_layer in ("dense", "plan"):
            dense = fused.FusedFCN(spec, s.layers, x, isa, first_layer=first_layer, skip_zeros=False)
            sparse = fused.FusedFCN(spec, s.layers, x, isa, first_layer=first_layer, skip_zeros=True)
            for block in (0, 1):
                want = dense.keys(block)
                assert dense.pairs_left_out == 0
                np.testing.assert_array_equal(sparse.keys(block), want, err_msg=f"{isa} {first_layer}")
                vw = fused.VECTOR_WIDTH[isa]
                if vw == 16 and (len(hidden) > 1 or first_layer == "dense"):  # one hidden layer's plan: no such layer
                    assert sparse.pairs_left_out >= min_left_out * pairs, (isa, sparse.pairs_left_out)


def test_first_layer_plan_shares_and_skips():
    """On the {0,1} 7-cube at 16 lanes: one shared 4-step prefix per chunk, then 0-2 (chunk 0)
    and 1-3 (chunk 1) steps per vector: 20 FMAs per unit instead of 56; every input is a column."""
    x = np.array([[(m >> k) & 1 for k in range(7)] for m in range(128)], dtype=np.float32)[::-1]
    order, xs, plan, px, fmas = fused.first_layer_plan(x, 16)
    assert fmas == 20 and sorted(order) == list(range(128))
    np.testing.assert_array_equal(xs, x[order])
    assert plan[0] == 1 and plan[1] == 4  # chunk 0: one group, its prefix of 4 steps
    with pytest.raises(ValueError, match="first_layer"):
        fused.FusedFCN(ExperimentSpec(architecture=FCN(hidden=(5, 5)), inputs=BooleanCube(n=3)), [], x, first_layer="x")


def _fmas_cases():
    rng = np.random.default_rng(3)
    cube = np.array([[(m >> k) & 1 for k in range(7)] for m in range(128)], dtype=np.float32)
    sparse = rng.integers(0, 3, size=(300, 12)).astype(np.float32) * (rng.random((300, 12)) < 0.3)
    signed_zeros = np.where(rng.random((70, 5)) < 0.5, np.float32(-0.0), np.float32(0.0))
    signed_zeros[:, 0] = rng.integers(0, 2, 70)
    last_ties = rng.normal(size=(200, 9)).astype(np.float32)
    last_ties[:, -1] = rng.integers(0, 3, 200)  # ties in the last coordinate only
    bits, marker, c = (a.ravel() for a in np.meshgrid(np.arange(16), [0, 1], [0, 1], indexing="ij"))
    b = (bits[:, None] >> np.arange(4)) & 1  # one chunk of 4 vectors with equal k0 whose prefixes differ
    scaled = np.c_[b * np.where(marker, 0.5, 0.25)[:, None], marker, c].astype(np.float32)  # only in scale
    signed = np.c_[np.where(b, 1.0, np.where(marker, -0.0, 0.0)[:, None]), marker, c].astype(np.float32)  # in 0's sign
    return {"cube01": cube, "cube-pm1": 2 * cube - 1, "scaled-prefix": scaled, "signed-zero-prefix": signed, "grid": _GRID.astype(np.float32), "sparse": sparse,
            "duplicates": np.repeat(sparse[:40], 3, axis=0), "signed-zeros": signed_zeros, "last-ties": last_ties,
            "gaussian": rng.normal(size=(150, 20)).astype(np.float32), "one-input": cube[5:6], "one-coordinate": sparse[:, :1], "zeros": np.zeros((20, 3), np.float32)}


def _reference_plan(xs, vw):
    """first_layer_plan's program as it was first written, step by step (kernel.h's layout)."""
    mp, d = xs.shape
    vectors = {}

    def vec(v):
        return vectors.setdefault(np.ascontiguousarray(v, dtype=np.float32).tobytes(), len(vectors))

    plan, fmas = [], 0
    for c0 in range(0, mp, fused.CHUNK):
        groups = {}
        for c in range(min(fused.CHUNK, mp - c0) // vw):
            lanes = xs[c0 + c * vw:c0 + (c + 1) * vw]
            const = np.all(lanes == lanes[0], axis=0)
            k0 = d
            while k0 > 0 and const[k0 - 1]:
                k0 -= 1
            nonzero = np.flatnonzero(np.any(lanes != 0, axis=0))
            key = np.int64(k0).tobytes() + lanes[:, :k0].tobytes()
            if key not in groups:
                groups[key] = ([w for k in nonzero[nonzero < k0] for w in (int(k), vec(lanes[:, k]))], [])
                fmas += len(groups[key][0]) // 2
            suffix = nonzero[nonzero >= k0]
            groups[key][1].append([c, len(suffix)] + [w for k in suffix for w in (int(k), vec(lanes[:, k]))])
            fmas += len(suffix)
        plan.append(len(groups))
        for pre, vecs in groups.values():
            plan += [len(pre) // 2] + pre + [len(vecs)] + [w for v in vecs for w in v]
    px = np.frombuffer(b"".join(vectors), dtype=np.float32).reshape(-1, vw) if vectors else np.zeros((1, vw), np.float32)
    return np.asarray(plan, dtype=np.int32), px, fmas


@pytest.mark.parametrize("name", list(_fmas_cases()))
def test_the_plan_from_whole_arrays_is_the_step_by_step_plan(name):
    """colex_order is np.lexsort's order; first_layer_fmas (run before any plan is built) counts
    exactly the FMAs of the plan; plan_program (whole-array operations) gives exactly the plan and
    lane vectors of the step-by-step construction (_reference_plan), at every vector width."""
    x = _fmas_cases()[name]
    np.testing.assert_array_equal(fused.colex_order(x), np.lexsort(x.T))
    order, xs = fused.sorted_inputs(x)
    for vw in (4, 8, 16):
        plan, px, fmas = fused.plan_program(xs, vw)
        want_plan, want_px, want_fmas = _reference_plan(xs, vw)
        assert fused.first_layer_fmas(xs, vw) == fmas == want_fmas, vw
        np.testing.assert_array_equal(plan, want_plan)
        assert plan.dtype == np.int32 and px.dtype == np.float32 and px.tobytes() == want_px.tobytes()


@needs_kernel
def test_a_rejected_plan_is_never_built(monkeypatch):
    """Inputs where the plan saves nothing (dense, all distinct: an input basis) do not run the
    plan's loop at all; the cube, where it saves 64%, does."""
    calls = []
    real = fused.plan_program
    monkeypatch.setattr(fused, "plan_program", lambda xs, vw, layout=None: calls.append(vw) or real(xs, vw, layout))
    spec = ExperimentSpec(architecture=FCN(hidden=(10, 10)), inputs=BooleanCube(n=7), block_size=8)
    s = Sampler(spec, backend="torch")
    dense = fused.FusedFCN(spec, s.layers, np.random.default_rng(0).normal(size=(128, 7)))
    assert dense.plan is None and calls == []
    cube = fused.FusedFCN(spec, s.layers, np.asarray(s.x))
    assert cube.plan is not None and len(calls) == 1


def _plan_entries(plan, n_chunks):
    """Position of each kind of entry of a first-layer plan (kernel.h's layout)."""
    at = {"groups": [], "pre": [], "k": [], "j": [], "vectors": [], "c": [], "suf": []}
    i = 0
    for _ in range(n_chunks):
        at["groups"].append(i)
        ng = plan[i]
        i += 1
        for _ in range(ng):
            at["pre"].append(i)
            for e in range(plan[i]):
                at["k"].append(i + 1 + 2 * e)
                at["j"].append(i + 2 + 2 * e)
            i += 1 + 2 * plan[i]
            at["vectors"].append(i)
            nvec = plan[i]
            i += 1
            for _ in range(nvec):
                at["c"].append(i)
                at["suf"].append(i + 1)
                for e in range(plan[i + 1]):
                    at["k"].append(i + 2 + 2 * e)
                    at["j"].append(i + 3 + 2 * e)
                i += 2 + 2 * plan[i + 1]
    assert i == len(plan)
    return at


@needs_kernel
def test_a_malformed_plan_is_refused_not_followed():
    """fcn_keys walks a first-layer plan as the kernel does before running it: an index out of
    range, a count that runs past the end, leftover entries, a vector computed twice or never,
    a pos that is no permutation, a plan for another vector width, the wrong dtype or layout all
    give a one-line ValueError (they were out-of-bounds reads and writes); and no single changed
    entry crashes the kernel."""
    spec = ExperimentSpec(architecture=FCN(hidden=(9, 5)), inputs=BooleanCube(n=7), block_size=16, seed=2)
    s = Sampler(spec, backend="torch")
    f = fused.FusedFCN(spec, s.layers, np.asarray(s.x), "generic", first_layer="plan")
    pos, plan, px = f.plan
    want = f.keys(0)
    at = _plan_entries(plan, 128 // fused.CHUNK)

    def keys(pos=pos, plan=plan, px=px, isa="generic"):
        f.plan, f.isa = (pos, plan, px), isa
        try:
            return f.keys(0)
        finally:
            f.plan, f.isa = (pos_, plan_, px_), "generic"

    pos_, plan_, px_ = pos, plan, px

    def changed(where, value):
        p = plan.copy()
        p[where] = value
        return p

    np.testing.assert_array_equal(keys(), want)
    _, _, plan8, px8, _ = fused.first_layer_plan(np.asarray(s.x), 8)  # laid out for AVX2's 8 lanes
    bad = {
        "k = K": (dict(plan=changed(at["k"][0], 7)), "coordinate k = 7"),
        "k < 0": (dict(plan=changed(at["k"][-1], -1)), "coordinate k = -1"),
        "j = rows of px": (dict(plan=changed(at["j"][3], len(px))), f"vector j = {len(px)}"),
        "c out of the chunk": (dict(plan=changed(at["c"][2], 64 // 4)), "vector index c = 16"),
        "c twice": (dict(plan=changed(at["c"][1], plan[at["c"][0]])), "computed twice"),
        "negative count": (dict(plan=changed(at["pre"][0], -3)), "negative prefix count"),
        "count past the end": (dict(plan=changed(at["suf"][-1], 10 ** 6)), "runs past its end"),
        "groups past the end": (dict(plan=changed(at["groups"][-1], 2 ** 31 - 1)), "runs past its end"),
        "truncated": (dict(plan=plan[:-1]), "runs past its end"),
        "trailing entry": (dict(plan=np.append(plan, np.int32(0))), "1 entries left over"),
        "one chunk only": (dict(plan=plan[:at["groups"][1]]), "runs past its end"),
        "int64 plan": (dict(plan=plan.astype(np.int64)), "plan must be a"),
        "float64 px": (dict(px=px.astype(np.float64)), "px must be a"),
        "int64 pos": (dict(pos=pos.astype(np.int64)), "pos must be a"),
        "strided plan": (dict(plan=np.repeat(plan, 2)[::2]), "plan must be a C-contiguous"),
        "pos repeated": (dict(pos=np.r_[pos[1], pos[1:]].astype(np.int32)), "repeated"),
        "pos out of range": (dict(pos=np.r_[np.int32(128), pos[1:]].astype(np.int32)), "permutation"),
        "pos too short": (dict(pos=pos[:-1]), "pos must have m = 128"),
        "px part of a row": (dict(px=px.ravel()[:-1]), "whole rows of 4"),
        "plan of 8 lanes": (dict(plan=plan8, px=px8.reshape(-1, 4)), "never computed"),
    }
    for name, (kw, msg) in bad.items():
        with pytest.raises(ValueError, match=msg) as e:
            keys(**kw)
        assert "\n" not in str(e.value), name
    with pytest.raises(ValueError, match="needs all of pos, plan and px"):
        _fused_call(f, (pos, plan))
    rng = np.random.default_rng(1)  # any one entry set to any small value: refused or followed, never a crash
    for _ in range(300):
        p = changed(rng.integers(len(plan)), rng.integers(-2, 2 + max(len(px), 16)))
        try:
            keys(plan=p)
        except ValueError as e:
            assert str(e).startswith("fcn_keys: invalid first-layer plan")
    np.testing.assert_array_equal(keys(), want)


@needs_kernel
def test_arrays_in_place_or_copied_give_the_same_keys():
    """The sampler's xt and px are 64-byte aligned once, and the kernel uses them in place;
    arrays at any other address are copied per call, with the same keys. Bad dtypes, layouts,
    dims and label widths are refused with a ValueError."""
    spec = ExperimentSpec(architecture=FCN(hidden=(9, 5)), inputs=BooleanCube(n=7), block_size=16, seed=2)
    s = Sampler(spec, backend="torch")
    f = fused.FusedFCN(spec, s.layers, np.asarray(s.x), first_layer="plan")
    pos, plan, px = f.plan
    assert f.xt.ctypes.data % 64 == 0 and px.ctypes.data % 64 == 0
    want = _fused_call(f, f.plan)

    def shifted(a, by):  # a copy of a starting `by` bytes after a 64-byte boundary
        out = fused.aligned(np.zeros(a.size + 16, np.float32))[by // 4:][:a.size].reshape(a.shape)
        out[...] = a
        return out

    for by in (4, 16, 32):
        np.testing.assert_array_equal(_fused_call(f, (pos, plan, shifted(px, by)), xt=shifted(f.xt, by)), want)
    for bad, msg in [(dict(xt=f.xt.astype(np.float64)), "xt must be a"), (dict(xt=f.xt[:, ::2]), "xt must be a C-contiguous"),
                     (dict(dims=[7, 0, 5, 1]), "dims: entry 1 is 0"), (dict(bits=0), "bits_per_label"),
                     (dict(out=np.zeros((f.key_bytes, 4), np.uint8).T), "keys must be a C-contiguous writable"),
                     (dict(out=np.zeros((5, f.key_bytes), np.uint8)), "buffer sizes do not match")]:
        with pytest.raises(ValueError, match=msg):
            _fused_call(f, (), **bad)


def _fused_call(f, plan_args, xt=None, dims=None, bits=1, out=None):
    """Keys of draws 0..3 of a threshold network from _fused.fcn_keys with these arguments."""
    out = np.empty((4, f.key_bytes), dtype=np.uint8) if out is None else out
    fused._fused.fcn_keys(out, f.xt if xt is None else xt, f.dims if dims is None else dims, f.scales, 0.0, 0, 0, 0,
                          bits, f.m, 1, 2, 0, 4, f.isa, *plan_args)
    return out


def test_without_the_extension_the_torch_path_is_used_with_a_notice(monkeypatch, capsys):
    monkeypatch.setattr(fused, "_fused", None)
    monkeypatch.setattr(fused, "_IMPORT_ERROR", "No module named 'volume._fused'")
    monkeypatch.setattr(sampler_mod, "_NOTICE_GIVEN", False)
    monkeypatch.delenv("VOLUME_BACKEND", raising=False)
    spec = ExperimentSpec(architecture=FCN(hidden=(5,)), inputs=BooleanCube(n=3), block_size=64)
    s = Sampler(spec)
    assert s.backend == "torch" and s.keys(0).shape == (64, 1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PyTorch sampler is used" in err
    with pytest.raises(BackendError, match="not built"):
        Sampler(spec, backend="compiled")


def test_backend_errors_name_the_fix(monkeypatch):
    spec = ExperimentSpec(architecture=FCN(hidden=(5,), activation="tanh"), inputs=BooleanCube(n=3), block_size=8)
    with pytest.raises(BackendError, match="relu"):
        Sampler(spec, backend="compiled")
    monkeypatch.setenv("VOLUME_BACKEND", "fast")
    with pytest.raises(BackendError, match="VOLUME_BACKEND"):
        Sampler(spec)
