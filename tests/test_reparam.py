"""Reparametrizations keep the function; which flatness measures move and which do not."""

import numpy as np
import pytest
import torch

from volume.errors import VolumeError
from volume.flatness.hessian import HessianOperator, hessian_trace, lambda_max
from volume.flatness.local_energy import local_energy
from volume.flatness.objective import Objective
from volume.flatness.sharpness import sharpness
from volume.inputs import load_inputs
from volume.keys import pack_labels
from volume.models import Network, draw_params, layer_shapes
from volume.reparam import (align, alpha_rescale, geodesic_path, linear_path, normalise, path_barrier,
                            unit_norms)
from volume.sampler import Sampler
from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Prior, Training
from volume.table import FrequencyTable
from volume.train import TrainingRun

D = torch.float64
FCN_SPEC = ExperimentSpec(architecture=FCN((6, 5)), prior=Prior(sigma_w=1.5, sigma_b=0.5), inputs=BooleanCube(4))
CNN_SPEC = ExperimentSpec(architecture=CNN(channels=(3, 2), kernel_size=3, pool="max", dense=(4,)),
                          prior=Prior(sigma_b=0.3), inputs=ImageSubset(dataset="digits", count=20))


def draw(spec, shape, seed=0):
    p = draw_params(spec, layer_shapes(spec, shape), 1, torch.Generator().manual_seed(seed), dtype=D)
    return {k: v[0] for k, v in p.items()}


def outputs(spec, params, x):
    net = Network(spec, x.shape[1:]).double()
    net.load_draw({k: v[None] for k, v in params.items()})
    with torch.no_grad():
        return net(torch.as_tensor(x, dtype=D))


@pytest.fixture(scope="module")
def cnn_inputs():
    return load_inputs(CNN_SPEC.inputs).x


@pytest.mark.parametrize("which", ["fcn", "cnn"])
def test_rescaling_and_normalising_keep_the_function(which, cnn_inputs):
    spec, x = (FCN_SPEC, load_inputs(FCN_SPEC.inputs).x) if which == "fcn" else (CNN_SPEC, cnn_inputs)
    p = draw(spec, x.shape[1:])
    keep = {k: v.clone() for k, v in p.items()}
    z = outputs(spec, p, x)
    n = sum(k.startswith("weight") for k in p)
    for layer in range(n - 1):
        units = p[f"weight{layer}"].shape[0]
        for alpha in (1e-3, 7.0, torch.linspace(0.1, 10, units, dtype=D)):
            q = alpha_rescale(spec, p, layer, alpha)
            np.testing.assert_allclose(outputs(spec, q, x).numpy(), z.numpy(), rtol=1e-9, atol=1e-12)
            assert not torch.equal(q[f"weight{layer}"], p[f"weight{layer}"])
    q = normalise(spec, p)
    np.testing.assert_allclose(outputs(spec, q, x).numpy(), z.numpy(), rtol=1e-9, atol=1e-12)
    for layer in range(n - 1):
        np.testing.assert_allclose(unit_norms(q, layer).numpy(), 1.0, rtol=1e-12)
    # normalisation is idempotent and removes the rescaling symmetry
    r = normalise(spec, alpha_rescale(spec, p, 0, 5.0))
    for k in q:
        np.testing.assert_allclose(normalise(spec, q)[k].numpy(), q[k].numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r[k].numpy(), q[k].numpy(), rtol=1e-10, atol=1e-13)
    for k in p:  # the caller's tensors are untouched
        assert torch.equal(p[k], keep[k])


def permute(p, layer, perm):
    """Reference permutation of the units of ``layer``: rows in, and the matching input
    slices of the next layer (a channel's block of columns after a flatten)."""
    q = dict(p)
    q[f"weight{layer}"], q[f"bias{layer}"] = p[f"weight{layer}"][perm], p[f"bias{layer}"][perm]
    w = p[f"weight{layer + 1}"]
    q[f"weight{layer + 1}"] = w.reshape(w.shape[0], len(perm), -1)[:, perm].reshape(w.shape)
    return q


def test_alignment_recovers_a_permutation(cnn_inputs):
    for spec, x in ((FCN_SPEC, load_inputs(FCN_SPEC.inputs).x), (CNN_SPEC, cnn_inputs)):
        p = normalise(spec, draw(spec, x.shape[1:], seed=3))
        g = torch.Generator().manual_seed(9)
        q = p
        for layer in range(sum(k.startswith("weight") for k in p) - 1):
            q = permute(q, layer, torch.randperm(p[f"weight{layer}"].shape[0], generator=g))
        np.testing.assert_allclose(outputs(spec, q, x).numpy(), outputs(spec, p, x).numpy(), rtol=1e-9, atol=1e-12)
        assert any(not torch.equal(q[k], p[k]) for k in p)
        al = align(spec, p, q)
        for k in p:
            assert torch.equal(al.params[k], p[k])
        assert al.similarity == pytest.approx([1.0] * len(al.similarity))


def test_paths_and_barriers():
    spec, x = FCN_SPEC, load_inputs(FCN_SPEC.inputs).x
    a, b = draw(spec, (4,), seed=1), draw(spec, (4,), seed=2)
    y = outputs(spec, a, x)[:, 0] > 0
    obj = Objective(spec, x, y.numpy().astype(int), dtype=D)

    def errs(path):
        return obj.errors(torch.stack([obj.flatten(p) for p in path])).numpy()

    ts = np.linspace(0, 1, 11)
    lin = linear_path(a, b, ts)
    for k in a:
        assert torch.equal(lin[0][k], a[k]) and torch.allclose(lin[-1][k], b[k])
    geo = geodesic_path(spec, a, b, ts)
    na, nb = normalise(spec, a), normalise(spec, b)
    for k in a:
        assert torch.allclose(geo[0][k], na[k]) and torch.allclose(geo[-1][k], nb[k])
    for p in geo:  # every point of the geodesic is a normalised network
        np.testing.assert_allclose(unit_norms(p, 0).numpy(), 1.0, rtol=1e-12)
    res = path_barrier(errs, lin, ts)
    assert res.errors[0] == 0 and res.barrier == pytest.approx(res.errors.max() - max(res.errors[0], res.errors[-1]))
    assert res.barrier >= 0
    # a network and a rescaled copy: zero barrier along the geodesic (same normalised network)
    same = path_barrier(errs, geodesic_path(spec, a, alpha_rescale(spec, a, 1, 30.0), ts), ts)
    assert same.barrier == 0 and np.all(same.errors == 0)


def test_bad_reparametrizations():
    p = draw(FCN_SPEC, (4,))
    with pytest.raises(VolumeError, match="hidden layer"):
        alpha_rescale(FCN_SPEC, p, 2, 2.0)
    with pytest.raises(VolumeError, match="alpha"):
        alpha_rescale(FCN_SPEC, p, 0, -1.0)
    with pytest.raises(VolumeError, match="alpha"):
        alpha_rescale(FCN_SPEC, p, 0, torch.ones(3))
    tanh = FCN_SPEC.replace(architecture=FCN((6, 5), "tanh"))
    with pytest.raises(VolumeError, match="relu"):
        normalise(tanh, p)
    with pytest.raises(VolumeError, match="shapes"):
        align(FCN_SPEC, p, draw(FCN_SPEC.replace(architecture=FCN((6, 4))), (4,)))


@pytest.fixture(scope="module")
def minimum():
    """A 5-12-12-1 ReLU network trained to zero error on 20 of the 32 inputs of the 5-cube."""
    base = ExperimentSpec(architecture=FCN((12, 12)), inputs=BooleanCube(5), block_size=1)
    idx = tuple(int(i) for i in np.sort(np.random.default_rng(0).choice(32, 20, replace=False)))
    spec = base.replace(training=Training(optimizer="adam", lr=0.02, batch_size=10, train_indices=idx,
                                          target="majority", max_epochs=500))
    run = TrainingRun(spec, dtype=D)
    r = run.results(0)[0]
    assert r.converged
    return base, run, r


def test_rescaling_moves_hessian_measures_but_not_the_function_or_invariant_measures(minimum):
    spec, run, r = minimum
    obj, x = run.objective, run.inputs.x
    prior = spec.replace(block_size=2048)
    table = FrequencyTable.from_labels(prior, Sampler(prior).labels(0), [0])

    def measures(theta):
        op = HessianOperator(obj, theta)
        le = local_energy(obj.errors, theta, [0.2], draws=200, seed=0)
        return {"lambda_max": lambda_max(op, tol=1e-8, seed=0), "trace": hessian_trace(op, samples=30, seed=0)[0],
                "keskar": sharpness(obj.loss, theta, eps=1e-3, steps=10).value,
                "adaptive": sharpness(obj.loss, theta, eps=1e-2, adaptive=True, steps=10).value,
                "local_energy": (le.delta[0], le.se[0]),
                "normalised_lambda_max": lambda_max(HessianOperator(obj, obj.flatten(normalise(spec, obj.params(theta)))),
                                                    tol=1e-8, seed=0)}

    m0 = measures(r.theta)
    count0 = table.lookup_keys(pack_labels(r.labels[None]))
    for alpha in (0.05, 20.0):
        theta = obj.flatten(alpha_rescale(spec, r.params, 0, alpha))
        labels = obj.labels(theta, x)
        assert np.array_equal(labels, r.labels)  # every label, hence the same volume
        assert table.lookup_keys(pack_labels(labels[None])) == count0
        m = measures(theta)
        for k in ("lambda_max", "trace"):
            assert m[k] / m0[k] > 20 or m0[k] / m[k] > 20, (k, alpha, m[k], m0[k])
        assert m["keskar"] / m0["keskar"] > 1.5 or m0["keskar"] / m["keskar"] > 1.5
        assert m["adaptive"] == pytest.approx(m0["adaptive"], rel=1e-6)
        assert m["normalised_lambda_max"] == pytest.approx(m0["normalised_lambda_max"], rel=1e-6)
        (le, se), (le0, se0) = m["local_energy"], m0["local_energy"]
        assert abs(le - le0) <= 2 * max(se, se0) + 1e-12
