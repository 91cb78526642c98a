"""Peak memory of one nested-sampling replica, in units of the particles (4 N D bytes), for the
memory bound of POST /logp (volume.nested.REPLICA_COPIES, volume.limits.check_logp).

One process per (kernel, batch): a 1-700-700-1 ReLU network (D = 492,100 parameters) on 2
inputs, N = 100 particles, 3 levels at most of 2 moves (ESS: max_shrink 5); the peak RSS after
the replica minus the peak after a warm-up forward, divided by 4 N D. Seconds per run.

Run: python benchmarks/nested_memory.py            (4 runs, ~20 s, ~1.5 GB at the peak)
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(kernel: str, batch: int, n: int = 100) -> float:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from volume.inputs import load_inputs
    from volume.nested import Margin, NestedSettings, subset_simulation
    from volume.spec import FCN, BooleanCube, ExperimentSpec

    torch.set_num_threads(1)
    spec = ExperimentSpec(architecture=FCN(hidden=(700, 700)), inputs=BooleanCube(n=2))
    margin = Margin(spec, load_inputs(spec.inputs), np.array([0, 1, 1, 1], dtype=np.uint8), batch)
    margin(torch.randn(2, margin.dim))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    st = NestedSettings(particles=n, replicas=1, moves=2, max_levels=3, batch=batch, kernel=kernel, max_shrink=5)
    subset_simulation(margin, st, torch.Generator().manual_seed(0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - base) / (4 * n * margin.dim)


def main() -> None:
    if len(sys.argv) == 3:
        print(f"{one(sys.argv[1], int(sys.argv[2])):.2f}")
        return
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("| kernel | batch | peak above baseline (N D floats) |\n|---|---|---|")
    for kernel in ("pcn", "ess"):
        for batch in (16, 1000):
            out = subprocess.run([sys.executable, __file__, kernel, str(batch)], capture_output=True, text=True,
                                 check=True).stdout.strip()
            print(f"| {kernel} | {batch} | {out} |", flush=True)


if __name__ == "__main__":
    main()
