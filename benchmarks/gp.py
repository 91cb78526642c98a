"""GP (NNGP + EP) benchmark: accuracy against direct sampling on the Boolean system, and scale on MNIST.

1. Boolean system (examples/boolean7.toml: 7-40-40-1 ReLU, sigma_w = 1, sigma_b = 0, inputs {0,1}^7):
   a prior table from ``--draws`` draws (volume.sampler.Sampler + FrequencyTable, blocks spread
   over ``--workers`` processes); for every function counted at least ``--min-count`` times,
   ln P from the table (ln n_f/N) against the GP estimates: EP with the analytic kernel, EP
   with the IS correction, and EP with the empirical kernel of the actual width-40 networks.
   Reports Pearson correlation and mean absolute error of ln P.
2. Scale: ln P(f) of the 'ge5' labelling of ``--mnist`` MNIST test images (FCN 784-1000-1000-1 ReLU,
   sigma_w = 1, sigma_b = 0.1): kernel and EP wall time, against the reference computed in the same
   run, a naive sequential EP (rank-one updates, R&W Alg. 3.5; same fixed point); then the
   ``--mnist-large`` case with its peak memory.

Run: python benchmarks/gp.py            (full: a few minutes on 2 cores)
     python benchmarks/gp.py --quick    (smaller table and no large case)
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from volume.gp.ep import ep_log_p, importance_log_p  # noqa: E402
from volume.gp.kernels import analytic_kernel, empirical_kernel  # noqa: E402
from volume.inputs import load_inputs, target_labels  # noqa: E402
from volume.keys import unpack_keys  # noqa: E402
from volume.sampler import Sampler  # noqa: E402
from volume.spec import FCN, ExperimentSpec, ImageSubset, Prior  # noqa: E402
from volume.table import FrequencyTable  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist"


def _table_part(args):
    spec, blocks = args
    sampler = Sampler(spec)
    return FrequencyTable.from_labels(spec, np.concatenate([sampler.labels(b) for b in blocks]), blocks)


def prior_table(spec: ExperimentSpec, n_blocks: int, workers: int) -> FrequencyTable:
    groups = [list(range(i, n_blocks, workers)) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        return FrequencyTable.merge_all(pool.map(_table_part, [(spec, g) for g in groups if g]))


def stats(ref: np.ndarray, est: np.ndarray) -> str:
    ok = np.isfinite(est)
    r = np.corrcoef(ref[ok], est[ok])[0, 1]
    return f"Pearson r = {r:.3f}, MAE = {np.mean(np.abs(ref[ok] - est[ok])):.3f} nats (n = {ok.sum()})"


def boolean_part(args) -> None:
    spec = ExperimentSpec.load(ROOT / "examples" / "boolean7.toml")
    n_blocks = max(1, -(-args.draws // spec.block_size))
    t0 = time.perf_counter()
    table = prior_table(spec, n_blocks, args.workers)
    t_table = time.perf_counter() - t0
    n = table.n_samples
    print(f"## Boolean system: {n} draws in {t_table:.1f} s ({n / t_table:.0f} draws/s, {args.workers} processes), "
          f"{table.n_distinct} distinct functions")
    keep = table.counts >= args.min_count
    labels = unpack_keys(table.keys[keep], table.n_inputs)
    counts = table.counts[keep].astype(np.float64)
    order = np.argsort(-counts)
    labels, counts = labels[order], counts[order]
    log_table = np.log(counts / n)
    K = analytic_kernel(spec)
    t0 = time.perf_counter()
    ek = empirical_kernel(spec, n_networks=args.kernel_networks, block_size=1024)
    t_ek = time.perf_counter() - t0
    log_ep, log_is, is_se, log_emp, iters = [], [], [], [], []
    t0 = time.perf_counter()
    for lab in labels:
        ep = ep_log_p(K, lab)
        iters.append(ep.iterations)
        log_ep.append(ep.log_z)
        res = importance_log_p(K, lab, ep, args.is_samples, seed=0)
        log_is.append(res.log_p)
        is_se.append(res.stderr)
        log_emp.append(ep_log_p(ek.K, lab).log_z)
    t_gp = time.perf_counter() - t0
    log_ep, log_is, log_emp = map(np.asarray, (log_ep, log_is, log_emp))
    print(f"functions with count >= {args.min_count}: {len(counts)} (largest count {int(counts[0])}; "
          f"sampling error of ln P <= {1 / math.sqrt(args.min_count):.2f})")
    print(f"GP time for all of them: {t_gp:.1f} s (EP iterations median {int(np.median(iters))}); "
          f"empirical kernel of {ek.n_networks} width-40 networks: {t_ek:.1f} s, max stderr {ek.stderr.max():.2g}")
    print(f"EP, analytic kernel       vs table: {stats(log_table, log_ep)}; mean(EP - table) = "
          f"{np.mean(log_ep - log_table):+.3f}")
    print(f"EP + IS ({args.is_samples} samples) vs table: {stats(log_table, log_is)}; median IS stderr "
          f"{np.nanmedian(is_se):.3f}; mean(IS - table) = {np.mean(log_is[np.isfinite(log_is)] - log_table[np.isfinite(log_is)]):+.3f}")
    print(f"EP, empirical kernel (width 40) vs table: {stats(log_table, log_emp)}; mean(EP - table) = "
          f"{np.mean(log_emp - log_table):+.3f}")
    print("most frequent functions (hex, ln P table, EP, EP+IS, EP empirical kernel):")
    for i in range(min(8, len(counts))):
        hexkey = bytes(np.packbits(labels[i], bitorder="big")).hex()
        print(f"  {hexkey}  {log_table[i]:8.3f} {log_ep[i]:8.3f} {log_is[i]:8.3f} {log_emp[i]:8.3f}")


def naive_sequential_ep(K: np.ndarray, lab: np.ndarray):
    t0 = time.perf_counter()
    res = ep_log_p(K, lab, method="sequential")
    return res, time.perf_counter() - t0


def mnist_case(count: int, reference: bool) -> None:
    spec = ExperimentSpec(architecture=FCN(hidden=(1000, 1000)), prior=Prior(sigma_w=1.0, sigma_b=0.1),
                          inputs=ImageSubset(dataset="mnist", path=str(MNIST), count=count))
    inputs = load_inputs(spec.inputs)
    lab = target_labels(inputs, "ge5")
    t0 = time.perf_counter()
    K = analytic_kernel(spec, inputs)
    t_k = time.perf_counter() - t0
    t0 = time.perf_counter()
    ep = ep_log_p(K, lab)
    t_ep = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"## MNIST {count} images (ge5): kernel {t_k:.2f} s + EP {t_ep:.2f} s = {t_k + t_ep:.2f} s; "
          f"ln P = {ep.log_z:.4f}, {ep.iterations} iterations, converged={ep.converged}, jitter={ep.jitter:.2g}; "
          f"peak RSS so far {rss:.2f} GiB")
    if reference:
        ref, t_ref = naive_sequential_ep(K, lab)
        print(f"   reference (naive sequential EP): {t_ref:.2f} s, ln P = {ref.log_z:.4f} "
              f"({ref.iterations} sweeps); |difference| = {abs(ref.log_z - ep.log_z):.2e}; "
              f"speed-up of the EP step {t_ref / t_ep:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=300_000)
    ap.add_argument("--min-count", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--is-samples", type=int, default=4000)
    ap.add_argument("--kernel-networks", type=int, default=20_000)
    ap.add_argument("--mnist", type=int, default=1000)
    ap.add_argument("--mnist-large", type=int, default=5000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-boolean", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.draws, args.min_count, args.mnist_large, args.kernel_networks = 40_000, 20, 0, 4096
    if not args.skip_boolean:
        boolean_part(args)
    mnist_case(args.mnist, reference=True)
    if args.mnist_large:
        mnist_case(args.mnist_large, reference=False)


if __name__ == "__main__":
    main()
