"""Attack sets in the flatness-vs-volume experiment (examples/attack_small.toml): the split into
S, T and a nested attack pool, networks that fit the flipped labels, correlations per attack size
and pooled with losses never mixed unlabelled, strict JSON and a report."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from volume.cli import main
from volume.errors import VolumeError
from volume.experiments.config import FlatnessConfig
from volume.experiments.flatness_vs_volume import attacked_target, partition
from volume.experiments.output import dumps
from volume.inputs import load_inputs, target_labels
from volume.keys import parse_function

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "examples/attack_small.toml"


def test_partition_and_flipped_labels():
    system = FlatnessConfig.load(SMALL).systems[0]
    s, t, pool = partition(system, 128)
    assert (len(s), len(t), len(pool)) == (32, 64, 32)
    assert len(np.unique(np.concatenate([s, t, pool]))) == 128  # disjoint, everything used
    big = FlatnessConfig.load(ROOT / "examples/attack_boolean.toml").systems[0]
    s2, t2, pool2 = partition(big, 128)
    assert np.array_equal(s2, s) and np.array_equal(t2, t)  # same split; attack sets pool[:a] are nested
    y = np.array([0, 1, 1, 0, 1], np.uint8)
    assert attacked_target(y, np.array([1, 4]), 2).tolist() == [0, 0, 1, 0, 0]
    assert attacked_target(np.array([0, 2, 9], np.uint8), np.array([1, 2]), 10).tolist() == [0, 3, 0]


def test_small_attack_experiment(tmp_path):
    out = tmp_path / "attack"
    assert main(["experiment", "flatness-vs-volume", str(SMALL), "--out", str(out), "--quiet"]) == 0
    config = FlatnessConfig.load(SMALL)
    system = config.systems[0]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == len(system.attack_sizes) * sum(r.repeats for r in system.runs)
    inputs = load_inputs(system.spec.inputs)
    y = target_labels(inputs, system.target)
    s, t, pool = partition(system, inputs.n_inputs)
    for r in rows:
        a = int(r["attack_size"])
        assert a in system.attack_sizes and r["converged"] == "True" and float(r["train_error"]) == 0
        f = parse_function("0x" + r["function"].removeprefix("0x"), 128, 2)
        assert np.array_equal(f[s], y[s]) and np.array_equal(f[pool[:a]], 1 - y[pool[:a]])  # fits the attack
        assert float(r["test_error"]) == pytest.approx(np.mean(f[t] != y[t]))
        assert int(r["test_size"]) == 64 and r["function_unchanged"] == "True"
        # volumes: counted where the table holds f, else EP ('auto'); the same after rescaling
        assert r["log_prior_auto_method"] in ("table", "ep-sis", "tilting") and float(r["log_prior_auto"]) < 0
        assert r["log_prior_auto_method"] == "table" or float(r["log_prior_auto_se"]) > 0  # GP values carry their SE
        assert float(r["log_prior_auto"]) == float(r["log_prior_auto_rescaled"])
        assert r["log_prior_table_method"] in ("table", "table-bound")
        assert float(r["log_prior_gp_st"]) == float(r["log_prior_gp_st_rescaled"]) < 0
        assert float(r["log_prior_gp_st"]) > float(r["log_prior_auto"]) or r["log_prior_auto_method"] == "table"
        if r["log_prior_auto_method"] == "table":
            assert float(r["log_prior_auto"]) == float(r["log_prior_table"])
    assert np.mean([float(r["test_error"]) for r in rows if r["attack_size"] == "16"]) > \
        np.mean([float(r["test_error"]) for r in rows if r["attack_size"] == "0"])
    corr = list(csv.DictReader(open(out / "correlations.csv")))
    assert {c["loss"] for c in corr} == {"ce", "mse", "ce+mse"} and {c["attack_size"] for c in corr} == {"all", "0", "16"}
    for c in corr:
        if c["kendall_tau"] != "nan":
            assert -1 <= float(c["kendall_tau"]) <= 1 and 0 <= float(c["kendall_p"]) <= 1
    # the pooled CE correlation of ln P(f), recomputed from results.csv with scipy
    ce = [r for r in rows if r["loss"] == "ce"]
    want = stats.kendalltau([float(r["log_prior_auto"]) for r in ce], [float(r["test_error"]) for r in ce])
    got = next(c for c in corr if (c["loss"], c["attack_size"], c["measure"], c["when"]) ==
               ("ce", "all", "log_prior_auto", "before"))
    assert int(got["n"]) == len(ce) and float(got["kendall_tau"]) == pytest.approx(want.statistic)
    assert float(got["kendall_p"]) == pytest.approx(want.pvalue)

    def refuse(token):
        raise ValueError(token)

    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert summary["networks"] == len(rows) and summary["not_converged"] == 0
    assert len(summary["correlations"]) == len(corr)
    report = (out / "report.md").read_text()
    for name in summary["plots"]:
        assert (out / name).stat().st_size > 10_000 and f"]({name})" in report
    assert "| boolean | ce+mse | all | log_prior_auto |" in report and '"attack_sizes"' in report


def test_strict_json_and_bad_attack_configs():
    assert json.loads(dumps({"x": math.nan, "y": [math.inf, 1.0], "z": np.float32(2.5)})) == \
        {"x": None, "y": [None, 1.0], "z": 2.5}
    base = {"name": "b", "spec": str(ROOT / "examples/boolean7.toml"), "target": "parity", "train_size": 32,
            "runs": [{"optimizer": "adam"}]}
    FlatnessConfig.from_dict({"systems": [{**base, "attack_sizes": [0, 32], "test_size": 64}]})
    for change, field in (({"attack_sizes": [0, -1]}, "attack_sizes"), ({"attack_sizes": []}, "attack_sizes"),
                          ({"attack_sizes": [0, 64], "test_size": 64}, "test_size"),
                          ({"attack_sizes": [97]}, "attack_sizes"), ({"volume": "bogus"}, "volume"),
                          ({"importance_samples": -1}, "importance_samples")):
        with pytest.raises(VolumeError, match=field):
            FlatnessConfig.from_dict({"systems": [{**base, **change}]})
    with pytest.raises(VolumeError, match="pool_losses"):
        FlatnessConfig.from_dict({"systems": [base], "pool_losses": "yes"})


def test_gp_subset_is_the_marginal():
    """ln P of labels on a subset I equals the EP estimate on the whole set when I is everything,
    and, for I of 3 inputs, the orthant probability of the 3x3 sub-kernel by Monte Carlo."""
    from volume.experiments.volume_fn import gp_log_p_subset
    from volume.gp.estimate import log_prior
    from volume.gp.kernels import spec_kernel
    from volume.spec import ExperimentSpec

    spec = ExperimentSpec.load(ROOT / "examples/boolean7.toml")
    K = spec_kernel(spec, "analytic", load_inputs(spec.inputs))[0]
    y = target_labels(load_inputs(spec.inputs), "majority")
    allv = gp_log_p_subset(K, np.arange(128), y, method="ep")
    assert allv.log_p == pytest.approx(log_prior(spec, y, kernel_matrix=K, method="ep").log_p, abs=1e-9) and allv.method == "ep"
    idx = np.array([3, 60, 101])
    z = np.random.default_rng(0).multivariate_normal(np.zeros(3), K[np.ix_(idx, idx)], size=400_000)
    p = np.mean(np.all((z > 0) == y[idx].astype(bool), axis=1))
    se = math.sqrt((1 - p) / (p * 400_000))
    v = gp_log_p_subset(K, idx, y[idx], importance_samples=4000)
    assert v.method == "ep+is" and abs(v.log_p - math.log(p)) < 4 * math.hypot(se, v.stderr)
    # too few effective importance samples: the EP value is kept and flagged, without an error bar
    few = gp_log_p_subset(K, np.arange(128), y, importance_samples=5)
    assert (few.method, few.stderr, few.log_p) == ("ep(is-ess<50)", None, allv.log_p)


def test_attack_experiment_with_the_finite_network_volume(tmp_path):
    """volume = 'nested' in the attack-set experiment on a 4-input system: every network's
    ln P(f) by nested sampling carries its standard error, is unchanged by alpha-rescaling, and
    agrees with the count of a prior table of the same spec (the functions are common there)."""
    from volume.experiments import flatness_vs_volume

    spec = {"name": "boolean4", "seed": 0, "block_size": 4096,
            "architecture": {"kind": "fcn", "hidden": [16], "activation": "relu"},
            "prior": {"sigma_w": 1.0, "sigma_b": 0.0}, "inputs": {"kind": "boolean", "n": 4, "encoding": "01"}}
    d = {"name": "attack-nested-tiny", "measures": {"hutchinson_samples": 2, "sharpness_steps": 1,
                                                   "local_energy_sigmas": [0.1], "local_energy_draws": 4},
         "systems": [{"name": "b4", "spec": spec, "target": "majority", "train_size": 4, "test_size": 8,
                      "attack_sizes": [0, 2], "volume": ["nested", "table"], "prior_blocks": 16,
                      "nested": {"particles": 30, "replicas": 3},
                      "runs": [{"optimizer": "adam", "lr": 0.02, "batch_size": 4, "repeats": 2}]}]}
    config = FlatnessConfig.from_dict(d)
    assert config.systems[0].nested == {"particles": 30, "replicas": 3}
    # checked at load with the settings the run will use (the experiments' particles = 60, not the
    # class default 200): p0 = 0.995 keeps all 60 particles, which used to fail mid-run
    bad = {**d, "systems": [{**d["systems"][0], "nested": {"p0": 0.995}}]}
    with pytest.raises(VolumeError, match=r"systems\[0\]\.nested\.p0 \* particles"):
        FlatnessConfig.from_dict(bad)
    flatness_vs_volume.run(config, tmp_path, log=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 4
    for r in rows:
        assert r["log_prior_nested_method"] == "nested" and r["log_prior_table_method"] == "table"
        lp, se, counted = float(r["log_prior_nested"]), float(r["log_prior_nested_se"]), float(r["log_prior_table"])
        assert 0 < se < 2 and lp == float(r["log_prior_nested_rescaled"])
        assert abs(lp - counted) < 4 * math.hypot(se, float(r["log_prior_table_se"])) + 0.5, (lp, se, counted)
        mean, sd = float(r["log_prior_nested_replica_mean"]), float(r["log_prior_nested_replica_sd"])
        assert mean + sd ** 2 / 2 == pytest.approx(lp) and sd > 0  # the combination rule of volume/nested.py
    corr = list(csv.DictReader(open(tmp_path / "correlations.csv")))
    assert {"log_prior_nested", "log_prior_nested_replica_mean"} <= {c["measure"] for c in corr}
    for bad, msg in (({"particles": 0}, "particles"), ({"colour": 1}, "nested"), (3, "nested")):
        with pytest.raises(VolumeError, match=msg):
            FlatnessConfig.from_dict({"systems": [{**d["systems"][0], "nested": bad}]})
