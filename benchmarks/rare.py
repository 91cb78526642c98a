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

The finite network's own ln P(f) (issue 10, ``--methods nested``; volume.nested, subset simulation):

5. 'majority' on examples/boolean7.toml (7-40-40-1 ReLU, ln P near -46): ln P, its standard error
   (replica spread) and CPU / wall seconds for each setting of ``--nested-boolean``. Target: SE 0.3
   nats in under 2 minutes on 2 cores.
6. MNIST ``--nested-mnist-images`` test images (784-40-40-1 ReLU, sigma_w = 1, sigma_b = 0, 'ge5'),
   settings ``--nested-mnist``.
   Replicas run in ``--workers`` processes (one torch thread each), as `volume logp --ray` runs
   them as Ray tasks; the result does not depend on how they are spread. A setting is
   ``[KERNEL:]NxR[xMOVES[xP0]]``: kernel pcn (default) or ess, particles, replicas, moves, p0.

Run: python benchmarks/rare.py            (GP methods then nested: about 25-35 minutes on 2 busy cores)
     python benchmarks/rare.py --quick    (small cases only, no MNIST: ~3 minutes)
     python benchmarks/rare.py --methods nested --nested-boolean 200x8,ess:100x8x2 --nested-mnist 50x4
Writes benchmarks/results/rare.json (both methods), rare_gp.json or rare_nested.json (one).
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
        verdict = "ok" if r["reliable"] else f"flagged: {r['reason'] or 'by its diagnostics'}"
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="gp,nested", help="gp (cases 1-4), nested (cases 5-6), or both")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--is-samples", type=int, default=20000)
    p.add_argument("--ref-samples", type=int, default=32768)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--honest-samples", type=int, default=1024)
    p.add_argument("--mnist", type=int, default=1000)
    p.add_argument("--mnist-large", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="nested: worker processes for the replicas")
    p.add_argument("--nested-boolean", default="ess:100x8x2,200x8,400x8", help="nested: settings on majority")
    p.add_argument("--nested-mnist", default="50x4", help="nested: settings on MNIST ('' skips it)")
    p.add_argument("--nested-mnist-images", type=int, default=100)
    args = args_glob = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    bad = sorted(set(methods) - {"gp", "nested"})
    if bad or not methods:
        p.error(f"--methods {args.methods!r}: give gp, nested or gp,nested")
    out: dict = {"load": os.getloadavg()}
    if "gp" in methods:
        gp_part(args, out)
    if "nested" in methods:
        out["nested"] = nested_part(args)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    name = "rare.json" if len(methods) == 2 else f"rare_{methods[0]}.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(out, indent=1, default=float))


def gp_part(args, out: dict) -> None:
    out.update({"equicorrelated": [], "boolean": [], "mnist": {}})
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


# ---- the finite network's ln P(f) by subset simulation (issue 10) -------------------------------
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _cpu_then(task, r):
    t0 = time.process_time()
    out = task(r)
    out.cpu_s = time.process_time() - t0
    return out


class _Pool:
    """map_fn for volume.nested over a process pool; records the workers' CPU seconds."""

    def __init__(self, ex):
        self.ex, self.cpu = ex, 0.0

    def __call__(self, task, items):
        res = list(self.ex.map(_cpu_then, [task] * len(items), items))
        self.cpu = sum(r.cpu_s for r in res)
        return res


def nested_settings(text: str):
    """'[KERNEL:]NxR[xMOVES[xP0]]' -> NestedSettings (kernel pcn or ess)."""
    from volume.nested import NestedSettings

    kernel, _, rest = text.rpartition(":")
    parts = rest.split("x")
    kw: dict = dict(particles=int(parts[0]), replicas=int(parts[1]))
    if kernel:
        kw["kernel"] = kernel
    if len(parts) > 2:
        kw["moves"] = int(parts[2])
    if len(parts) > 3:
        kw["p0"] = float(parts[3])
    return NestedSettings.from_mapping(kw, where=f"setting {text!r}: ")


def nested_row(spec, labels, settings, pool: _Pool, seed: int = 0) -> dict:
    from volume.nested import moves_diagnostic, nested_log_p

    t0 = time.perf_counter()
    r = nested_log_p(spec, labels, settings, seed=seed, map_fn=pool)
    row = dict(kernel=settings.kernel, particles=settings.particles, replicas=settings.replicas, p0=settings.p0,
               moves=settings.moves, log_p=r.log_p, stderr=r.stderr, replica_values=r.replicas,
               replica_sd=r.replica_sd, levels=r.levels_mean, evaluations=r.evaluations, tries=r.shrink_mean,
               acceptance=r.acceptance, acceptance_last=r.acceptance_last, last_step=r.last_step,
               converged=r.converged, reason=r.reason, wall_s=time.perf_counter() - t0, cpu_s=pool.cpu,
               load=os.getloadavg()[0])
    print(f"| {settings.kernel}, {settings.particles} x {settings.replicas}, {settings.moves}, {settings.p0} | "
          f"{fmt(r.log_p, '.2f')}{'' if r.converged else ' (upper bound)'} | {fmt(r.stderr, '.2f')} | "
          f"{fmt(r.replica_sd, '.2f')} | {r.levels_mean:.1f} | {r.evaluations:,} | {moves_diagnostic(r.to_dict()) or '-'} | "
          f"{pool.cpu:.1f} | {row['wall_s']:.0f} ({row['load']:.1f}) | "
          f"{fmt(None if r.stderr is None else r.stderr ** 2 * pool.cpu, '.1f')} | {r.reason or 'ok'} |", flush=True)
    return row



def nested_part(args) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    out: dict = {"boolean": [], "mnist": []}
    head = ("| kernel, particles x replicas, moves, p0 | ln P | SE | replica sd | levels | evaluations | moves' diagnostic | "
            "CPU s | wall s (load) | SE² × CPU s | flag (fallback, diagnostic failure) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    with ProcessPoolExecutor(args.workers, initializer=_init_worker) as ex:
        pool = _Pool(ex)
        spec = ExperimentSpec.load(ROOT / "examples" / "boolean7.toml")
        f = target_labels(load_inputs(spec.inputs), "majority")
        print(f"\n#### nested: majority on examples/boolean7.toml (7-40-40-1 ReLU), {args.workers} workers\n{head}")
        for s in (["100x4"] if args.quick else [b for b in args.nested_boolean.split(",") if b]):
            out["boolean"].append(nested_row(spec, f, nested_settings(s), pool))
        mnist = [] if args.quick else [b for b in args.nested_mnist.split(",") if b]
        if mnist and (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
            spec = ExperimentSpec.from_dict({
                "architecture": {"kind": "fcn", "hidden": [40, 40], "activation": "relu"},
                "prior": {"sigma_w": 1.0, "sigma_b": 0.0},
                "inputs": {"kind": "image", "dataset": "mnist", "path": str(MNIST), "split": "test",
                           "count": args.nested_mnist_images}})
            f = target_labels(load_inputs(spec.inputs), "ge5")
            print(f"\n#### nested: MNIST {args.nested_mnist_images} test images, 784-40-40-1 ReLU, ge5\n{head}")
            for s in mnist:
                out["mnist"].append(nested_row(spec, f, nested_settings(s), pool))
        elif mnist:
            print(f"\nNOTICE: no MNIST files in {MNIST}: the nested MNIST part did not run")
    return out


if __name__ == "__main__":
    main()
