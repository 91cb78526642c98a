"""Hessian measures against the exact Hessian (torch.autograd.functional.hessian +
numpy.linalg.eigvalsh, float64) of small networks, and the stochastic estimators against
closed forms."""

import numpy as np
import pytest
import torch

from volume.errors import VolumeError
from volume.flatness.hessian import (HessianOperator, hessian_frobenius, hessian_trace, lambda_max,
                                     top_eigenvalues)
from volume.flatness.hutchinson import frobenius_squared, hutchinson_trace
from volume.flatness.lanczos import lanczos_top, power_iteration
from volume.flatness.objective import Objective
from volume.inputs import load_inputs
from volume.models import draw_params, layer_shapes
from volume.spec import FCN, BooleanCube, ExperimentSpec, Output, Prior


def small_problem(activation="tanh", loss="ce", output=Output(), seed=0, chunk=4096):
    """A 4-6-5-out network on the 16 inputs of the 4-cube, random labels, float64."""
    spec = ExperimentSpec(architecture=FCN((6, 5), activation), prior=Prior(sigma_w=2.0, sigma_b=0.5),
                          inputs=BooleanCube(4, "pm1"), output=output)
    x = load_inputs(spec.inputs).x
    y = np.random.default_rng(seed).integers(0, spec.output.classes, size=x.shape[0])
    obj = Objective(spec, x, y, loss, dtype=torch.float64, chunk=chunk)
    p = draw_params(spec, layer_shapes(spec, (4,)), 1, torch.Generator().manual_seed(seed), dtype=torch.float64)
    theta = torch.cat([p[n][0].reshape(-1) for n in obj.names])
    return obj, theta


def exact_hessian(obj, theta):
    return torch.autograd.functional.hessian(obj.loss, theta).numpy()


CASES = [("tanh", "ce", Output()), ("relu", "ce", Output()), ("tanh", "mse", Output()),
         ("relu", "ce", Output("argmax", 3)), ("tanh", "mse", Output("argmax", 3))]


@pytest.mark.parametrize("activation,loss,output", CASES)
def test_operator_equals_exact_hessian(activation, loss, output):
    obj, theta = small_problem(activation, loss, output)
    h = exact_hessian(obj, theta)
    for mode in ("reverse", "forward"):
        np.testing.assert_allclose(HessianOperator(obj, theta, mode=mode).dense().numpy(), h, atol=1e-12, rtol=1e-9)
    # chunking the data (uneven chunks) changes nothing
    obj3, _ = small_problem(activation, loss, output, chunk=5)
    np.testing.assert_allclose(HessianOperator(obj3, theta).dense().numpy(), h, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("activation,loss,output", CASES)
def test_lambda_max_and_spectrum_match_eigvalsh(activation, loss, output):
    obj, theta = small_problem(activation, loss, output)
    eig = np.linalg.eigvalsh(exact_hessian(obj, theta))[::-1]
    op = HessianOperator(obj, theta)
    assert abs(lambda_max(op, tol=1e-10, seed=1) - eig[0]) <= 1e-4 * abs(eig[0])
    np.testing.assert_allclose(top_eigenvalues(op, 5, tol=1e-10, seed=2), eig[:5], rtol=1e-4, atol=1e-10 * abs(eig[0]))
    if abs(eig[0]) > abs(eig[-1]) * 1.05:  # power iteration finds the eigenvalue of largest magnitude
        assert abs(lambda_max(op, method="power", tol=1e-12, maxiter=5000, seed=3) - eig[0]) <= 1e-4 * abs(eig[0])


def test_power_iteration_on_known_matrix():
    a = torch.diag(torch.tensor([5.0, -2.0, 4.0, 1.0], dtype=torch.float64))
    r = power_iteration(lambda v: a @ v, 4, tol=1e-14, maxiter=2000, seed=0)
    assert r.converged and abs(r.value - 5.0) < 1e-8
    assert abs(abs(float(r.vector[0])) - 1.0) < 1e-4


@pytest.mark.parametrize("activation,loss,output", CASES[:3])
def test_trace_and_frobenius_within_standard_error(activation, loss, output):
    obj, theta = small_problem(activation, loss, output)
    h = exact_hessian(obj, theta)
    op = HessianOperator(obj, theta)
    n = 400
    tr, se = hessian_trace(op, samples=n, seed=4)
    assert abs(tr - np.trace(h)) <= 3 * se
    # the standard error agrees with the closed-form Rademacher variance 2(||H||_F^2 - sum H_ii^2)
    sd = np.sqrt(2 * ((h ** 2).sum() - (np.diag(h) ** 2).sum()) / n)
    assert 0.7 * sd <= se <= 1.3 * sd
    fro, fse = hessian_frobenius(op, samples=n, seed=5)
    assert abs(fro - (h ** 2).sum()) <= 3 * fse


def test_estimators_on_closed_forms():
    d = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    # Rademacher probes of a diagonal matrix give the trace exactly, with zero variance
    tr, se = hutchinson_trace(lambda v: v * d, 4, samples=7, seed=0)
    assert tr == pytest.approx(float(d.sum()), abs=1e-12) and se == pytest.approx(0.0, abs=1e-12)
    fro, fse = frobenius_squared(lambda v: v * d, 4, samples=4000, seed=0)
    assert abs(fro - float((d ** 2).sum())) <= 3 * fse
    # different seeds give different probes; the same seed the same estimate
    m = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = m + m.T
    a = hutchinson_trace(lambda v: v @ m, 6, samples=5, seed=1)
    assert a == hutchinson_trace(lambda v: v @ m, 6, samples=5, seed=1, batch=2)
    assert a != hutchinson_trace(lambda v: v @ m, 6, samples=5, seed=2)


def test_bad_input_is_a_volume_error():
    obj, theta = small_problem()
    with pytest.raises(VolumeError, match="entries"):
        HessianOperator(obj, theta[:-1])
    with pytest.raises(VolumeError, match="method"):
        lambda_max(HessianOperator(obj, theta), method="qr")
    with pytest.raises(VolumeError, match="k ="):
        lanczos_top(HessianOperator(obj, theta).linear_operator(), k=0)
    with pytest.raises(VolumeError, match="samples"):
        hessian_trace(HessianOperator(obj, theta), samples=0)
    with pytest.raises(VolumeError, match="labels"):
        Objective(obj.spec, obj.x.numpy(), obj.y.numpy()[:-1])
    with pytest.raises(VolumeError, match="loss"):
        Objective(obj.spec, obj.x.numpy(), obj.y.numpy(), "hinge")


def test_caller_theta_not_modified():
    obj, theta = small_problem()
    before = theta.clone()
    op = HessianOperator(obj, theta)
    lambda_max(op, seed=0)
    hessian_trace(op, samples=3, seed=0)
    assert torch.equal(theta, before)
