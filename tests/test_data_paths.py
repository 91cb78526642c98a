"""Data paths: a relative inputs.path is relative to the spec file, errors name the resolved
directory and the exact files, and the image example that needs no files runs anywhere."""

import os
import shutil
from pathlib import Path

import pytest

from volume.cli import main
from volume.errors import DataError
from volume.inputs import load_inputs
from volume.spec import ExperimentSpec
from volume.table import FrequencyTable

REPO = Path(__file__).resolve().parents[1]

SPEC = """
[architecture]
hidden = [4]
[inputs]
kind = "image"
dataset = "mnist"
path = "{path}"
count = 10
"""


def test_relative_path_is_relative_to_the_spec_file(tmp_path, mnist_dir, monkeypatch):
    (tmp_path / "specs").mkdir()
    shutil.copytree(mnist_dir, tmp_path / "data" / "mnist")
    (tmp_path / "specs" / "m.toml").write_text(SPEC.format(path="../data/mnist"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = ExperimentSpec.load("../specs/m.toml")
    assert spec.inputs.path == str((tmp_path / "data" / "mnist").resolve())
    assert load_inputs(spec.inputs).x.shape == (10, 1, 28, 28)
    # the path is not part of the identity: the same spec with the absolute path has the same id
    assert spec.spec_id == ExperimentSpec.from_toml(SPEC.format(path="anything")).spec_id


def test_missing_files_say_which_files_go_where(tmp_path, monkeypatch):
    (tmp_path / "m.toml").write_text(SPEC.format(path="../data/mnist"))
    monkeypatch.chdir("/")
    spec = ExperimentSpec.load(tmp_path / "m.toml")
    expected = str((tmp_path.parent / "data" / "mnist").resolve())
    with pytest.raises(DataError) as e:
        load_inputs(spec.inputs)
    msg = str(e.value)
    assert repr(expected) in msg and "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in msg
    (tmp_path / "m2.toml").write_text(SPEC.format(path="."))
    with pytest.raises(DataError, match=r"missing data file t10k-images-idx3-ubyte.gz .* put t10k-images"):
        load_inputs(ExperimentSpec.load(tmp_path / "m2.toml").inputs)


def test_digits_example_runs_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = os.path.relpath(REPO / "examples" / "digits.toml", tmp_path)
    assert main(["sample", spec, "-n", "1024", "-o", "d.h5", "--in-process", "--quiet"]) == 0
    assert FrequencyTable.load("d.h5").n_samples == 1024
    assert main(["gp", "logp", spec, "--labels", "ge5", "--json"]) == 0
    assert '"log_p"' in capsys.readouterr().out
