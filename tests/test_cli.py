"""The command line end to end on a tiny spec: sample, extend, info, prior, posterior, plot."""

import json

import numpy as np

from volume.cli import main
from volume.table import FrequencyTable


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_end_to_end(tmp_path, boolean_spec, capsys):
    spec = tmp_path / "tiny.toml"
    boolean_spec.save(spec)
    out = tmp_path / "t.h5"
    assert main(["sample", str(spec), "-n", "1000", "-o", str(out), "--quiet", "--in-process"]) == 0
    assert FrequencyTable.load(out).n_samples == 1024  # rounded up to whole blocks of 512
    assert main(["sample", str(spec), "-n", "2048", "-o", str(out), "--quiet", "--in-process"]) == 0  # extends
    assert main(["sample", str(spec), "-n", "512", "-o", str(out), "--quiet", "--add", "--in-process"]) == 0
    t = FrequencyTable.load(out)
    assert t.n_samples == 2560 and t.blocks.tolist() == [0, 1, 2, 3, 4]
    capsys.readouterr()

    info = run_json(capsys, ["info", str(out), "--json", "--top", "3"])
    assert info["n_samples"] == 2560 and len(info["top"]) == 3
    assert info["top"][0]["count"] == int(t.counts.max())

    top_fn = info["top"][0]["function"]
    rows = run_json(capsys, ["prior", str(out), top_fn, info["top"][0]["hex"], "--json"])
    assert rows[0] == rows[1] and rows[0]["p"] == info["top"][0]["count"] / 2560

    post = run_json(capsys, ["posterior", str(out), "--train", "0-3", "--target", "majority", "--json"])
    assert post["train_size"] == 4 and post["test_size"] == 4 and 0 <= post["expected_error"] <= 1
    post2 = run_json(capsys, ["posterior", str(out), "--train-size", "4", "--train-seed", "1",
                              "--target", "00010111", "--json"])
    assert post2["train_size"] == 4

    png = tmp_path / "rank.png"
    assert main(["plot", str(out), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2560" in text and "Good-Turing" in text
