"""End to end: the Serve application on a local Ray instance (HTTP proxy on 127.0.0.1), queried
through VolumeClient: answers against the table file, a job that extends a table and one
that creates a table (seen without a restart, byte-identical to in-process sampling), bad
requests raising the client's exceptions with the server's message, 20 concurrent clients,
the OpenAPI docs, the client's timeout; stalled clients dropped while /health answers, a job
cancelled through the client, and every port the service opens bound to loopback. One Ray
instance and one Serve app per module."""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from volume.client import (BadRequest, Conflict, JobFailed, NotFound, ServiceTimeout, ServiceUnavailable, TooLarge,
                           Unauthorized, VolumeClient)
from volume.estimate import posterior, prior_estimates
from volume.keys import labels_to_text, unpack_keys
from volume.runner import run_local
from volume.spec import FCN, BooleanCube, ExperimentSpec, Prior
from volume.table import FrequencyTable

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]
TOKEN = "e2e-token"
BODY_SECONDS = 1.5  # a stalled body is dropped after this (Limits.body_seconds)
INGRESS_LIMIT = 16  # requests the ingress replica holds at once (max_ongoing_requests)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spec() -> ExperimentSpec:
    return ExperimentSpec(architecture=FCN(hidden=(16, 16)), prior=Prior(sigma_w=1.4, sigma_b=0.3),
                          inputs=BooleanCube(n=5), seed=2, block_size=512, name="service-test")


@pytest.fixture(scope="module")
def service(tmp_path_factory, spec):
    from volume.jobs import import_ray

    ray = import_ray()
    from ray import serve

    from volume.service import Limits, application, http_options

    tables = tmp_path_factory.mktemp("tables")
    run_local(spec, 4 * spec.block_size, tables / "small.h5")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    limits = Limits(max_functions=256, body_seconds=BODY_SECONDS)
    serve.start(http_options=http_options("127.0.0.1", port, limits))
    serve.run(application(tables, token=TOKEN, limits=limits, checkpoint_seconds=0.2, bind_host="127.0.0.1",
                          max_ongoing_requests=INGRESS_LIMIT), name="volume", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, tables
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def client(service):
    with VolumeClient(service[0], token=TOKEN, timeout=60) as c:
        yield c


def test_queries_match_the_table(client, service, spec):
    url, tables = service
    table = FrequencyTable.load(tables / "small.h5")
    assert client.health()["status"] == "ok" and client.health()["jobs_need_token"] is True
    listing = {t["name"]: t for t in client.tables()}
    assert listing["small"]["n_samples"] == table.n_samples and listing["small"]["spec_id"] == spec.spec_id
    info = client.table("small")
    assert info["n_distinct"] == table.n_distinct and info["spec"] == spec.to_dict()
    labels = unpack_keys(table.keys, table.n_inputs)
    texts = [labels_to_text(lab) for lab in labels[:20]] + ["1" * 32]
    got = client.prior("small", texts)
    expected_counts = dict(zip((labels_to_text(x) for x in labels), table.counts.tolist()))
    assert [g.count for g in got] == [expected_counts.get(t, 0) for t in texts]
    assert got == prior_estimates(table, texts)
    top = client.top("small", 5)
    assert [t.count for t in top] == sorted(table.counts.tolist(), reverse=True)[:5]
    res = client.posterior("small", [0, 1, 2, 3], target="parity", top=3)
    ref = posterior(table, np.arange(4), np.array([0, 1, 1, 0]), np.array([bin(i).count("1") % 2 for i in range(32)]), top=3)
    assert res.n_consistent == ref.n_consistent and res.expected_error == pytest.approx(ref.expected_error)
    assert res.error_distribution == ref.error_distribution and res.top == ref.top
    gp = client.gp_estimate("majority", table="small", samples=256, kernel="empirical", kernel_samples=128)
    assert gp["kernel"] == "empirical" and gp["method"] in ("ep-sis", "tilting") and gp["stderr"] > 0


def test_jobs_extend_and_create_tables_seen_without_restart(client, service, spec, tmp_path):
    url, tables = service
    before = client.table("small")["n_samples"]
    seen: list[int] = []
    job = client.submit("small", draws=24 * spec.block_size)
    assert job.draws_initial == before and job.draws_target == 24 * spec.block_size
    done = client.wait(job, timeout=120, poll=0.1, on_progress=lambda s: seen.append(s.draws_done))
    assert done.state == "done" and done.draws_done == 24 * spec.block_size and done.n_distinct is not None
    assert seen == sorted(seen) and seen[-1] == 24 * spec.block_size
    assert client.table("small")["n_samples"] == 24 * spec.block_size  # the ingress reloaded the file
    ref = tmp_path / "ref.h5"
    run_local(spec, 24 * spec.block_size, ref)
    assert (tables / "small.h5").read_bytes() == ref.read_bytes()

    other = spec.replace(seed=9)
    created = client.wait(client.submit("fresh", draws=1000, spec=other.to_dict()), timeout=120, poll=0.1)
    assert created.state == "done" and created.draws_done == 2 * spec.block_size
    added = client.wait(client.submit("fresh", draws=spec.block_size, add=True), timeout=120, poll=0.1)
    assert added.draws_done == 3 * spec.block_size
    assert FrequencyTable.load(tables / "fresh.h5") == run_local(other, 3 * spec.block_size)
    assert {j.id for j in client.jobs()} >= {job.id, created.id, added.id}


BAD = {
    "unknown table": (lambda c: c.prior("nope", ["0" * 32]), NotFound, 404, "no table named 'nope'"),
    "malformed function": (lambda c: c.prior("small", ["2" * 32]), BadRequest, 400, "not labels"),
    "wrong length": (lambda c: c.prior("small", ["0101"]), BadRequest, 400, "expected 32"),
    "traversal": (lambda c: c.table("..passwd"), BadRequest, 400, "invalid"),
    "bad spec": (lambda c: c.submit("x", 10, spec={"prior": {"sigma_w": -1}}), BadRequest, 400, "prior.sigma_w"),
    "oversize batch": (lambda c: c.prior("small", ["0" * 32] * 257), TooLarge, 413, "limit of 256"),
    "no token": (lambda c: VolumeClient(c.url, token="").submit("small", 10), Unauthorized, 401, "Bearer"),
    "wrong token": (lambda c: VolumeClient(c.url, token="nope").submit("small", 10), Unauthorized, 403, "wrong"),
    "spec conflict": (lambda c: c.submit("small", 10, spec={"inputs": {"kind": "boolean", "n": 4}}), Conflict, 409,
                      "holds spec"),
    "unknown job": (lambda c: c.job("feedfeedfeedfeed"), NotFound, 404, "no job"),
    "bad confidence": (lambda c: c.top("small", 3, confidence=2.0), BadRequest, 422, "confidence"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests_raise_with_the_server_message(client, name, monkeypatch):
    monkeypatch.delenv("VOLUME_TOKEN", raising=False)
    call, exc, status, words = BAD[name]
    with pytest.raises(exc) as info:
        call(client)
    assert info.value.status == status and words in info.value.message


def test_twenty_concurrent_clients(service):
    url, tables = service
    table = FrequencyTable.load(tables / "small.h5")  # not written while this test runs
    texts = [labels_to_text(x) for x in unpack_keys(table.keys[:50], table.n_inputs)]
    counts = dict(zip(texts, table.counts[:50].tolist()))
    errors: list[str] = []

    def one_client(k: int) -> None:
        with VolumeClient(url, timeout=60) as c:
            for i in range(50):
                try:
                    kind = (k + i) % 5
                    if kind == 0:
                        assert c.health()["status"] == "ok"
                    elif kind == 1:
                        f = texts[(k * 50 + i) % len(texts)]
                        assert c.prior("small", [f])[0].count == counts[f]
                    elif kind == 2:
                        assert [r.count for r in c.prior("small", texts)] == [counts[f] for f in texts]
                    elif kind == 3:
                        assert c.top("small", 3)[0].count == int(table.counts.max())
                    else:
                        assert c.table("small")["n_samples"] == table.n_samples
                except Exception as e:  # collected: a thread's assertion would otherwise be lost
                    errors.append(f"client {k} request {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_openapi_docs(service):
    url, _ = service
    assert httpx.get(f"{url}/docs").status_code == 200
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/health", "/tables", "/tables/{name}", "/tables/{name}/prior", "/tables/{name}/posterior",
            "/tables/{name}/top", "/jobs", "/jobs/{job_id}", "/gp/estimate"} <= set(paths)


def test_client_timeout_and_unreachable(service):
    url, _ = service
    with pytest.raises(ServiceTimeout):
        VolumeClient(url, timeout=1e-6).tables()
    with pytest.raises(ServiceUnavailable):
        VolumeClient(f"http://127.0.0.1:{_free_port()}", timeout=5).health()


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of the TCP sockets that ``pids`` listen on (from /proc)."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for family, table in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ip, port = f[1].split(":")
                raw = bytes.fromhex(ip)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out.append((inodes[f[9]], socket.inet_ntop(family, raw), int(port, 16)))
    return out


def _descendants(pid: int) -> set[int]:
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parents[int(d)] = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in found]
        found.update(kids)
        todo.extend(kids)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads listening sockets from /proc (Linux)")
def test_every_port_the_service_opens_is_on_loopback(service):
    """The HTTP proxy, and each replica's inter-deployment gRPC server (Ray's default: every
    interface), listen on 127.0.0.1 only, as do the Ray processes of the local instance."""
    listeners = _listening(_descendants(os.getpid()))
    names = {pid: open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:60] for pid, _, _ in listeners}
    assert any("ServeReplica:volume:VolumeIngress" in names[p] for p, _, _ in listeners)
    public = [(names[p], ip, port) for p, ip, port in listeners if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert public == []


def test_stalled_clients_are_dropped_and_health_answers(service):
    """More connections than the ingress holds stall 10 bytes short of their Content-Length;
    /health and a P(f) query still answer, and the server closes every stalled connection
    (408) after about BODY_SECONDS."""
    url, _ = service
    port = int(url.rsplit(":", 1)[1])
    head = (b"POST /tables/small/prior HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b" " * 90)
    stalled = []
    try:
        for _ in range(3 * INGRESS_LIMIT):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(head)
            stalled.append(s)
        start = time.monotonic()
        with VolumeClient(url, timeout=30) as c:
            assert c.health()["status"] == "ok"
            assert c.prior("small", ["0" * 32])[0].n_samples > 0
        answered = time.monotonic() - start
        assert answered < 3 * BODY_SECONDS + 5, f"/health took {answered:.1f} s"
        answers = []
        for s in stalled:
            s.settimeout(4 * BODY_SECONDS + 10)
            try:
                answers.append(s.recv(64))
            except (socket.timeout, ConnectionResetError) as e:
                answers.append(type(e).__name__.encode())
        assert all(a.startswith(b"HTTP/1.1 408") or a == b"" for a in answers), answers[:5]
        assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) >= INGRESS_LIMIT
    finally:
        for s in stalled:
            s.close()


def test_cancel_a_job_through_the_client(client, service, spec):
    url, tables = service
    job = client.submit("cancelme", draws=2000 * spec.block_size, spec=spec.replace(seed=11).to_dict())
    deadline = time.monotonic() + 60
    while client.job(job).draws_done == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(Unauthorized):
        VolumeClient(url, token="").cancel(job)
    assert client.cancel(job).id == job.id
    with pytest.raises(JobFailed) as info:
        client.wait(job, timeout=60, poll=0.1)
    assert info.value.job.state == "cancelled" and "saved" in info.value.job.error
    saved = FrequencyTable.load(tables / "cancelme.h5")
    assert 0 < saved.n_samples < 2000 * spec.block_size
    assert all(j.state != "running" for j in client.jobs())
