"""Throughput of prior sampling, draws per second per core, against an honest plain-PyTorch baseline.

What is timed, for every side, is a block of draws from random parameters to counted
functions (keys and their counts):

* ``baseline``: the best plain PyTorch sampler a competent engineer would write without
  this project (class :class:`Baseline`): ``torch.set_num_threads(1)`` per core; sub-batches
  of ``--sub`` (default 32) draws so that parameters and activations stay in cache;
  activations laid out (draws, units, inputs) so that the first layer is one ``mm`` for the
  whole sub-batch and later layers are ``bmm`` without transposes; ``torch.randn`` written
  into preallocated buffers, weights scaled in place, ReLU in place; labels packed with
  ``numpy.packbits`` and counted with ``numpy.unique`` over the keys viewed as one
  fixed-width value each;
* ``volume``: ``Sampler(spec).keys(b)`` with the default backend (the compiled kernel where
  it is built; see volume/sampler.py) and ``FrequencyTable.from_keys``;
* ``volume-torch``: the same with ``backend="torch"`` (the project's PyTorch path).

Cases (built here, so the script needs only the repository and, for the image cases, the
MNIST test images): Boolean n = 5, 7, 9 with an n-40-40-1 ReLU network, sigma_w = 1,
sigma_b = 0 (n = 7 is examples/boolean7.toml), and 100 and 1,000 MNIST test images with a
784-40-40-1 network and the same prior. Modes: one core (this process, one torch thread),
and ``--workers`` cores as one worker process per core (one torch thread each, blocks
distributed). Each figure is the best of ``--repeats`` timed runs (best-of, because the
machine may be shared; the sides alternate so they see the same conditions); the load
average is printed with the results.

Run (about 3 minutes on 2 idle cores):

    python benchmarks/throughput.py [--cases boolean5,boolean7,boolean9,mnist100,mnist1000]
        [--repeats 3] [--workers 2] [--mnist DIR] [--cpu-time]

On a machine shared with other jobs, ``--cpu-time`` gives per-core figures for the one-core
mode (CPU seconds of this process, not wall seconds; still slowed by caches shared with the
other jobs); the multi-core mode is then not meaningful.

``--mnist`` is the directory of t10k-images-idx3-ubyte(.gz) (default: ../shared/data/mnist
beside the repository, else data/mnist); image cases are left out, with a note, without it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from volume import fused
from volume.inputs import load_inputs
from volume.sampler import Sampler
from volume.spec import FCN, BooleanCube, ExperimentSpec, ImageSubset, Prior
from volume.table import FrequencyTable

REPO = Path(__file__).resolve().parents[1]
PRIOR = Prior(kind="gaussian", sigma_w=1.0, sigma_b=0.0)
# case -> (block size, blocks per timed run)
CASES = {"boolean5": (4096, 4), "boolean7": (4096, 4), "boolean9": (2048, 2), "mnist100": (1024, 2),
         "mnist1000": (128, 1)}


def case_spec(name: str, mnist: Path | None) -> ExperimentSpec:
    block, _ = CASES[name]
    if name.startswith("boolean"):
        inputs = BooleanCube(n=int(name[len("boolean"):]))
    else:
        inputs = ImageSubset(dataset="mnist", path=str(mnist), split="test", count=int(name[len("mnist"):]),
                             subset_seed=0, normalise="unit")
    return ExperimentSpec(architecture=FCN(hidden=(40, 40)), prior=PRIOR, inputs=inputs, block_size=block, name=name)


class Baseline:
    """Plain PyTorch sampler of an FCN spec with a threshold output (see the module docstring)."""

    def __init__(self, spec: ExperimentSpec, sub: int = 32):
        if not isinstance(spec.architecture, FCN) or spec.output.kind != "threshold":
            raise SystemExit("the baseline handles FCN specs with a threshold output")
        self.spec, self.sub = spec, sub
        x = torch.from_numpy(load_inputs(spec.inputs).flat)
        self.m = x.shape[0]
        self.xt = x.t().contiguous()  # (d, M)
        widths = [x.shape[1], *spec.architecture.hidden, 1]
        self.shapes = list(zip(widths[1:], widths[:-1]))  # (out, in) per layer
        self.w = [torch.empty(sub, o, i) for o, i in self.shapes]
        self.b = [torch.empty(sub, o, 1) for o, _ in self.shapes]
        self.h = [torch.empty(sub, o, self.m) for o, _ in self.shapes]
        self.act_ = {"relu": torch.Tensor.relu_, "tanh": torch.Tensor.tanh_,
                     "erf": torch.Tensor.erf_}[spec.architecture.activation]
        self.gen = torch.Generator()

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        spec, sub, prior = self.spec, self.sub, self.spec.prior
        self.gen.manual_seed(1_000_003 * spec.seed + b)
        keys = np.empty((spec.block_size, (self.m + 7) // 8), dtype=np.uint8)
        with torch.no_grad():
            for start in range(0, spec.block_size, sub):
                n = min(sub, spec.block_size - start)
                h = None
                for i, (o, fan_in) in enumerate(self.shapes):
                    w, dst = self.w[i][:n], self.h[i][:n]
                    torch.randn(w.shape, generator=self.gen, out=w)
                    w.mul_(prior.sigma_w / math.sqrt(fan_in))
                    if h is None:
                        torch.mm(w.view(n * o, fan_in), self.xt, out=dst.view(n * o, self.m))
                    else:
                        torch.bmm(w, h, out=dst)
                    if prior.sigma_b > 0:
                        bias = self.b[i][:n]
                        torch.randn(bias.shape, generator=self.gen, out=bias)
                        dst.add_(bias, alpha=prior.sigma_b)
                    if i < len(self.shapes) - 1:
                        self.act_(dst)
                    h = dst
                keys[start:start + n] = np.packbits((h[:, 0, :] > 0).numpy(), axis=1, bitorder="big")
        void = np.ascontiguousarray(keys).view(f"V{keys.shape[1]}").ravel()
        return np.unique(void, return_counts=True)


class Volume:
    """The project's path: sampler keys of a block, counted into a FrequencyTable."""

    def __init__(self, spec: ExperimentSpec, backend: str = "auto"):
        self.spec = spec
        self.sampler = Sampler(spec, backend=backend)

    def block(self, b: int) -> FrequencyTable:
        return FrequencyTable.from_keys(self.spec, self.sampler.keys(b), [b])


IMPLS: dict[str, Callable[[ExperimentSpec], object]] = {
    "baseline": Baseline, "volume": Volume, "volume-torch": lambda spec: Volume(spec, "torch")}
_worker = None


def _init_worker(kind: str, spec_json: str) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = IMPLS[kind](ExperimentSpec.from_json(spec_json))


def _run_block(b: int) -> int:
    _worker.block(b)
    return 1


CLOCK = time.perf_counter  # --cpu-time: time.process_time (one-core mode only)


def _best_rates(runs: dict[str, Callable[[], object]], n_draws: int, repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Draws/s of each run, best of ``repeats``; the runs alternate so they share conditions."""
    best = dict.fromkeys(runs, math.inf)
    for _ in range(repeats):
        for kind, fn in runs.items():
            t = clock()
            fn()
            best[kind] = min(best[kind], clock() - t)
    return {kind: n_draws / t for kind, t in best.items()}


def one_core(spec: ExperimentSpec, kinds: list[str], blocks: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(1)
    impls = {kind: IMPLS[kind](spec) for kind in kinds}
    for impl in impls.values():
        impl.block(10_000)  # warm up (allocations, lazy initialisation)
    runs = {kind: (lambda impl=impl: [impl.block(b) for b in range(blocks)]) for kind, impl in impls.items()}
    return _best_rates(runs, blocks * spec.block_size, repeats, CLOCK)


def processes(spec: ExperimentSpec, kinds: list[str], workers: int, blocks: int, repeats: int) -> dict[str, float]:
    ctx = get_context("spawn")
    with ExitStack() as stack:
        pools = {kind: stack.enter_context(ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                               initargs=(kind, spec.to_json())))
                 for kind in kinds}
        for pool in pools.values():  # start and warm up every worker
            list(pool.map(_run_block, range(10_000, 10_000 + 2 * workers)))
        runs = {kind: (lambda pool=pool: list(pool.map(_run_block, range(blocks)))) for kind, pool in pools.items()}
        return _best_rates(runs, blocks * spec.block_size, repeats)


def default_mnist() -> Path | None:
    for p in (REPO.parent / "shared" / "data" / "mnist", REPO / "data" / "mnist"):
        if any((p / f).is_file() for f in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte")):
            return p
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from " + ", ".join(CASES))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (the best is kept)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cores for the multi-core mode")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the blocks per timed run")
    ap.add_argument("--no-torch-backend", action="store_true", help="leave out the volume-torch column")
    ap.add_argument("--mnist", type=Path, default=None, help="directory of the MNIST test images")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one-core mode: time by this process's CPU time instead of the wall clock (per-core "
                         "figures on a machine shared with other jobs; the multi-core mode always uses the wall clock)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    mnist = args.mnist or default_mnist()
    kinds = ["baseline", "volume"] + ([] if args.no_torch_backend else ["volume-torch"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"numpy {np.__version__}; compiled kernel: {fused.isas()[0] if fused.available() else 'not built'}; "
          f"best of {args.repeats}; one-core clock: {'CPU time' if args.cpu_time else 'wall'}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    header = f"{'case':10s} {'mode':24s} " + " ".join(f"{k:>13s}" for k in kinds) + f" {'volume/baseline':>16s}"
    print(header + "   (draws/s)")
    for name in args.cases.split(","):
        if name.startswith("mnist") and mnist is None:
            print(f"{name:10s} left out: no MNIST test images found (give --mnist DIR)")
            continue
        spec = case_spec(name, mnist)
        blocks = max(1, round(CASES[name][1] * args.scale))
        modes = [("1 core", lambda: one_core(spec, kinds, blocks, args.repeats))]
        if args.workers > 1:
            nb = max(args.workers, blocks - blocks % args.workers) * 2
            modes.append((f"{args.workers} processes x 1 thread",
                          lambda nb=nb: processes(spec, kinds, args.workers, nb, args.repeats)))
        for mode, fn in modes:
            rates = fn()
            print(f"{name:10s} {mode:24s} " + " ".join(f"{rates[k]:13,.0f}" for k in kinds)
                  + f" {rates['volume'] / rates['baseline']:15.2f}x", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
