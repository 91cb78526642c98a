"""Counting the posterior by rejection (volume.posterior_sampling.count_posteriors) on made-up
draws, so that only the counting is timed: 100 blocks of 4,096 random 16-byte keys (boolean7's
128 inputs). Two conditions: |S| = 2 with three draws in four made to fit it and E = all 128
inputs (332,747 fitting draws, all distinct: the worst case for memory), and |S| = 8 with
|E| = 14 (1,634 fit, 64 functions: the experiments' case). Reported: CPU and wall seconds and
the peak of traced memory (tracemalloc, numpy's arrays included) per pass, and the pass's
memory_bound where the module has one. ``--module PATH`` times another implementation of the
module (e.g. ``git show d9a71c2:volume/posterior_sampling.py > /tmp/old.py``) in the same run.

Run: OMP_NUM_THREADS=1 python benchmarks/posterior_counts.py [--module /tmp/old.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import volume.posterior_sampling as current
from volume.keys import unpack_keys
from volume.spec import ExperimentSpec

BOOLEAN7 = Path(__file__).resolve().parents[1] / "examples" / "boolean7.toml"


def load(path: str):
    spec = importlib.util.spec_from_file_location("other_posterior_sampling", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", help="another posterior_sampling.py to time beside this one")
    ap.add_argument("--blocks", type=int, default=100)
    args = ap.parse_args()
    spec = ExperimentSpec.load(BOOLEAN7)
    rng = np.random.default_rng(0)
    drawn = [rng.integers(0, 256, (spec.block_size, 16), dtype=np.uint8) for _ in range(args.blocks)]
    many = current.Condition(np.array([0, 9]), np.array([1, 0], np.uint8), np.arange(128))
    mask, key = current.fit_masks(128, 2, many.train, many.labels)
    for d in drawn:
        for i in (1, 2, 3):
            d[i::4] = (d[i::4] & ~mask) | key
    train = np.sort(rng.choice(128, 16, replace=False))
    y = unpack_keys(drawn[0][5], 128)[0]
    few = current.Condition(train[:8], y[train[:8]],
                            np.sort(np.concatenate([train[:8], np.setdiff1d(np.arange(128), train)[:6]])))

    class Source:
        def keys(self, b):
            return drawn[b]

    mods = [("this", current)] + ([("other", load(args.module))] if args.module else [])
    for name, cond in (("|S| = 2, 3/4 of draws fit, |E| = 128", many), ("|S| = 8, |E| = 14", few)):
        for _ in range(2):  # alternating
            for label, mod in mods:
                kw = {"max_bytes": 1 << 62} if hasattr(mod, "memory_bound") else {}
                tracemalloc.start()
                w0, c0 = time.perf_counter(), time.process_time()
                post = mod.count_posteriors(spec, [cond], args.blocks, source=Source(), **kw)[0]
                w, c = time.perf_counter() - w0, time.process_time() - c0
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                bound = (f", bound {mod.memory_bound(spec, [(len(cond.train), len(cond.evaluate))], args.blocks * spec.block_size) / 2**20:.1f} MiB"
                         if hasattr(mod, "memory_bound") else "")
                print(f"{name} [{label}]: {post.n_consistent:,} fit, {len(post.counts):,} functions; CPU {c:.2f} s, "
                      f"wall {w:.2f} s, traced peak {peak / 2**20:.1f} MiB{bound}", flush=True)


if __name__ == "__main__":
    main()
