import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from volume.errors import VolumeError
from volume.estimate import (entropy_bits, good_turing_unseen, pac_bayes_bound, prior_estimates, unseen_upper_bound,
                             wilson_interval)
from volume.table import FrequencyTable


@pytest.mark.parametrize("k,n", [(1, 10), (5, 100), (50, 100), (99, 100), (3, 100000)])
def test_wilson_solves_the_score_equation(k, n):
    """Independent reference: the Wilson interval is the set of p with |k/n - p| <= z sqrt(p(1-p)/n)."""
    z = norm.ppf(0.975)
    g = lambda p: abs(k / n - p) - z * math.sqrt(p * (1 - p) / n)
    lo_ref = brentq(g, 1e-15, k / n)
    hi_ref = brentq(g, k / n, 1 - 1e-15) if k < n else 1.0
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(lo_ref, rel=1e-9) and hi == pytest.approx(hi_ref, rel=1e-9)


def test_unseen_bound_is_exact_one_sided():
    n = 1000
    b = unseen_upper_bound(n)
    assert (1 - b) ** n == pytest.approx(0.05, rel=1e-9)
    assert b == pytest.approx(3 / n, rel=0.01)  # rule of three
    assert wilson_interval(0, n) == (0.0, b)


def test_prior_estimates_and_summary(boolean_spec):
    labels = np.array([[0] * 8] * 6 + [[1] * 8] * 3 + [[0, 1] * 4], dtype=np.uint8)
    t = FrequencyTable.from_labels(boolean_spec, labels, [0])
    est = prior_estimates(t, ["00000000", "11111111", "01010101", "0x0f"])
    assert [e.count for e in est] == [6, 3, 1, 0]
    assert est[0].p == 0.6 and est[0].lower < 0.6 < est[0].upper
    assert not est[3].seen and est[3].p == 0 and est[3].upper == pytest.approx(1 - 0.05 ** 0.1)
    assert good_turing_unseen(t) == pytest.approx(0.1)
    h = -(0.6 * math.log2(0.6) + 0.3 * math.log2(0.3) + 0.1 * math.log2(0.1))
    assert entropy_bits(t)["plugin"] == pytest.approx(h)
    with pytest.raises(VolumeError, match="confidence"):
        prior_estimates(t, ["00000000"], confidence=1.5)


def test_pac_bayes_bound_formula():
    # a worked value: P(U) = 1e-6, m = 64, delta = 0.05: ln 1e6 = 13.8155106, ln(2m/delta) = ln 2560
    # = 7.8477625, their sum over m - 1 = 63 is 0.3438615, and eps = 1 - exp(-0.3438615) = 0.2909729
    p_u, m, delta = 1e-6, 64, 0.05
    eps = pac_bayes_bound(p_u, m, delta)
    assert eps == pytest.approx(0.2909729, abs=1e-7)
    assert pac_bayes_bound(1e-3, m) < eps  # larger P(U) -> tighter bound
