"""The analytic NNGP kernel of CNNs (conv, average pooling, flatten, dense): against an
independent full pixel-pair covariance computation, and against the Monte-Carlo kernel of wide
sampled networks with a tolerance from its standard error."""

from __future__ import annotations

import numpy as np
import pytest

from volume.activations import ACTIVATIONS
from volume.gp.kernels import KernelError, analytic_kernel, empirical_kernel, spec_kernel
from volume.inputs import InputSet
from volume.spec import CNN, ExperimentSpec, ImageSubset, Prior


def _images(m, c, h, w, seed=0):
    x = np.random.default_rng(seed).normal(size=(m, c, h, w)).astype(np.float32)
    return InputSet(x=x, shape=(c, h, w))


def _spec(arch, sw=1.3, sb=0.2):
    return ExperimentSpec(architecture=arch, prior=Prior(sigma_w=sw, sigma_b=sb),
                          inputs=ImageSubset(dataset="digits", count=4), seed=4, block_size=64)


def _full_reference(spec, x):
    """The kernel from the full covariance of every (input, pixel) pair: an (M P) x (M P) matrix
    per layer, conv as a sum of shift matrices, pooling as an averaging matrix (a different
    computation from volume.layers, which keeps only the offsets the readout needs)."""
    arch, sw, sb = spec.architecture, spec.prior.sigma_w, spec.prior.sigma_b
    phi = ACTIVATIONS[arch.activation].expectation
    m, c, h, w = x.shape
    k, p = arch.kernel_size, arch.kernel_size // 2

    def shift(h, w, dy, dx):  # (P, P): row q picks pixel q + (dy, dx) if it exists
        s = np.zeros((h * w, h * w))
        for i in range(h):
            for j in range(w):
                if 0 <= i + dy < h and 0 <= j + dx < w:
                    s[i * w + j, (i + dy) * w + j + dx] = 1.0
        return np.kron(np.eye(m), s)

    feats = x.transpose(1, 0, 2, 3).reshape(c, m * h * w)  # (C, M P), index (input, pixel)
    e = feats.T @ feats / c
    for ch in arch.channels:
        kk = sb**2 + sw**2 / k**2 * sum(shift(h, w, dy, dx) @ e @ shift(h, w, dy, dx).T
                                        for dy in range(-p, p + 1) for dx in range(-p, p + 1))
        d = np.diag(kk)
        e = phi(kk, d[:, None], d[None, :])
        if arch.pool == "avg" and h >= 2 and w >= 2:
            pm = np.zeros(((h // 2) * (w // 2), h * w))
            for i in range(h // 2):
                for j in range(w // 2):
                    for a in (0, 1):
                        for b in (0, 1):
                            pm[i * (w // 2) + j, (2 * i + a) * w + 2 * j + b] = 0.25
            pm = np.kron(np.eye(m), pm)
            e = pm @ e @ pm.T
            h, w = h // 2, w // 2
    e = np.einsum("apbp->ab", e.reshape(m, h * w, m, h * w)) / (h * w)  # flatten: mean over pixels
    for _ in arch.dense:
        kk = sb**2 + sw**2 * e
        d = np.diag(kk)
        e = phi(kk, d[:, None], d[None, :])
    return sb**2 + sw**2 * e


@pytest.mark.parametrize("arch", [
    CNN(channels=(4, 4, 4), kernel_size=3, pool="avg", dense=(5,)),
    CNN(channels=(4, 4), kernel_size=5, pool="none", dense=(), activation="erf"),
    CNN(channels=(4,), kernel_size=3, pool="avg", dense=(5, 5)),
])
def test_cnn_kernel_matches_full_pixel_pair_covariance(arch):
    spec = _spec(arch)
    inputs = _images(3, 2, 9, 7)  # odd, non-square sizes: pooling floors, padding at every border
    K = analytic_kernel(spec, inputs)
    ref = _full_reference(spec, inputs.x.astype(np.float64))
    np.testing.assert_allclose(K, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(analytic_kernel(spec, inputs, memory_bytes=1), K, rtol=1e-12, atol=0)  # row blocks


def test_cnn_kernel_matches_wide_sampled_networks():
    """conv - avg pool - conv - avg pool - dense - output at 128 channels / units: the Monte-Carlo
    kernel of 256 networks agrees within 5 standard errors everywhere, and a kernel without the
    pooling (same parameters otherwise) is rejected by the same test."""
    spec = _spec(CNN(channels=(128, 128), kernel_size=3, pool="avg", dense=(128,)), sw=1.4, sb=0.3)
    inputs = _images(5, 1, 8, 8, seed=1)
    K = analytic_kernel(spec, inputs)
    ek = empirical_kernel(spec, inputs, n_networks=256, block_size=64)
    z = (ek.K - K) / ek.stderr
    assert np.abs(z).max() < 5.0, np.abs(z).max()
    wrong = analytic_kernel(spec.replace(architecture=CNN(channels=(128, 128), kernel_size=3, pool="none",
                                                          dense=(128,))), inputs)
    assert np.abs((ek.K - wrong) / ek.stderr).max() > 5.0


def test_max_pooling_has_no_analytic_kernel():
    spec = _spec(CNN(channels=(4,), pool="max"))
    with pytest.raises(KernelError, match="max.*'avg' or 'none'.*empirical"):
        spec_kernel(spec, "analytic", _images(2, 1, 8, 8))
    K, se, meta = spec_kernel(spec, "empirical", _images(2, 1, 8, 8), n_networks=8, block_size=8)
    assert K.shape == (2, 2) and meta["kernel"] == "empirical"


def test_cnn_analytic_kernel_through_the_cli_and_logp(mnist_dir, tmp_path, capsys):
    """`volume gp kernel` (default --kernel analytic) and ln P(f) by 'ep' take a CNN's analytic kernel."""
    import h5py

    from volume.cli import main
    from volume.inputs import load_inputs
    from volume.logp import log_p

    spec = ExperimentSpec(architecture=CNN(channels=(4,), kernel_size=3, pool="avg", dense=(8,)),
                          prior=Prior(sigma_w=1.2, sigma_b=0.1),
                          inputs=ImageSubset(dataset="mnist", path=str(mnist_dir), count=6))
    path, out = tmp_path / "cnn.toml", tmp_path / "K.h5"
    spec.save(path)
    assert main(["gp", "kernel", str(path), "-o", str(out)]) == 0
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["K"][...], analytic_kernel(spec, load_inputs(spec.inputs)))
    res = log_p(spec, "ge5", "ep")
    assert res.diagnostics["kernel"] == "analytic" and np.isfinite(res.log_p)
    capsys.readouterr()
    maxpool = spec.replace(architecture=CNN(channels=(4,), kernel_size=3, pool="max", dense=(8,)))
    maxpool.save(path)
    assert main(["gp", "kernel", str(path), "-o", str(tmp_path / "M.h5")]) == 2
    assert "pool = 'max'" in capsys.readouterr().err


def test_gp_cost_check_counts_pixel_pair_moments():
    """The service's GP cap counts a CNN kernel's pixel-pair moments, not only layers x inputs^2."""
    from volume.limits import LimitExceeded, Limits, check_gp

    img = ImageSubset(dataset="mnist", count=100)
    check_gp(ExperimentSpec(architecture=CNN(channels=(8, 8), pool="none"), inputs=img), Limits())  # pixel diagonal
    avg = ExperimentSpec(architecture=CNN(channels=(8, 8), pool="avg"), inputs=img)
    with pytest.raises(LimitExceeded, match="moments per pair"):
        check_gp(avg, Limits())
    check_gp(avg, Limits(), kernel="empirical", kernel_samples=64)  # the empirical kernel has its own cap
