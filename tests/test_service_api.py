"""The service's FastAPI app without Ray (FastAPI's TestClient, jobs in a local thread):
answers checked against counts made independently from the raw labels, every kind of bad
request answered with its 4xx and a message, the token, reload on file change, limits,
and `volume serve` refusing a public address without a token."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import tiny_tables
from volume.keys import labels_to_hex
from volume.runner import run_local
from volume.service import Limits, LocalJobs, VolumeAPI, build_app, token_digest

TOKEN = "s3cret-token"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def served(tmp_path, boolean_spec):
    """A table 'tiny' of two blocks and the text of every draw, counted with a Counter."""
    tables, labels = tiny_tables(tmp_path, boolean_spec)
    counts = Counter("".join(map(str, row)) for row in labels)
    api = VolumeAPI(tables, jobs=LocalJobs(checkpoint_seconds=0.0), token_sha256=token_digest(TOKEN),
                    limits=Limits(max_functions=64, max_body_bytes=20_000, max_top=100), data_dir=tmp_path / "data")
    return TestClient(build_app(api)), tables, counts


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_prior_top_info_match_independent_counts(served, boolean_spec):
    client, _, counts = served
    n = sum(counts.values())
    funcs = list(counts)[:5] + ["11111111" if "11111111" not in counts else "01010101"]
    rows = client.post("/tables/tiny/prior", json={"functions": funcs}).json()
    for f, row in zip(funcs, rows):
        assert row["function"] == f and row["count"] == counts.get(f, 0) and row["n_samples"] == n
        assert row["p"] == counts.get(f, 0) / n and row["lower"] <= row["p"] <= row["upper"]
    by_hex = client.post("/tables/tiny/prior",
                         json={"functions": ["0x" + labels_to_hex(np.frombuffer(funcs[0].encode(), np.uint8) - ord("0"))]})
    assert by_hex.status_code == 200 and by_hex.json()[0]["count"] == counts[funcs[0]]
    top = client.get("/tables/tiny/top", params={"k": 3}).json()
    assert [r["count"] for r in top] == sorted(counts.values(), reverse=True)[:3]
    info = client.get("/tables/tiny").json()
    assert info["n_samples"] == n and info["n_distinct"] == len(counts) and info["spec_id"] == boolean_spec.spec_id
    assert info["good_turing_unseen_mass"] == sum(1 for c in counts.values() if c == 1) / n
    listing = client.get("/tables").json()
    assert [(t["name"], t["n_samples"], t["n_distinct"]) for t in listing] == [("tiny", n, len(counts))]
    assert client.get("/health").json()["jobs_need_token"] is True


def test_posterior_matches_brute_force(served):
    client, _, counts = served
    n = sum(counts.values())
    idx, target = [0, 3, 5], "01101001"  # parity on 3 bits
    labels = "".join(target[i] for i in idx)
    res = client.post("/tables/tiny/posterior", json={"train_indices": idx, "target": target, "top": 3}).json()
    consistent = {f: c for f, c in counts.items() if all(f[i] == target[i] for i in idx)}
    n_u = sum(consistent.values())
    assert res["n_consistent"] == n_u and res["p_u"] == n_u / n
    test = [i for i in range(8) if i not in idx]
    err = sum(c * np.mean([f[i] != target[i] for i in test]) for f, c in consistent.items()) / n_u
    assert res["expected_error"] == pytest.approx(err, rel=1e-12)
    assert sum(d["count"] for d in res["error_distribution"]) == n_u
    assert res["top"][0]["count"] == max(consistent.values())
    same = client.post("/tables/tiny/posterior", json={"train_indices": "0,3,5", "train_labels": labels}).json()
    assert same["n_consistent"] == n_u and same["expected_error"] is None


BAD_REQUESTS = {
    # name: (method, path, json body, headers, status, words in the message)
    "unknown table": ("post", "/tables/nope/prior", {"functions": ["01010101"]}, {}, 404, "no table named 'nope'"),
    "traversal in a table name": ("get", "/tables/..secret", None, {}, 400, "invalid"),
    "traversal in a job's table": ("post", "/jobs", {"table": "../evil", "draws": 10}, auth(), 400, "invalid"),
    "hidden file name": ("get", "/tables/.tiny", None, {}, 400, "invalid"),
    "malformed function": ("post", "/tables/tiny/prior", {"functions": ["0101x101"]}, {}, 400, "not labels"),
    "wrong length": ("post", "/tables/tiny/prior", {"functions": ["0101"]}, {}, 400, "expected 8"),
    "bad hex": ("post", "/tables/tiny/prior", {"functions": ["0xzz"]}, {}, 400, "hex"),
    "functions not a list": ("post", "/tables/tiny/prior", {"functions": "01010101"}, {}, 422, "list"),
    "unknown field": ("post", "/tables/tiny/prior", {"functions": [], "confdence": 0.9}, {}, 422, "confdence"),
    "confidence out of range": ("post", "/tables/tiny/prior", {"functions": [], "confidence": 1.5}, {}, 422, "confidence"),
    "batch too large": ("post", "/tables/tiny/prior", {"functions": ["01010101"] * 65}, {}, 413, "limit of 64"),
    "top too large": ("get", "/tables/tiny/top?k=101", None, {}, 413, "limit of 100"),
    "index out of range": ("post", "/tables/tiny/posterior", {"train_indices": [9], "train_labels": "1"}, {}, 400, "0..7"),
    "too few labels": ("post", "/tables/tiny/posterior", {"train_indices": [1, 2], "train_labels": "1"}, {}, 400,
                       "expected 2"),
    "unknown target rule": ("post", "/tables/tiny/posterior", {"train_indices": [1], "target": "nonsense"}, {}, 400,
                            "nonsense"),
    "bad index text": ("post", "/tables/tiny/posterior", {"train_indices": "a-b", "train_labels": "1"}, {}, 400, "indices"),
    "no token": ("post", "/jobs", {"table": "tiny", "draws": 10}, {}, 401, "Bearer"),
    "wrong token": ("post", "/jobs", {"table": "tiny", "draws": 10}, auth("guess"), 403, "wrong"),
    "bad spec value": ("post", "/jobs", {"table": "new", "draws": 10, "spec": {"architecture": {"kind": "fcn", "hidden": [0]}}},
                       auth(), 400, "architecture.hidden"),
    "bad spec shape": ("post", "/jobs", {"table": "new", "draws": 10, "spec": {"architecture": 5}}, auth(), 400,
                       "architecture"),
    "spec of another table": ("post", "/jobs", {"table": "tiny", "draws": 10, "spec": {"seed": 99, "inputs": {"kind": "boolean", "n": 3}}},
                              auth(), 409, "holds spec"),
    "new table without spec": ("post", "/jobs", {"table": "new", "draws": 10}, auth(), 404, "give a spec"),
    "zero draws": ("post", "/jobs", {"table": "tiny", "draws": 0}, auth(), 422, "draws"),
    "image outside the data dir": ("post", "/jobs", {"table": "img", "draws": 10, "spec": {
        "inputs": {"kind": "image", "dataset": "mnist", "path": "/etc", "count": 10}}}, auth(), 400, "outside"),
    "unknown job": ("get", "/jobs/0123456789abcdef", None, {}, 404, "no job"),
    "gp bad labels": ("post", "/gp/estimate", {"table": "tiny", "labels": "01"}, {}, 400, "expected 8"),
    "gp spec and table": ("post", "/gp/estimate", {"table": "tiny", "spec": {}, "labels": "01010101"}, {}, 400, "exactly one"),
    "gp unknown method": ("post", "/gp/estimate", {"table": "tiny", "labels": "parity", "method": "genz"}, {}, 400,
                          "ep-sis"),
    "gp unknown kernel": ("post", "/gp/estimate", {"table": "tiny", "labels": "parity", "kernel": "ntk"}, {}, 400,
                          "empirical"),
    "gp too much sampling": ("post", "/gp/estimate", {"table": "tiny", "labels": "parity", "samples": 10**12}, {}, 413,
                             "samples x inputs^2"),
    "not json": ("post", "/tables/tiny/prior", "{not json", {"content-type": "application/json"}, 422, "JSON"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_4xx_with_message(served, name):
    client, tables, _ = served
    method, path, body, headers, status, words = BAD_REQUESTS[name]
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    r = getattr(client, method)(path, headers=headers, **({} if body is None else kwargs))
    assert r.status_code == status, r.text
    assert words.lower() in r.text.lower()
    assert sorted(p.name for p in tables.iterdir()) == ["tiny.h5"]  # nothing written anywhere


def test_oversize_bodies_are_refused(served):
    client, _, _ = served
    big = b'{"functions": ["' + b"0" * 30_000 + b'"]}'
    r = client.post("/tables/tiny/prior", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "20000 bytes" in r.json()["detail"]
    r = client.post("/tables/tiny/prior", content=iter([big[:10_000], big[10_000:]]),  # chunked: no Content-Length
                    headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_local_job_grows_the_table_and_the_service_reloads_it(served, boolean_spec, tmp_path):
    client, tables, counts = served
    n0 = sum(counts.values())
    assert client.get("/tables/tiny").json()["n_samples"] == n0
    r = client.post("/jobs", json={"table": "tiny", "draws": 4 * boolean_spec.block_size}, headers=auth())
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "running" and job["draws_initial"] == n0 and job["draws_target"] == 4 * boolean_spec.block_size
    again = client.post("/jobs", json={"table": "tiny", "draws": 10}, headers=auth())
    deadline = time.monotonic() + 60
    while (status := client.get(f"/jobs/{job['id']}").json())["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status["state"] == "done", status
    assert again.status_code in (202, 409)  # refused only while the first job was writing
    assert client.get("/tables/tiny").json()["n_samples"] == 4 * boolean_spec.block_size  # reloaded, no restart
    ref = tmp_path / "ref.h5"
    run_local(boolean_spec, 4 * boolean_spec.block_size, ref)
    assert (tables / "tiny.h5").read_bytes() == ref.read_bytes()
    assert [j["id"] for j in client.get("/jobs").json()][0] == job["id"]


def test_serve_refuses_public_address_without_token(monkeypatch, tmp_path, capsys):
    from volume.cli import main

    monkeypatch.delenv("VOLUME_TOKEN", raising=False)
    assert main(["serve", "--tables", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "refusing to bind '0.0.0.0' without a token" in capsys.readouterr().err


def test_serve_deploy_builder_and_config(monkeypatch, tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from volume.errors import VolumeError
    from volume.service import build

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text()))
    app = config.applications[0]
    assert app.import_path == "volume.service:build" and "VOLUME_TOKEN" in app.runtime_env["env_vars"]
    args = {**app.args, "tables": str(tmp_path), "data_dir": str(tmp_path)}
    monkeypatch.delenv("VOLUME_TOKEN", raising=False)
    with pytest.raises(VolumeError, match="no VOLUME_TOKEN"):
        build(args)
    assert build({**args, "allow_anonymous_jobs": True}) is not None
    monkeypatch.setenv("VOLUME_TOKEN", "t")
    assert build(args) is not None
    with pytest.raises(VolumeError, match="args.limits"):
        build({**args, "limits": {"max_bogus": 1}})


def test_gp_estimate_endpoint_equals_the_python_api(served, boolean_spec):
    """POST /gp/estimate answers what volume.gp.estimate.log_prior computes, for a table's
    spec and for a spec given as JSON."""
    from volume.gp.estimate import log_prior

    client, _, _ = served
    labels = "01101001"
    expected = log_prior(boolean_spec, labels).log_p
    by_table = client.post("/gp/estimate", json={"table": "tiny", "labels": labels})
    assert by_table.status_code == 200, by_table.text
    assert by_table.json()["log_p"] == pytest.approx(expected, rel=1e-9)
    by_spec = client.post("/gp/estimate", json={"spec": boolean_spec.to_dict(), "labels": labels})
    assert by_spec.status_code == 200, by_spec.text
    assert by_spec.json()["log_p"] == pytest.approx(expected, rel=1e-9)
    d = by_spec.json()
    assert d["method"] == "ep-sis" and d["stderr"] > 0 and d["reliable"] and "ess" in d["diagnostics"]


def test_gp_estimate_takes_the_cli_target_rules_and_the_empirical_kernel(served, boolean_spec):
    """Issue 13 item 10: the kernel option the error message recommends, and rules such as 'majority'."""
    from volume.gp.estimate import log_prior

    client, _, _ = served
    r = client.post("/gp/estimate", json={"table": "tiny", "labels": "majority", "method": "ep"})
    assert r.status_code == 200, r.text
    assert r.json()["log_p"] == pytest.approx(log_prior(boolean_spec, "majority", method="ep").log_p, rel=1e-9)
    r = client.post("/gp/estimate", json={"table": "tiny", "labels": "parity", "kernel": "empirical",
                                          "kernel_samples": 256, "method": "tilting", "samples": 256, "seed": 4})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["kernel"] == "empirical" and d["method"] == "tilting" and d["seed"] == 4 and d["samples"] == 256
