"""SIGTERM (`kill`, `ray job stop`, batch schedulers) saves what is counted, as Ctrl-C does, and
the message says how many draws are saved and that rerunning resumes."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from volume.spec import BooleanCube, ExperimentSpec, FCN
from volume.table import FrequencyTable


def _start(spec_path, out, *extra):
    code = "import sys; from volume.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "sample", str(spec_path), "-n", "100000000", "-o", str(out),
                             "--checkpoint-seconds", "1000", *extra],  # no periodic checkpoint: only the signal saves
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})


def _wait_for_progress(proc, timeout=120.0):
    """Read the progress bar (stderr) until it shows counted draws."""
    t0, seen = time.monotonic(), ""
    while time.monotonic() - t0 < timeout:
        ch = proc.stderr.read(1)
        if not ch:
            break
        seen += ch
        if re.search(r"sampling:\s+\d+%\|[^|]*\|\s*[1-9][\d.]*k?/", seen):
            return
    raise AssertionError(f"no progress: {seen[-500:]}")


# SIGINT takes the same path (KeyboardInterrupt). On Ray, ray.init installs a C++ SIGTERM handler
# that aborts the driver: volume.jobs.ray_session puts the caller's handler back.
@pytest.mark.parametrize("where", [["--in-process"], pytest.param(["--workers", "1"], marks=pytest.mark.ray)],
                         ids=["in-process", "ray"])
def test_sigterm_saves_counted_blocks_and_rerun_resumes(tmp_path, where):
    sig = signal.SIGTERM
    spec = ExperimentSpec(architecture=FCN(hidden=(40, 40)), inputs=BooleanCube(n=7), block_size=256, seed=3)
    spec_path = tmp_path / "s.toml"
    spec.save(spec_path)
    out = tmp_path / "t.h5"
    proc = _start(spec_path, out, *where)
    _wait_for_progress(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    table = FrequencyTable.load(out)
    assert table.n_samples > 0
    assert f"holds {table.n_samples} draws ({len(table.blocks)} blocks)" in last and "rerun the same command" in last
    assert "Traceback" not in err
    if where != ["--in-process"]:
        return  # resuming is the same bookkeeping either way (tests/test_jobs.py covers it on Ray)
    # a rerun draws only what is missing: asking for one more block adds exactly that block
    n = table.n_samples + spec.block_size
    from volume.cli import main

    assert main(["sample", str(spec_path), "-n", str(n), "-o", str(out), "--in-process", "--quiet"]) == 0
    again = FrequencyTable.load(out)
    assert again.blocks.tolist() == list(range(len(table.blocks) + 1))
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob("*.tmp"))
