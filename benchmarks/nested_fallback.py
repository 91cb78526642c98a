"""Issue 10, open item: is the error bar of the nested estimator honest where the replicas spread
by more than MAX_REPLICA_SD nats (the 'spread-fallback' of volume.nested.combine_replicas)?

  run      S seeds of one nested estimate (R replicas of N particles) of one function; every
           replica value is kept (JSON, appended seed by seed so a run can be resumed)
  synthetic  the same on log-normal replicas with a known truth (l_r ~ N(0, sigma^2))
  analyse  the runs' estimates recombined with the current combine_replicas, split into
           fallback / log-normal estimates: how often the fallback triggers, the bias against a
           reference ln P, and observed spread / stated SE (with a bootstrap over seeds)

The default case is 'majority' on examples/boolean7.toml (ln P = -47.76 +- 0.22: 32 replicas of
200 particles, benchmarks/RESULTS.md "Issue 10") at 25 or 50 particles per replica, where the
replicas spread by ~2-3 nats. Because the combination is a pure function of the replica values,
``analyse`` always applies the current formula to the stored replicas.

    python benchmarks/nested_fallback.py run --particles 25 --seeds 24 --out benchmarks/results/nested_fallback_n25.json
    python benchmarks/nested_fallback.py analyse benchmarks/results/nested_fallback_n25.json --reference -47.76 --reference-se 0.22

One worker process, one torch thread; CPU seconds are time.process_time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cmd_run(args) -> None:
    import torch

    from volume.inputs import load_inputs, target_labels
    from volume.nested import NestedSettings, nested_log_p
    from volume.spec import ExperimentSpec

    torch.set_num_threads(1)
    spec = ExperimentSpec.load(args.spec)
    f = target_labels(load_inputs(spec.inputs), args.target)
    st = NestedSettings.from_mapping({"particles": args.particles, "replicas": args.replicas, "moves": args.moves},
                                     where="--")
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {
        "spec": args.spec, "target": args.target, "settings": {"particles": st.particles, "replicas": st.replicas,
                                                               "moves": st.moves}, "runs": []}
    done = {r["seed"] for r in data["runs"]}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if seed in done:
            continue
        c0, w0 = time.process_time(), time.perf_counter()
        r = nested_log_p(spec, f, st, seed=seed)
        data["runs"].append({"seed": seed, "replicas": r.replicas, "log_p": r.log_p, "stderr": r.stderr,
                             "flags": list(r.flags), "reason": r.reason, "converged": r.converged,
                             "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
                             "load_avg": os.getloadavg()[0]})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1, default=str))
        print(f"seed {seed}: {r.log_p:.3f} +- {r.stderr:.3f} sd {r.replica_sd:.2f} {','.join(r.flags) or '-'} "
              f"{time.process_time() - c0:.1f} CPU s", flush=True)


def honesty(est: np.ndarray, se: np.ndarray, ref: float, ref_se: float, rng: np.random.Generator,
            boot: int = 2000) -> dict:
    """Bias (mean - ref, with its SE), observed sd / rms stated SE (bootstrap 68% interval over the
    estimates), rms z = rms((est - ref) / sqrt(se^2 + ref_se^2)) and the fraction of |z| < 1."""
    n = len(est)
    out = {"n": n, "mean": float(est.mean()), "bias": float(est.mean() - ref)}
    if n < 2:
        return out
    sd = float(est.std(ddof=1))
    rms_se = float(np.sqrt(np.mean(se ** 2)))
    out.update(bias_se=math.hypot(sd / math.sqrt(n), ref_se), observed_sd=sd, rms_stated_se=rms_se,
               ratio=sd / rms_se)
    idx = rng.integers(0, n, size=(boot, n))
    r = est[idx].std(axis=1, ddof=1) / np.sqrt(np.mean(se[idx] ** 2, axis=1))
    out["ratio_lo"], out["ratio_hi"] = (float(q) for q in np.quantile(r, [0.16, 0.84]))
    z = (est - ref) / np.sqrt(se ** 2 + ref_se ** 2)
    out["rms_z"] = float(np.sqrt(np.mean(z ** 2)))
    out["covered_1se"] = float(np.mean(np.abs(z) < 1))
    return out


def alternative_ses(v: np.ndarray, rng: np.random.Generator, boot: int = 4000) -> dict[str, float]:
    """Other standard errors of ln((1/R) sum_r exp(l_r)) from one estimate's R replicas, for
    comparison: the delta method sqrt(Var(w) / R) / mean(w) (w = exp(l)), a bootstrap over the
    replicas, and the jackknife."""
    r = len(v)
    top = float(v.max())
    w = np.exp(v - top)
    b = rng.integers(0, r, size=(boot, r))
    lb = np.log(np.exp(v[b] - top).mean(axis=1))
    jk = np.array([math.log(float(np.delete(w, i).mean())) for i in range(r)])
    return {"delta": math.sqrt(float(w.var(ddof=1)) / r) / float(w.mean()), "bootstrap": float(lb.std(ddof=1)),
            "jackknife": math.sqrt((r - 1) / r * float(((jk - jk.mean()) ** 2).sum()))}


def cmd_analyse(args) -> None:
    from volume.nested import MAX_REPLICA_SD, combine_replicas

    rng = np.random.default_rng(0)
    summary = []
    for path in args.files:
        data = json.loads(Path(path).read_text())
        runs = [r for r in data["runs"] if r["converged"]]
        rows = []
        for r in runs:
            lp, se, mean, sd = combine_replicas(r["replicas"])
            rows.append((lp, se, sd > MAX_REPLICA_SD, sd))
        lp = np.array([x[0] for x in rows])
        se = np.array([x[1] for x in rows])
        fb = np.array([x[2] for x in rows])
        sds = np.array([x[3] for x in rows])
        cpu = sum(r["cpu_s"] for r in data["runs"])
        print(f"\n{path}: {data['settings']}, {len(runs)} of {len(data['runs'])} converged, {cpu:.0f} CPU s; "
              f"fallback in {fb.sum()} of {len(runs)} (replica sd median {np.median(sds):.2f}, "
              f"range {sds.min():.2f}-{sds.max():.2f})")
        pooled = np.concatenate([r["replicas"] for r in runs])
        top = float(pooled.max())
        p_mean = top + math.log(float(np.mean(np.exp(pooled - top))))
        print(f"  pooled {len(pooled)} replicas: mean {pooled.mean():.2f}, sd {pooled.std(ddof=1):.2f}, "
              f"third standardised moment {float(np.mean((pooled - pooled.mean()) ** 3)) / pooled.std() ** 3:+.2f}, "
              f"ln of their mean probability {p_mean:.2f}, range {pooled.min():.2f} .. {top:.2f}")
        res = {"file": path, "settings": data["settings"], "runs": len(data["runs"]), "converged": len(runs),
               "fallback": int(fb.sum()), "cpu_s": cpu,
               "pooled": {"n": len(pooled), "mean": float(pooled.mean()), "sd": float(pooled.std(ddof=1)),
                          "ln_mean_probability": p_mean, "min": float(pooled.min()), "max": top}}
        for name, m in (("fallback", fb), ("log-normal", ~fb), ("all", np.ones_like(fb))):
            h = honesty(lp[m], se[m], args.reference, args.reference_se, rng)
            res[name] = h
            if h["n"] < 2:
                print(f"  {name:10s} n = {h['n']}")
                continue
            print(f"  {name:10s} n = {h['n']:2d}  bias {h['bias']:+.2f} +- {h['bias_se']:.2f}  observed sd "
                  f"{h['observed_sd']:.2f}  rms stated SE {h['rms_stated_se']:.2f}  ratio {h['ratio']:.2f} "
                  f"[{h['ratio_lo']:.2f}, {h['ratio_hi']:.2f}]  rms z {h['rms_z']:.2f}  |z|<1 {h['covered_1se']:.0%}")
        if fb.sum() >= 2:  # the fallback estimates with the other standard errors
            alt = [alternative_ses(np.asarray(r["replicas"]), rng) for r, f in zip(runs, fb) if f]
            res["alternatives"] = {}
            for k in ("delta", "bootstrap", "jackknife"):
                h = honesty(lp[fb], np.array([a[k] for a in alt]), args.reference, args.reference_se, rng)
                res["alternatives"][k] = h
                print(f"  fallback with the {k} SE: rms SE {h['rms_stated_se']:.2f}  ratio {h['ratio']:.2f}  "
                      f"rms z {h['rms_z']:.2f}")
        summary.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps({"reference": args.reference, "reference_se": args.reference_se,
                                               "results": summary}, indent=1))


def cmd_synthetic(args) -> None:
    """Log-normal replicas with a known truth: l_r ~ N(0, sigma^2), so ln P = sigma^2 / 2 exactly."""
    from volume.nested import MAX_REPLICA_SD, combine_replicas

    rng = np.random.default_rng(args.seed)
    for sigma in (float(x) for x in args.sigmas.split(",")):
        out = np.array([combine_replicas(rng.normal(0.0, sigma, args.replicas).tolist()) for _ in range(args.sets)])
        fb = out[:, 3] > MAX_REPLICA_SD
        for name, m in (("fallback", fb), ("log-normal", ~fb)):
            if m.sum() < 2:
                continue
            h = honesty(out[m, 0], out[m, 1], sigma * sigma / 2, 0.0, rng)
            print(f"sigma {sigma:g} {name:10s} {m.mean():4.0%} of sets  bias {h['bias']:+.2f}  observed sd "
                  f"{h['observed_sd']:.2f}  rms stated SE {h['rms_stated_se']:.2f}  ratio {h['ratio']:.2f}  "
                  f"rms z {h['rms_z']:.2f}  |z|<1 {h['covered_1se']:.0%}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--spec", default=str(ROOT / "examples" / "boolean7.toml"))
    r.add_argument("--target", default="majority")
    r.add_argument("--particles", type=int, default=25)
    r.add_argument("--replicas", type=int, default=8)
    r.add_argument("--moves", type=int, default=10)
    r.add_argument("--seeds", type=int, default=24)
    r.add_argument("--first-seed", type=int, default=0)
    r.add_argument("--out", required=True)
    a = sub.add_parser("analyse")
    a.add_argument("files", nargs="+")
    a.add_argument("--reference", type=float, default=-47.76)
    a.add_argument("--reference-se", type=float, default=0.22)
    a.add_argument("--json")
    y = sub.add_parser("synthetic")
    y.add_argument("--sigmas", default="1.5,2,2.5,3,4")
    y.add_argument("--replicas", type=int, default=8)
    y.add_argument("--sets", type=int, default=4000)
    y.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    {"run": cmd_run, "analyse": cmd_analyse, "synthetic": cmd_synthetic}[args.cmd](args)


if __name__ == "__main__":
    main()
