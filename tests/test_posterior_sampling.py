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


def test_counts_equal_a_brute_force_count_of_the_prior_table():
    """The packed counts against the prior table of the same draws, walked function by function:
    every table function that fits S adds its count to its labels on E."""
    from volume.keys import unpack_keys
    from volume.table import FrequencyTable

    sampler = Sampler(SPEC)
    table = FrequencyTable.from_labels(SPEC, np.concatenate([sampler.labels(b) for b in range(5)]), range(5))
    y = unpack_keys(table.keys[np.argmax(table.counts)], 16)[0]
    conds = [Condition(np.array([2, 7]), y[[2, 7]], np.array([1, 2, 4, 7, 8, 15])),
             Condition(np.array([0, 3, 9, 10]), y[[0, 3, 9, 10]], np.arange(16))]
    for c, p in zip(conds, count_posteriors(SPEC, conds, 5)):
        brute: dict[bytes, int] = {}
        for key, n in zip(table.keys, table.counts):
            lab = unpack_keys(key, 16)[0]
            if all(lab[i] == l for i, l in zip(c.train, c.labels)):
                brute[bytes(lab[c.evaluate])] = brute.get(bytes(lab[c.evaluate]), 0) + int(n)
        assert p.counts == brute and p.n_consistent == sum(brute.values()) and p.n_draws == table.n_samples
        # the table's layout: sorted unique packed keys on E, uint64 counts
        assert p.n_distinct == len(brute) and p.key_counts.dtype == np.uint64
        assert all(bytes(a) < bytes(b) for a, b in zip(p.keys[:-1], p.keys[1:]))
        labs = np.array([np.frombuffer(f, np.uint8) for f in brute])
        assert p.lookup(labs).tolist() == list(brute.values())
        assert p.lookup(1 - labs[:1, :]).tolist() == [brute.get(bytes(1 - labs[0]), 0)]


def test_memory_is_bounded_before_the_pass():
    """A pass whose worst-case memory is above the cap is refused before its first draw, with
    the field and the fix; one at the cap runs and holds no more than the bound (tracemalloc,
    numpy's allocations included), on draws that make the bound nearly tight (every fitting
    draw a new function)."""
    import tracemalloc

    from volume.limits import LimitExceeded
    from volume.posterior_sampling import FOLD_ROWS, memory_bound

    spec = SPEC.replace(inputs=SPEC.inputs.__class__(n=5), block_size=4096)  # 32 inputs, 4-byte keys
    blocks = 48  # 196,608 draws, ~160,000 fit S, nearly all distinct: several folds above FOLD_ROWS
    c = Condition(np.array([0, 9]), np.array([1, 0], np.uint8), np.arange(32))
    mask, key = fit_masks(32, 2, c.train, c.labels)
    rng = np.random.default_rng(0)
    drawn = [rng.integers(0, 256, (spec.block_size, 4), dtype=np.uint8) for _ in range(blocks)]
    for d in drawn:  # three draws in four fit S (the rest fit with probability 1/4)
        d[1::4] = (d[1::4] & ~mask) | key
        d[2::4] = (d[2::4] & ~mask) | key
        d[3::4] = (d[3::4] & ~mask) | key

    class Source:
        calls = 0

        def keys(self, b):
            self.calls += 1
            return drawn[b]

    bound = memory_bound(spec, [(2, 32)], blocks * spec.block_size)
    src = Source()
    with pytest.raises(LimitExceeded, match=r"blocks = 48: .* use fewer blocks, or fewer evaluated inputs"):
        count_posteriors(spec, [c], blocks, source=src, max_bytes=bound - 1)
    assert src.calls == 0
    tracemalloc.start()
    try:
        post = count_posteriors(spec, [c], blocks, source=src, max_bytes=bound)[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert src.calls == blocks and post.n_distinct > 2 * FOLD_ROWS
    assert post.keys.nbytes + post.key_counts.nbytes < peak <= bound, (peak, bound)
    # the experiment refuses such a config when it is loaded, naming its own fields
    from volume.experiments.sgd_vs_bayes import SgdBayesConfig

    base = {"spec": "examples/boolean7.toml", "target": "majority", "train_sizes": [16, 32],
            "training": {"optimizer": "adam"}}
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    SgdBayesConfig.from_dict({**base, "prior_blocks": 16384, "test_size": 6}, root)
    with pytest.raises(LimitExceeded, match=r"prior_blocks = 16384: .*fewer prior_blocks, or fewer test inputs "
                                            r"\(test_size\).*or raise posterior_max_bytes"):
        SgdBayesConfig.from_dict({**base, "prior_blocks": 16384}, root)
    # a researcher who knows few draws fit S (P(S) ~ 4e-5 for majority at |S| = 16) raises the cap
    config = SgdBayesConfig.from_dict({**base, "prior_blocks": 16384, "posterior_max_bytes": 1 << 36}, root)
    assert config.posterior_max_bytes == 1 << 36
    with pytest.raises(VolumeError, match="posterior_max_bytes"):
        SgdBayesConfig.from_dict({**base, "posterior_max_bytes": 0}, root)


def test_log_p_refuses_labels_that_are_not_a_function_on_e():
    c = Condition(np.array([0, 1]), np.array([0, 1], np.uint8), np.arange(4))
    p = count_posteriors(SPEC, [c], 1)[0]
    assert p.log_p(np.array([0, 1, 0, 0], np.uint8))[2] == p.lookup(np.array([0, 1, 0, 0]))[0]
    for bad in (np.zeros(5, np.uint8), np.array([0, 1, 2, 0])):
        with pytest.raises(VolumeError, match="one label in 0..1 per evaluated input"):
            p.log_p(bad)
