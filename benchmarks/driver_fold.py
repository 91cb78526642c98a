"""What the driver of `volume sample` spends on folding counted blocks into the table and on
checkpoints, for a job of N boolean7-like draws, without Ray or sampling: the per-block counted
keys a worker sends are made up (synthetic 16-byte keys, about 72% distinct as boolean7 draws at
10^7-10^8), and the clock given to the accumulator (``clock=``; the process's ``time.monotonic``
is left alone) advances by the sampling time of each block (``--rate`` draws/s for the whole
machine) plus the driver's own time, so checkpoints fall as in a real job. Two accumulators in the same run: ``lsm`` (volume.runner.BlockAccumulator:
log-structured runs, linear merges in the extension, plain keys on disk) and ``flat`` (the
accumulator before issue 14's fix: all blocks since the last checkpoint re-counted and folded into
the whole table at each checkpoint by the numpy merge, keys gzipped as the table was then saved). Reported: the driver's CPU seconds for folding
and for saving, checkpoints, peak RSS.

Run: python benchmarks/driver_fold.py --draws 10000000 [--sides lsm,flat] [--rate 300000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

import volume.runner as runner
from volume.spec import ExperimentSpec
from volume.table import FrequencyTable, count_keys


def synthetic_block(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Counted keys of one block: 30% of draws from a Zipf(1.5) law (frequent functions), 70%
    from 2^44 equally rare ones (mostly singletons); both words of the key vary."""
    ids = np.minimum(rng.zipf(1.5, size=n), 2**40).astype(np.uint64)
    rare = rng.random(n) < 0.7
    ids[rare] = rng.integers(2**41, 2**44, size=int(rare.sum()), dtype=np.uint64)
    keys = np.empty((n, 16), dtype=np.uint8)
    keys[:, :8] = (ids * np.uint64(0x9E3779B97F4A7C15)).astype(">u8").view(np.uint8).reshape(n, 8)
    keys[:, 8:] = ids.astype(">u8").view(np.uint8).reshape(n, 8)
    return count_keys(keys)


class FlatAccumulator(runner.BlockAccumulator):
    """The accumulator before the fix: pending blocks folded into the whole table at each
    checkpoint (merge_all: recount of the pending keys, then a merge into the table)."""

    def __init__(self, table, path, checkpoint_seconds=30.0, clock=time.monotonic):
        super().__init__(table, path, checkpoint_seconds, clock)
        self._pending = []

    def add_table(self, counted):
        self._pending.append(counted)
        if self.clock() - self._last >= self._interval:
            self.flush()

    def flush(self):
        start = self.clock()
        if self._pending:
            self.table = FrequencyTable.merge_all([self.table, *self._pending])
            self._pending = []
        if self.path is not None:
            self.table.save(self.path)
        self._last = self.clock()
        self._interval = max(self.checkpoint_seconds, self.SAVE_DUTY * (self._last - start))
        return self.table


class Clock:
    """Simulated time: sampling time of the blocks so far plus the driver's CPU time."""

    def __init__(self):
        self.sampled = 0.0

    def __call__(self) -> float:
        return self.sampled + time.process_time()


def _old_checked_dataset(f, name, data, dtype, compress=False):
    """The table's datasets as written before the fix: keys gzip level 4 (no shuffle), counts plain."""
    data = np.asarray(data, dtype=dtype)
    chunks = tuple(max(1, min(n, 1 << 16)) for n in data.shape)
    maxshape = tuple(None if i == 0 else n for i, n in enumerate(data.shape))
    f.create_dataset(name, data=data, dtype=dtype, chunks=chunks, maxshape=maxshape, fletcher32=True,
                     compression="gzip" if name == "keys" and len(data) > 4096 else None)


def run(side: str, spec: ExperimentSpec, n_blocks: int, rate: float, seed: int) -> dict:
    import volume.table as table_mod

    rng = np.random.default_rng(seed)
    patched = {"_fused": table_mod._fused, "checked_dataset": table_mod.checked_dataset}
    if side == "flat":  # the numpy merge and the old file layout
        table_mod._fused = None
        table_mod.checked_dataset = _old_checked_dataset
    clock = Clock()  # injected into the accumulator (time.monotonic itself is left alone)
    saves = []
    try:
        with tempfile.TemporaryDirectory(dir="/tmp") as d:
            path = Path(d) / "t.h5"
            cls = runner.BlockAccumulator if side == "lsm" else FlatAccumulator
            acc = cls(FrequencyTable.empty(spec), path, 30.0, clock=clock)
            save = FrequencyTable.save

            def timed_save(self, p):
                t = time.process_time()
                save(self, p)
                saves.append(time.process_time() - t)

            FrequencyTable.save = timed_save
            cpu = 0.0
            for b in range(n_blocks):
                keys, counts = synthetic_block(rng, spec.block_size)
                clock.sampled += spec.block_size / rate
                t = time.process_time()
                acc.add_table(FrequencyTable(spec, keys, counts, [b]))
                cpu += time.process_time() - t
            t = time.process_time()
            table = acc.flush()
            final = time.process_time() - t
            cpu += final
            FrequencyTable.save = save
            size = path.stat().st_size
    finally:
        FrequencyTable.save = save
        for k, v in patched.items():
            setattr(table_mod, k, v)
    return {"side": side, "draws": table.n_samples, "distinct": table.n_distinct, "driver_cpu_s": cpu,
            "of_which_saves_s": sum(saves), "checkpoints": len(saves), "final_flush_s": final,
            "file_mib": size / 2**20, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=10_000_000)
    ap.add_argument("--sides", default="lsm,flat")
    ap.add_argument("--rate", type=float, default=300_000.0, help="sampling rate of the machine, draws/s")
    args = ap.parse_args()
    spec = ExperimentSpec.load(Path(__file__).resolve().parents[1] / "examples" / "boolean7.toml")
    n_blocks = -(-args.draws // spec.block_size)
    for side in args.sides.split(","):
        r = run(side, spec, n_blocks, args.rate, seed=0)
        print(f"{r['side']:5s} draws {r['draws']:,} distinct {r['distinct']:,}: driver CPU {r['driver_cpu_s']:.1f} s "
              f"(saves {r['of_which_saves_s']:.1f} s in {r['checkpoints']} checkpoints incl. the last; final flush "
              f"{r['final_flush_s']:.1f} s), file {r['file_mib']:.0f} MiB, peak RSS so far {r['peak_rss_gib']:.2f} GiB",
              flush=True)


if __name__ == "__main__":
    main()
