"""Issue 10: the nested estimator of ln P(f) (volume.nested) against independent references.

Subcommands (each prints a table and writes JSON to benchmarks/results/nested_<name>.json):

  tune TABLE        settings (p0, moves) on one function: replica variance x CPU seconds
  count TABLE       ln P of functions the table counts (P from ~1e-2 to ~1e-6) against ln(n_f/N);
                    z = (nested - count) / combined SE, and observed/stated error
  cube              all 256 functions of a 3-input cube: sum of P(f) = 1 within error
  perceptron        perceptron on digits images against scipy's MVN orthant probability
  seeds             one function, many seeds: observed sd of ln P / mean stated SE
  gp                wide network against the GP estimator (EP + importance sampling), and the
                    finite-width gap at width 40

Tables are built once with `volume sample SPEC -n 10000000 -o T.h5 --in-process`. Every figure
comes with CPU seconds (time.process_time of the workers) and wall seconds; torch runs one
thread per worker, --workers processes (default 2).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def _init() -> None:
    import torch

    torch.set_num_threads(1)


def _run(job: tuple) -> dict:
    """One nested estimate in a worker: (spec dict, labels list, settings dict, seed) -> summary."""
    from volume.nested import NestedSettings, moves_diagnostic, nested_log_p
    from volume.spec import ExperimentSpec

    spec_d, labels, st, seed = job
    t0, w0 = time.process_time(), time.perf_counter()
    r = nested_log_p(ExperimentSpec.from_dict(spec_d), np.asarray(labels, dtype=np.uint8), NestedSettings.from_mapping(st), seed=seed)
    return {"log_p": r.log_p, "stderr": r.stderr, "replicas": r.replicas, "converged": r.converged, "reason": r.reason,
            "levels": r.levels_mean, "evaluations": r.evaluations, "shrink_mean": r.shrink_mean,
            "stuck": r.stuck_fraction, "acceptance": r.acceptance, "acceptance_last": r.acceptance_last,
            "last_step": r.last_step, "moves": moves_diagnostic(r.to_dict()) or "-", "cpu_s": time.process_time() - t0, "wall_s": time.perf_counter() - w0}


def _map(jobs: list, workers: int) -> list[dict]:
    if workers <= 1:
        _init()
        return [_run(j) for j in jobs]
    with ProcessPoolExecutor(workers, initializer=_init) as ex:
        return list(ex.map(_run, jobs))


def _settings(args) -> dict:
    """The settings asked for on the command line; NestedSettings' defaults for the rest."""
    from dataclasses import asdict

    from volume.nested import NestedSettings

    return asdict(NestedSettings.from_mapping({k: getattr(args, k) for k in ("particles", "replicas", "kernel", "moves")},
                                              where="--"))


def _load(path: str):
    from volume.table import FrequencyTable

    return FrequencyTable.load(path)


def _save(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload["load_avg"] = os.getloadavg()
    (RESULTS / f"nested_{name}.json").write_text(json.dumps(payload, indent=1, allow_nan=False, default=str))


def _pick_by_count(table, targets: list[int], rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """One function per target count: a random function whose count is nearest the target."""
    from volume.keys import unpack_keys

    out = []
    for t in targets:
        d = np.abs(np.log(table.counts.astype(np.float64)) - math.log(t))
        near = np.flatnonzero(d <= d.min() + 0.05)
        i = int(rng.choice(near))
        out.append((unpack_keys(table.keys[i:i + 1], table.n_inputs, table.classes)[0], int(table.counts[i])))
    return out


def cmd_tune(args) -> None:
    table = _load(args.table)
    rng = np.random.default_rng(args.seed)
    (f, n_f), = _pick_by_count(table, [args.count], rng)
    grid = [tuple(float(v) if i == 0 else int(v) for i, v in enumerate(g.split("/"))) for g in args.grid.split(",")]
    jobs = [(table.spec.to_dict(), f.tolist(), {**_settings(args), "p0": p0, "moves": mv},
             args.seed) for p0, mv in grid]
    ref = math.log(n_f / table.n_samples)
    rows = []
    print(f"function with n_f = {n_f} of N = {table.n_samples}: ln P = {ref:.3f} +- {1 / math.sqrt(n_f):.3f}")
    print("p0   moves  mean_l   sd_l   bias(mean_l+s2/2-ref)  cpu_s/replica  sd^2*cpu  kernel diagnostic  flag")
    for (p0, mv), r in zip(grid, _map(jobs, args.workers)):
        sd = float(np.std(r["replicas"], ddof=1))
        cpu = r["cpu_s"] / len(r["replicas"])
        row = dict(p0=p0, moves=mv, mean_l=float(np.mean(r["replicas"])), sd_l=sd, estimate=r["log_p"],
                   stderr=r["stderr"], bias=r["log_p"] - ref, cpu_per_replica=cpu, work_var=sd * sd * cpu,
                   tries=r["shrink_mean"], stuck=r["stuck"], acceptance=r["acceptance"],
                   acceptance_last=r["acceptance_last"], last_step=r["last_step"], reason=r["reason"])
        rows.append(row)
        print(f"{p0:.1f}  {mv:5d}  {row['mean_l']:7.3f}  {sd:5.3f}  {row['bias']:+.3f} +- {r['stderr']:.3f}"
              f"          {cpu:7.2f}       {row['work_var']:7.3f}   {r['moves']}  {r['reason'] or '-'}")
    _save("tune", {"table": args.table, "n_f": n_f, "N": table.n_samples, "ref": ref, "settings": _settings(args),
                   "rows": rows})


def cmd_count(args) -> None:
    table = _load(args.table)
    rng = np.random.default_rng(args.seed)
    targets = [int(t) for t in args.targets.split(",")]
    picked = _pick_by_count(table, targets, rng)
    st = _settings(args)
    jobs = [(table.spec.to_dict(), f.tolist(), st, args.seed + i) for i, (f, _) in enumerate(picked)]
    rows = []
    print(f"{args.table}: N = {table.n_samples}")
    print("n_f       ln P count       ln P nested        z     cpu_s  wall_s  levels")
    for (f, n_f), r in zip(picked, _map(jobs, args.workers)):
        ref, se_c = math.log(n_f / table.n_samples), math.sqrt((1 - n_f / table.n_samples) / n_f)
        z = (r["log_p"] - ref) / math.hypot(r["stderr"], se_c)
        rows.append(dict(n_f=n_f, ref=ref, ref_se=se_c, **r, z=z))
        print(f"{n_f:8d}  {ref:7.3f} +- {se_c:.3f}  {r['log_p']:7.3f} +- {r['stderr']:.3f}  {z:+5.2f}  "
              f"{r['cpu_s']:7.1f} {r['wall_s']:7.1f}  {r['levels']:.1f}  {r['reason'] or ''}")
    zs = np.array([row["z"] for row in rows])
    print(f"rms z = {math.sqrt(np.mean(zs ** 2)):.2f} over {len(zs)} functions (1 = stated errors are honest)")
    _save("count_" + Path(args.table).stem, {"table": args.table, "N": table.n_samples, "settings": st, "rows": rows,
                                             "rms_z": math.sqrt(np.mean(zs ** 2))})


def cmd_cube(args) -> None:
    from volume.spec import ExperimentSpec

    spec = ExperimentSpec.from_dict({"architecture": {"kind": "fcn", "hidden": [40, 40], "activation": "relu"},
                                     "prior": {"sigma_w": 1.0, "sigma_b": 0.3}, "inputs": {"kind": "boolean", "n": 3}})
    st = _settings(args)
    fs = list(itertools.product([0, 1], repeat=8))
    t0 = time.perf_counter()
    res = _map([(spec.to_dict(), list(f), st, args.seed + i) for i, f in enumerate(fs)], args.workers)
    p = np.array([math.exp(r["log_p"]) for r in res])
    se = np.array([math.exp(r["log_p"]) * r["stderr"] for r in res])
    tot, tot_se = float(p.sum()), float(math.sqrt((se ** 2).sum()))
    print(f"3-input cube, 3-40-40-1 ReLU sigma_b = 0.3: sum over 256 functions of P = {tot:.4f} +- {tot_se:.4f} "
          f"(z = {(tot - 1) / tot_se:+.2f}); smallest ln P {min(r['log_p'] for r in res):.2f}; "
          f"cpu {sum(r['cpu_s'] for r in res):.0f} s, wall {time.perf_counter() - t0:.0f} s")
    _save("cube", {"spec": spec.to_dict(), "settings": st, "sum": tot, "sum_se": tot_se, "z": (tot - 1) / tot_se,
                   "log_p": [r["log_p"] for r in res], "stderr": [r["stderr"] for r in res]})


def cmd_perceptron(args) -> None:
    from scipy.stats import multivariate_normal

    from volume.inputs import load_inputs
    from volume.spec import ExperimentSpec

    spec = ExperimentSpec.from_dict({"architecture": {"kind": "fcn", "hidden": []},
                                     "prior": {"sigma_w": 1.0, "sigma_b": 0.3},
                                     "inputs": {"kind": "image", "dataset": "digits", "count": args.images,
                                                "normalise": "standard"}})
    x = load_inputs(spec.inputs).flat.astype(np.float64)
    K = x @ x.T / x.shape[1] + 0.09
    rng = np.random.default_rng(args.seed)
    fs = [rng.integers(0, 2, args.images).astype(np.uint8) for _ in range(args.functions)]
    refs = []
    for f in fs:
        s = f.astype(np.float64) * 2 - 1
        mvn = multivariate_normal(mean=np.zeros(len(f)), cov=s[:, None] * K * s[None, :], maxpts=4_000_000,
                                  abseps=1e-14, releps=1e-5)
        refs.append(math.log(mvn.cdf(np.zeros(len(f)))))
    st = _settings(args)
    jobs = [(spec.to_dict(), f.tolist(), st, args.seed + 100 * i + k) for i, f in enumerate(fs) for k in range(args.repeats)]
    res = _map(jobs, args.workers)
    refs = [ref for ref in refs for _ in range(args.repeats)]
    rows = []
    print(f"perceptron on {args.images} digits images, sigma_w = 1, sigma_b = 0.3; reference: scipy MVN CDF (Genz); "
          f"{args.repeats} seeds per function")
    for ref, r in zip(refs, res):
        z = (r["log_p"] - ref) / r["stderr"]
        rows.append(dict(ref=ref, **r, z=z))
        print(f"  ln P ref {ref:8.3f}   nested {r['log_p']:8.3f} +- {r['stderr']:.3f}   z {z:+.2f}   cpu {r['cpu_s']:.1f} s  {r['reason'] or ''}")
    zs = np.array([row["z"] for row in rows])
    err = np.array([row["log_p"] - row["ref"] for row in rows])
    raw = np.array([np.mean(row["replicas"]) - row["ref"] for row in rows])
    print(f"rms z = {math.sqrt(np.mean(zs ** 2)):.2f}; mean error (bias) {err.mean():+.3f} +- "
          f"{err.std(ddof=1) / math.sqrt(len(err)):.3f} nats over {len(rows)} runs; without the s^2/2 correction "
          f"{raw.mean():+.3f} +- {raw.std(ddof=1) / math.sqrt(len(raw)):.3f}")
    _save("perceptron", {"images": args.images, "settings": st, "rows": rows, "rms_z": math.sqrt(np.mean(zs ** 2)),
                         "bias": err.mean(), "bias_uncorrected": raw.mean()})


def cmd_seeds(args) -> None:
    table = _load(args.table)
    rng = np.random.default_rng(args.seed)
    (f, n_f), = _pick_by_count(table, [args.count], rng)
    ref = math.log(n_f / table.n_samples)
    st = _settings(args)
    res = _map([(table.spec.to_dict(), f.tolist(), st, 1000 + s) for s in range(args.repeats)], args.workers)
    vals = np.array([r["log_p"] for r in res])
    ses = np.array([r["stderr"] for r in res])
    ratio = float(vals.std(ddof=1) / np.sqrt(np.mean(ses ** 2)))
    bias = float(vals.mean() - ref)
    print(f"{args.repeats} seeds, n_f = {n_f} (ln P = {ref:.3f} +- {1 / math.sqrt(n_f):.3f}): mean {vals.mean():.3f}, "
          f"observed sd {vals.std(ddof=1):.3f}, rms stated SE {np.sqrt(np.mean(ses ** 2)):.3f}, "
          f"ratio {ratio:.2f}; bias {bias:+.3f} +- {math.hypot(vals.std(ddof=1) / math.sqrt(len(vals)), 1 / math.sqrt(n_f)):.3f}")
    _save("seeds_" + Path(args.table).stem, {"n_f": n_f, "ref": ref, "settings": st, "log_p": vals.tolist(),
                                             "stderr": ses.tolist(), "ratio": ratio, "bias": bias,
                                             "replicas": [r["replicas"] for r in res],
                                             "cpu_s": [r["cpu_s"] for r in res]})


def _gp_rows(spec, fs: dict, args, label: str) -> list[dict]:
    from volume.gp.estimate import log_prior

    st = _settings(args)
    res = _map([(spec.to_dict(), np.asarray(f).tolist(), st, args.seed) for f in fs.values()], args.workers)
    rows = []
    for (name, f), r in zip(fs.items(), res):
        gp = log_prior(spec, f, importance_samples=args.is_samples, seed=args.seed)
        row = dict(case=label, function=name, nested=r["log_p"], nested_se=r["stderr"], gp=gp.log_p,
                   gp_se=gp.is_stderr, ep=gp.log_p_ep, cpu_s=r["cpu_s"])
        row["gap"] = r["log_p"] - gp.log_p
        row["gap_se"] = math.hypot(r["stderr"], gp.is_stderr or 0.0)
        rows.append(row)
        print(f"{label:22s} {name:12s} nested {r['log_p']:8.3f} +- {r['stderr']:.3f}   GP (EP+IS) {gp.log_p:8.3f} "
              f"+- {gp.is_stderr or 0:.3f}   gap {row['gap']:+.3f} +- {row['gap_se']:.3f}   cpu {r['cpu_s']:.0f} s  {r['reason'] or ''}",
              flush=True)
    return rows


def cmd_gp(args) -> None:
    """A. 5-bit cube, one ReLU hidden layer of each width: nested against the GP (EP + importance
    sampling) on the same inputs. B. The Boolean system (7-40-40-1): the finite-width gap
    nested - GP on counted functions and on 'majority'."""
    from volume.inputs import load_inputs, target_labels
    from volume.spec import ExperimentSpec

    rows = []
    rng = np.random.default_rng(args.seed)
    for width in [int(w) for w in args.widths.split(",")]:
        spec = ExperimentSpec.from_dict({"architecture": {"kind": "fcn", "hidden": [width]},
                                         "prior": {"sigma_w": 1.0, "sigma_b": 0.3},
                                         "inputs": {"kind": "boolean", "n": 5}})
        inputs = load_inputs(spec.inputs)
        fs = {r: target_labels(inputs, r) for r in ("zero", "bit:2", "majority")}
        rng = np.random.default_rng(args.seed)
        for i in range(args.random):
            fs[f"random{i}"] = (rng.random(32) < 0.2).astype(np.uint8)
        rows += _gp_rows(spec, fs, args, f"5-{width}-1 relu")
    if args.table:
        table = _load(args.table)
        fs = {f"n_f={n}": f for f, n in _pick_by_count(table, [100000, 1000, 10], rng)}
        fs["majority"] = target_labels(load_inputs(table.spec.inputs), "majority")
        rows += _gp_rows(table.spec, fs, args, "boolean7 7-40-40-1")
    _save("gp", {"rows": rows, "settings": _settings(args),
                 "is_samples": args.is_samples})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--particles", type=int, default=None, help="default: NestedSettings'")
    p.add_argument("--replicas", type=int, default=None, help="default: NestedSettings'")
    p.add_argument("--kernel", default=None, help="pcn or ess (default: NestedSettings')")
    p.add_argument("--moves", type=int, default=None, help="default: NestedSettings'")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("tune")
    s.add_argument("table")
    s.add_argument("--count", type=int, default=300)
    s.add_argument("--grid", default="0.5/1,0.5/2,0.5/4,0.3/3,0.1/6", help="p0/moves settings")
    s.set_defaults(func=cmd_tune)
    s = sub.add_parser("count")
    s.add_argument("table")
    s.add_argument("--targets", default="100000,30000,10000,3000,1000,300,100,30,10")
    s.set_defaults(func=cmd_count)
    sub.add_parser("cube").set_defaults(func=cmd_cube)
    s = sub.add_parser("perceptron")
    s.add_argument("--images", type=int, default=12)
    s.add_argument("--functions", type=int, default=10)
    s.add_argument("--repeats", type=int, default=1, help="seeds per function")
    s.set_defaults(func=cmd_perceptron)
    s = sub.add_parser("seeds")
    s.add_argument("table")
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--repeats", type=int, default=20)
    s.set_defaults(func=cmd_seeds)
    s = sub.add_parser("gp")
    s.add_argument("--widths", default="40,2000")
    s.add_argument("--random", type=int, default=2)
    s.add_argument("--table", default=None, help="a boolean7 table: the width-40 gap on counted functions")
    s.add_argument("--is-samples", type=int, default=20000)
    s.set_defaults(func=cmd_gp)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
