"""The input basis: drawing a Gaussian first layer in the span of the input set.

The first layer's pre-activations of a Gaussian FCN on M inputs x_1..x_M in R^d are, for
each hidden unit, z = (sigma_w / sqrt(d)) X w with w ~ N(0, I_d), X (M, d): a Gaussian
vector with covariance (sigma_w^2 / d) X X^T, of rank r = rank(X) <= min(M, d). With the
thin SVD X = U S V^T (U (M, r), S (r, r), V (d, r)), X w = U S (V^T w) and V^T w ~ N(0, I_r)
because V has orthonormal columns. So z has exactly the same distribution as
(sigma_w / sqrt(d)) A g with A = U S (M, r) and g ~ N(0, I_r): the sampler draws r numbers
per hidden unit instead of d, on the inputs A instead of X, and the distribution of every
function is unchanged (Gaussian prior only: with a uniform prior, X w is not Gaussian and
V^T w is not uniform, so the full d weights are drawn).

A is a deterministic function of X: the SVD in float64 (torch.linalg.svd, LAPACK), r = the numerical
rank (singular values above max(M, d) * eps * s_max, numpy.linalg.matrix_rank's rule), the
sign of each column of U chosen so that its entry of largest size is positive, rounded to
float32. Draws are reproducible wherever LAPACK returns the same singular vectors to
float32 precision (always, except for (near-)equal singular values, where any rotation of
the singular subspace is an equally exact basis).
"""

from __future__ import annotations

import numpy as np
import torch

from volume.models import Layer
from volume.spec import FCN, ExperimentSpec, ImageSubset


def input_basis(x: np.ndarray) -> np.ndarray:
    """A = U S (M, r) float32 of the inputs x (M, ...) (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    threads = torch.get_num_threads()
    try:  # one thread: several times faster than threads that wait on a busy machine (0.5 s for 1000 x 784)
        torch.set_num_threads(1)
        u_t, s_t, _ = torch.linalg.svd(torch.from_numpy(x), full_matrices=False)
    finally:
        torch.set_num_threads(threads)
    u, s = u_t.numpy(), s_t.numpy()
    tol = (s[0] if s.size else 0.0) * max(x.shape) * np.finfo(np.float64).eps
    r = int(np.count_nonzero(s > tol))
    u, s = u[:, :r], s[:r]
    big = np.argmax(np.abs(u), axis=0)
    u = u * np.where(u[big, np.arange(r)] < 0, -1.0, 1.0)
    return np.ascontiguousarray((u * s).astype(np.float32))


def uses_basis(spec: ExperimentSpec) -> bool:
    """Whether prior draws of ``spec`` take the first layer in the input basis: a Gaussian
    FCN on image inputs, prior draws (not optimizer-found ones, which need the full weights)."""
    return (isinstance(spec.architecture, FCN) and isinstance(spec.inputs, ImageSubset)
            and spec.prior.kind == "gaussian" and spec.training is None)


def basis_layers(layers: list[Layer], x: np.ndarray) -> tuple[list[Layer], np.ndarray]:
    """The sampler's layers and inputs in the basis: first layer (h, r) with fan-in d, inputs A
    (M, r). If r = d there is nothing to gain and (layers, x) are returned unchanged."""
    d = int(np.prod(x.shape[1:]))
    a = input_basis(x)
    if a.shape[1] >= d:
        return layers, x
    first = layers[0]
    return [Layer("dense", (first.weight_shape[0], a.shape[1]), first.fan_in, last=first.last), *layers[1:]], a
