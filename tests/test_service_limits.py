"""The service under attack, without Ray (FastAPI's TestClient): a fuzz test over every
operation of the OpenAPI schema (no 5xx, memory within a stated bound), the range bomb,
job limits, cancellation, the job list's expiry, the time budget, table names, hex round
trips, the server's paths kept out of messages, and stale temporaries. The same checks
against a running Serve instance (stalled clients, gRPC bind) are in test_service.py."""

from __future__ import annotations

import json
import re
import threading
import time
import tracemalloc

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import tiny_tables
from volume.errors import VolumeError
from volume.limits import LimitExceeded, Limits, check_job, job_cost
from volume.parsing import check_indices, parse_indices
from volume.runner import JobCancelled, run_local
from volume.service import ApiError, LocalJobs, VolumeAPI, WorkBudget, build_app, token_digest
from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Prior
from volume.table import FrequencyTable

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLI_FLAG = re.compile(r"(^|[\s'\"(])--[a-z]")  # service answers name their own fields, never CLI flags
FUZZ_MEMORY_BOUND = 64 << 20  # bytes the service may allocate at its peak while the fuzz runs (tracemalloc)


def _empty_runner(spec, n, path, *, on_block, checkpoint_seconds, stop, max_retries):
    """A job runner that draws nothing (the fuzz test must not sample)."""
    return FrequencyTable.empty(spec)


@pytest.fixture
def served(tmp_path, boolean_spec):
    tables, labels = tiny_tables(tmp_path, boolean_spec)
    api = VolumeAPI(tables, jobs=LocalJobs(_empty_runner), token_sha256=token_digest(TOKEN),
                    limits=Limits(max_body_bytes=200_000), data_dir=tmp_path / "data")
    return TestClient(build_app(api)), tables, api


# ---- the fuzz test -------------------------------------------------------------------
BASES = {  # a valid body per request schema; other schemas get one built from the schema
    "PriorRequest": {"functions": ["01101001"], "confidence": 0.9},
    "PosteriorRequest": {"train_indices": "0-3", "target": "parity", "top": 3},
    "JobRequest": {"table": "fuzzed", "draws": 10, "spec": {"inputs": {"kind": "boolean", "n": 3}, "block_size": 8}},
    "GPRequest": {"labels": "01101001", "table": "tiny"},
}
BAD_VALUES = [  # raw JSON text: non-finite, beyond 64 bits, huge ranges, deep nesting, wrong types, oversize
    "NaN", "Infinity", "-Infinity", "1e400", str(2**70), str(-2**70), "9223372036854775807", "-1", "0", "1.5",
    '"0-100000000"', '"0-10000000000000000000000"', '"0-7,' + "0-7," * 2000 + '0"', '"' + "9" * 5000 + '"',
    "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, "true", "null", '"text"', "[]", "{}",
    "[" + ",".join(["1"] * 20000) + "]", '"' + "0" * 150_000 + '"', '["' + '","'.join(["0" * 8] * 5000) + '"]',
    '{"kind": "fcn", "hidden": [6000, 6000]}', '{"n": 20}', '"evil\\n"', '"../../etc/passwd"',
]
SPEC_BAD = [  # inside a spec: each (section, field, raw value)
    ("architecture", "hidden", "[NaN]"), ("architecture", "hidden", "[100000000000]"), ("", "block_size", str(2**70)),
    ("", "block_size", "1"), ("", "seed", "-1"), ("inputs", "n", "1e400"), ("prior", "sigma_w", "Infinity"),
    ("prior", "sigma_w", "1e308"), ("architecture", "hidden", "[" * 40 + "]" * 40), ("", "name", '"' + "x" * 100_000 + '"'),
]


def _resolve(schema: dict, components: dict) -> dict:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _default_body(schema: dict, components: dict) -> dict:
    filler = {"string": "0", "integer": 1, "number": 0.5, "boolean": False, "array": [], "object": {}}
    body = {}
    for field in schema.get("required", []):
        prop = _resolve(schema["properties"][field], components)
        kind = prop.get("type") or _resolve((prop.get("anyOf") or [{}])[0], components).get("type", "string")
        body[field] = filler.get(kind, "0")
    return body


def _with_raw(body: dict, path: list[str], raw: str) -> str:
    """``body`` as JSON text with the value at ``path`` replaced by the raw text ``raw``."""
    marker = "__RAW_VALUE__"
    node = body = json.loads(json.dumps(body))
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node.get(key), dict) or key not in node else node[key]
        if not isinstance(node, dict):
            return json.dumps(body)
    node[path[-1]] = marker
    return json.dumps(body).replace(f'"{marker}"', raw)


def _requests(openapi: dict):
    """(method, path, body text or None, query) for every operation and every bad value."""
    components = openapi["components"]["schemas"]
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            names = re.findall(r"{(\w+)}", path)
            concrete = [path.format(**{n: v for n in names}) for v in ("tiny", "0123456789abcdef", "x" * 300,
                                                                        "evil%0A", "..%2F..%2Fetc")] if names else [path]
            queries = [{}] + [{p["name"]: v} for p in op.get("parameters", []) if p["in"] == "query"
                              for v in ("NaN", "Infinity", str(2**70), "-1", "0", "1e400", "x" * 1000)]
            ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"))
            for url in concrete:
                for q in queries:
                    if ref is None:
                        yield method, url, None, q
            if ref is None:
                continue
            name = ref.get("$ref", "").rsplit("/", 1)[-1]
            schema = _resolve(ref, components)
            base = BASES.get(name) or _default_body(schema, components)
            for url in concrete[:1]:
                yield method, url, json.dumps(base), {}
                for field in schema.get("properties", {}):
                    for raw in BAD_VALUES:
                        yield method, url, _with_raw(base, [field], raw), {}
                if "spec" in schema.get("properties", {}):
                    for section, field, raw in SPEC_BAD:
                        yield method, url, _with_raw(base, ["spec", section, field] if section else ["spec", field], raw), {}
            for raw in ("{not json", "[1,2", "", "NaN", "[" * 100_000, '{"a": 1}' * 10, "\x00\xff"):
                yield method, concrete[0], raw, {}


def test_fuzz_every_operation_no_5xx_and_bounded_memory(served):
    client, tables, _ = served
    operations = {(m, p) for p, ops in client.get("/openapi.json").json()["paths"].items() for m in ops}
    assert ("delete", "/jobs/{job_id}") in operations and len(operations) >= 10
    requests = list(_requests(client.get("/openapi.json").json()))
    seen_ops = set()
    failures = []
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        for method, url, body, query in requests:
            seen_ops.add(method)
            kwargs = {"params": query, "headers": {**AUTH, "content-type": "application/json"}}
            if body is not None:
                kwargs["content"] = body.encode("utf-8", "surrogateescape")
            r = client.request(method.upper(), url, **kwargs)
            if r.status_code >= 500:
                failures.append(f"{method.upper()} {url[:60]} {query} {None if body is None else body[:80]!r}: "
                                f"{r.status_code} {r.text[:200]}")
            else:
                r.json()  # every answer is JSON
            if CLI_FLAG.search(r.text):
                failures.append(f"{method.upper()} {url[:60]}: the answer names a command-line flag: {r.text[:200]}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failures == [], f"{len(failures)} of {len(requests)} requests got a 5xx or named a CLI flag:\n" + "\n".join(failures[:20])
    assert len(requests) > 400 and seen_ops >= {"get", "post", "delete"}
    print(f"fuzz: {len(requests)} requests, peak {(peak - base) / 2**20:.1f} MiB above the start")
    assert peak - base < FUZZ_MEMORY_BOUND, f"the service allocated {(peak - base) / 2**20:.0f} MiB at its peak"
    assert sorted(p.name for p in tables.iterdir() if not p.name.startswith("fuzzed")) == ["tiny.h5"]


def test_range_bomb_allocates_nothing(served):
    client, _, _ = served
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        for text in ("0-10000000", "0-100000000", "0-" + "9" * 18, "0-7," * 1000 + "0"):
            r = client.post("/tables/tiny/posterior", json={"train_indices": text, "target": "parity"})
            assert r.status_code == 400 and "train_indices" in r.text and "--train" not in r.text, r.text
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 4 << 20  # was +406 MB for '0-10000000'


def test_index_parser_bounds_before_allocating():
    assert parse_indices("0-3, 7,9-10", 16).tolist() == [0, 1, 2, 3, 7, 9, 10]
    assert check_indices([3, 1], 8).tolist() == [3, 1]
    for bad, words in [("0-16", "0..15"), ("5-3", "start"), ("a-b", "not an index"), ("", "empty"), ("-3", "not an index"),
                       ("0-15,0", "repeats"), ("1e3", "not an index"), ("0-" + "9" * 30, "not an index")]:
        with pytest.raises(VolumeError, match=words) as info:
            parse_indices(bad, 16, "--train")
        assert str(info.value).startswith("--train")
    for bad in ([16], [-1], [True], [1.5], list(range(17)), []):
        with pytest.raises(VolumeError):
            check_indices(bad, 16)


def test_table_names_match_in_full(served):
    client, tables, _ = served
    for name in ("evil\n", "evil\n.h5", "a" * 200, "x/y"):
        r = client.post("/jobs", json={"table": name, "draws": 10, "spec": BASES["JobRequest"]["spec"]}, headers=AUTH)
        assert r.status_code == 400 and "invalid" in r.text
    assert sorted(p.name for p in tables.iterdir()) == ["tiny.h5"]


def test_hex_answers_feed_back(served):
    client, _, _ = served
    top = client.get("/tables/tiny/top", params={"k": 3}).json()
    assert all(r["hex"].startswith("0x") for r in top)
    again = client.post("/tables/tiny/prior", json={"functions": [r["hex"] for r in top]}).json()
    assert [r["count"] for r in again] == [r["count"] for r in top]


def test_errors_do_not_show_server_paths(served):
    client, tables, api = served
    (tables / "broken.h5").write_bytes(b"not a table")
    for r in (client.get("/tables/broken"), client.post("/tables/broken/prior", json={"functions": ["0" * 8]})):
        assert r.status_code == 400 and "broken.h5" in r.text, r.text
        assert str(tables) not in r.text and str(tables.parent) not in r.text
    listing = client.get("/tables").json()
    assert any("error" in t for t in listing) and str(tables) not in json.dumps(listing)
    r = client.post("/jobs", json={"table": "img", "draws": 10, "spec": {"inputs": {
        "kind": "image", "dataset": "mnist", "path": "missing", "count": 10}}}, headers=AUTH)
    assert r.status_code in (400, 202) and str(api.data_dir) not in r.text


# ---- jobs ------------------------------------------------------------------------------
def _spec(**kw) -> ExperimentSpec:
    return ExperimentSpec(architecture=kw.pop("architecture", FCN(hidden=(40, 40))), inputs=BooleanCube(n=7), **kw)


@pytest.mark.parametrize("spec, draws, words", [
    (_spec(architecture=FCN(hidden=(6000, 6000))), 10, "widest layer"),
    (_spec(architecture=FCN(hidden=(4000, 4000))), 10, "bytes a worker needs"),
    (_spec(block_size=1), 10_000_000, "blocks of the job"),
    (_spec(), 10**9, "blocks of the job"),
    (_spec(), 10**8, "bytes of the table"),
    (_spec(architecture=FCN(hidden=(1000, 1000))), 10**6, "multiply-adds"),
])
def test_jobs_are_bounded_by_what_they_allocate_and_run(served, spec, draws, words):
    client, tables, _ = served
    with pytest.raises(LimitExceeded, match=words):
        check_job(spec, draws, Limits())
    r = client.post("/jobs", json={"table": "big", "draws": draws, "spec": spec.to_dict()}, headers=AUTH)
    assert r.status_code == 413 and words in r.text, r.text
    assert not (tables / "big.h5").exists()


def test_job_cost_model_counts_the_sampler_parameters():
    from volume.models import layer_shapes, n_params

    for spec, shape in [(_spec(architecture=FCN(hidden=(40, 17))), (7,)),
                        (ExperimentSpec(architecture=CNN(channels=(4, 6), kernel_size=3, pool="max", dense=(10,)),
                                        inputs=ImageSubset(dataset="digits", count=20)), (1, 8, 8))]:
        assert job_cost(spec, 100).params_per_draw == n_params(layer_shapes(spec, shape))


def test_cancel_saves_the_counted_draws(served, tmp_path):
    client, tables, api = served
    spec = ExperimentSpec(architecture=FCN(hidden=(64, 64)), prior=Prior(sigma_b=0.1), inputs=BooleanCube(n=7),
                          block_size=256, seed=3)
    api.jobs = LocalJobs(checkpoint_seconds=0.0)  # the real in-process runner
    r = client.post("/jobs", json={"table": "long", "draws": 2000 * spec.block_size, "spec": spec.to_dict()}, headers=AUTH)
    assert r.status_code == 202, r.text
    job = r.json()
    while client.get(f"/jobs/{job['id']}").json()["draws_done"] < 2 * spec.block_size:
        time.sleep(0.02)
    assert client.delete(f"/jobs/{job['id']}").status_code == 401  # authorised like submission
    assert client.delete(f"/jobs/{job['id']}", headers={"Authorization": "Bearer guess"}).status_code == 403
    assert client.delete("/jobs/feedfeedfeedfeed", headers=AUTH).status_code == 404
    assert client.delete(f"/jobs/{job['id']}", headers=AUTH).status_code == 200
    deadline = time.monotonic() + 30
    while (status := client.get(f"/jobs/{job['id']}").json())["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status["state"] == "cancelled" and "saved" in status["error"]
    saved = FrequencyTable.load(tables / "long.h5")
    assert 2 * spec.block_size <= saved.n_samples < 2000 * spec.block_size
    assert saved == run_local(spec, saved.n_samples)  # the saved blocks are 0..k-1, as drawn in one go
    again = client.post("/jobs", json={"table": "long", "draws": 10}, headers=AUTH)  # the slot is free again
    assert again.status_code == 202


def test_run_local_stops_between_blocks(tmp_path):
    spec = _spec(block_size=64)
    calls = []
    with pytest.raises(JobCancelled):
        run_local(spec, 100 * 64, tmp_path / "t.h5", on_block=calls.append, stop=lambda: len(calls) >= 3)
    assert FrequencyTable.load(tmp_path / "t.h5").blocks.tolist() == [0, 1, 2]


def test_finished_jobs_expire(tmp_path):
    spec = _spec()
    jobs = LocalJobs(_empty_runner, limits=Limits(max_finished_jobs=2, finished_job_ttl_s=3600))
    ids = []
    for i in range(4):
        ids.append(jobs.submit(f"t{i}", str(tmp_path / f"t{i}.h5"), spec.to_dict(), 10, 0, 10)["id"])
        while jobs.status(ids[-1])["state"] == "running":
            time.sleep(0.005)
    assert [j["id"] for j in jobs.list()] == ids[2:]  # the two newest finished jobs are kept
    jobs.limits = Limits(finished_job_ttl_s=1e-3)
    time.sleep(0.01)
    assert jobs.list() == [] and jobs.status(ids[-1]) is None


def test_a_block_whose_worker_keeps_dying_fails_the_job():
    """The actor pool's retry bound, with a stand-in for Ray whose actors die drawing a group with block 2."""
    from types import SimpleNamespace

    from volume.jobs import _count_blocks
    from volume.runner import BlockAccumulator

    class ActorDied(Exception):
        pass

    class Ref:
        def __init__(self, block, dies):
            self.block, self.dies = block, dies

    class Actor:
        def __init__(self, *args):
            self.count = SimpleNamespace(remote=lambda group: Ref(group, 2 in group))  # a call draws a group of blocks
            self.__ray_ready__ = SimpleNamespace(remote=lambda: Ref(-1, False))

    spec = _spec(block_size=16)
    made = []

    def get(ref, timeout=None):
        if ref.dies:
            raise ActorDied("the actor died unexpectedly (killed for memory)")
        return np.zeros((1, 16), np.uint8), np.array([16], np.uint64)

    fake = SimpleNamespace(put=lambda x: x, cluster_resources=lambda: {"CPU": 2}, get=get, kill=lambda a: None,
                           wait=lambda refs, num_returns=1, timeout=None: (list(refs)[:num_returns], []),
                           remote=lambda cls: SimpleNamespace(options=lambda **kw: SimpleNamespace(
                               remote=lambda *a: made.append(Actor()) or made[-1])),
                           exceptions=SimpleNamespace(RayActorError=ActorDied, RayTaskError=RuntimeError))
    acc = BlockAccumulator(FrequencyTable.empty(spec), None)
    with pytest.raises(VolumeError, match=r"block 2 lost its worker 4 times .*killed for memory"):
        _count_blocks(fake, spec, list(range(6)), acc, workers=None, pool="actors", sub_batch=None, device="cpu",
                      max_retries=3, on_block=None, on_workers=None)
    assert 4 <= len(made) <= 8  # each death dropped its actor and started another, a bounded number of times


# ---- time budget and the GP endpoint ------------------------------------------------------
def test_work_budget_answers_503_when_spent_or_full():
    budget = WorkBudget(Limits(request_seconds=0.3, max_busy_requests=1))
    release = threading.Event()
    with pytest.raises(ApiError) as info:
        budget.run("a slow thing", release.wait, 5)
    assert info.value.status == 503 and "time budget of 0.3 s" in info.value.message
    with pytest.raises(ApiError) as info:  # the overdue work still holds the only slot
        budget.run("another", lambda: 1)
    assert info.value.status == 503 and "busy" in info.value.message
    release.set()
    time.sleep(0.05)
    assert budget.run("a quick thing", lambda: 42) == 42


def test_gp_endpoint_bounds_depth_times_inputs(served):
    client, _, _ = served
    for hidden, n, words in [((40,) * 100, 5, "hidden layers"), ((40,) * 50, 11, "kernel steps"), ((40,), 12, "inputs")]:
        spec = ExperimentSpec(architecture=FCN(hidden=hidden), inputs=BooleanCube(n=n))
        start = time.monotonic()
        r = client.post("/gp/estimate", json={"spec": spec.to_dict(), "labels": "0" * 2**n})
        assert r.status_code == 413 and words in r.text, r.text
        assert time.monotonic() - start < 2.0


def test_limits_are_validated():
    with pytest.raises(VolumeError, match="max_bogus"):
        Limits.from_dict({"max_bogus": 1})
    with pytest.raises(VolumeError, match="request_seconds"):
        Limits(request_seconds=float("nan"))


# ---- stale temporaries -----------------------------------------------------------------------
def test_stale_temporaries_are_removed_on_the_next_run(tmp_path):
    spec = _spec(block_size=64)
    out = tmp_path / "t.h5"
    stale = [tmp_path / "t.h5.k1ll3d.tmp", tmp_path / "t.h5.abc.tmp"]
    other = tmp_path / "u.h5.abc.tmp"  # another table's: not this run's to remove
    for p in [*stale, other]:
        p.write_bytes(b"half a table")
    from volume.runner import table_lock

    with table_lock(out):
        run_local(spec, 64, out)
    assert not any(p.exists() for p in stale) and other.exists()


def test_cli_range_is_bounded_and_names_its_flag(served, capsys):
    from volume.cli import main

    _, tables, _ = served
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        code = main(["posterior", str(tables / "tiny.h5"), "--train", "0-100000000", "--target", "parity"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 2 and "--train" in err and "0..7" in err and "Traceback" not in err
    assert peak - base < 4 << 20


def test_service_start_removes_stale_temporaries_of_unlocked_tables(tmp_path):
    from volume.runner import table_lock
    from volume.service import application

    spec = _spec(block_size=64)
    for name in ("idle", "busy"):
        run_local(spec, 64, tmp_path / f"{name}.h5")
    with table_lock(tmp_path / "busy.h5"):  # a job is writing 'busy': its temporary is its own
        (tmp_path / "busy.h5.live.tmp").write_bytes(b"being written")
        (tmp_path / "idle.h5.k1ll3d.tmp").write_bytes(b"half a table")
        application(tmp_path)
        assert not (tmp_path / "idle.h5.k1ll3d.tmp").exists() and (tmp_path / "busy.h5.live.tmp").exists()
