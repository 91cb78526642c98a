"""The GPU stream kernel (volume/triton_stream.py) against the float64 reference, on CPU tensors
under Triton's interpreter (TRITON_INTERPRET=1, in a subprocess so that it holds for the whole
import of Triton). Triton installs on CPU-only machines (`pip install triton`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import platform

if not (sys.platform == "linux" and platform.machine() == "x86_64"):
    pytest.skip("Triton's CPU wheels exist for Linux x86-64 only", allow_module_level=True)
try:
    import triton  # noqa: F401  (the test extra installs it on Linux x86-64)
except ImportError:  # a failure, not a skip: the GPU kernel would go untested
    raise AssertionError("Triton is not installed: pip install -e '.[test]' (CPU wheels exist)") from None

CODE = """
import numpy as np, stream_reference as ref
from volume.stream import block_key
from volume.triton_stream import standard_draws
for kind in ("gaussian", "uniform"):
    z = standard_draws(kind, 301, block_key(2, 7), 5, 11, "cpu", block=32).numpy()
    want = ref.standard(kind, 301, 2, 7, range(5, 11))
    assert z.shape == want.shape
    assert np.all(np.abs(z - want) <= 1e-6 * np.maximum(1, np.abs(want))), (kind, np.abs(z - want).max())
print("ok")
"""


def test_triton_kernel_gives_the_stream_under_the_interpreter():
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
