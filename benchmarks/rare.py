"""Rare labellings in the GP limit (issue 9): accuracy against cost of EP, EP+IS, EP-SIS and minimax
tilting for ln P(sign z = f), z ~ N(0, K), side by side, against references one can defend.

Cases and references:

1. Equicorrelated kernels K = (1 - rho) I + rho 11^T, m = 40 ... 2000, constant and random labellings:
   the exact one-dimensional integral (``volume.gp.reference``), exact to ~1e-12.
2. Boolean NNGP kernels (7/8/9-bit inputs in {0,1}, 40-40 ReLU FCN, sigma_w = 1, sigma_b = 0; input 0
   is deterministic, so every labelling gives it 0), m = 40, 128, 256, 512, labellings constant 0,
   'majority' and random: two independent methods run to high precision (EP-SIS and tilting with
   ``--ref-samples`` draws each, other seeds); the reference is EP-SIS's, and the table shows how
   far tilting's lies from it (where tilting passes its own diagnostics).
3. Honesty of the stated standard error: ``--seeds`` runs of 'auto' per case; the ratio of the RMS
   error to the mean stated standard error (1 = honest).
4. MNIST (``--mnist`` images, 'ge5'): 'auto' time and standard error, over 3 seeds, EP and EP+IS
   beside it; then ``--mnist-large`` images once, with time and peak memory.

Run: python benchmarks/rare.py            (about 15-25 minutes on 2 busy cores)
     python benchmarks/rare.py --quick    (small cases only, no MNIST: ~2 minutes)
Writes benchmarks/results/rare.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from volume.gp.kernels import analytic_kernel  # noqa: E402
from volume.gp.reference import equicorrelated_kernel, log_orthant_equicorrelated  # noqa: E402
from volume.gp.score import score  # noqa: E402
from volume.inputs import load_inputs, target_labels  # noqa: E402
from volume.spec import ExperimentSpec  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist"


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def method_rows(K, lab, ref, ref_se, args):
    rows = []
    for name, method, n in (("EP", "ep", None), ("EP+IS", "ep-is", args.is_samples),
                            ("EP-SIS", "ep-sis", args.samples), ("tilting", "tilting", args.samples),
                            ("auto", "auto", args.samples)):
        est, sec = timed(score, K, lab, method=method, samples=n, seed=1)
        err = est.log_p - ref if math.isfinite(est.log_p) else math.inf
        rows.append({"method": name, "log_p": est.log_p, "error": err, "stderr": est.stderr, "seconds": sec,
                     "reliable": est.reliable, "used": est.method, "ess": est.diagnostics.get("ess"),
                     "pareto_k": est.diagnostics.get("pareto_k"), "reason": est.reason,
                     "z": (err / math.hypot(est.stderr, ref_se)) if est.stderr else None})
    return rows


def honesty(K, lab, ref, ref_se, args):
    errs, ses, rel = [], [], 0
    for s in range(args.seeds):
        est = score(K, lab, samples=args.honest_samples, seed=100 + s)
        rel += est.reliable
        if est.stderr:
            errs.append(est.log_p - ref)
            ses.append(math.hypot(est.stderr, ref_se))
    errs, ses = np.array(errs), np.array(ses)
    return {"seeds": args.seeds, "reliable": rel, "rms_error": float(np.sqrt(np.mean(errs ** 2))),
            "mean_stated": float(np.mean(ses)), "ratio": float(np.sqrt(np.mean(errs ** 2)) / np.mean(ses)),
            "z": (errs / ses).tolist()}


def fmt(x, spec=".3f"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def print_case(title, ref, ref_note, rows, hon):
    print(f"\n#### {title}: reference {ref:.4f} ({ref_note})")
    print("| method | ln P | error (nats) | stated SE | |error|/SE | ESS | k-hat | seconds | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = "ok" if r["reliable"] else "flagged"
        if r["method"] == "auto":
            verdict += f" (used {r['used']})"
        print(f"| {r['method']} | {fmt(r['log_p'], '.4f')} | {fmt(r['error'], '+.3f')} | {fmt(r['stderr'], '.3g')} | "
              f"{fmt(None if r['z'] is None else abs(r['z']), '.1f')} | {fmt(r['ess'], '.0f')} | {fmt(r['pareto_k'], '.2f')} "
              f"| {r['seconds']:.2f} | {verdict} |")
    if hon:
        print(f"'auto' over {hon['seeds']} seeds ({args_glob.honest_samples} draws): RMS error {hon['rms_error']:.4f}, "
              f"mean stated SE {hon['mean_stated']:.4f}, **ratio {hon['ratio']:.2f}**, reliable {hon['reliable']}/{hon['seeds']}")
    sys.stdout.flush()


def boolean_kernel(n_bits: int, m: int):
    spec = ExperimentSpec.load(ROOT / "examples" / "boolean7.toml")
    spec = dataclasses.replace(spec, inputs=dataclasses.replace(spec.inputs, n=n_bits))
    inputs = load_inputs(spec.inputs)
    return analytic_kernel(spec, inputs)[:m, :m], target_labels(inputs, "majority", 2)[:m]


def main(argv=None):
    global args_glob
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--is-samples", type=int, default=20000)
    p.add_argument("--ref-samples", type=int, default=32768)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--honest-samples", type=int, default=1024)
    p.add_argument("--mnist", type=int, default=1000)
    p.add_argument("--mnist-large", type=int, default=5000)
    args = args_glob = p.parse_args(argv)
    out = {"load": os.getloadavg(), "equicorrelated": [], "boolean": [], "mnist": {}}
    print(f"load average at start: {os.getloadavg()}")
    equi = [(40, 0.5), (128, 0.8), (512, 0.9)] + ([] if args.quick else [(2000, 0.9)])
    rng = np.random.default_rng(0)
    for m, rho in equi:
        for kind in ("constant", "random"):
            lab = np.ones(m, int) if kind == "constant" else rng.integers(0, 2, m)
            ref = log_orthant_equicorrelated(lab, rho)
            K = equicorrelated_kernel(m, rho)
            rows = method_rows(K, lab, ref, 0.0, args)
            hon = honesty(K, lab, ref, 0.0, args) if m <= 512 else None
            print_case(f"equicorrelated m = {m}, rho = {rho}, {kind}", ref, "exact quadrature", rows, hon)
            out["equicorrelated"].append({"m": m, "rho": rho, "kind": kind, "ref": ref, "rows": rows, "honesty": hon})
    bools = [(7, 40), (7, 128)] + ([] if args.quick else [(8, 256), (9, 512)])
    for n_bits, m in bools:
        K, maj = boolean_kernel(n_bits, m)
        rand = rng.integers(0, 2, m)
        rand[0] = 0
        for kind, lab in (("constant 0", np.zeros(m, int)), ("majority", maj.astype(int)), ("random", rand)):
            (a, ta) = timed(score, K, lab, method="ep-sis", samples=args.ref_samples, seed=10_000)
            (b, tb) = timed(score, K, lab, method="tilting", samples=args.ref_samples, seed=20_000)
            ref, ref_se = a.log_p, a.stderr
            note = (f"EP-SIS, {args.ref_samples} draws, SE {ref_se:.4f}, {ta:.0f} s; tilting {b.log_p:.4f} +- {b.stderr:.4f} "
                    f"({'passes' if b.reliable else 'fails'} its diagnostics): difference {b.log_p - a.log_p:+.4f}")
            rows = method_rows(K, lab, ref, ref_se, args)
            hon = honesty(K, lab, ref, ref_se, args)
            print_case(f"Boolean {n_bits} bits, first {m} inputs, {kind}", ref, note, rows, hon)
            out["boolean"].append({"bits": n_bits, "m": m, "kind": kind, "ref": ref, "ref_se": ref_se,
                                   "ref_reliable": a.reliable, "tilting_ref": b.log_p, "tilting_ref_se": b.stderr,
                                   "tilting_ref_reliable": b.reliable, "rows": rows, "honesty": hon})
    all_z = [z for case in out["equicorrelated"] + out["boolean"] if case["honesty"] for z in case["honesty"]["z"]]
    if all_z:
        out["pooled_ratio"] = float(np.sqrt(np.mean(np.square(all_z))))
        print(f"\npooled over every case and seed: RMS(error / stated SE) = {out['pooled_ratio']:.2f} (n = {len(all_z)})")
    if not args.quick and (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        out["mnist"] = mnist_part(args)
    elif not args.quick:
        print(f"\nNOTICE: no MNIST files in {MNIST}: the MNIST part did not run")
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "rare.json").write_text(json.dumps(out, indent=1, default=float))


def mnist_part(args):
    from volume.gp.estimate import log_prior

    spec0 = ExperimentSpec.load(ROOT / "examples" / "mnist1000.toml")
    res = {}
    for count in (args.mnist, args.mnist_large):
        spec = dataclasses.replace(spec0, inputs=dataclasses.replace(spec0.inputs, path=str(MNIST), count=count))
        inputs = load_inputs(spec.inputs)
        K, tk = timed(analytic_kernel, spec, inputs)
        runs = []
        for seed in ((0, 1, 2) if count == args.mnist else (0,)):
            r, t = timed(log_prior, spec, "ge5", kernel_matrix=K, samples=args.samples, seed=seed)
            runs.append({"seed": seed, "log_p": r.log_p, "stderr": r.stderr, "method": r.method, "reliable": r.reliable,
                         "ess": r.diagnostics.get("ess"), "pareto_k": r.diagnostics.get("pareto_k"),
                         "log_p_ep": r.log_p_ep, "seconds": t, "reason": r.reason})
            print(f"\nMNIST {count} ge5 seed {seed}: ln P = {r.log_p:.4f} +- {fmt(r.stderr, '.4f')} ({r.method}, "
                  f"reliable {r.reliable}, ESS {fmt(r.diagnostics.get('ess'), '.0f')}, k-hat "
                  f"{fmt(r.diagnostics.get('pareto_k'), '.2f')}), EP {r.log_p_ep:.4f}; {t:.1f} s "
                  f"(+ kernel {tk:.1f} s); load {os.getloadavg()[0]:.1f} {r.reason}")
            sys.stdout.flush()
        entry = {"kernel_seconds": tk, "runs": runs,
                 "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        if count == args.mnist:
            lp = np.array([x["log_p"] for x in runs])
            entry["spread_sd"] = float(lp.std(ddof=1))
            entry["mean_stated"] = float(np.mean([x["stderr"] for x in runs]))
            r, t = timed(log_prior, spec, "ge5", kernel_matrix=K, method="ep-is", samples=4000)
            entry["ep_is"] = {"log_p": r.log_p, "stderr": r.stderr, "ess": r.is_ess, "reliable": r.reliable,
                              "seconds": t, "reason": r.reason}
            print(f"MNIST {count}: spread over 3 seeds {entry['spread_sd']:.4f} vs stated {entry['mean_stated']:.4f}; "
                  f"EP+IS (4000): {r.log_p:.4f} +- {fmt(r.is_stderr, '.3f')}, ESS {fmt(r.is_ess, '.1f')}, "
                  f"reliable {r.reliable}, {t:.1f} s")
        print(f"MNIST {count}: peak RSS {entry['peak_rss_gib']:.2f} GiB")
        res[str(count)] = entry
    return res


if __name__ == "__main__":
    main()
