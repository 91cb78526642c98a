"""Keskar sharpness, adaptive sharpness and local energy against closed forms."""

import math

import numpy as np
import pytest
import torch

from volume.errors import VolumeError
from volume.flatness.local_energy import local_energy
from volume.flatness.objective import Objective
from volume.flatness.sharpness import sharpness, sharpness_box
from volume.inputs import load_inputs
from volume.spec import FCN, BooleanCube, ExperimentSpec

D = torch.float64


def test_separable_quadratic_reaches_the_box_vertex():
    # L = sum a_i (theta_i - c_i)^2 is convex and separable: the maximum over the box is the
    # vertex away from c, sum a_i (|theta_i - c_i| + b_i)^2.
    g = torch.Generator().manual_seed(0)
    a = torch.rand(8, generator=g, dtype=D) + 0.5
    c = torch.randn(8, generator=g, dtype=D)
    theta = torch.randn(8, generator=g, dtype=D)

    def loss(t):
        return (a * (t - c) ** 2).sum()

    for adaptive, eps in ((False, 1e-2), (True, 0.1)):
        b = sharpness_box(theta, eps, adaptive)
        best = float((a * ((theta - c).abs() + b) ** 2).sum())
        base = float(loss(theta))
        s = sharpness(loss, theta, eps=eps, adaptive=adaptive, steps=10, step=0.25)
        assert s.max_loss == pytest.approx(best, rel=1e-12)
        assert s.value == pytest.approx(100 * (best - base) / (1 + base), rel=1e-12)
        assert torch.all(s.delta.abs() <= b + 1e-15)


def test_rank_one_quadratic():
    # L = (w . theta)^2: max over the box = (|w . theta| + sum |w_i| b_i)^2
    g = torch.Generator().manual_seed(1)
    w, theta = torch.randn(6, generator=g, dtype=D), torch.randn(6, generator=g, dtype=D)
    s = sharpness(lambda t: (w @ t) ** 2, theta, eps=5e-3, steps=8, restarts=2, seed=3)
    b = 5e-3 * (theta.abs() + 1)
    assert s.max_loss == pytest.approx(float((abs(w @ theta) + (w.abs() * b).sum()) ** 2), rel=1e-12)


def test_adaptive_box_is_zero_where_theta_is_zero():
    theta = torch.tensor([0.0, 2.0, -1.0], dtype=D)
    assert torch.equal(sharpness_box(theta, 0.1, adaptive=True), torch.tensor([0.0, 0.2, 0.1], dtype=D))
    assert torch.allclose(sharpness_box(theta, 0.1), torch.tensor([0.1, 0.3, 0.2], dtype=D))
    with pytest.raises(VolumeError, match="eps"):
        sharpness_box(theta, 0.0)


def test_local_energy_of_a_linear_unit_matches_the_normal_cdf():
    # One linear threshold unit z = w1 x1 + 0 x2 on the 2-cube (+-1): under multiplicative
    # noise w1 (1 + sigma xi) every label flips iff xi < -1/sigma; the weight that is 0 stays 0.
    # So delta E(sigma) = P(xi < -1/sigma) = Phi(-1/sigma).
    spec = ExperimentSpec(architecture=FCN(()), inputs=BooleanCube(2, "pm1"))
    x = load_inputs(spec.inputs).x
    theta = torch.tensor([1.5, 0.0, 0.0], dtype=D)  # weight0 (1, 2), bias0 (1,)
    obj = Objective(spec, x, (x[:, 0] > 0).astype(int), dtype=D)
    assert float(obj.errors(theta)[0]) == 0.0
    sigmas = [0.4, 1.0, 2.0]
    n = 4000
    le = local_energy(obj.errors, theta, sigmas, draws=n, seed=0, batch=1000)
    for s, m, se in zip(sigmas, le.delta, le.se):
        exact = 0.5 * math.erfc(1 / s / math.sqrt(2))
        sd = math.sqrt(exact * (1 - exact) / n)  # binomial standard error at the exact value
        assert abs(m - exact) <= 4 * sd
        assert se == pytest.approx(sd, rel=0.25)
    assert le.base_error == 0.0


def test_local_energy_is_deterministic_and_validates():
    spec = ExperimentSpec(architecture=FCN((3,)), inputs=BooleanCube(2, "pm1"))
    x = load_inputs(spec.inputs).x
    obj = Objective(spec, x, np.array([0, 1, 1, 0]), dtype=D)
    theta = torch.randn(obj.n_params, generator=torch.Generator().manual_seed(0), dtype=D)
    a = local_energy(obj.errors, theta, [0.1, 0.5], draws=50, seed=7, batch=13)
    b = local_energy(obj.errors, theta, [0.1, 0.5], draws=50, seed=7, batch=50)
    np.testing.assert_array_equal(a.delta, b.delta)
    with pytest.raises(VolumeError, match="sigmas"):
        local_energy(obj.errors, theta, [-0.1])
    with pytest.raises(VolumeError, match="draws"):
        local_energy(obj.errors, theta, [0.1], draws=1)
