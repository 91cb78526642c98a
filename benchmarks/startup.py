"""Start-up times of the command line: `volume --version` and `volume serve` until /health answers.

    python benchmarks/startup.py [--repeats 3]

Runs the `volume` found on PATH (or `python -m volume.cli` with --module) from a temporary
directory, on a free loopback port, and stops each service it started by its own process id
(SIGINT, the Ctrl-C path). Prints the best and every time, and the load average (the machine
may be shared: compare figures taken under the same load).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(module: bool) -> list[str]:
    return [sys.executable, "-m", "volume.cli"] if module else ["volume"]


def time_version(module: bool) -> float:
    t0 = time.perf_counter()
    subprocess.run(command(module) + ["--version"], check=True, capture_output=True)
    return time.perf_counter() - t0


def time_serve(module: bool, timeout: float = 300.0) -> tuple[float, float]:
    """(seconds until the 'volume service on' line, seconds until GET /health answers 200)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        env.pop("RAY_ADDRESS", None)
        log = os.path.join(d, "serve.log")
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            proc = subprocess.Popen(command(module) + ["serve", "--tables", d, "--port", str(port)], cwd=d, env=env,
                                    stdout=fh, stderr=subprocess.STDOUT)
        printed = None
        try:
            while time.perf_counter() - t0 < timeout:
                buf = open(log).read()
                if printed is None and "volume service on" in buf:
                    printed = time.perf_counter() - t0
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            return printed or time.perf_counter() - t0, time.perf_counter() - t0
                except OSError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"volume serve exited with {proc.returncode}:\n{buf}")
                time.sleep(0.1)
            raise RuntimeError(f"volume serve not ready after {timeout} s:\n{buf}")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--module", action="store_true", help="run `python -m volume.cli` instead of `volume`")
    ap.add_argument("--skip-serve", action="store_true")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    v = [time_version(args.module) for _ in range(max(args.repeats, 5))]
    print(f"volume --version: best {min(v):.3f} s, all {[round(x, 3) for x in v]}")
    if not args.skip_serve:
        s = [time_serve(args.module) for _ in range(args.repeats)]
        print(f"volume serve, until the 'service on' line: best {min(a for a, _ in s):.1f} s, "
              f"all {[round(a, 1) for a, _ in s]}")
        print(f"volume serve, until /health answers: best {min(b for _, b in s):.1f} s, all {[round(b, 1) for _, b in s]}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
