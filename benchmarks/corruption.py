"""Flip every bit of a small table, one at a time, and load each copy: it must either fail
with a TableError that names the file, or load as exactly the saved table (a flip in
unused bytes). Prints the tally; any silent change or other exception is a failure.

    python benchmarks/corruption.py [--every K]   # K > 1: only every K-th bit (quicker)

tests/test_table_integrity.py runs the same check on one bit of every byte.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

from volume.errors import TableError
from volume.runner import run_local
from volume.spec import FCN, BooleanCube, ExperimentSpec
from volume.table import FrequencyTable


def small_table(path: Path) -> FrequencyTable:
    spec = ExperimentSpec(architecture=FCN(hidden=(4,)), inputs=BooleanCube(n=3), block_size=8, name="flip")
    return run_local(spec, 16, path)


def flip_and_load(original: bytes, good: FrequencyTable, bits, path: Path) -> collections.Counter:
    tally: collections.Counter = collections.Counter()
    for bit in bits:
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(data)
        try:
            loaded = FrequencyTable.load(path)
        except TableError as e:
            tally["error naming the file" if str(path) in str(e) else "ERROR WITHOUT THE FILE NAME"] += 1
            continue
        except Exception as e:  # noqa: BLE001 (counted: must not happen)
            tally[f"OTHER EXCEPTION {type(e).__name__}"] += 1
            continue
        tally["loaded, identical" if loaded == good else "LOADED A DIFFERENT TABLE"] += 1
    return tally


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        src = Path(d) / "t.h5"
        good = small_table(src)
        original = src.read_bytes()
        start = time.perf_counter()
        tally = flip_and_load(original, good, range(0, 8 * len(original), args.every), Path(d) / "flipped.h5")
        took = time.perf_counter() - start
    print(f"file {len(original)} bytes, {sum(tally.values())} flips in {took:.0f} s")
    for k, v in sorted(tally.items()):
        print(f"  {k:32s} {v}")
    bad = sum(v for k, v in tally.items() if k.isupper() or k.startswith(("ERROR", "OTHER", "LOADED")))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
