"""The flatness-vs-volume experiment end to end at the small setting (examples/flatness_small.toml)."""

import csv
import json
import math
import tomllib
from pathlib import Path

import pytest

from volume.cli import main
from volume.errors import VolumeError
from volume.experiments.config import FlatnessConfig
from volume.experiments.flatness_vs_volume import correlations

ROOT = Path(__file__).resolve().parents[1]


def test_small_experiment_end_to_end(tmp_path, mnist_dir):
    example = ROOT / "examples/flatness_small.toml"
    config = FlatnessConfig.load(example)
    # the example's relative data path is taken relative to the config file: the repository's data/mnist
    assert Path(config.systems[1].spec.inputs.path) == (ROOT / "data" / "mnist").resolve()
    # run it on the MNIST-format files this session wrote (the spec file beside the copy, too)
    text = example.read_text().replace('path = "../data/mnist"', f'path = "{mnist_dir}"')
    path = tmp_path / "flatness_small.toml"
    path.write_text(text)
    (tmp_path / "boolean7.toml").write_text((ROOT / "examples/boolean7.toml").read_text())
    cfg = tomllib.loads(path.read_text())
    out = tmp_path / "out"
    assert main(["experiment", "flatness-vs-volume", str(path), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    n_expected = sum(r["repeats"] for s in cfg["systems"] for r in s["runs"])
    assert len(rows) == n_expected
    assert {r["system"] for r in rows} == {"boolean", "mnist"}
    for r in rows:
        assert r["converged"] == "True" and float(r["train_error"]) == 0.0
        assert r["function_unchanged"] == "True"
        # the volume of the (unchanged) function is unchanged: prior table (boolean), GP/EP (mnist)
        col = "log_prior_table" if r["system"] == "boolean" else "log_prior_gp"
        assert float(r[col]) == float(r[f"{col}_rescaled"]) < 0
        # invariant measures stay (exactly: same random numbers, same function),
        assert float(r["adaptive_rescaled"]) == pytest.approx(float(r["adaptive"]), rel=1e-3, abs=1e-6)
        assert float(r["lambda_max_normalised_rescaled"]) == pytest.approx(float(r["lambda_max_normalised"]), rel=1e-3)
        for s in ("0.1", "0.3"):
            le, le2 = float(r[f"local_energy_{s}"]), float(r[f"local_energy_{s}_rescaled"])
            assert abs(le - le2) <= 2 * float(r[f"local_energy_{s}_se"]) + 1e-9
        # while lambda_max follows alpha: far from alpha = 1 it moves by a large factor
        alpha = float(r["alpha"])
        if abs(math.log10(alpha)) > 0.5:
            ratio = float(r["lambda_max_rescaled"]) / float(r["lambda_max"])
            assert abs(math.log10(ratio)) > 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["functions_unchanged_by_rescaling"] and summary["networks"] == n_expected
    assert summary["movement"]["boolean"]["log_prior_table"]["max_abs_log10_ratio"] == 0.0
    assert summary["movement"]["mnist"]["log_prior_gp"]["max_abs_log10_ratio"] == 0.0
    corr = list(csv.DictReader(open(out / "correlations.csv")))
    assert {c["measure"] for c in corr} >= {"log_prior_table", "log_prior_gp", "lambda_max", "trace", "keskar", "adaptive",
                                            "local_energy_0.1", "lambda_max_normalised"}
    for name in summary["plots"]:
        assert (out / name).stat().st_size > 10_000


def test_correlations_against_scipy_by_hand():
    rows = [{"system": "s", "converged": True, "test_error": e, "m": m, "m_rescaled": -m}
            for e, m in [(0.1, 1.0), (0.2, 3.0), (0.3, 2.0), (0.4, 5.0)]]
    c = {x["when"]: x for x in correlations(rows, ["m"])}
    # Kendall: pairs (6): concordant 5, discordant 1 -> tau = 4/6; Spearman ranks (1,3,2,4) -> 1 - 6*2/60 = 0.8
    assert c["before"]["kendall_tau"] == pytest.approx(4 / 6)
    assert c["before"]["spearman_rho"] == pytest.approx(0.8)
    assert c["after"]["kendall_tau"] == pytest.approx(-4 / 6)


def test_bad_configs(tmp_path):
    with pytest.raises(VolumeError, match="does not exist"):
        FlatnessConfig.load(tmp_path / "missing.toml")
    with pytest.raises(VolumeError, match="systems"):
        FlatnessConfig.from_dict({"name": "x"})
    base = {"name": "b", "spec": str(ROOT / "examples/boolean7.toml"), "target": "parity", "train_size": 64,
            "runs": [{"optimizer": "adam"}]}
    FlatnessConfig.from_dict({"systems": [base]})
    with pytest.raises(VolumeError, match="train_size"):
        FlatnessConfig.from_dict({"systems": [{**base, "train_size": 128}]})
    with pytest.raises(VolumeError, match="training.optimizer"):
        FlatnessConfig.from_dict({"systems": [{**base, "runs": [{"optimizer": "lbfgs"}]}]})
    with pytest.raises(VolumeError, match="measures.local_energy_sigmas"):
        FlatnessConfig.from_dict({"systems": [base], "measures": {"local_energy_sigmas": []}})
    with pytest.raises(VolumeError, match="rescale.alpha_max"):
        FlatnessConfig.from_dict({"systems": [base], "rescale": {"alpha_max": 0.5}})
    with pytest.raises(VolumeError, match="volume"):
        FlatnessConfig.from_dict({"systems": [{**base, "volume": "magic"}]})
    assert main(["experiment", "flatness-vs-volume", str(tmp_path / "missing.toml")]) == 2

