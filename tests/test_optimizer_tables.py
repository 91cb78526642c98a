"""Honest bookkeeping on tables of optimizer-found functions: failed trainings are recorded,
merge and resume exactly; `volume posterior` answers P_opt(f|S) on the spec's own S and refuses
what these draws cannot answer (P(U), PAC-Bayes, other training sets)."""

import json

import h5py
import numpy as np
import pytest

from volume.cli import main
from volume.errors import TableError, VolumeError
from volume.estimate import posterior
from volume.inputs import load_inputs, target_labels
from volume.runner import run_local
from volume.spec import BooleanCube, ExperimentSpec, FCN, Prior, Training
from volume.table import FrequencyTable
from volume.train import TrainingRun

TRAIN = (0, 3, 5, 6)


@pytest.fixture
def spec():
    """Trainings that often fail: parity on 4 of 8 inputs, one epoch of slow SGD."""
    return ExperimentSpec(architecture=FCN(hidden=(8,)), prior=Prior(sigma_w=1.0, sigma_b=0.5), inputs=BooleanCube(n=3),
                          seed=3, block_size=8, name="fails",
                          training=Training(optimizer="sgd", lr=0.01, batch_size=4, max_epochs=1,
                                            train_indices=TRAIN, target="parity"))


def test_failed_trainings_recorded_merged_and_resumed(spec, tmp_path):
    run = TrainingRun(spec)
    failed = [run.block(b)[1] for b in range(3)]
    assert 0 < sum(failed) < 24  # both kinds occur, so the count is tested
    path = tmp_path / "opt.h5"
    t2 = run_local(spec, 16, path)  # blocks 0, 1
    assert (t2.n_attempts, t2.n_failed, t2.n_samples) == (16, failed[0] + failed[1], 16 - failed[0] - failed[1])
    with h5py.File(path) as f:
        assert (int(f.attrs["n_failed"]), int(f.attrs["n_trainings"])) == (failed[0] + failed[1], 16)
    t3 = run_local(spec, 24, path)  # resume: only block 2 is trained
    assert t3.n_failed == sum(failed) and FrequencyTable.load(path).n_failed == sum(failed)
    merged = run.table([0]).merge(run.table([1, 2]))
    assert merged == t3 and merged.n_failed == sum(failed)
    # a tampered count is refused on load
    with h5py.File(path, "a") as f:
        f.attrs["n_failed"] = np.uint64(sum(failed) + 1)
    with pytest.raises(TableError, match="n_failed"):
        FrequencyTable.load(path)


def test_posterior_on_an_optimizer_table(spec, tmp_path, capsys):
    table = TrainingRun(spec).table(range(3))
    path = tmp_path / "opt.h5"
    table.save(path)
    y = target_labels(load_inputs(spec.inputs), "parity")
    res = posterior(table, TRAIN, y[list(TRAIN)], y)
    assert res.kind == "optimizer" and res.p_u is None and res.pac_bayes_bound is None
    assert res.n_failed == table.n_failed and res.n_consistent == table.n_samples
    # the optimizer's mean test error, computed here from the trainings themselves
    test = np.setdiff1d(np.arange(8), TRAIN)
    errs = [np.mean(r.labels[test] != y[test]) for b in range(3) for r in TrainingRun(spec).results(b) if r.converged]
    assert res.expected_error == pytest.approx(np.mean(errs))
    assert "P(U)" in res.notes[0] and str(table.n_failed) in res.notes[1]
    with pytest.raises(VolumeError, match="another training set"):
        posterior(table, [0, 3, 5], y[[0, 3, 5]], y)
    with pytest.raises(VolumeError, match="differ from that target"):
        posterior(table, TRAIN, 1 - y[list(TRAIN)])
    # the command line: defaults to the spec's own S and target, prints no P(U) and no bound
    assert main(["posterior", str(path)]) == 0
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if line.startswith(("P(U)", "PAC-Bayes"))]
    assert f"({table.n_failed} did not: not counted)" in out
    assert main(["posterior", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "optimizer" and d["p_u"] is None and d["n_failed"] == table.n_failed
    assert main(["posterior", str(path), "--train", "0-3", "--target", "parity"]) == 2
    assert "another training set" in capsys.readouterr().err
    assert main(["info", str(path)]) == 0
    assert f"{table.n_failed} did not" in capsys.readouterr().out
