"""Scale of FrequencyTable: build, merge, save and load a table of 10^7 draws with millions of
distinct functions (128-input keys, 16 bytes), reporting time and peak memory.

Draws are synthetic keys, half from a heavy-tailed Zipf(1.3) law and half from 2^40 equally rare
functions, so that millions are distinct, as in the Boolean system; they are cut into blocks of 2^16 keys
counted per block, then merged in groups of 16 (as a job's checkpoints do), saved and loaded.
The reference in the same run is a plain Python dict/Counter over the same keys for the first
block group, to show the ratio per draw.

Run: python benchmarks/table_scale.py [--draws 10000000]
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import Counter
from pathlib import Path
import tempfile

import numpy as np

from volume.spec import ExperimentSpec
from volume.table import FrequencyTable


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    ids = np.minimum(rng.zipf(1.3, size=n), 2**40).astype(np.uint64)
    rare = rng.random(n) < 0.5  # half the draws from 2^40 equally rare functions: mostly singletons
    ids[rare] = rng.integers(2**41, 2**42, size=int(rare.sum()), dtype=np.uint64)
    keys = np.zeros((n, 16), dtype=np.uint8)
    keys[:, 8:] = ids.astype(">u8").view(np.uint8).reshape(n, 8)
    return keys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=10_000_000)
    args = ap.parse_args()
    spec = ExperimentSpec.load(Path(__file__).resolve().parents[1] / "examples" / "boolean7.toml").replace(block_size=1 << 16)
    rng = np.random.default_rng(0)
    n_blocks = args.draws // spec.block_size
    t0 = time.perf_counter()
    table = FrequencyTable.empty(spec)
    pending = []
    ref_time = ref_draws = 0
    for b in range(n_blocks):
        keys = synthetic_keys(rng, spec.block_size)
        if b < 16:
            t = time.perf_counter()
            Counter(map(bytes, keys))
            ref_time += time.perf_counter() - t
            ref_draws += len(keys)
        pending.append(FrequencyTable.from_keys(spec, keys, [b]))
        if len(pending) == 16:
            table = FrequencyTable.merge_all([table, *pending])
            pending = []
    if pending:
        table = FrequencyTable.merge_all([table, *pending])
    t_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.h5"
        t = time.perf_counter()
        table.save(path)
        t_save = time.perf_counter() - t
        size = path.stat().st_size
        t = time.perf_counter()
        again = FrequencyTable.load(path)
        t_load = time.perf_counter() - t
    assert again == table
    print(f"draws {table.n_samples:,}  distinct {table.n_distinct:,}  blocks {len(table.blocks)}")
    print(f"build+merge {t_build:.1f} s ({table.n_samples / t_build:,.0f} draws/s)  save {t_save:.1f} s "
          f"({size / 2**20:.0f} MiB)  load {t_load:.1f} s  peak RSS {peak_rss_gib():.2f} GiB")
    print(f"reference Counter over bytes: {ref_draws / ref_time:,.0f} draws/s; "
          f"table build is {table.n_samples / t_build / (ref_draws / ref_time):.1f}x the reference")


if __name__ == "__main__":
    main()
