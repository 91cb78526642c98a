"""Benchmark: lambda_max and the Hessian trace of a 784-40-40-1 ReLU network on 1,000 MNIST images.

The network is first trained to zero training error (Adam, lr 1e-3, batch 100; not timed),
so the Hessian is that of a minimum. Ours: :class:`volume.flatness.hessian.HessianOperator`
(torch.func, the gradient's vjp built once and reused) with Lanczos (ARPACK eigsh, 8
vectors) and, separately, power iteration for lambda_max, and Hutchinson (probes batched
with vmap) for the trace. Reference, in the same run: the plain textbook method, power iteration on
Hessian-vector products by torch.autograd.grad double-backward (graph rebuilt for every
product), and Hutchinson with the same double-backward products.

    python benchmarks/flatness.py [--mnist DIR] [--threads N] [--repeats R]

Prints the times, the ratios (reference / ours) and the values, which must agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from volume.flatness.hessian import HessianOperator, hessian_trace, lambda_max
from volume.flatness.lanczos import power_iteration
from volume.flatness.objective import Objective
from volume.inputs import load_inputs
from volume.models import draw_params
from volume.spec import FCN, ExperimentSpec, ImageSubset, Training
from volume.train import train

HERE = Path(__file__).resolve()


def reference_hvp(obj: Objective, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    t = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.loss(t), t, create_graph=True)
    (hv,) = torch.autograd.grad(g, t, v)
    return hv


def reference_power(obj, theta, tol, maxiter, seed):
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(seed))
    v /= v.norm()
    value = None
    for it in range(1, maxiter + 1):
        w = reference_hvp(obj, theta, v)
        new = float(v @ w)
        v = w / w.norm()
        if value is not None and abs(new - value) <= tol * abs(new):
            return new, it
        value = new
    return value, maxiter


def reference_trace(obj, theta, samples, seed):
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(samples):
        v = torch.from_numpy(rng.integers(0, 2, theta.numel()).astype(np.float32) * 2 - 1)
        vals.append(float(v @ reference_hvp(obj, theta, v)))
    return float(np.mean(vals))


def best_of(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", default=str(HERE.parents[2] / "shared/data/mnist"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=100, help="Hutchinson probes")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = ExperimentSpec(architecture=FCN((40, 40)), inputs=ImageSubset(path=args.mnist, count=1000))
    inputs = load_inputs(spec.inputs)
    y = (inputs.labels >= 5).astype(np.int64)
    obj = Objective(spec, inputs.x, y, "ce")
    p = draw_params(spec, obj.layers, 1, torch.Generator().manual_seed(0))
    theta = torch.cat([p[n][0].reshape(-1) for n in obj.names])
    t0 = time.perf_counter()
    res = train(obj, theta, Training(optimizer="adam", lr=1e-3, batch_size=100, max_epochs=200), inputs.x,
                generator=torch.Generator().manual_seed(0))
    theta = res.theta
    print(f"trained to training error {res.curve[-1]['train_error']} in {res.epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s, not part of the comparison)")
    print(f"784-40-40-1 ReLU, {obj.n_params} parameters, {obj.n_examples} MNIST images, "
          f"cross-entropy, float32, {args.threads} thread(s), best of {args.repeats}")

    def ours_lmax():
        op = HessianOperator(obj, theta)
        return lambda_max(op, tol=args.tol, seed=0), op.n_products

    def ours_trace():
        return hessian_trace(HessianOperator(obj, theta), samples=args.samples, seed=0)

    ours_trace(), reference_hvp(obj, theta, theta)  # warm-up (torch.func's first call is slow)
    t_ol, (lam, n_ol) = best_of(ours_lmax, args.repeats)

    def ours_power():
        op = HessianOperator(obj, theta)
        r = power_iteration(op.matvec, op.size, tol=args.tol, seed=0, dtype=torch.float32)
        return r.value, r.iterations

    t_op, (lam_p, n_op) = best_of(ours_power, args.repeats)
    t_rl, (lam_ref, n_rl) = best_of(lambda: reference_power(obj, theta, args.tol, 1000, 0), args.repeats)
    t_ot, (tr, se) = best_of(ours_trace, args.repeats)
    t_rt, tr_ref = best_of(lambda: reference_trace(obj, theta, args.samples, 0), args.repeats)
    print(f"{'':<34}{'ours':>10}{'reference':>12}{'ratio':>8}")
    print(f"{'lambda_max, Lanczos, time (s)':<34}{t_ol:>10.3f}{t_rl:>12.3f}{t_rl / t_ol:>8.2f}")
    print(f"{'  Hessian-vector products':<34}{n_ol:>10d}{n_rl:>12d}")
    print(f"{'  value':<34}{lam:>10.5f}{lam_ref:>12.5f}   rel. diff {abs(lam - lam_ref) / abs(lam_ref):.1e}")
    print(f"{'lambda_max, power it., time (s)':<34}{t_op:>10.3f}{t_rl:>12.3f}{t_rl / t_op:>8.2f}")
    print(f"{'  Hessian-vector products':<34}{n_op:>10d}{n_rl:>12d}")
    print(f"{'  value':<34}{lam_p:>10.5f}{lam_ref:>12.5f}   rel. diff {abs(lam_p - lam_ref) / abs(lam_ref):.1e}")
    print(f"{f'trace time, {args.samples} probes (s)':<34}{t_ot:>10.3f}{t_rt:>12.3f}{t_rt / t_ot:>8.2f}")
    print(f"{'  value (same probes)':<34}{tr:>10.4f}{tr_ref:>12.4f}   ours +- {se:.4f} (1 s.e.)")
    print(f"{'  per product (ms)':<34}{1e3 * t_ot / args.samples:>10.2f}{1e3 * t_rt / args.samples:>12.2f}"
          f"{t_rt / t_ot:>8.2f}")


if __name__ == "__main__":
    main()
