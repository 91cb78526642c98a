"""`volume experiment sgd-vs-bayes` at the small setting, checked against a direct computation
on the same draws: prior labels from the sampler and trainings from TrainingRun, counted here
with numpy, independently of the tables and the experiment's bookkeeping."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from volume.cli import main
from volume.errors import VolumeError
from volume.experiments.flatness_vs_volume import split_indices
from volume.experiments.sgd_vs_bayes import SgdBayesConfig
from volume.inputs import load_inputs, target_labels
from volume.keys import labels_to_hex, parse_function
from volume.sampler import Sampler
from volume.train import TrainingRun

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "examples/sgd_vs_bayes_small.toml"


def _strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"non-finite JSON token {token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _direct(config: SgdBayesConfig, m: int):
    """(prior counts of the consistent functions, n_U, optimizer counts, failed) by hand."""
    spec = config.spec
    inputs = load_inputs(spec.inputs)
    y = target_labels(inputs, config.target)
    train = split_indices(inputs.n_inputs, m, config.split_seed)
    sampler = Sampler(spec)
    prior = np.concatenate([sampler.labels(b) for b in range(config.prior_blocks)])
    ok = np.all(prior[:, train] == y[None, train], axis=1)
    uniq, counts = np.unique(prior[ok], axis=0, return_counts=True)
    prior_counts = {labels_to_hex(u): int(c) for u, c in zip(uniq, counts)}
    bs = config.training_block_size
    tspec = spec.replace(block_size=bs, training=config.run.training(train.tolist(), config.target))
    tr = TrainingRun(tspec, inputs)
    found, failed = {}, 0
    for b in range(math.ceil(config.trainings / bs)):
        for r in tr.results(b):
            if r.converged:
                found[labels_to_hex(r.labels)] = found.get(labels_to_hex(r.labels), 0) + 1
            else:
                failed += 1
    return prior_counts, int(ok.sum()), found, failed, y, np.setdiff1d(np.arange(inputs.n_inputs), train)


def test_small_sgd_vs_bayes_against_direct_counts(tmp_path):
    out = tmp_path / "svb"
    assert main(["experiment", "sgd-vs-bayes", str(SMALL), "--out", str(out), "--quiet"]) == 0
    config = SgdBayesConfig.load(SMALL)
    summary = _strict_json(out / "summary.json")
    rows = list(csv.DictReader(open(out / "functions.csv")))
    errs = list(csv.DictReader(open(out / "errors.csv")))
    m = config.train_sizes[0]
    prior_counts, n_u, found, failed, y, test = _direct(config, m)
    size = next(s for s in summary["sizes"] if s["train_size"] == m)
    n_conv = sum(found.values())
    assert (size["n_converged"], size["n_failed"], size["n_consistent_prior"]) == (n_conv, failed, n_u)
    assert size["trainings"] == config.trainings and n_u >= config.min_consistent
    assert size["log_p_u_counted"] == pytest.approx(math.log(n_u / (config.prior_blocks * config.spec.block_size)))
    mine = {r["function"]: r for r in rows if int(r["train_size"]) == m}
    assert set(mine) == set(found)
    counted = 0
    for f, r in mine.items():
        assert int(r["n_opt"]) == found[f] and float(r["p_opt"]) == pytest.approx(found[f] / n_conv)
        assert int(r["n_prior"]) == prior_counts.get(f, 0)
        if f in prior_counts:  # both sides counted: P(f|S) = n_f / n_U exactly
            counted += 1
            assert r["method"] == "counted"
            assert float(r["log_p_bayes"]) == pytest.approx(math.log(prior_counts[f] / n_u), abs=1e-12)
            se = math.sqrt(1 / prior_counts[f] - 1 / n_u)
            assert float(r["log_p_bayes_se"]) == pytest.approx(se)
        else:  # estimated in the GP limit (P(f) / P(U), each by the GP estimator's method)
            known = ("ep", "ep-is", "ep-sis", "tilting", "exact")
            assert all(m.removesuffix("(unreliable)") in known for m in r["method"].split("/")), r["method"]
            assert float(r["log_p_bayes"]) < 0
    assert counted >= 10 and counted == size["agreement"]["n_counted"]
    # error distributions: the optimizer's from the trainings, Bayes' from all consistent prior draws
    by_err_opt, by_err_bayes = {}, {}
    for f, c in found.items():
        e = float(np.mean(parse_function("0x" + f.removeprefix("0x"), 16, 2)[test] != y[test]))
        by_err_opt[e] = by_err_opt.get(e, 0) + c
    for f, c in prior_counts.items():
        e = float(np.mean(parse_function("0x" + f.removeprefix("0x"), 16, 2)[test] != y[test]))
        by_err_bayes[e] = by_err_bayes.get(e, 0) + c
    for e in (r for r in errs if int(r["train_size"]) == m):
        err = float(e["error"])
        assert float(e["p_opt"]) == pytest.approx(by_err_opt.get(err, 0) / n_conv)
        assert float(e["p_bayes"]) == pytest.approx(by_err_bayes.get(err, 0) / n_u)
    assert size["expected_error_opt"] == pytest.approx(sum(e * c for e, c in by_err_opt.items()) / n_conv)
    assert size["expected_error_bayes_counted"] == pytest.approx(sum(e * c for e, c in by_err_bayes.items()) / n_u)
    # the counts of the first blocks were checked against the prior table of the same draws
    check = summary["check_against_table"]
    assert check["passed"] and check["draws"] == config.check_blocks * config.spec.block_size
    assert 0 < check[f"n_consistent_{m}"] <= n_u
    assert summary["prior_sampling"]["draws"] == config.prior_blocks * config.spec.block_size
    # the GP's estimate of the counted functions' P(f|S), next to the count
    est = [(float(r["log_p_bayes"]), float(r["log_p_bayes_est"])) for r in mine.values() if r["method"] == "counted"]
    assert all(b < 0 for _, b in est)
    assert size["agreement"]["mean_abs_ln_gp_minus_counted"] == pytest.approx(np.mean([abs(a - b) for a, b in est]))
    # numbers in range, one plot per size, a report naming its figures and config
    for s in summary["sizes"]:
        a = s["agreement"]
        assert 0 <= a["opt_mass_within_10x_all"] <= 1 and -1 <= a["pearson_log10_all"] <= 1
        assert 0 <= a["fraction_counted_within_2se"] <= 1
        assert s["log_p_u_gp"] < 0 and 0 <= s["expected_error_bayes_gp"] <= 1
        assert (out / f"sgd_vs_bayes_{s['train_size']}.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "sgd_vs_bayes_4.png" in report and '"train_sizes"' in report
    assert (out / f"opt_{m}.h5").is_file()


def test_bad_sgd_vs_bayes_configs(tmp_path):
    base = {"spec": str(ROOT / "examples/boolean7.toml"), "target": "majority", "train_sizes": [16],
            "training": {"optimizer": "adam"}}
    SgdBayesConfig.from_dict(base)
    for change, field in (({"train_sizes": [200]}, "train_sizes"), ({"volume": "table"}, "volume"),
                          ({"training": {"optimizer": "lbfgs"}}, "training.optimizer"),
                          ({"importance_samples": 1}, "importance_samples"), ({"colour": 1}, "colour"),
                          ({"check_blocks": 20, "prior_blocks": 16}, "check_blocks"),
                          ({"estimate_counted": 1}, "estimate_counted")):
        with pytest.raises(VolumeError, match=field):
            SgdBayesConfig.from_dict({**base, **change})
    assert main(["experiment", "sgd-vs-bayes", str(tmp_path / "missing.toml")]) == 2


def test_log_count_standard_error_matches_the_spread():
    """The stated standard error of ln(n_f / n) against the spread over 4,000 multinomial repeats."""
    from volume.experiments.volume_fn import log_count_se

    rng = np.random.default_rng(0)
    p = np.array([0.3, 0.05, 0.01, 0.64])
    n = 5000
    draws = rng.multinomial(n, p, size=4000)
    for k in range(3):
        spread = np.std(np.log(draws[:, k] / n))
        stated = np.mean([log_count_se(c, n) for c in draws[:, k]])
        assert stated / spread == pytest.approx(1.0, abs=0.06)
