"""Issue 10: error against seconds of the nested estimator (volume.nested) on rare functions.

1. Boolean: 'majority' on examples/boolean7.toml (7-40-40-1 ReLU; ln P near -40), at growing
   particle counts: ln P, its standard error (replica spread) and CPU/wall seconds. Target: SE
   0.3 nats in under 2 minutes on 2 cores.
2. MNIST: 100 test images, 784-40-40-1 ReLU (sigma_w = 1, sigma_b = 0), the 'ge5' labelling.

Replicas run in --workers processes (one torch thread each), as `volume logp --ray` runs them as
Ray tasks; the result does not depend on how they are spread. Writes
benchmarks/results/rare_nested.json.

Run: python benchmarks/rare_nested.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from volume.inputs import load_inputs, target_labels  # noqa: E402
from volume.nested import NestedSettings, nested_log_p  # noqa: E402
from volume.spec import ExperimentSpec  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist"


def _init() -> None:
    import torch

    torch.set_num_threads(1)


def _cpu_then(task, r):
    t0 = time.process_time()
    out = task(r)
    out.cpu_s = time.process_time() - t0  # type: ignore[attr-defined]
    return out


class _Pool:
    """map_fn over a process pool; records the workers' CPU seconds."""

    def __init__(self, ex):
        self.ex, self.cpu = ex, 0.0

    def __call__(self, task, items):
        res = list(self.ex.map(_cpu_then, [task] * len(items), items))
        self.cpu = sum(r.cpu_s for r in res)
        return res


def run(spec: ExperimentSpec, labels, settings: NestedSettings, pool: _Pool, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    r = nested_log_p(spec, labels, settings, seed=seed, map_fn=pool)
    row = dict(particles=settings.particles, replicas=settings.replicas, p0=settings.p0, moves=settings.moves,
               log_p=r.log_p, stderr=r.stderr, replica_values=r.replicas, replica_sd=r.replica_sd, levels=r.levels_mean,
               evaluations=r.evaluations, tries=r.shrink_mean, stuck=r.stuck_fraction, converged=r.converged,
               wall_s=time.perf_counter() - t0, cpu_s=pool.cpu, load=os.getloadavg()[0])
    print(f"  N={settings.particles:4d} R={settings.replicas:2d} moves={settings.moves} p0={settings.p0}: ln P = {r.log_p:9.3f} +- {r.stderr:.3f}  "
          f"levels {r.levels_mean:5.1f}  evals {r.evaluations:9d}  wall {row['wall_s']:6.1f} s  cpu {pool.cpu:6.1f} s  "
          f"load {row['load']:.1f}", flush=True)
    return row


def _settings(text: str) -> NestedSettings:
    """'NxR' or 'NxRxMOVES' or 'NxRxMOVESxP0': particles, replicas, ESS moves per level, p0."""
    parts = text.split("x")
    kw = dict(particles=int(parts[0]), replicas=int(parts[1]))
    if len(parts) > 2:
        kw["moves"] = int(parts[2])
    if len(parts) > 3:
        kw["p0"] = float(parts[3])
    return NestedSettings(**kw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--boolean", default="50x8,100x8,200x8")
    p.add_argument("--mnist", default="50x4,100x8")
    p.add_argument("--skip-mnist", action="store_true")
    args = p.parse_args()
    out = {"boolean": [], "mnist": []}
    with ProcessPoolExecutor(args.workers, initializer=_init) as ex:
        pool = _Pool(ex)
        spec = ExperimentSpec.load(ROOT / "examples" / "boolean7.toml")
        f = target_labels(load_inputs(spec.inputs), "majority")
        print("boolean7 (7-40-40-1 ReLU), f = majority:")
        for s in (["40x4"] if args.quick else [b for b in args.boolean.split(",") if b]):
            out["boolean"].append(run(spec, f, _settings(s), pool))
        if not args.skip_mnist:
            spec = ExperimentSpec.from_dict({
                "architecture": {"kind": "fcn", "hidden": [40, 40], "activation": "relu"},
                "prior": {"sigma_w": 1.0, "sigma_b": 0.0},
                "inputs": {"kind": "image", "dataset": "mnist", "path": str(MNIST), "split": "test", "count": 100}})
            f = target_labels(load_inputs(spec.inputs), "ge5")
            print("MNIST 100 test images, 784-40-40-1 ReLU, f = ge5:")
            for s in (["20x4"] if args.quick else args.mnist.split(",")):
                out["mnist"].append(run(spec, f, _settings(s), pool))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    name = "rare_nested.json" if args.boolean and not args.skip_mnist else "rare_nested_part.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(out, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
