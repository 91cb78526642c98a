import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest

from volume.errors import TableError
from volume.keys import pack_labels
from volume.spec import ExperimentSpec
from volume.table import FrequencyTable


def random_table(spec, block, rng, n=300, distinct=40):
    pool = rng.integers(0, 2, size=(distinct, spec.n_inputs)).astype(np.uint8)
    labels = pool[rng.integers(0, distinct, size=n)]
    return FrequencyTable.from_labels(spec, labels, [block]), labels


def test_counts_match_brute_force(boolean_spec):
    rng = np.random.default_rng(0)
    t, labels = random_table(boolean_spec, 0, rng)
    brute = {}
    for row in labels:
        brute[bytes(pack_labels(row)[0])] = brute.get(bytes(pack_labels(row)[0]), 0) + 1
    assert t.n_samples == 300 and t.n_distinct == len(brute)
    assert {bytes(k): int(c) for k, c in zip(t.keys, t.counts)} == brute
    assert t.lookup(labels[:5]).tolist() == [brute[bytes(pack_labels(r)[0])] for r in labels[:5]]
    assert t.lookup(["11111111"] if bytes(pack_labels(np.ones(8, np.uint8))[0]) not in brute else []).tolist() in ([0], [])
    keys, counts = t.top(3)
    assert counts.tolist() == sorted(brute.values(), reverse=True)[:3]
    ranks, freq = t.rank_frequency()
    assert ranks[0] == 1 and np.isclose(freq.sum(), 1.0) and np.all(np.diff(freq) <= 0)


def test_merge_is_associative_commutative_and_exact(boolean_spec):
    rng = np.random.default_rng(1)
    parts = [random_table(boolean_spec, b, rng) for b in range(4)]
    tables = [p[0] for p in parts]
    whole = FrequencyTable.from_labels(boolean_spec, np.concatenate([p[1] for p in parts]), range(4))
    a, b, c, d = tables
    assert a.merge(b).merge(c).merge(d) == whole
    assert d.merge(c.merge(a)).merge(b) == whole
    assert FrequencyTable.merge_all([c, a, d, b]) == whole
    with pytest.raises(TableError, match="counted in both"):
        a.merge(b).merge(b)
    with pytest.raises(TableError, match="different specs"):
        a.merge(random_table(boolean_spec.replace(seed=99), 7, rng)[0])


def test_hdf5_layout_is_plain_and_roundtrips(tmp_path, boolean_spec):
    t, _ = random_table(boolean_spec, 3, np.random.default_rng(2))
    p = tmp_path / "t.h5"
    t.save(p)
    with h5py.File(p, "r") as f:
        # text attributes are fixed-length UTF-8 bytes (in the checksummed object header)
        assert f.attrs["format"].decode() == "volume-table" and f.attrs["spec_id"].decode() == boolean_spec.spec_id
        assert int(f.attrs["n_samples"]) == 300
        assert f["keys"].dtype == np.uint8 and f["counts"].dtype == np.uint64 and f["blocks"][...].tolist() == [3]
        assert ExperimentSpec.from_json(f.attrs["spec"].decode()) == boolean_spec
    assert FrequencyTable.load(p) == t
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "unsorted", "counts", "spec_id", "not_volume"])
def test_corrupt_tables_are_refused(tmp_path, boolean_spec, damage):
    t, _ = random_table(boolean_spec, 0, np.random.default_rng(3))
    p = tmp_path / "t.h5"
    t.save(p)
    if damage == "truncate":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        p.write_bytes(b"not an hdf5 file at all")
    else:
        with h5py.File(p, "r+") as f:
            if damage == "unsorted":
                k = f["keys"][...]
                f["keys"][...] = k[::-1]
            elif damage == "counts":
                f["counts"][0] = f["counts"][0] + 1
            elif damage == "spec_id":
                f.attrs["spec_id"] = "0" * 16
            else:
                f.attrs["format"] = "something-else"
    with pytest.raises(TableError, match="t.h5"):
        FrequencyTable.load(p)


def test_kclass_table():
    from volume.spec import Output

    spec = ExperimentSpec(output=Output("argmax", 3), block_size=10)
    labels = np.array(list(itertools.product(range(3), repeat=2)) * 3, dtype=np.uint8)
    spec = spec.replace(inputs=spec.inputs.__class__(n=1))  # 2 inputs
    t = FrequencyTable.from_labels(spec, labels, [0])
    assert t.n_distinct == 9 and set(t.counts.tolist()) == {3}
    assert t.lookup(["21", "00"]).tolist() == [3, 3]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("width", [3, 16, 19])  # under 8 bytes, 8-byte words, words and a tail
def test_merge_counted_equals_counting_the_union(monkeypatch, compiled, width):
    """The merge used to fold blocks into a large table (the extension's linear merge, and the
    numpy fallback) equals a full recount."""
    import volume.table as table_mod
    from volume.table import count_keys, merge_counted

    if compiled:
        assert table_mod._fused is not None, "the compiled extension is not built (python setup.py build_ext --inplace)"
    else:
        monkeypatch.setattr(table_mod, "_fused", None)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, (3000, width), dtype=np.uint8)  # repeats within and across the sets...
    a[:, :-1] = a[0, :-1]  # ...and long equal prefixes: the order is decided by the last bytes
    a[::7, 0] = rng.integers(0, 256, len(a[::7]))
    b = np.concatenate([a[rng.integers(0, 3000, 400)], rng.integers(0, 4, (100, width), dtype=np.uint8),
                        np.full((2, width), 255, np.uint8)])
    ka, ca = count_keys(a)
    kb, cb = count_keys(b)
    k, c = merge_counted(ka, ca, kb, cb)
    k2, c2 = count_keys(np.concatenate([a, b]))
    assert np.array_equal(k, k2) and np.array_equal(c, c2) and c.dtype == np.uint64
    k, c = merge_counted(kb, cb, ka, ca)
    assert np.array_equal(k, k2) and np.array_equal(c, c2)
    k0, c0 = merge_counted(ka[:0], ca[:0], kb, cb)
    assert np.array_equal(k0, kb) and np.array_equal(c0, cb)


def test_block_accumulator_folds_in_any_order(boolean_spec, tmp_path):
    """The log-structured folding of blocks gives the table of merge_all whatever the order in
    which blocks arrive, with checkpoints (every block) or without, and the saved file equals it."""
    from volume.runner import BlockAccumulator

    rng = np.random.default_rng(5)
    parts = [random_table(boolean_spec, b, rng, n=int(rng.integers(5, 400)), distinct=60)[0] for b in range(40)]
    whole = FrequencyTable.merge_all(parts)
    for order, path, every in ((range(40), None, 30.0), (rng.permutation(40), tmp_path / "t.h5", 0.0)):
        acc = BlockAccumulator(FrequencyTable.empty(boolean_spec), path, checkpoint_seconds=every)
        for i in order:
            acc.add_table(parts[i])
            assert len(acc._runs) <= 12  # the stack stays logarithmic
        assert acc.flush() == whole
        if path is not None:
            assert FrequencyTable.load(path) == whole


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("width", [1, 3, 8, 9, 16, 17, 32, 33, 100])  # words up to 32 bytes, byte strings above
def test_count_keys_equals_a_counter_of_byte_strings(monkeypatch, compiled, width):
    """count_keys sorts keys up to 32 bytes by the extension's radix sort or as big-endian 64-bit
    words (padded), wider ones as byte strings: the order must be the bytes'."""
    from collections import Counter

    import volume.table as table_mod
    from volume.table import count_keys

    if compiled:
        assert hasattr(table_mod._fused, "sort_rows"), "the extension is not built, or older (build_ext --inplace)"
    else:
        monkeypatch.setattr(table_mod, "_fused", None)

    rng = np.random.default_rng(width)
    keys = rng.integers(0, 3, (3000, width), dtype=np.uint8)
    keys[::3, 0] = rng.integers(0, 256, len(keys[::3]))  # high bytes decide some orders, low ones others
    uniq, counts = count_keys(keys)
    want = sorted(Counter(map(bytes, keys)).items())
    assert [bytes(k) for k in uniq] == [k for k, _ in want] and counts.tolist() == [c for _, c in want]


@pytest.mark.parametrize("blocks", [
    [5, 1, 3], (2, 0), range(4, -1, -1), (b for b in (9, 2, 4)), np.array([7, 3, 5], np.int32),
    np.array([3, 1], np.uint64), np.array([True, False]), [np.int16(4), np.int64(2)], [2.0, 1.0],
    np.array([6.0, 2.0]), [], np.zeros(0), np.arange(100_000)[::-1]])
def test_sorted_blocks_equal_the_python_sort(boolean_spec, blocks):
    """The numpy sort of a table's blocks gives the int64 array that sorting them as Python
    ints gave (the table's bytes on disk are unchanged)."""
    from volume.table import sorted_blocks

    items = list(blocks) if not hasattr(blocks, "__len__") else blocks
    want = np.asarray(sorted(int(b) for b in items), dtype=np.int64)
    got = sorted_blocks(iter(items) if not hasattr(blocks, "__len__") else blocks)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    t = FrequencyTable(boolean_spec, np.zeros((0, 1), np.uint8), np.zeros(0, np.uint64), got[::-1])
    assert np.array_equal(t.blocks, want)
    if len(want) > 1:
        with pytest.raises(TableError, match="twice"):
            FrequencyTable(boolean_spec, np.zeros((0, 1), np.uint8), np.zeros(0, np.uint64), [*want, want[-1]])


def test_lookup_counted_against_a_dict():
    from volume.table import count_keys, lookup_counted

    rng = np.random.default_rng(4)
    keys, counts = count_keys(rng.integers(0, 3, (500, 3), dtype=np.uint8))
    ref = {bytes(k): int(c) for k, c in zip(keys, counts)}
    query = rng.integers(0, 4, (200, 3), dtype=np.uint8)
    assert lookup_counted(keys, counts, query).tolist() == [ref.get(bytes(q), 0) for q in query]
    assert lookup_counted(keys[:0], counts[:0], query).tolist() == [0] * 200


def test_block_accumulator_checkpoints_by_its_injected_clock(boolean_spec, tmp_path, monkeypatch):
    """Checkpoints fall when the accumulator's own clock says so (the process clock is not read),
    and the benchmark that simulates a job's time (benchmarks/driver_fold.py) injects its clock
    instead of patching time.monotonic: every simulated 31 s block is a checkpoint, and the
    process clock is the same function afterwards."""
    import importlib.util
    import time

    from volume.runner import BlockAccumulator

    now = [0.0]
    saves = []
    real_save = FrequencyTable.save
    monkeypatch.setattr(FrequencyTable, "save", lambda self, p: saves.append(self.n_samples) or real_save(self, p))
    monkeypatch.setattr(time, "monotonic", lambda: pytest.fail("the accumulator read the process clock"))
    rng = np.random.default_rng(6)
    acc = BlockAccumulator(FrequencyTable.empty(boolean_spec), tmp_path / "t.h5", 30.0, clock=lambda: now[0])
    for b, dt in enumerate((10.0, 10.0, 10.0, 5.0, 31.0, 1.0)):  # crossings of 30 s after blocks 2 and 4
        now[0] += dt
        acc.add_table(random_table(boolean_spec, b, rng, n=50)[0])
    assert saves == [150, 250]
    monkeypatch.undo()
    spec_path = Path(__file__).resolve().parents[1] / "benchmarks" / "driver_fold.py"
    mod = importlib.util.module_from_spec(importlib.util.spec_from_file_location("driver_fold", spec_path))
    mod.__loader__.exec_module(mod)
    real = time.monotonic
    seen = []  # at each save: is the process clock still the one the test set?
    monkeypatch.setattr(time, "monotonic", lambda: real())
    sentinel = time.monotonic
    monkeypatch.setattr(FrequencyTable, "save", lambda self, p: seen.append(time.monotonic is sentinel) or real_save(self, p))
    spec = ExperimentSpec.load(Path(__file__).resolve().parents[1] / "examples" / "boolean7.toml").replace(block_size=256)
    for side in ("lsm", "flat"):
        r = mod.run(side, spec, 4, rate=256 / 31.0, seed=0)
        assert r["checkpoints"] == 5 and r["draws"] == 4 * 256, r  # one per block, and the final flush
    assert seen == [True] * 10 and time.monotonic is sentinel
