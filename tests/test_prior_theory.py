"""The sampled prior over functions against closed-form Gaussian orthant probabilities.

For a perceptron, z(x) = w.x sigma_w/sqrt(d) + b sigma_b is exactly Gaussian with
K(x, x') = sigma_b^2 + sigma_w^2 x.x'/d; for a wide one-hidden-layer network it is Gaussian
in the limit of infinite width with the NNGP kernel (ReLU: arc-cosine; erf: arcsine).
P(f) is then the orthant probability P(sign z = f): closed forms for 2 and 3 inputs,
scipy's numerical multivariate normal CDF as a cross-check.
"""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from volume.inputs import boolean_cube
from volume.runner import run_local
from volume.spec import FCN, BooleanCube, ExperimentSpec, Prior

pytestmark = pytest.mark.usefixtures("both_backends")  # compiled kernel and torch path


def corr(k):
    d = np.sqrt(np.diag(k))
    return k / np.outer(d, d)


def orthant2(rho, s):
    """P(s1 z1 > 0, s2 z2 > 0) for unit-variance z with correlation rho (Sheppard)."""
    return 0.25 + math.asin(s[0] * s[1] * rho) / (2 * math.pi)


def orthant3(r, s):
    """P(s_i z_i > 0 for i=1..3) = 1/8 + sum_{i<j} asin(s_i s_j r_ij) / (4 pi)."""
    return 0.125 + sum(math.asin(s[i] * s[j] * r[i, j]) for i, j in ((0, 1), (0, 2), (1, 2))) / (4 * math.pi)


def orthant_numeric(k, s):
    """P(s_i z_i > 0) = P(-S z < 0) = CDF of N(0, S K S) at 0 (scipy, independent of the project)."""
    S = np.diag(s)
    return multivariate_normal(mean=np.zeros(len(s)), cov=S @ k @ S, abseps=1e-7, releps=1e-7).cdf(np.zeros(len(s)))


def nngp(x, sigma_w, sigma_b, activation, depth):
    d = x.shape[1]
    x = np.asarray(x, dtype=np.float64)
    k = sigma_b**2 + sigma_w**2 * (x @ x.T) / d
    for _ in range(depth):
        diag = np.diag(k)
        if activation == "relu":
            norms = np.sqrt(np.outer(diag, diag))
            cos = np.clip(k / norms, -1, 1)
            th = np.arccos(cos)
            k = sigma_b**2 + sigma_w**2 / (2 * math.pi) * norms * (np.sin(th) + (math.pi - th) * cos)
        else:  # erf
            k = sigma_b**2 + sigma_w**2 * (2 / math.pi) * np.arcsin(2 * k / np.sqrt(np.outer(1 + 2 * diag, 1 + 2 * diag)))
    return k


def sampled_frequencies(spec, draws):
    table = run_local(spec, draws)
    labels = {}
    from volume.keys import unpack_keys

    for lab, c in zip(unpack_keys(table.keys, table.n_inputs), table.counts):
        labels[tuple(int(v) for v in lab)] = int(c)
    return labels, table.n_samples


def assert_within_se(p_hat, p, n, nse=4.0):
    se = math.sqrt(max(p * (1 - p), 1e-12) / n)
    assert abs(p_hat - p) <= nse * se + 1e-12, f"sampled {p_hat:.5f} vs theory {p:.5f} (se {se:.5f})"


@pytest.mark.parametrize("prior", [Prior("gaussian", 1.3, 0.4), Prior("gaussian", 1.0, 2.0)])
def test_perceptron_two_inputs_closed_form(prior):
    spec = ExperimentSpec(architecture=FCN(hidden=()), prior=prior, inputs=BooleanCube(n=1, encoding="pm1"),
                          block_size=4096, seed=3)
    freq, n = sampled_frequencies(spec, 8 * 4096)
    r = corr(nngp(boolean_cube(1, "pm1"), prior.sigma_w, prior.sigma_b, "relu", 0))[0, 1]
    for f in itertools.product([0, 1], repeat=2):
        s = [1 if v else -1 for v in f]
        assert_within_se(freq.get(f, 0) / n, orthant2(r, s), n)


def test_perceptron_three_inputs():
    prior = Prior("gaussian", 1.0, 0.7)
    spec = ExperimentSpec(architecture=FCN(hidden=()), prior=prior, inputs=BooleanCube(n=2), block_size=4096, seed=5)
    freq, n = sampled_frequencies(spec, 8 * 4096)
    k = nngp(boolean_cube(2), prior.sigma_w, prior.sigma_b, "relu", 0)
    # (z on all 4 inputs has rank 3: a perceptron on 2 bits has 3 parameters, so the 4-d
    # orthant probability is degenerate; the restriction to 3 inputs is not.)
    # the function restricted to inputs 0..2: closed-form 3-d orthant probability
    r = corr(k[:3, :3])
    for f3 in itertools.product([0, 1], repeat=3):
        p_hat = sum(c for f, c in freq.items() if f[:3] == f3) / n
        s3 = [1 if v else -1 for v in f3]
        assert orthant3(r, s3) == pytest.approx(orthant_numeric(k[:3, :3], s3), abs=1e-5)
        assert_within_se(p_hat, orthant3(r, s3), n)


def test_uniform_prior_perceptron_matches_its_own_exact_distribution():
    """A uniform-prior perceptron is not Gaussian; on 2 inputs (pm1, sigma_b = 0) z1 = -z2... use
    x = -1, +1: z(+1) = a w + c b, z(-1) = -a w + c b with w, b uniform, so P(both > 0) =
    P(c|b| > a|w|, b > 0) computed exactly by integrating uniform densities."""
    sw, sb = 1.0, 0.5
    spec = ExperimentSpec(architecture=FCN(hidden=()), prior=Prior("uniform", sw, sb),
                          inputs=BooleanCube(n=1, encoding="pm1"), block_size=4096, seed=11)
    freq, n = sampled_frequencies(spec, 8 * 4096)
    # w ~ U(-A, A), A = sw*sqrt(3/1); b ~ U(-B, B), B = sb*sqrt(3). Both positive iff b > |w|.
    A, B = sw * math.sqrt(3), sb * math.sqrt(3)
    # P(b > |w|) = int_0^B P(|w| < b) db / (2B) = int_0^B min(b/A, 1) db / (2B); here B < A
    p_both = (B * B / (2 * A)) / (2 * B)
    assert_within_se(freq.get((1, 1), 0) / n, p_both, n)
    assert_within_se(freq.get((0, 0), 0) / n, p_both, n)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_wide_one_hidden_layer_matches_nngp_orthants(activation):
    prior = Prior("gaussian", 1.4, 0.3)
    spec = ExperimentSpec(architecture=FCN(hidden=(2048,), activation=activation), prior=prior,
                          inputs=BooleanCube(n=1, encoding="pm1"), block_size=2048, seed=2)
    freq, n = sampled_frequencies(spec, 12 * 2048)
    r = corr(nngp(boolean_cube(1, "pm1"), prior.sigma_w, prior.sigma_b, activation, 1))[0, 1]
    for f in itertools.product([0, 1], repeat=2):
        s = [1 if v else -1 for v in f]
        assert_within_se(freq.get(f, 0) / n, orthant2(r, s), n)
    spec3 = spec.replace(inputs=BooleanCube(n=2, encoding="01"))
    freq3, n3 = sampled_frequencies(spec3, 12 * 2048)
    r3 = corr(nngp(boolean_cube(2), prior.sigma_w, prior.sigma_b, activation, 1))[1:, 1:]
    for f3 in itertools.product([0, 1], repeat=3):
        p_hat = sum(c for f, c in freq3.items() if f[1:] == f3) / n3
        assert_within_se(p_hat, orthant3(r3, [1 if v else -1 for v in f3]), n3)
