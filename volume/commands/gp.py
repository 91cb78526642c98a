"""`volume gp logp | kernel | posterior`: the Gaussian-process (NNGP) estimates of P(f)."""

from __future__ import annotations

import argparse
import functools
import json
import math

from volume.errors import VolumeError
from volume.spec import ExperimentSpec


def _kernel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", choices=("analytic", "empirical"), default="analytic",
                   help="analytic NNGP (FCN, relu/erf) or Monte-Carlo empirical kernel (any spec)")
    p.add_argument("--kernel-samples", type=int, default=1024, help="networks for the empirical kernel")
    p.add_argument("--kernel-file", default=None, help="use a kernel saved by `volume gp kernel` instead")
    _ray_args(p)


def _ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", action="store_true",
                   help="compute the empirical kernel's blocks as Ray tasks (a local instance unless --address)")
    p.add_argument("--address", default=None, help="Ray cluster for --ray: auto, HOST:6379 or ray://HOST:10001")


def _map_fn(args):
    """``volume.jobs.ray_map`` bound to the chosen cluster when --ray/--address is given, else None
    (blocks are computed in this process). The kernel is the same either way."""
    if not (args.ray or args.address):
        return None
    from volume.jobs import ray_map

    return functools.partial(ray_map, address=args.address)


def register(sub: argparse._SubParsersAction) -> None:
    gp = sub.add_parser("gp", help="GP (NNGP kernel + expectation propagation) estimates of log P(f)")
    gsub = gp.add_subparsers(dest="gp_command", metavar="GP_COMMAND")
    gsub.required = True

    p = gsub.add_parser("logp", help="log P(f) of a labelling of the spec's inputs by EP")
    p.add_argument("spec", help="spec file (.toml or .json)")
    p.add_argument("--labels", required=True,
                   help="'0'/'1' string (one per input), hex key (0x...), target rule (parity, ge5, ...) or @FILE")
    p.add_argument("--likelihood", choices=("heaviside", "probit"), default="heaviside")
    p.add_argument("--importance-samples", type=int, default=0, help="importance-sampling correction with N samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    _kernel_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_logp)

    p = gsub.add_parser("kernel", help="compute the kernel of a spec and write it to HDF5")
    p.add_argument("spec")
    p.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    p.add_argument("--kernel", choices=("analytic", "empirical"), default="analytic")
    p.add_argument("--kernel-samples", type=int, default=1024, help="networks for the empirical kernel")
    p.add_argument("--seed", type=int, default=None, help="seed of the empirical kernel's networks (default: spec.seed)")
    _ray_args(p)
    p.set_defaults(func=cmd_kernel)

    p = gsub.add_parser("posterior", help="GP P(U) on a training set, predictions, generalization error, PAC-Bayes bound")
    p.add_argument("spec")
    p.add_argument("--train", required=True, help="training input indices: '0-63' or '0,5,9' or a mix")
    p.add_argument("--target", required=True,
                   help="target labelling of all inputs (rule, '0'/'1' string, hex or @FILE); gives the training labels")
    p.add_argument("--likelihood", choices=("heaviside", "probit"), default="heaviside")
    p.add_argument("--delta", type=float, default=0.05, help="PAC-Bayes confidence parameter")
    _kernel_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_posterior)


def _kernel(args, spec: ExperimentSpec, inputs):
    if args.kernel_file:
        from volume.gp.store import load_kernel

        return load_kernel(args.kernel_file, spec)[0]
    from volume.gp.kernels import spec_kernel

    kw = {} if args.kernel == "analytic" else {"n_networks": args.kernel_samples, "map_fn": _map_fn(args)}
    return spec_kernel(spec, args.kernel, inputs, **kw)[0]


def cmd_logp(args) -> int:
    from volume.gp.estimate import log_prior
    from volume.inputs import load_inputs

    spec = ExperimentSpec.load(args.spec)
    if args.importance_samples < 0:
        raise VolumeError("--importance-samples must be >= 0")
    K = _kernel(args, spec, load_inputs(spec.inputs)) if args.kernel_file else None
    res = log_prior(spec, args.labels, likelihood=args.likelihood, importance_samples=args.importance_samples,
                    seed=args.seed, kernel=args.kernel, kernel_matrix=K, kernel_samples=args.kernel_samples,
                    map_fn=_map_fn(args))
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, sort_keys=True))
        return 0
    if res.impossible:
        print("log P(f) = -inf: f labels 1 an input whose output is always 0 (zero prior variance)")
        return 0
    print(f"log P(f) = {res.log_p:.6g}  (log10 P = {res.log_p / math.log(10):.6g})")
    print(f"  EP: {res.log_p_ep:.6g}, {res.iterations} iterations, converged={res.converged}, jitter={res.jitter:.3g}, "
          f"{res.n_inputs} inputs ({res.n_deterministic} deterministic), likelihood={res.likelihood}, kernel={res.kernel}")
    if res.importance_samples:
        if res.is_correction is None:
            print(f"  importance sampling: no sample of {res.importance_samples} had weight; EP value kept")
        else:
            print(f"  importance sampling: correction {res.is_correction:+.4g} +- {res.is_stderr:.2g} (stderr), "
                  f"ESS {res.is_ess:.1f} of {res.importance_samples}, accepted {res.is_accepted:.3f}")
    return 0


def cmd_kernel(args) -> int:
    from volume.gp.kernels import spec_kernel
    from volume.gp.store import save_kernel

    spec = ExperimentSpec.load(args.spec)
    kw = {} if args.kernel == "analytic" else {"n_networks": args.kernel_samples, "seed": args.seed,
                                               "map_fn": _map_fn(args)}
    K, stderr, meta = spec_kernel(spec, args.kernel, None, **kw)
    save_kernel(args.output, spec, K, meta, stderr)
    print(f"wrote {args.kernel} kernel {K.shape[0]}x{K.shape[1]} of spec {spec.spec_id} to {args.output}")
    return 0


def cmd_posterior(args) -> int:
    from volume.gp.estimate import resolve_labels
    from volume.parsing import parse_indices
    from volume.gp.posterior import gp_posterior
    from volume.inputs import load_inputs

    spec = ExperimentSpec.load(args.spec)
    inputs = load_inputs(spec.inputs)
    target = resolve_labels(args.target, inputs)
    train = parse_indices(args.train, inputs.n_inputs, "--train")
    res = gp_posterior(_kernel(args, spec, inputs), train, target[train], target,
                       likelihood=args.likelihood, delta=args.delta)
    d = res.to_dict()
    if args.json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0
    print(f"training set: {res.train_size} inputs, test: {res.test_size}")
    print(f"log P(U) = {res.log_p_u:.6g} (EP, {res.iterations} iterations, converged={res.converged})")
    if res.expected_error is not None:
        print(f"expected generalization error {res.expected_error:.4f}, error of the predicted labels {res.predicted_error:.4f}")
    if res.pac_bayes_bound is not None:
        print(f"PAC-Bayes bound (delta={res.delta}): {res.pac_bayes_bound:.4f}")
    return 0
