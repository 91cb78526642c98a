"""Posterior, generalization error and P(U) from a table against brute force over the raw draws."""

import numpy as np
import pytest

from volume.errors import FunctionError, VolumeError
from volume.estimate import posterior, wilson_interval
from volume.inputs import load_inputs, target_labels
from volume.runner import run_local
from volume.sampler import Sampler


@pytest.fixture
def draws(boolean_spec):
    sampler = Sampler(boolean_spec)
    labels = np.concatenate([sampler.labels(b) for b in range(6)])
    return labels, run_local(boolean_spec, 6 * boolean_spec.block_size)


@pytest.mark.parametrize("train", [[0, 3, 5], [1, 2, 4, 7], [6]])
def test_posterior_matches_brute_force(boolean_spec, draws, train):
    labels, table = draws
    target = target_labels(load_inputs(boolean_spec.inputs), "majority")
    train = np.array(train)
    test = np.setdiff1d(np.arange(8), train)
    # brute force: loop over every draw
    consistent = [row for row in labels if all(row[i] == target[i] for i in train)]
    n_u = len(consistent)
    errors = [sum(row[j] != target[j] for j in test) / len(test) for row in consistent]
    by_function = {}
    for row in consistent:
        by_function[tuple(row)] = by_function.get(tuple(row), 0) + 1
    res = posterior(table, train, target[train], target, top=1000)
    assert res.n_samples == len(labels) and res.n_consistent == n_u
    assert res.n_consistent_functions == len(by_function)
    assert res.p_u == pytest.approx(n_u / len(labels))
    assert (res.p_u_lower, res.p_u_upper) == pytest.approx(wilson_interval(n_u, len(labels)))
    assert res.expected_error == pytest.approx(np.mean(errors))
    assert res.expected_error_stderr == pytest.approx(np.std(errors) / np.sqrt(n_u))
    dist = {e: errors.count(e) / n_u for e in set(errors)}
    assert {d["error"]: d["posterior"] for d in res.error_distribution} == pytest.approx(dist)
    got = {tuple(int(c) for c in t["function"]): t["posterior"] for t in res.top}
    assert got == pytest.approx({f: c / n_u for f, c in by_function.items()})


def test_posterior_bad_input(boolean_spec, draws):
    _, table = draws
    with pytest.raises(VolumeError, match="0..7"):
        posterior(table, [0, 9], [0, 1])
    with pytest.raises(FunctionError, match="one label per index"):
        posterior(table, [0, 1], [0, 1, 1])
    with pytest.raises(FunctionError, match="disagrees"):
        posterior(table, [0, 1], [1, 1], target="00000000")
