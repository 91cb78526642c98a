"""The Bayesian posterior counted by rejection (volume.posterior_sampling): the bit-mask filter
against a label-by-label comparison, the counts against the prior table of the same draws
projected by hand, splitting the draws, and bad input."""

import math

import numpy as np
import pytest

from volume.errors import VolumeError
from volume.keys import pack_labels
from volume.posterior_sampling import Condition, count_posteriors, fit_masks, fits
from volume.sampler import Sampler
from volume.spec import ExperimentSpec

SPEC = ExperimentSpec.from_dict({"name": "b4", "seed": 3, "block_size": 512,
                                 "architecture": {"kind": "fcn", "hidden": [8], "activation": "relu"},
                                 "prior": {"sigma_w": 1.0, "sigma_b": 0.2},
                                 "inputs": {"kind": "boolean", "n": 4, "encoding": "01"}})


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_fit_mask_equals_labelwise_comparison(classes):
    rng = np.random.default_rng(classes)
    m = 37
    train = rng.choice(m, size=9, replace=False)
    y = rng.integers(0, classes, m).astype(np.uint8)
    lab = rng.integers(0, classes, (3000, m)).astype(np.uint8)
    lab[:500, train] = y[train]  # some rows fit
    lab[500:700, train[:-1]] = y[train[:-1]]  # some miss only the last training input
    lab[500:700, train[-1]] = (y[train[-1]] + 1) % classes
    mask, key = fit_masks(m, classes, train, y[train])
    got = fits(pack_labels(lab, classes), mask, key)
    want = np.all(lab[:, train] == y[None, train], axis=1)
    assert np.array_equal(got, want) and want[:500].all() and not want[500:700].any()


def test_counts_equal_the_draws_counted_by_hand():
    sampler = Sampler(SPEC)
    lab = np.concatenate([sampler.labels(b) for b in range(6)])
    y = lab[7]  # a drawn function, so some draws fit every subset of it
    conds = [Condition(np.array([0, 5, 9]), y[[0, 5, 9]], np.array([0, 2, 5, 9, 11])),
             Condition(np.array([1, 3, 6, 12, 14]), y[[1, 3, 6, 12, 14]], np.arange(16))]
    posts = count_posteriors(SPEC, conds, 6)
    for c, p in zip(conds, posts):
        ok = np.all(lab[:, c.train] == c.labels[None], axis=1)
        uniq, counts = np.unique(lab[ok][:, c.evaluate], axis=0, return_counts=True)
        assert p.n_draws == 6 * 512 and p.n_consistent == ok.sum() > 0
        assert p.counts == {u.tobytes(): int(k) for u, k in zip(uniq, counts)}
        f = uniq[np.argmax(counts)]
        lp, se, n_f = p.log_p(f)
        assert n_f == counts.max() and lp == pytest.approx(math.log(n_f / ok.sum()))
        assert se == pytest.approx(math.sqrt(1 / n_f - 1 / ok.sum()))
        assert p.log_p_u()[0] == pytest.approx(math.log(ok.sum() / (6 * 512)))
    # the same draws split in two passes and merged: identical counts
    first = count_posteriors(SPEC, conds, 2)
    rest = count_posteriors(SPEC, conds, 6, start=2)
    for a, b, whole in zip(first, rest, posts):
        m = a.merge(b)
        assert (m.n_draws, m.n_consistent, m.counts) == (whole.n_draws, whole.n_consistent, whole.counts)


def test_bad_posterior_requests():
    c = Condition(np.array([0, 1]), np.array([0, 1], np.uint8), np.arange(4))
    for kwargs, msg in (({"blocks": 0}, "blocks"), ({"blocks": 2, "start": 3}, "start")):
        with pytest.raises(VolumeError, match=msg):
            count_posteriors(SPEC, [c], **kwargs)
    with pytest.raises(VolumeError, match="training inputs"):
        count_posteriors(SPEC, [Condition(np.array([0, 16]), np.array([0, 1], np.uint8), np.arange(4))], 1)
    with pytest.raises(VolumeError, match="label"):
        count_posteriors(SPEC, [Condition(np.array([0, 1]), np.array([0, 2], np.uint8), np.arange(4))], 1)
