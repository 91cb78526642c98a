"""The first layer drawn in the basis of the input set (volume/basis.py) has the distribution of
the full draw: A A^T = X X^T exactly (so the pre-activations have the same Gaussian law), the
sampler's pre-activations have covariance sigma_w^2/d X X^T within standard errors, and the
functions drawn in the basis and in full have the same frequencies (two-sample chi-square)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from volume.basis import basis_layers, input_basis
from volume.inputs import load_inputs
from volume.keys import unpack_keys
from volume.sampler import Sampler, block_standard
from volume.spec import FCN, ExperimentSpec, ImageSubset, Prior
from volume.table import count_keys


def _spec(count: int, **kw) -> ExperimentSpec:
    return ExperimentSpec(architecture=FCN(hidden=(16,)), prior=Prior(sigma_w=1.4, sigma_b=0.3, **kw),
                          inputs=ImageSubset(dataset="digits", count=count, normalise="unit"), block_size=4096)


def test_basis_reproduces_the_gram_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)) @ rng.normal(size=(5, 30))  # rank 5 < min(M, d)
    a = input_basis(x)
    assert a.shape == (12, 5) and a.dtype == np.float32
    np.testing.assert_allclose(a.astype(np.float64) @ a.T, x @ x.T, rtol=0, atol=1e-5 * np.abs(x @ x.T).max())
    assert np.all(a[np.argmax(np.abs(a), axis=0), np.arange(5)] > 0)  # the sign convention
    np.testing.assert_array_equal(input_basis(x), a)  # deterministic


def test_sampler_uses_the_basis_only_where_it_is_exact():
    s = Sampler(_spec(20))
    assert s.basis and s.layers[0].weight_shape == (16, 20) and s.layers[0].fan_in == 64
    assert not Sampler(_spec(20, kind="uniform")).basis  # X w is not Gaussian under a uniform prior
    assert not Sampler(_spec(20), basis=False).basis
    s80 = Sampler(_spec(80))  # corner pixels are 0 in every digit: rank < 64 even for 80 images
    assert s80.basis and s80.layers[0].weight_shape[1] == np.linalg.matrix_rank(load_inputs(_spec(80).inputs).flat)
    x = np.random.default_rng(1).normal(size=(9, 4))  # rank 4 = d: nothing to gain, the layers stay
    assert basis_layers(s80.layers, x)[1] is x


def test_first_layer_preactivations_have_the_full_draws_covariance():
    spec = _spec(10)
    s = Sampler(spec)
    x = load_inputs(spec.inputs).flat.astype(np.float64)
    (w0, _b0, _w1, _b1) = block_standard(spec, s.layers, 0, 0, 2048)
    a = s.x.double()
    z = torch.einsum("nhr,mr->nhm", w0.double(), a).reshape(-1, 10).numpy() * 1.4 / math.sqrt(64)
    cov = z.T @ z / len(z)
    want = 1.4**2 / 64 * x @ x.T
    se = np.sqrt((np.diag(want)[:, None] * np.diag(want)[None, :] + want**2) / len(z))
    assert np.all(np.abs(cov - want) < 5 * se)


def test_functions_drawn_in_the_basis_have_the_full_draws_frequencies():
    spec = _spec(6).replace(block_size=8192)
    counts = []
    for basis in (True, False):
        s = Sampler(spec, basis=basis)
        assert s.basis == basis
        keys = np.concatenate([s.keys(b) for b in range(4)])
        uniq, c = count_keys(keys)
        counts.append(dict(zip(map(bytes, uniq), c.tolist())))
    common = sorted(k for k in set(counts[0]) | set(counts[1]) if counts[0].get(k, 0) + counts[1].get(k, 0) >= 20)
    rare = [sum(c[k] for k in c if k not in common) for c in counts]
    table = np.array([[c.get(k, 0) for k in common] + ([r] if sum(rare) else []) for c, r in zip(counts, rare)])
    assert table.shape[1] > 10 and table.sum() == 2 * 4 * 8192
    p = chi2_contingency(table)[1]
    assert p > 1e-4, f"basis and full draws differ: chi-square p = {p:.2e}"
    assert len(unpack_keys(np.frombuffer(common[0], np.uint8)[None], 6)[0]) == 6
