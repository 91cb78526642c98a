"""Throughput of prior sampling, draws per second, against plain batched PyTorch.

What is timed, for both sides, is a block of draws from parameters to counted functions:

* reference: plain batched PyTorch written here: ``torch.randn`` for all ``block_size``
  parameter sets of the spec's FCN at once, ``matmul``/``bmm`` layer by layer, threshold,
  ``numpy.packbits`` into keys and ``numpy.unique`` over the packed keys with counts;
* volume: ``Sampler(spec).keys(b)`` (sub-batches drawn and evaluated in cache, see
  volume/sampler.py) and ``FrequencyTable.from_keys`` over the block's keys.

Modes, side by side in one run: one core (one process, ``torch.set_num_threads(1)``), and all
cores in two ways: one worker process per core (``ProcessPoolExecutor``, one torch thread
each, blocks distributed) and one process with one torch intra-op thread per core. Each
figure is the best of ``--repeats`` runs of ``--blocks`` blocks (best-of, because the
machine may be shared); reference and volume runs alternate, so both see the same
conditions. The script also reports the share of volume's one-core time spent in the
random-number generator (drawing a block's standard parameters alone) and in counting.

Run: ``python benchmarks/throughput.py [--spec examples/boolean7.toml] [--blocks 8] [--repeats 3]``
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

from volume.inputs import load_inputs
from volume.models import layer_shapes, stream_tensors
from volume.sampler import BlockStream, Sampler
from volume.spec import FCN, ExperimentSpec
from volume.table import FrequencyTable

REPO = Path(__file__).resolve().parents[1]


class Reference:
    """Plain batched PyTorch sampler of an FCN spec with a threshold output (see module docstring)."""

    def __init__(self, spec: ExperimentSpec):
        if not isinstance(spec.architecture, FCN) or spec.output.kind != "threshold":
            raise SystemExit("the reference handles FCN specs with a threshold output")
        self.spec = spec
        self.x = torch.from_numpy(load_inputs(spec.inputs).flat)
        self.widths = [self.x.shape[1], *spec.architecture.hidden, 1]
        self.act = {"relu": torch.relu, "tanh": torch.tanh, "erf": torch.erf}[spec.architecture.activation]

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        spec, n = self.spec, self.spec.block_size
        g = torch.Generator().manual_seed(1_000_003 * spec.seed + b)
        h = self.x.expand(n, *self.x.shape)  # (B, M, d)
        for i, (fan_in, out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            w = torch.randn(n, out, fan_in, generator=g) * (spec.prior.sigma_w / math.sqrt(fan_in))
            z = torch.bmm(h, w.transpose(1, 2)) if i else torch.matmul(self.x, w.transpose(1, 2))
            if spec.prior.sigma_b > 0:
                z = z + spec.prior.sigma_b * torch.randn(n, 1, out, generator=g)
            h = z if i == len(self.widths) - 2 else self.act(z)
        keys = np.packbits((h[..., 0] > 0).numpy(), axis=1, bitorder="big")
        return np.unique(keys, axis=0, return_counts=True)


class Volume:
    """The project's path: sampler keys of a block, counted into a FrequencyTable."""

    def __init__(self, spec: ExperimentSpec):
        self.spec = spec
        self.sampler = Sampler(spec)

    def block(self, b: int) -> FrequencyTable:
        return FrequencyTable.from_keys(self.spec, self.sampler.keys(b), [b])


IMPLS = {"reference": Reference, "volume": Volume}
_worker = None


def _init_worker(kind: str, spec_json: str) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = IMPLS[kind](ExperimentSpec.from_json(spec_json))


def _run_block(b: int) -> int:
    _worker.block(b)
    return 1


def _best_rates(runs: dict[str, Callable[[], object]], n_draws: int, repeats: int) -> dict[str, float]:
    """Draws/s of each run, best of ``repeats``; the runs alternate so they share conditions."""
    best = dict.fromkeys(runs, math.inf)
    for _ in range(repeats):
        for kind, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[kind] = min(best[kind], time.perf_counter() - t)
    return {kind: n_draws / t for kind, t in best.items()}


def measure_in_process(spec: ExperimentSpec, threads: int, blocks: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    impls = {kind: cls(spec) for kind, cls in IMPLS.items()}
    for impl in impls.values():
        impl.block(10_000)  # warm up (allocations, lazy initialisation)
    runs = {kind: (lambda impl=impl: [impl.block(b) for b in range(blocks)]) for kind, impl in impls.items()}
    return _best_rates(runs, blocks * spec.block_size, repeats)


def measure_processes(spec: ExperimentSpec, workers: int, blocks: int, repeats: int) -> dict[str, float]:
    ctx = get_context("spawn")
    with ExitStack() as stack:
        pools = {kind: stack.enter_context(ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                               initargs=(kind, spec.to_json())))
                 for kind in IMPLS}
        for pool in pools.values():  # start and warm up every worker
            list(pool.map(_run_block, range(10_000, 10_000 + 2 * workers)))
        runs = {kind: (lambda pool=pool: list(pool.map(_run_block, range(blocks)))) for kind, pool in pools.items()}
        return _best_rates(runs, blocks * spec.block_size, repeats)


def generator_share(spec: ExperimentSpec, blocks: int, repeats: int) -> tuple[float, float]:
    """One core: draws/s of the standard parameters alone (the block stream, in the sampler's
    sub-batches), and of counting alone (FrequencyTable.from_keys of a block's keys)."""
    torch.set_num_threads(1)
    sampler = Sampler(spec)
    layers = layer_shapes(spec, sampler.inputs.shape)
    bufs = stream_tensors(spec, layers, sampler.sub_batch)

    def draw_all():
        for b in range(blocks):
            stream = BlockStream(spec, layers, b)
            for start in range(0, spec.block_size, sampler.sub_batch):
                stream.fill(bufs, start, min(start + sampler.sub_batch, spec.block_size))

    keys = [sampler.keys(b) for b in range(blocks)]
    n = blocks * spec.block_size
    rates = _best_rates({"gen": draw_all,
                         "count": lambda: [FrequencyTable.from_keys(spec, k, [b]) for b, k in enumerate(keys)]},
                        n, repeats)
    return rates["gen"], rates["count"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(REPO / "examples" / "boolean7.toml"))
    ap.add_argument("--blocks", type=int, default=8, help="blocks per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best is kept)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cores for the all-cores modes")
    args = ap.parse_args(argv)
    spec = ExperimentSpec.load(args.spec)
    cores = args.workers
    blocks_mp = max(cores, args.blocks - args.blocks % cores)
    print(f"spec {args.spec} ({spec.spec_id}): {spec.architecture}, prior {spec.prior}, {spec.n_inputs} inputs, "
          f"block_size {spec.block_size}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"numpy {np.__version__}; best of {args.repeats} runs of {args.blocks} blocks")
    rows = []
    modes = [("1 core (1 process, 1 thread)", lambda: measure_in_process(spec, 1, args.blocks, args.repeats)),
             (f"{cores} cores ({cores} processes x 1 thread)",
              lambda: measure_processes(spec, cores, blocks_mp, args.repeats)),
             (f"{cores} cores (1 process, {cores} threads)",
              lambda: measure_in_process(spec, cores, blocks_mp, args.repeats))]
    for name, fn in modes:
        rates = fn()
        rows.append((name, rates["reference"], rates["volume"]))
    print(f"\n{'mode':38s} {'reference':>12s} {'volume':>12s} {'ratio':>7s}   (draws/s)")
    for name, ref, vol in rows:
        print(f"{name:38s} {ref:12,.0f} {vol:12,.0f} {vol / ref:7.2f}x")
    gen, count = generator_share(spec, args.blocks, args.repeats)
    one = rows[0][2]
    print(f"\nvolume, 1 core: generator alone {gen:,.0f} draws/s ({one / gen:.0%} of the time), "
          f"counting alone {count:,.0f} draws/s ({one / count:.1%} of the time)")
    ref_distinct = len(Reference(spec).block(0)[0])
    vol_distinct = Volume(spec).block(0).n_distinct
    print(f"sanity: distinct functions in one block of {spec.block_size}: "
          f"reference {ref_distinct}, volume {vol_distinct}")


if __name__ == "__main__":
    main()
