"""Benchmark: sampling throughput on Ray against the in-process sampler, and the query
service's lookup latency under concurrent load.

Sampling (examples/boolean7.toml, 7-40-40-1 ReLU, blocks of 4096 draws): draws/s of
``volume.runner.run_local`` in this process (the reference; PyTorch limited to one thread,
and with its default threads), then ``volume.jobs.run_job`` on a local Ray instance with 1
and 2 workers, as tasks and as an actor pool. Every run draws the same blocks, so the
tables must be identical. Two rates: end to end (the call, start-up included: Ray task
workers are warmed up first and reused, while actors are created by each job), and steady
(from the first counted block to the last). Each figure is the best of ``--repeats`` runs.

Service: the Serve app over the 2-worker table, 127.0.0.1, ``--clients`` threads each
sending P(f) requests for ``--seconds`` seconds, first single functions, then batches of
``--batch`` functions; latency p50/p99 per request and per function.

    python benchmarks/scaling.py [--blocks 60] [--repeats 2] [--clients 8] [--seconds 10] [--batch 100]

Prints a Markdown table with the ratios against the in-process reference.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: stay on 127.0.0.1

import torch  # noqa: E402

from volume.jobs import import_ray, ray_session, run_job  # noqa: E402
from volume.keys import labels_to_text, unpack_keys  # noqa: E402
from volume.runner import run_local  # noqa: E402
from volume.spec import ExperimentSpec  # noqa: E402

HERE = Path(__file__).resolve()
SPEC = HERE.parents[1] / "examples" / "boolean7.toml"


def timed(fn, spec: ExperimentSpec, n: int, repeats: int) -> tuple[float, float, object]:
    """Best end-to-end rate (draws/s, start-up included) and best steady rate (from the first
    counted block to the last: start-up excluded) of ``fn(on_block)`` over ``repeats`` runs."""
    best_total = best_steady = 0.0
    result = None
    for _ in range(repeats):
        stamps: list[float] = []
        t0 = time.perf_counter()
        result = fn(lambda draws: stamps.append(time.perf_counter()))
        best_total = max(best_total, n / (time.perf_counter() - t0))
        best_steady = max(best_steady, (len(stamps) - 1) * spec.block_size / (stamps[-1] - stamps[0]))
    return best_total, best_steady, result


def _count_blocks_here(args: tuple[ExperimentSpec, list[int]]) -> int:
    from volume.sampler import Sampler
    from volume.table import count_keys

    spec, blocks = args
    torch.set_num_threads(1)
    sampler = Sampler(spec)
    return sum(len(count_keys(sampler.keys(b))[0]) for b in blocks)


def hardware_ceiling(spec: ExperimentSpec, blocks: int, procs: int, repeats: int) -> float:
    """draws/s of ``procs`` plain processes (multiprocessing, no Ray) sampling disjoint blocks:
    what the cores give to independent samplers, the ceiling for any scheduler."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.map(_count_blocks_here, [(spec, [0])] * procs)  # start-up and imports, not timed
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            pool.map(_count_blocks_here, [(spec, list(range(i, blocks, procs))) for i in range(procs)])
            best = max(best, blocks * spec.block_size / (time.perf_counter() - t))
    return best


def sampling(spec: ExperimentSpec, blocks: int, repeats: int) -> tuple[list[tuple[str, float, float]], object]:
    n = blocks * spec.block_size
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    total, steady, reference = timed(lambda cb: run_local(spec, n, on_block=cb), spec, n, repeats)
    rows.append(("in-process, 1 thread (reference)", total, steady))
    torch.set_num_threads(threads)
    total, steady, table = timed(lambda cb: run_local(spec, n, on_block=cb), spec, n, 1)
    assert table == reference
    rows.append((f"in-process, {threads} torch threads", total, steady))
    for procs in (1, 2):
        rate = hardware_ceiling(spec, blocks, procs, repeats)
        rows.append((f"{procs} plain process{'es' * (procs > 1)}, no Ray (ceiling)", rate, rate))
    for workers in (1, 2):  # as `volume sample --workers K`: a local instance with K CPUs
        with ray_session(workers=workers):
            for pool in ("tasks", "actors"):
                run_job(spec, 2 * workers * spec.block_size, None, pool=pool)  # start the worker processes
                total, steady, table = timed(lambda cb: run_job(spec, n, None, pool=pool, on_block=cb), spec, n, repeats)
                assert table == reference, "tables differ"
                rows.append((f"Ray {pool}, {workers} worker{'s' * (workers > 1)}", total, steady))
    return rows, reference


def percentile_ms(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x) * 1e3, q))


def load_test(url: str, functions: list[str], clients: int, seconds: float, batch: int) -> dict:
    from volume.client import VolumeClient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        rng = np.random.default_rng(k)
        mine = []
        with VolumeClient(url, timeout=60) as c:
            while time.monotonic() < stop:
                fs = [functions[i] for i in rng.integers(len(functions), size=batch)]
                t = time.perf_counter()
                try:
                    c.prior("boolean7", fs)
                except Exception as e:  # counted and reported
                    errors.append(str(e))
                mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        print(f"{len(errors)} errors, e.g. {errors[0]}")
    return {"requests": len(latencies), "errors": len(errors), "p50": percentile_ms(latencies, 50),
            "p99": percentile_ms(latencies, 99), "rps": len(latencies) / wall, "fps": batch * len(latencies) / wall}


def service(table, clients: int, seconds: float, batch: int) -> list[tuple[str, dict]]:
    from ray import serve

    from volume.service import application

    with tempfile.TemporaryDirectory() as d:
        table.save(Path(d) / "boolean7.h5")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(d), name="volume", route_prefix="/")
        try:
            funcs = [labels_to_text(x) for x in unpack_keys(table.top(1000)[0], table.n_inputs)]
            url = f"http://127.0.0.1:{port}"
            load_test(url, funcs, clients, 1.0, 1)  # warm-up
            return [("single P(f)", load_test(url, funcs, clients, seconds, 1)),
                    (f"batch of {batch}", load_test(url, funcs, clients, seconds, batch))]
        finally:
            serve.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=60, help="blocks of 4096 draws per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    spec = ExperimentSpec.load(SPEC)
    print(f"# scaling: {SPEC.name}, {args.blocks} blocks x {spec.block_size} draws, {os.cpu_count()} cores\n")
    rows, table = sampling(spec, args.blocks, args.repeats)
    ray = import_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ref_total, ref_steady = rows[0][1], rows[0][2]
        print("| sampler | draws/s end to end | ratio | draws/s steady | ratio |\n|---|---:|---:|---:|---:|")
        for name, total, steady in rows:
            print(f"| {name} | {total:,.0f} | {total / ref_total:.2f}x | {steady:,.0f} | {steady / ref_steady:.2f}x |")
        lat = service(table, args.clients, args.seconds, args.batch)
        print(f"\nService, {args.clients} concurrent clients, {args.seconds:g} s each, table of "
              f"{table.n_samples:,} draws / {table.n_distinct:,} functions:\n")
        print("| request | requests | errors | p50 ms | p99 ms | requests/s | functions/s |\n|---|---:|---:|---:|---:|---:|---:|")
        for name, r in lat:
            print(f"| {name} | {r['requests']} | {r['errors']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.0f} | {r['fps']:,.0f} |")
        print(f"\nbatched vs single, functions/s: {lat[1][1]['fps'] / lat[0][1]['fps']:.1f}x")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
