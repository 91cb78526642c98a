"""`volume gp logp | kernel | posterior`: the Gaussian-process (NNGP) estimates of P(f)."""

from __future__ import annotations

import argparse
import functools
import json
import math

from volume.commands import TRAIN_HELP, add_command
from volume.errors import VolumeError
from volume.spec import ExperimentSpec

METHOD_CHOICES = ("auto", "ep", "ep-is", "ep-sis", "tilting")  # volume.gp.score.METHODS (not imported: scipy)


def _kernel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", choices=("analytic", "empirical"), default="analytic",
                   help="analytic NNGP (FCN, or CNN with pool avg/none; relu/erf) or Monte-Carlo empirical kernel (any spec)")
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
    gp = add_command(sub, "gp", "GP (NNGP kernel + expectation propagation) estimates of log P(f)",
                     "For input sets too large to count functions on: the network's Gaussian-process limit gives "
                     "P(f) = P(sign z = f), z ~ N(0, K), estimated by expectation propagation.",
                     ["volume gp logp examples/digits.toml --labels ge5", "volume gp kernel examples/digits.toml -o K.h5",
                      "volume gp posterior examples/digits.toml --train 0-99 --target ge5"])
    gsub = gp.add_subparsers(dest="gp_command", metavar="GP_COMMAND", help="what to estimate")
    gsub.required = True

    p = add_command(gsub, "logp", "log P(f) of a labelling (or many) of the spec's inputs, with its error bar",
                    "By default EP-guided sequential importance sampling (EP-SIS) with its standard error, effective "
                    "sample size and Pareto k-hat, falling back visibly to minimax tilting and then to EP marked "
                    "unreliable; --table or --labels-file score many labellings with one kernel.",
                    ["volume gp logp examples/boolean7.toml --labels parity",
                     "volume gp logp examples/mnist1000.toml --labels ge5 --samples 4096",
                     "volume gp logp examples/boolean7.toml --table boolean7.h5 --top 20 --json",
                     "volume gp logp examples/digits.toml --labels @labels.txt --kernel-file K.h5 --json"])
    p.add_argument("spec", help="spec file (.toml or .json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels",
                     help="'0'/'1' string (one per input), hex key (0x...), target rule (parity, ge5, ...) or @FILE")
    src.add_argument("--table", help="score every function counted in this table (HDF5) of the same input set")
    src.add_argument("--labels-file", help="score every labelling in this text file, one per line (any --labels form)")
    p.add_argument("--method", choices=METHOD_CHOICES, default=None,
                   help="auto (default: EP-guided sequential importance sampling, falling back visibly), ep, "
                        "ep-is, ep-sis or tilting")
    p.add_argument("--samples", type=int, default=None, help="draws of the Monte-Carlo method (default 2048)")
    p.add_argument("--likelihood", choices=("heaviside", "probit"), default="heaviside",
                   help="site likelihood: the step function of P(sign z = f), or a probit")
    p.add_argument("--importance-samples", type=int, default=0,
                   help="EP + importance sampling with N samples (same as --method ep-is --samples N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws")
    p.add_argument("--top", type=int, default=None, help="with --table: only the K most frequent functions")
    _kernel_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (a list with --table/--labels-file)")
    p.set_defaults(func=cmd_logp)

    p = add_command(gsub, "kernel", "compute the kernel of a spec and write it to HDF5",
                    "Reuse it with --kernel-file; the file records the spec and is refused for another.",
                    ["volume gp kernel examples/mnist1000.toml -o K.h5",
                     "volume gp kernel SPEC --kernel empirical --kernel-samples 100000 --ray --address auto -o K.h5"])
    p.add_argument("spec", help="spec file (.toml or .json)")
    p.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    p.add_argument("--kernel", choices=("analytic", "empirical"), default="analytic",
                   help="analytic NNGP (FCN, or CNN with pool avg/none; relu/erf) or Monte-Carlo empirical kernel (any spec)")
    p.add_argument("--kernel-samples", type=int, default=1024, help="networks for the empirical kernel")
    p.add_argument("--seed", type=int, default=None, help="seed of the empirical kernel's networks (default: spec.seed)")
    _ray_args(p)
    p.set_defaults(func=cmd_kernel)

    p = add_command(gsub, "posterior", "GP P(U) on a training set, predictions, generalization error, PAC-Bayes bound",
                    "P(U) = P(sign z_S = f_S) by EP on the training inputs; predictions on the others from the EP "
                    "posterior; the expected error against --target and the PAC-Bayes bound from ln P(U).",
                    ["volume gp posterior examples/mnist1000.toml --train 0-499 --target ge5",
                     "volume gp posterior examples/boolean7.toml --train 0-63 --target @target.txt --json"])
    p.add_argument("spec", help="spec file (.toml or .json)")
    p.add_argument("--train", required=True, help=TRAIN_HELP)
    p.add_argument("--target", required=True,
                   help="target labelling of all inputs (rule, '0'/'1' string, hex or @FILE); gives the training labels")
    p.add_argument("--likelihood", choices=("heaviside", "probit"), default="heaviside",
                   help="EP site likelihood: the step function of P(sign z = f), or a probit")
    p.add_argument("--delta", type=float, default=0.05, help="PAC-Bayes confidence parameter")
    p.add_argument("--method", choices=METHOD_CHOICES, default="auto", help="how ln P(U) is estimated (default auto)")
    p.add_argument("--samples", type=int, default=None, help="draws of the Monte-Carlo method (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws")
    _kernel_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_posterior)


def _kernel(args, spec: ExperimentSpec, inputs):
    if args.kernel_file:
        from volume.gp.store import load_kernel

        return load_kernel(args.kernel_file, spec)[0]
    from volume.gp.kernels import spec_kernel

    kw = {} if args.kernel == "analytic" else {"n_networks": args.kernel_samples, "map_fn": _map_fn(args)}
    return spec_kernel(spec, args.kernel, inputs, **kw)[0]


def _describe(res) -> list[str]:
    """Human-readable lines for one GPLogPrior."""
    if res.impossible:
        return [f"log P(f) = -inf: {res.reason}"]
    se = "no error bar" if res.stderr is None else f"+- {res.stderr:.2g} (standard error)"
    lines = [f"log P(f) = {res.log_p:.6g} {se}  (log10 P = {res.log_p / math.log(10):.6g}), method {res.method}"]
    if not res.reliable:
        lines.append(f"  WARNING: not reliable: {res.reason}")
    elif res.reason:
        lines.append(f"  note: {res.reason}")
    dg = res.diagnostics
    if res.method in ("ep-sis", "tilting", "ep-is") and "ess" in dg:
        k = dg.get("pareto_k")
        lines.append(f"  {res.samples} draws, ESS {dg['ess']:.1f}" + ("" if k is None else f", Pareto k-hat {k:.2f}")
                     + (f", upper bound {dg['upper_bound']:.6g}" if dg.get("upper_bound") is not None else ""))
    if res.log_p_ep is not None:
        lines.append(f"  EP: {res.log_p_ep:.6g}, {res.iterations} iterations, converged={res.converged}, "
                     f"jitter={res.jitter:.3g}")
    lines.append(f"  {res.n_inputs} inputs ({res.n_deterministic} deterministic, {res.n_duplicates} duplicated), "
                 f"likelihood={res.likelihood}, kernel={res.kernel}")
    return lines


def cmd_logp(args) -> int:
    from volume.gp.estimate import log_prior, log_prior_many
    from volume.inputs import load_inputs, resolve_labels

    spec = ExperimentSpec.load(args.spec)
    if args.importance_samples < 0:
        raise VolumeError("--importance-samples must be >= 0")
    if args.samples is not None and args.samples < 2:
        raise VolumeError("--samples must be an integer >= 2")
    if args.importance_samples and args.method not in (None, "ep-is"):
        raise VolumeError("--importance-samples asks for --method ep-is; use --samples with other methods")
    inputs = load_inputs(spec.inputs)
    K = _kernel(args, spec, inputs) if args.kernel_file else None
    kw = dict(likelihood=args.likelihood, seed=args.seed, kernel=args.kernel, kernel_matrix=K,
              kernel_samples=args.kernel_samples, map_fn=_map_fn(args), samples=args.samples)
    if args.labels is not None:
        labels = resolve_labels(args.labels, inputs, allow_file=True)
        res = log_prior(spec, labels, importance_samples=args.importance_samples, method=args.method, **kw)
        if args.json:
            print(json.dumps(res.to_dict(), indent=2, sort_keys=True))
        else:
            print("\n".join(_describe(res)))
        return 0
    if args.importance_samples:
        kw["samples"] = args.samples or args.importance_samples
    many = _batch_labels(args, spec)
    results = log_prior_many(spec, many, method=args.method or ("ep-is" if args.importance_samples else "auto"),
                             score_map_fn=_map_fn(args), **kw)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, sort_keys=True))
        return 0
    print(f"{'#':>5} {'log_p':>12} {'stderr':>8} {'method':>8} {'ESS':>8}  reliable")
    for i, r in enumerate(results):
        se = "-" if r.stderr is None else f"{r.stderr:.3g}"
        ess = r.diagnostics.get("ess")
        lp = "-inf" if r.impossible else f"{r.log_p:.6g}"
        print(f"{i:>5} {lp:>12} {se:>8} {r.method:>8} {'-' if ess is None else f'{ess:.0f}':>8}  "
              f"{'yes' if r.reliable else 'NO: ' + r.reason}")
    return 0


def _batch_labels(args, spec):
    """The labellings of --table (most frequent first, --top of them) or --labels-file (one per line)."""
    from pathlib import Path

    from volume.inputs import load_inputs
    from volume.gp.estimate import labellings

    if args.table:
        from volume.table import FrequencyTable

        table = FrequencyTable.load(args.table)
        rows = labellings(table, load_inputs(spec.inputs))
        return rows[:args.top] if args.top else rows
    p = Path(args.labels_file)
    if not p.is_file():
        raise VolumeError(f"--labels-file {args.labels_file!r} does not exist: give a text file, one labelling per line")
    lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise VolumeError(f"--labels-file {args.labels_file!r} holds no labelling (one per line; '#' starts a comment)")
    return lines


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
    from volume.parsing import parse_indices
    from volume.gp.posterior import gp_posterior
    from volume.inputs import load_inputs, resolve_labels

    spec = ExperimentSpec.load(args.spec)
    inputs = load_inputs(spec.inputs)
    target = resolve_labels(args.target, inputs, allow_file=True)
    train = parse_indices(args.train, inputs.n_inputs, "--train")
    if args.samples is not None and args.samples < 2:
        raise VolumeError("--samples must be an integer >= 2")
    res = gp_posterior(_kernel(args, spec, inputs), train, target[train], target,
                       likelihood=args.likelihood, delta=args.delta, method=args.method, samples=args.samples,
                       seed=args.seed)
    d = res.to_dict()
    if args.json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0
    print(f"training set: {res.train_size} inputs, test: {res.test_size}")
    se = "no error bar" if res.log_p_u_stderr is None else f"+- {res.log_p_u_stderr:.2g}"
    print(f"log P(U) = {res.log_p_u:.6g} {se} (method {res.log_p_u_method}; EP {res.log_p_u_ep:.6g}, "
          f"{res.iterations} iterations, converged={res.converged})")
    if not res.log_p_u_reliable:
        print(f"  WARNING: not reliable: {res.log_p_u_reason}")
    if res.expected_error is not None:
        print(f"expected generalization error {res.expected_error:.4f}, error of the predicted labels {res.predicted_error:.4f}")
    if res.pac_bayes_bound is not None:
        print(f"PAC-Bayes bound (delta={res.delta}): {res.pac_bayes_bound:.4f}")
    return 0
