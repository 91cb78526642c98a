"""Torch-path speed before/after a change of the forward (issue 13 item 14: layers as objects).

Run the same cases under two checkouts, alternating, one thread each, e.g.
    for i in 1 2 3; do for tree in /work/main /work/wt-13; do
      OMP_NUM_THREADS=1 PYTHONPATH=$tree python benchmarks/layers_speed.py --mnist ../shared/data/mnist; done; done
Prints, per case, CPU seconds per 1000 draws (best of --repeats) and the checkout it ran.
Cases: the torch sampler's dense path (boolean7; MNIST 100 images, 784-40-40-1, sigma_b 0.1),
its general path (dense=False), a CNN block (MNIST 100, conv 8-8 max pool, general path) and
models.forward in chunks of 64 draws (the nested estimator's use) on MNIST 100.
``--kernel`` times the analytic CNN kernel instead.
"""

from __future__ import annotations

import argparse
import time

import torch

import volume
from volume.models import forward, layer_shapes, scale_params
from volume.sampler import Sampler, block_standard
from volume.spec import CNN, FCN, BooleanCube, ExperimentSpec, ImageSubset, Prior


def best(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        out.append(time.process_time() - t)
    return min(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kernel", action="store_true", help="time the analytic CNN kernel instead (this branch only)")
    a = ap.parse_args()
    if a.kernel:
        return cnn_kernel(a.mnist)
    torch.set_num_threads(1)
    img = ImageSubset(dataset="mnist", path=a.mnist, count=100)
    cases = {
        "boolean7 dense": (ExperimentSpec(inputs=BooleanCube(n=7), block_size=2048), {}),
        "boolean7 general": (ExperimentSpec(inputs=BooleanCube(n=7), block_size=2048), {"dense": False}),
        "mnist100 fcn dense": (ExperimentSpec(architecture=FCN(hidden=(40, 40)), prior=Prior(sigma_b=0.1),
                                              inputs=img, block_size=512), {}),
        "mnist100 cnn general": (ExperimentSpec(architecture=CNN(channels=(8, 8), pool="max"), inputs=img,
                                                block_size=64), {}),
    }
    for name, (spec, kw) in cases.items():
        s = Sampler(spec, backend="torch", **kw)
        t = best(lambda: s.keys(0), a.repeats)
        print(f"{name:24s} {1000 * t / spec.block_size:8.3f} s/1000 draws  [{volume.__file__}]")
    spec = cases["mnist100 fcn dense"][0]
    s = Sampler(spec, backend="torch", basis=False)
    layers = layer_shapes(spec, s.inputs.shape)
    params = scale_params(spec, layers, block_standard(spec, layers, 0, 0, 512))
    x = torch.as_tensor(s.inputs.x)

    def chunks():
        with torch.no_grad():
            for i in range(0, 512, 64):
                forward(spec, layers, {k: v[i:i + 64] for k, v in params.items()}, x)
    t = best(chunks, a.repeats)
    print(f"{'forward x64 mnist100':24s} {1000 * t / 512:8.3f} s/1000 draws  [{volume.__file__}]")


def cnn_kernel(mnist: str) -> None:
    """CPU seconds and peak RSS of the analytic CNN kernel (conv 3x3 8-8, dense 40, ReLU)."""
    import resource

    from volume.gp.kernels import analytic_kernel
    from volume.inputs import load_inputs

    for pool, m in (("none", 100), ("avg", 100), ("none", 1000)):
        spec = ExperimentSpec(architecture=CNN(channels=(8, 8), pool=pool, dense=(40,)), prior=Prior(sigma_b=0.1),
                              inputs=ImageSubset(dataset="mnist", path=mnist, count=m))
        inputs = load_inputs(spec.inputs)
        t = time.process_time()
        analytic_kernel(spec, inputs)
        print(f"CNN kernel pool={pool} M={m}: {time.process_time() - t:.1f} CPU s, "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
