"""docs/worked_example.md runs end to end (its Python blocks, in order, in a temp directory),
and the results it shows convert to pandas."""

import re
from pathlib import Path

import pytest

from volume.estimate import prior_estimates, top_estimates
from volume.runner import run_local

DOC = Path(__file__).resolve().parents[1] / "docs" / "worked_example.md"


def test_worked_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name}[block {i}]", "exec"), ns)
    assert ns["table"].n_samples == 40960 and (tmp_path / "boolean5.h5").is_file()
    assert (tmp_path / "rank.png").stat().st_size > 10_000 and (tmp_path / "errors.png").stat().st_size > 5_000
    assert abs(ns["errors"]["posterior"].sum() - 1) < 1e-9
    assert ns["batch"]["count"][1] == 0  # parity is never drawn


def test_frames_hold_the_estimates(boolean_spec):
    table = run_local(boolean_spec, 1024)
    rows = top_estimates(table, 4)
    df = rows.to_dataframe()
    assert list(df["count"]) == [r.count for r in rows] and list(df["p"]) == [r.p for r in rows]
    assert prior_estimates(table, []).to_dataframe().shape == (0, 10)
    from volume.estimate import posterior
    from volume.inputs import resolve_labels

    target = resolve_labels("majority", boolean_spec)
    res = posterior(table, [0, 1], target[:2], target)
    err = res.to_dataframe()
    assert {"error", "posterior"} <= set(err.columns) and err["posterior"].sum() == pytest.approx(1)
    assert len(res.to_dataframe("top")) == len(res.top)


def test_experiment_rows_as_frame(tmp_path):
    from volume.errors import VolumeError
    from volume.experiments.flatness_vs_volume import read_results, write_csv

    write_csv(tmp_path / "results.csv", [{"system": "b", "lambda_max": 2.5}, {"system": "b", "lambda_max": 3.0}])
    assert read_results(tmp_path)["lambda_max"].tolist() == [2.5, 3.0]
    with pytest.raises(VolumeError, match="does not exist"):
        read_results(tmp_path, "correlations")
