"""What one request and one job of the service may cost at most, measured (benchmarks/RESULTS.md
"Limits"). Each case runs in this process against the FastAPI app without Ray; CPU seconds
are this process's (time.process_time), memory the peak that tracemalloc sees (numpy and
Python allocations) above the start.

    python benchmarks/limits.py
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from fastapi.testclient import TestClient

from volume.limits import Limits, job_cost
from volume.runner import run_local
from volume.service import LocalJobs, VolumeAPI, build_app
from volume.spec import FCN, BooleanCube, ExperimentSpec


def measure(label: str, fn) -> None:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    cpu, wall = time.process_time(), time.perf_counter()
    status = fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"| {label} | {status} | {cpu:.2f} | {wall:.2f} | {(peak - base) / 2**20:.1f} |", flush=True)


def main() -> int:
    limits = Limits()
    with tempfile.TemporaryDirectory() as d:
        tables = Path(d)
        spec = ExperimentSpec(architecture=FCN(hidden=(40, 40)), inputs=BooleanCube(n=7), block_size=4096, name="b7")
        start = time.process_time()
        run_local(spec, 25 * 4096, tables / "b7.h5")
        cpu = time.process_time() - start
        rate = 25 * 4096 / cpu
        macs = job_cost(spec, 25 * 4096).macs / cpu
        print(f"sampling boolean7 (7-40-40-1): {rate:,.0f} draws per CPU second, {macs:.3g} multiply-adds per CPU second")
        c = TestClient(build_app(VolumeAPI(tables, jobs=LocalJobs(), limits=limits)))
        print("| request | status | CPU s | wall s | peak MiB |")
        print("|---|---|---|---|---|")
        table = json.loads(c.get("/tables/b7").text)
        measure(f"P(f) of {limits.max_functions} functions (the batch limit), table of {table['n_distinct']:,} functions",
                lambda: c.post("/tables/b7/prior", json={"functions": ["0" * 128] * limits.max_functions}).status_code)
        measure("posterior, train 0-63, target parity, top 10000",
                lambda: c.post("/tables/b7/posterior", json={"train_indices": "0-63", "target": "parity",
                                                               "top": limits.max_top}).status_code)
        measure("posterior with the range bomb '0-100000000'",
                lambda: c.post("/tables/b7/posterior", json={"train_indices": "0-100000000",
                                                               "target": "parity"}).status_code)
        measure(f"top k = {limits.max_top}", lambda: c.get("/tables/b7/top", params={"k": limits.max_top}).status_code)
        body = b'{"functions": ["' + b"0" * (limits.max_body_bytes - 40) + b'"]}'
        measure("a body of max_body_bytes (1 MiB)", lambda: c.post("/tables/b7/prior", content=body,
                                                                   headers={"content-type": "application/json"}).status_code)
        measure("a body of 5000 nested brackets", lambda: c.post("/tables/b7/prior", content=b"[" * 5000,
                                                                 headers={"content-type": "application/json"}).status_code)
        for n, hidden in [(11, (40,)), (11, (40,) * 31), (9, (40,) * 64)]:
            gp = ExperimentSpec(architecture=FCN(hidden=hidden), inputs=BooleanCube(n=n))
            steps = (len(hidden) + 1) * 4**n
            measure(f"GP estimate, M = {2**n}, {len(hidden)} hidden layers ({steps:.3g} kernel steps)",
                    lambda: c.post("/gp/estimate", json={"spec": gp.to_dict(), "labels": "01" * 2**(n - 1)}).status_code)
        worst = ExperimentSpec(architecture=FCN(hidden=(40,) * 65), inputs=BooleanCube(n=11))
        measure("GP estimate refused (65 hidden layers)",
                lambda: c.post("/gp/estimate", json={"spec": worst.to_dict(), "labels": "01" * 1024}).status_code)
        print()
        print(f"job limits: max_job_macs {limits.max_job_macs:.3g} = {limits.max_job_macs / macs / 3600:.1f} CPU hours "
              f"of boolean7 sampling; max_worker_bytes {limits.max_worker_bytes / 2**20:.0f} MiB per worker; "
              f"max_table_bytes {limits.max_table_bytes / 2**30:.0f} GiB")
        for label, s, n in [("boolean7 at the draw limit of its table", spec, int(limits.max_table_bytes // 24)),
                            ("widest allowed FCN on 7 bits, 1 block", spec.replace(architecture=FCN(hidden=(1400, 1400))), 4096)]:
            jc = job_cost(s, n)
            print(f"  {label}: {n:,} draws, {jc.blocks:,} blocks, worker {jc.worker_bytes / 2**20:.0f} MiB, table "
                  f"{jc.table_bytes / 2**20:,.0f} MiB, {jc.macs:.3g} MACs = {jc.macs / macs / 3600:.2f} CPU h at the rate above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
