"""Against a real Ray head started by this test (`ray start --head`, token authentication as
Ray 2.60 sets it up when a token exists): the README's `ray job submit` line as documented,
and `volume sample --address` from a driver that did not set RAY_AUTH_MODE.

The head runs with its own HOME (the token goes there, never into the user's ~/.ray), a temp
dir, explicit free loopback ports and its own process group, which the test stops by its id.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from volume.jobs import _refused_message, use_token_auth
from volume.table import FrequencyTable

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _documented_submit_line() -> str:
    lines = [ln.strip() for ln in (REPO / "README.md").read_text().splitlines() if "ray job submit --address" in ln]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    ray_bin = shutil.which("ray")
    assert ray_bin, "the ray command is installed with volume's [run] extra"
    d = tmp_path_factory.mktemp("rayhead")
    ray_tmp = tempfile.mkdtemp(prefix="vray")  # short: Ray's socket paths must fit in 107 bytes
    home = d / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    gcs, dash, client, nm, om, agent, agent_grpc, metrics, rtenv = _free_ports(9)
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--node-manager-port", str(nm), "--object-manager-port", str(om),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rtenv),
           "--temp-dir", ray_tmp, "--num-cpus", "2"]
    log = open(d / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while "will now block" not in (d / "head.log").read_text():
            assert proc.poll() is None and time.monotonic() - t0 < 120, (d / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        yield {"env": env, "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "dir": d}
    finally:
        # our head only: its process group (start_new_session), SIGTERM then SIGKILL
        # (`ray start --block` drains for 30 s on SIGTERM; the test does not wait for that)
        with_group = [proc.pid]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(with_group[0], sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(5)
                if sig == signal.SIGKILL:
                    break
            except subprocess.TimeoutExpired:
                continue
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_documented_job_submit_and_address_with_token_auth(head, tmp_path):
    # 1. the README's line, as written, from the repository root, with the head's address and a small N
    line = _documented_submit_line()
    out = tmp_path / "b7.h5"
    line = (line.replace("http://HEAD:8265", head["dashboard"]).replace("-n 100000000", "-n 4096")
            .replace("/data/b7.h5", str(out)))
    argv = shlex.split(line)
    env = dict(head["env"])
    while "=" in argv[0]:  # leading VAR=value assignments
        k, v = argv.pop(0).split("=", 1)
        env[k] = v
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "succeeded" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
    assert FrequencyTable.load(out).n_samples == 4096

    # 2. a driver that set no RAY_AUTH_MODE joins the token-authenticated head (token in ~/.ray)
    out2 = tmp_path / "addr.h5"
    argv = ["volume", "sample", "examples/boolean7.toml", "-n", "4096", "-o", str(out2), "--quiet", "--workers", "1",
            "--address", head["gcs"]]
    res = subprocess.run(argv, cwd=REPO, env=head["env"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert FrequencyTable.load(out2).n_samples == 4096


def test_token_mode_follows_the_token(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert use_token_auth() is False and "RAY_AUTH_MODE" not in os.environ
    (tmp_path / "token").write_text("x" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert use_token_auth() is True and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice is respected
    assert use_token_auth() is False
    msg = _refused_message("127.0.0.1:6379", ConnectionError("Failed to connect"), token_auth=False)
    assert "set RAY_AUTH_MODE=token" in msg and "a server answers there" in msg
    assert not re.search(r"no cluster|start one", msg)
