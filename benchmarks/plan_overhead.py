"""What the compiled sampler costs outside the kernel: building FusedFCN (the first-layer plan's
decision and program) on MNIST inputs, and the per-call cost of ``_fused.fcn_keys``.

    python benchmarks/plan_overhead.py --mnist DIR [--counts 1000,10000]
                                       [--base OLD/volume/_fused.cpython-*.so]

1. ``FusedFCN(...)`` construction, CPU and wall seconds, for a 784-40-40-1 FCN on ``count`` MNIST
   test images: Gaussian prior (the inputs in their basis, volume.basis: the plan is rejected)
   and uniform prior (raw pixels: the plan is used).
2. With ``--base`` (an extension built from an older commit, e.g. ``git archive <commit> | tar -x
   -C /tmp/base && cd /tmp/base && python setup.py build_ext --inplace``): one call of
   ``fcn_keys`` with the same arguments through the old and this tree's extension, alternating in
   one process, CPU time per call (median of rounds): boolean7 (examples/boolean7.toml) with 1,
   16 and 64 draws per call, and the MNIST sets with 1 draw per call. The keys must be equal.

One thread (run with OMP_NUM_THREADS=1). Prints the load average: compare figures of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np
import torch

from volume import fused
from volume.basis import basis_layers
from volume.inputs import load_inputs
from volume.keys import bits_per_label
from volume.models import layer_shapes
from volume.sampler import Sampler
from volume.spec import FCN, ExperimentSpec, ImageSubset, Prior
from volume.stream import block_key

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def mnist_samplers(directory: str, count: int):
    """(label, spec, FusedFCN, seconds of construction (cpu, wall)) for both priors."""
    for prior in (Prior(), Prior(kind="uniform")):
        spec = ExperimentSpec(architecture=FCN(hidden=(40, 40)), prior=prior,
                              inputs=ImageSubset(path=directory, count=count), block_size=64)
        inp = load_inputs(spec.inputs)
        layers, x = layer_shapes(spec, inp.shape), inp.x
        if prior.kind == "gaussian":
            layers, x = basis_layers(layers, x)
        x = np.asarray(x, dtype=np.float32).reshape(count, -1)
        c, w = time.process_time(), time.perf_counter()
        f = fused.FusedFCN(spec, layers, x)
        c, w = time.process_time() - c, time.perf_counter() - w
        label = f"{count} MNIST, {prior.kind} ({'basis' if prior.kind == 'gaussian' else 'raw'}, d = {x.shape[1]}, " \
                f"{'plan' if f.plan is not None else 'dense'})"
        yield label, f, c, w


def call(module, f, n: int):
    """A function making one fcn_keys call of draws [0, n) of block 1 through ``module``."""
    spec = f.spec
    out = np.empty((n, f.key_bytes), dtype=np.uint8)
    k0, k1 = block_key(spec.seed, 1)
    args = (out, f.xt, f.dims, f.scales, float(spec.prior.sigma_b), int(spec.prior.sigma_b > 0),
            int(spec.prior.kind == "uniform"), int(spec.output.kind == "argmax"), bits_per_label(f.classes), f.m,
            k0, k1, 0, n, f.isa, *(f.plan or ()))

    def run():
        if getattr(module, "SKIP_ZEROS", 0):  # as the sampler calls it (an older build has no such option)
            module.fcn_keys(*args, skip_zeros=f.skip_zeros)
        else:
            module.fcn_keys(*args)
        return out
    return run


def ab(label: str, base, f, n: int, reps: int, rounds: int) -> None:
    old, new = call(base, f, n), call(fused._fused, f, n)
    if not np.array_equal(old().copy(), new()):
        raise SystemExit(f"{label}: the two extensions give different keys")
    times: dict[str, list[float]] = {"base": [], "this tree": []}
    for _ in range(rounds):
        for name, fn in (("base", old), ("this tree", new)):
            c = time.process_time()
            for _ in range(reps):
                fn()
            times[name].append((time.process_time() - c) / reps)
    a, b = (float(np.median(t)) for t in times.values())
    print(f"  {label}, {n} draws/call: base {a * 1e6:,.1f} us, this tree {b * 1e6:,.1f} us, "
          f"difference {(b - a) * 1e6:+,.1f} us (median of {rounds} x {reps} calls)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist", default="", help="directory with the MNIST files (t10k-images-idx3-ubyte.gz, ...)")
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--base", default="", help="an older build of volume/_fused*.so to compare per-call costs with")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}; instruction set {fused.isas()[0]}")
    counts = [int(c) for c in args.counts.split(",") if c] if args.mnist else []
    base = None
    if args.base:
        spec = importlib.util.spec_from_file_location("_fused", args.base)
        base = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(base)
    print("FusedFCN construction:")
    built = []
    for count in counts:
        for label, f, c, w in mnist_samplers(args.mnist, count):
            print(f"  {label}: {c:.3f} CPU s, {w:.3f} s wall", flush=True)
            built.append((label, f))
    if base is not None:
        print("fcn_keys per call, the base extension against this tree's:")
        f = Sampler(ExperimentSpec.load(os.path.join(EXAMPLES, "boolean7.toml")), backend="compiled")._fused
        for n in (1, 16, 64):
            ab("boolean7 (plan)", base, f, n, 4000 // n, 7)
        for label, f in built:
            ab(label, base, f, 1, 5, 5)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
