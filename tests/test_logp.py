"""The one entry point for ln P(f) (volume.logp.log_p) and its CLI, service endpoint and client:
each method answers what its own module computes, 'auto' picks counting only with enough
counts, answers are strict JSON, bad input is a one-line error or a 4xx."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from volume.cli import main
from volume.client import ServiceError, VolumeClient
from volume.errors import VolumeError
from volume.keys import labels_to_text, unpack_keys
from volume.logp import log_p
from volume.nested import NestedSettings
from volume.runner import run_local
from volume.service import LocalJobs, VolumeAPI, build_app

FAST = NestedSettings(particles=40, replicas=4)


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    from volume.spec import BooleanCube, ExperimentSpec, FCN, Prior

    spec = ExperimentSpec(architecture=FCN(hidden=(8,)), prior=Prior(sigma_w=1.5, sigma_b=0.5),
                          inputs=BooleanCube(n=3), seed=1, block_size=4096, name="tiny")
    d = tmp_path_factory.mktemp("logp")
    table = run_local(spec, 20 * 4096, d / "tiny.h5")
    spec.save(d / "tiny.toml")
    keys, counts = table.top(400)
    return spec, table, d, unpack_keys(keys, 8, 2), counts


def test_count_auto_and_nested_agree(counted):
    spec, table, _, labels, counts = counted
    f = labels[0]
    c = log_p(spec, f, "count", table=table)
    assert c.log_p == pytest.approx(math.log(counts[0] / table.n_samples)) and not c.upper_bound
    assert c.interval[0] < c.log_p < c.interval[1]
    assert log_p(spec, f, table=table).method == "count"  # frequent: auto counts
    rare = labels[int(np.flatnonzero(counts < 100)[0])]
    auto = log_p(spec, labels_to_text(rare), table=table, settings=FAST, seed=1)
    assert auto.method == "nested"  # too few counts: auto runs the nested estimator
    ref = log_p(spec, rare, "count", table=table)
    assert abs(auto.log_p - ref.log_p) <= 4 * math.hypot(auto.stderr, ref.stderr) + 0.05
    d = auto.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["diagnostics"]["settings"]["particles"] == 40


def test_unseen_function_is_an_upper_bound_and_impossible_is_null(counted):
    spec, table, _, _, _ = counted
    from volume.keys import pack_labels

    seen = {bytes(k) for k in table.keys}
    f = next(np.array(b, dtype=np.uint8) for b in np.ndindex(*(2,) * 8)
             if bytes(pack_labels(np.array(b, dtype=np.uint8)[None])[0]) not in seen)
    r = log_p(spec, f, "count", table=table)
    assert r.upper_bound and r.stderr is None and "never drawn" in r.reason
    zero_spec = spec.replace(prior=spec.prior.__class__(sigma_w=1.0, sigma_b=0.0))
    imp = log_p(zero_spec, "1" + "0" * 7, "nested", settings=FAST)
    d = imp.to_dict()
    assert d["log_p"] is None and d["impossible"] and "fixed" in d["reason"]
    json.dumps(d, allow_nan=False)


def test_ep_and_gp_methods_call_the_gp_estimator(counted):
    from volume.gp.estimate import log_prior

    spec, _, _, labels, _ = counted
    ep = log_p(spec, labels[5], "ep")
    assert ep.log_p == pytest.approx(log_prior(spec, labels[5], importance_samples=0).log_p, rel=1e-9)
    gp = log_p(spec, labels[5], "gp")
    assert gp.log_p == pytest.approx(log_prior(spec, labels[5]).log_p, rel=1e-9)
    json.dumps(gp.to_dict(), allow_nan=False)


def test_bad_input_is_a_volume_error(counted):
    spec, table, _, labels, _ = counted
    with pytest.raises(VolumeError, match="method"):
        log_p(spec, labels[0], "magic")
    with pytest.raises(VolumeError, match="needs a table"):
        log_p(spec, labels[0], "count")
    with pytest.raises(VolumeError, match="expected 8"):
        log_p(spec, "0101", "nested")
    with pytest.raises(VolumeError, match="spec"):
        log_p(spec.replace(seed=9, architecture=spec.architecture.__class__(hidden=(3,))), labels[0], "count", table=table)


def test_cli(counted, capsys):
    spec, table, d, labels, counts = counted
    f = labels_to_text(labels[0])
    assert main(["logp", str(d / "tiny.toml"), f, "--table", str(d / "tiny.h5"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["method"] == "count" and out[0]["diagnostics"]["count"] == int(counts[0])
    assert main(["logp", str(d / "tiny.toml"), f, "--method", "nested", "--particles", "30", "--replicas", "3"]) == 0
    out = capsys.readouterr().out
    assert "method=nested" in out and "pcn acceptance" in out and "tries/step" not in out
    assert main(["logp", str(d / "tiny.toml"), f, "--method", "nested", "--particles", "30", "--replicas", "3",
                 "--kernel", "ess", "--json"]) == 0
    diag = json.loads(capsys.readouterr().out)[0]["diagnostics"]
    assert diag["settings"]["kernel"] == "ess" and diag["acceptance"] is None and diag["last_step"] is None
    assert diag["shrink_mean"] >= 1
    for flags, field in ((["--p0", "2"], "--p0"), (["--kernel", "hmc"], "--kernel"), (["--particles", "0"], "--particles")):
        assert main(["logp", str(d / "tiny.toml"), f, "--method", "nested", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and field in err and "Traceback" not in err, err


def test_cli_line_shows_every_reason_and_only_the_kernels_own_diagnostics():
    """A number with a standard error can still be a fallback or a flagged estimate: the text
    line shows the reason whenever there is one, and pCN's acceptance, never ESS's tries."""
    from volume.commands.logp import _line
    from volume.logp import LogP

    base = dict(settings={"replicas": 8, "particles": 200}, levels_mean=60.0, seconds=1.0)
    pcn = LogP("nested", -40.0, 1.5, reason="replicas spread by sd = 3.0 nats (> 2)",
               diagnostics={**base, "acceptance": 0.31, "acceptance_last": 0.02, "last_step": 0.0123,
                            "shrink_mean": None, "stuck_fraction": None})
    line = _line(pcn)
    assert "[replicas spread by sd = 3.0 nats (> 2)]" in line and "+- 1.5" in line
    assert "pcn acceptance 0.31 (last level 0.02, step 0.0123)" in line and "tries" not in line
    ess = LogP("nested", -40.0, 0.5, diagnostics={**base, "acceptance": None, "acceptance_last": None,
                                                  "last_step": None, "shrink_mean": 8.6, "stuck_fraction": 0.001})
    line = _line(ess)
    assert "ess 8.6 tries/step (0.1% ran out)" in line and "acceptance" not in line and "[" not in line


def test_service_and_client(counted):
    spec, table, d, labels, counts = counted
    api = VolumeAPI(d, jobs=LocalJobs(checkpoint_seconds=0.0))
    http = TestClient(build_app(api))
    client = VolumeClient("http://testserver", transport=http._transport)
    f = labels_to_text(labels[0])
    got = client.logp([f], table="tiny", method="count")
    assert got[0]["log_p"] == pytest.approx(math.log(counts[0] / table.n_samples))
    nested = client.logp([f], spec=spec.to_dict(), method="nested", particles=30, replicas=3)
    assert nested[0]["method"] == "nested" and nested[0]["stderr"] > 0
    for body, status in [({"functions": [f], "table": "tiny", "method": "magic"}, 400),
                         ({"functions": [f], "spec": spec.to_dict(), "table": "tiny"}, 400),
                         ({"functions": ["01"], "table": "tiny"}, 400),
                         ({"functions": [f], "table": "nope"}, 404),
                         ({"functions": [f], "table": "tiny", "particles": 10**6, "replicas": 100}, 413),
                         ({"functions": [f] * 17, "table": "tiny"}, 413)]:
        r = http.post("/logp", json=body)
        assert r.status_code == status, (body, r.text)
    with pytest.raises(ServiceError):
        client.logp([f], table="tiny", method="magic")


def test_service_nested_settings_and_kernel(counted, monkeypatch):
    """POST /logp takes the CLI's nested settings, kernel included, validated by the library's
    NestedSettings.from_mapping (a 400 naming the field; a wrong JSON type is a 422 naming it),
    and bounds the work before any starts: ESS counts max_shrink evaluations per step."""
    import volume.nested
    from volume.limits import Limits

    spec, table, d, labels, counts = counted
    f = labels_to_text(labels[0])
    api = VolumeAPI(d, jobs=LocalJobs(checkpoint_seconds=0.0), limits=Limits(max_logp_work=1e10))
    http = TestClient(build_app(api))
    body = {"functions": [f], "spec": spec.to_dict(), "method": "nested", "particles": 30, "replicas": 3}
    ess = http.post("/logp", json={**body, "kernel": "ess"})
    assert ess.status_code == 200, ess.text
    diag = ess.json()[0]["diagnostics"]
    assert diag["settings"]["kernel"] == "ess" and diag["acceptance"] is None and diag["shrink_mean"] >= 1
    pcn = http.post("/logp", json={**body, "kernel": "pcn"}).json()[0]["diagnostics"]
    assert pcn["shrink_mean"] is None and 0 < pcn["acceptance"] < 1 and pcn["last_step"] > 0
    assert pcn["settings"]["max_levels"] == Limits().max_logp_levels
    for extra, status, field in [({"p0": 2}, 400, "p0"), ({"kernel": "hmc"}, 400, "kernel"),
                                 ({"particles": 1}, 400, "particles"), ({"replicas": 0}, 400, "replicas"),
                                 ({"moves": -1}, 400, "moves"), ({"particles": "many"}, 422, "particles"),
                                 ({"particles": True}, 422, "particles"), ({"p0": "0.5"}, 422, "p0"),
                                 ({"kernel": 3}, 422, "kernel"), ({"max_levels": 10**6}, 422, "max_levels"),
                                 ({"particles": 10**18}, 400, "particles"), ({"replicas": 2**31}, 400, "replicas"),
                                 ({"kernel": "ess", "moves": 10**18}, 400, "moves"),
                                 ({"particles": 10**300}, 400, "at most 19 digits")]:
        r = http.post("/logp", json={**body, **extra})
        assert r.status_code == status and field in r.text, (extra, r.status_code, r.text)

    def never(*a, **k):
        raise AssertionError("the work started before the bound was checked")

    monkeypatch.setattr(volume.nested, "nested_log_p", never)
    big = {**body, "particles": 200, "replicas": 8}
    r = http.post("/logp", json={**big, "kernel": "ess"})  # 40 evaluations per step at worst: above 1e10 multiply-adds
    assert r.status_code == 413 and "max_shrink" in r.text, r.text
    from volume.limits import check_logp
    from volume.nested import NestedSettings as NS

    # the same request with pCN moves is within the bound (1 evaluation per step)
    check_logp(spec, api.limits, "nested", 1, NS(particles=200, replicas=8, kernel="pcn",
                                                 max_levels=api.limits.max_logp_levels))


def test_logp_cost_check_bounds_a_replicas_memory_as_well_as_its_work():
    """A wide network on few inputs is cheap in multiply-adds but not in memory: 700 particles of
    a 1-4096-4096-1 network hold ~REPLICA_COPIES (6) x 700 x 16.8M floats; refused before any work
    starts."""
    from volume.limits import LimitExceeded, Limits, check_logp
    from volume.spec import FCN, BooleanCube, ExperimentSpec

    wide = ExperimentSpec(architecture=FCN(hidden=(4096, 4096)), inputs=BooleanCube(n=1))
    with pytest.raises(LimitExceeded, match="bytes of one nested-sampling replica"):
        check_logp(wide, Limits(), "nested", 1, NestedSettings(particles=700, replicas=1, moves=1, max_levels=10))
    check_logp(ExperimentSpec(architecture=FCN(hidden=(40, 40)), inputs=BooleanCube(n=7)), Limits(), "nested", 1,
               NestedSettings(max_levels=1500, moves=1))  # the examples' network at the service's default passes


def test_gp_flag_is_passed_on(counted, monkeypatch):
    """An estimate the GP estimator marks unreliable keeps its reason through log_p (the CLI and
    /logp show it), instead of reading as a clean number with a standard error."""
    import volume.gp.estimate

    class Unreliable:
        log_p, stderr, method, importance_samples = -7.0, 0.2, "ep-sis", 0
        reliable, reason = False, "Pareto k-hat 0.9 > 0.7: the weights' variance is not finite"

        def to_dict(self):
            return {"log_p": self.log_p}

    spec, _, _, labels, _ = counted
    monkeypatch.setattr(volume.gp.estimate, "log_prior", lambda *a, **k: Unreliable())
    r = log_p(spec, labels[5], "gp")
    assert r.stderr == 0.2 and r.reason.startswith("Pareto k-hat 0.9")
    Unreliable.reliable = True
    assert log_p(spec, labels[5], "gp").reason is None
