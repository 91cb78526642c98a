"""Per-call overheads of tables that do not depend on the keys (review of issues 11 and 14):
constructing a FrequencyTable of 10^6 distinct 16-byte keys with 1, 10^3 and 10^5 blocks (a
list and a reversed int64 array of block ids), ``spec_id_under``, and merging two tables of 100
keys whose specs are the same object or equal but distinct objects (as tables from workers),
and saving such a table. Only the public API is used, so the same file runs on an older commit
(copy it into a worktree of that commit) to compare.

Run: OMP_NUM_THREADS=1 python benchmarks/table_overheads.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from volume.spec import ExperimentSpec
from volume.table import FrequencyTable, count_keys

BOOLEAN7 = Path(__file__).resolve().parents[1] / "examples" / "boolean7.toml"


def per_call(f, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call, mean over n calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        f()
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def main() -> None:
    spec, twin = ExperimentSpec.load(BOOLEAN7), ExperimentSpec.load(BOOLEAN7)
    rng = np.random.default_rng(0)
    keys, counts = count_keys(rng.integers(0, 256, (1_000_000, 16), dtype=np.uint8))
    FrequencyTable(spec, keys, counts, [0])  # warm up
    for nb in (1, 1000, 100_000):
        for name, blocks in (("list", list(range(nb))), ("array", np.arange(nb)[::-1].copy())):
            w, c = per_call(lambda: FrequencyTable(spec, keys, counts, blocks), 20 if nb < 100_000 else 5)
            print(f"construct {len(keys):,} keys, {nb:,} blocks ({name}): wall {w * 1e3:.3f} ms, CPU {c * 1e3:.3f} ms")
    w, c = per_call(lambda: spec.spec_id_under(2), 5000)
    print(f"spec_id_under: {c * 1e6:.1f} us CPU")
    a = FrequencyTable.from_keys(spec, rng.integers(0, 256, (100, 16), dtype=np.uint8), [0])
    same = FrequencyTable.from_keys(spec, rng.integers(0, 256, (100, 16), dtype=np.uint8), [1])
    other = FrequencyTable.from_keys(twin, rng.integers(0, 256, (100, 16), dtype=np.uint8), [1])
    for name, b in (("the same spec object", same), ("equal specs, distinct objects", other)):
        w, c = per_call(lambda: a.merge(b), 5000)
        print(f"merge of two 100-key tables, {name}: {c * 1e6:.1f} us CPU")
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        w, c = per_call(lambda: a.save(os.path.join(d, "t.h5")), 50)
        print(f"save of a 100-key table: wall {w * 1e3:.2f} ms, CPU {c * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
