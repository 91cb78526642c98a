"""Sampling jobs on a local Ray instance: the table depends only on (spec, blocks), never on
the number of workers, the pool, checkpoints or a killed-and-resumed driver; resuming draws
only the missing blocks; ray_map; the CLI's Ray and in-process paths. One Ray instance
(2 CPUs) serves the whole module."""

from __future__ import annotations

import functools
import math
import os
import signal
import socket as socketlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from volume.errors import FunctionError, TableError, VolumeError
from volume.runner import run_local, table_lock
from volume.spec import FCN, BooleanCube, ExperimentSpec, Prior
from volume.table import FrequencyTable

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    from volume.jobs import import_ray

    ray = import_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def spec() -> ExperimentSpec:
    return ExperimentSpec(architecture=FCN(hidden=(16,)), prior=Prior(sigma_w=1.5, sigma_b=0.5),
                          inputs=BooleanCube(n=5), seed=3, block_size=256, name="jobs-test")


def test_worker_counts_and_pools_give_identical_bytes(ray_local, spec, tmp_path):
    from volume.jobs import run_job

    n = 12 * spec.block_size - 100  # rounds up to 12 blocks
    ref = tmp_path / "inprocess.h5"
    run_local(spec, n, ref)
    outputs = {}
    for name, kw in {f"{pool}-{w}": dict(workers=w, pool=pool) for pool in ("actors", "tasks") for w in (1, 2)}.items():
        outputs[name] = tmp_path / f"{name}.h5"
        table = run_job(spec, n, outputs[name], checkpoint_seconds=0.0, **kw)  # a checkpoint after every block
        assert table.blocks.tolist() == list(range(12)) and table.n_samples == 12 * spec.block_size
    expected = ref.read_bytes()
    for name, path in outputs.items():
        assert path.read_bytes() == expected, name


def test_blocks_drawn_in_groups_give_identical_bytes(ray_local, spec, tmp_path, monkeypatch):
    """A call draws a group of blocks (one Ray round trip per group): the saved table is the same."""
    import volume.jobs as jobs

    class Threes(jobs.GroupSize):
        def size(self, workers: int) -> int:
            return 3

    monkeypatch.setattr(jobs, "GroupSize", Threes)
    n = 12 * spec.block_size
    ref = tmp_path / "inprocess.h5"
    run_local(spec, n, ref)
    for pool in ("actors", "tasks"):
        seen: list[int] = []
        out = tmp_path / f"{pool}.h5"
        table = jobs.run_job(spec, n, out, workers=2, pool=pool, checkpoint_seconds=0.0, on_block=seen.append)
        assert table.blocks.tolist() == list(range(12)) and sum(seen) == n
        assert max(seen) == 3 * spec.block_size, seen  # groups were used
        assert out.read_bytes() == ref.read_bytes(), pool


def test_group_size_follows_the_measured_time_per_block():
    from volume.jobs import GroupSize

    now = [0.0]
    g = GroupSize(target_seconds=0.5, max_blocks=64, clock=lambda: now[0])
    assert g.size(2) == 1  # nothing measured yet
    now[0] = 5.0
    g.finished(1)  # the first call's time (start-up) is not counted
    for _ in range(40):
        now[0] += 0.024  # 2 workers, 48 ms per block each: 0.024 s of wall per finished block
        g.finished(1)
    assert g.size(2) == 10  # 0.5 s // 0.048 s
    slow = GroupSize(clock=lambda: now[0])
    slow.finished(1)
    for _ in range(4):
        now[0] += 3.0
        slow.finished(1)
    assert slow.size(2) == 1  # blocks of seconds: one per call
    fast = GroupSize(max_blocks=64, clock=lambda: now[0])
    fast.finished(1)
    for _ in range(1000):
        now[0] += 1e-5
        fast.finished(1)
    assert fast.size(2) == 64


def test_resume_draws_only_missing_blocks(ray_local, spec, tmp_path):
    from volume.jobs import run_job

    out = tmp_path / "t.h5"
    run_job(spec, 4 * spec.block_size, out)
    drawn: list[int] = []
    workers_seen: list[int] = []
    table = run_job(spec, 10 * spec.block_size, out, on_block=drawn.append, on_workers=workers_seen.append)
    assert len(drawn) == 6 and sum(drawn) == 6 * spec.block_size  # blocks 4..9 only
    assert workers_seen and workers_seen[0] == 2  # the module's instance has 2 CPUs
    assert table == run_local(spec, 10 * spec.block_size)
    again: list[int] = []
    run_job(spec, 10 * spec.block_size, out, on_block=again.append)  # complete: nothing to draw
    assert again == [] and FrequencyTable.load(out).n_samples == 10 * spec.block_size


def test_a_table_being_written_is_locked(ray_local, spec, tmp_path):
    from volume.jobs import run_job

    out = tmp_path / "t.h5"
    with table_lock(out):
        with pytest.raises(TableError, match="another job is writing"):
            run_job(spec, spec.block_size, out)
    assert run_job(spec, spec.block_size, out).n_samples == spec.block_size


def test_bad_arguments_are_volume_errors(ray_local, spec, tmp_path):
    from volume.jobs import run_job

    with pytest.raises(VolumeError, match="pool"):
        run_job(spec, 10, tmp_path / "a.h5", pool="threads")
    with pytest.raises(VolumeError, match="workers"):
        run_job(spec, 10, tmp_path / "b.h5", workers=0)
    other = spec.replace(seed=4)
    run_local(other, 10, tmp_path / "c.h5")
    with pytest.raises(TableError, match="holds spec"):
        run_job(spec, 10, tmp_path / "c.h5")


def test_ray_map_keeps_order_and_reraises_user_errors(ray_local):
    from volume.jobs import ray_map
    from volume.keys import parse_function

    items = list(range(23))  # functions shipped to workers must be importable there (not test modules)
    assert ray_map(math.factorial, items) == [math.factorial(i) for i in items]
    assert ray_map(math.factorial, []) == []
    parse4 = functools.partial(parse_function, n_inputs=4)
    assert [x.tolist() for x in ray_map(parse4, ["0110", "0x90"])] == [[0, 1, 1, 0], [1, 0, 0, 1]]
    with pytest.raises(FunctionError, match="length 3"):
        ray_map(parse4, ["0110", "xyz"])


def test_cli_sample_ray_and_in_process_agree(ray_local, spec, tmp_path):
    from volume.cli import main

    spec_path = tmp_path / "s.toml"
    spec.save(spec_path)
    a, b = tmp_path / "ray.h5", tmp_path / "local.h5"
    assert main(["sample", str(spec_path), "-n", "1500", "-o", str(a), "--quiet", "--workers", "2"]) == 0
    assert main(["sample", str(spec_path), "-n", "1500", "-o", str(b), "--quiet", "--in-process"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert FrequencyTable.load(a).n_samples == 6 * spec.block_size


def test_killed_driver_resumes_to_the_identical_table(ray_local, tmp_path):
    """`volume sample` on its own local Ray instance (the README's path), SIGKILLed once its
    first checkpoint is on disk, then rerun here: the table equals an uninterrupted run's."""
    from volume.jobs import run_job

    spec = ExperimentSpec(architecture=FCN(hidden=(32, 32)), prior=Prior(sigma_w=1.0, sigma_b=0.2),
                          inputs=BooleanCube(n=6), seed=11, block_size=256, name="kill-test")
    n_blocks = 300
    spec_path, out, ref = tmp_path / "k.toml", tmp_path / "k.h5", tmp_path / "ref.h5"
    spec.save(spec_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "volume.cli", "sample", str(spec_path), "-n", str(n_blocks * spec.block_size),
         "-o", str(out), "--quiet", "--checkpoint-seconds", "0.3", "--workers", "2"],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert out.exists(), f"no checkpoint appeared (exit {proc.poll()}): {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:  # the driver's local Ray instance shares its process group: stop all of it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    partial = FrequencyTable.load(out)
    assert 0 < len(partial.blocks) < n_blocks
    drawn: list[int] = []
    resumed = run_job(spec, n_blocks * spec.block_size, out, on_block=drawn.append)
    assert sum(drawn) == (n_blocks - len(partial.blocks)) * spec.block_size  # on_block(draws), per group of blocks
    run_job(spec, n_blocks * spec.block_size, ref)
    assert resumed.blocks.tolist() == list(range(n_blocks))
    assert out.read_bytes() == ref.read_bytes()


def test_unreachable_cluster_fails_fast_without_writing(tmp_path):
    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = tmp_path / "t.h5"
    proc = subprocess.run([sys.executable, "-m", "volume.cli", "sample", str(REPO / "examples" / "boolean7.toml"),
                           "-n", "10", "-o", str(out), "--address", f"127.0.0.1:{port}", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"cannot connect to the Ray cluster at '127.0.0.1:{port}'" in proc.stderr
    assert not out.exists()


def test_loopback_addresses_are_recognised():
    from volume.jobs import is_loopback_address, is_loopback_host

    assert is_loopback_address(None) and is_loopback_address("127.0.0.1:6379") and is_loopback_address("ray://localhost:10001")
    assert not is_loopback_address("10.1.2.3:6379") and not is_loopback_address("ray://head.example.com:10001")
    assert is_loopback_host("::1") and is_loopback_host("[::1]") and not is_loopback_host("0.0.0.0")


def test_optimizer_table_through_jobs_equals_training_run(ray_local, tmp_path):
    """A spec with a [training] section samples the functions an optimizer finds; the Ray job,
    the in-process run and TrainingRun.table agree exactly."""
    from volume.jobs import run_job
    from volume.spec import Training
    from volume.train import optimizer_table

    spec = ExperimentSpec(architecture=FCN((8,)), inputs=BooleanCube(n=3), block_size=2, seed=5,
                          training=Training(optimizer="adam", lr=0.05, batch_size=4, train_indices=(0, 3, 5, 6),
                                            target="parity", max_epochs=300))
    via_ray = run_job(spec, 6, tmp_path / "ray.h5", workers=2)
    local = run_local(spec, 6, tmp_path / "local.h5")
    assert via_ray == local == optimizer_table(spec, range(3))
    assert (tmp_path / "ray.h5").read_bytes() == (tmp_path / "local.h5").read_bytes()


def test_empirical_kernel_over_ray_equals_in_process(ray_local, tmp_path):
    """`volume gp kernel --kernel empirical --ray` spreads the kernel's blocks over Ray tasks
    (volume.jobs.ray_map) and writes exactly the in-process kernel."""
    import h5py
    import numpy as np

    from volume.cli import main

    spec = ExperimentSpec(architecture=FCN(hidden=(32,)), prior=Prior(sigma_w=1.2, sigma_b=0.3),
                          inputs=BooleanCube(n=3), seed=2, block_size=64)
    spec_path = tmp_path / "k.toml"
    spec.save(spec_path)
    args = ["gp", "kernel", str(spec_path), "--kernel", "empirical", "--kernel-samples", "512"]
    assert main(args + ["-o", str(tmp_path / "local.h5")]) == 0
    assert main(args + ["-o", str(tmp_path / "ray.h5"), "--ray"]) == 0
    with h5py.File(tmp_path / "local.h5") as a, h5py.File(tmp_path / "ray.h5") as b:
        assert np.array_equal(a["K"][...], b["K"][...]) and np.array_equal(a["stderr"][...], b["stderr"][...])


def test_gp_logp_of_a_table_over_ray_equals_in_process(ray_local, spec, tmp_path, capsys):
    """`volume gp logp SPEC --table T --ray` scores the table's functions as Ray tasks
    (volume.gp.score.score_many through volume.jobs.ray_map) with the in-process answer."""
    import json

    from volume.cli import main

    small = ExperimentSpec(architecture=FCN(hidden=(8,)), prior=Prior(sigma_w=1.5, sigma_b=0.5),
                           inputs=BooleanCube(n=3), seed=1, block_size=64)
    spec_path = tmp_path / "s.toml"
    small.save(spec_path)
    run_local(small, 64, tmp_path / "t.h5")
    args = ["gp", "logp", str(spec_path), "--table", str(tmp_path / "t.h5"), "--top", "4", "--samples", "128", "--json"]
    assert main(args) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(args + ["--ray"]) == 0
    assert json.loads(capsys.readouterr().out) == local and len(local) == 4


def test_nested_replicas_as_ray_tasks_equal_in_process(ray_local, tmp_path, capsys):
    """`volume logp --method nested --ray` runs the replicas of the nested estimator as Ray tasks
    (volume.jobs.ray_map) and answers exactly what the in-process run answers."""
    import json

    from volume.cli import main

    spec = ExperimentSpec(architecture=FCN(hidden=(6,), activation="tanh"), prior=Prior(sigma_w=2.0, sigma_b=0.4),
                          inputs=BooleanCube(n=3), seed=2, block_size=64)
    spec_path = tmp_path / "n.toml"
    spec.save(spec_path)
    args = ["logp", str(spec_path), "00010111", "--method", "nested", "--particles", "30", "--replicas", "3", "--json"]
    outs = []
    for extra in ([], ["--ray"]):
        assert main(args + extra) == 0
        outs.append(json.loads(capsys.readouterr().out)[0])
    assert outs[0]["diagnostics"]["replicas"] == outs[1]["diagnostics"]["replicas"]
    assert outs[0]["log_p"] == outs[1]["log_p"] and outs[0]["stderr"] > 0
