"""`volume info | prior | posterior | plot`: read a table and report estimates."""

from __future__ import annotations

import argparse
import json

import numpy as np

from volume.errors import VolumeError
from volume.estimate import entropy_bits, good_turing_unseen, posterior, prior_estimates, top_estimates
from volume.parsing import parse_indices, resolve_target
from volume.table import FrequencyTable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summary of a table: spec, draws, distinct functions, most frequent functions")
    p.add_argument("table")
    p.add_argument("--top", type=int, default=5, help="how many of the most frequent functions to list")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prior", help="P(f) with its interval for functions ('0'/'1' strings or hex keys)")
    p.add_argument("table")
    p.add_argument("functions", nargs="+", help="functions: one label character per input, or hex (0x...)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prior)

    p = sub.add_parser("posterior", help="zero-error posterior on a training set and the Bayesian generalization error")
    p.add_argument("table")
    p.add_argument("--train", default=None, help="training input indices: '0-63' or '0,5,9' or a mix")
    p.add_argument("--train-size", type=int, default=None, help="instead of --train: a random training set of this size")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the random training set")
    p.add_argument("--labels", default=None, help="training labels, one character per training index")
    p.add_argument("--target", default=None,
                   help="target function on all inputs: a rule (parity, majority, bit:i, ge5, even, class:k) or a "
                        "'0'/'1' string / 0x-hex; gives the training labels and the generalization error")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--delta", type=float, default=0.05, help="PAC-Bayes confidence parameter")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_posterior)

    p = sub.add_parser("plot", help="rank plot (P(f) against rank, log-log) and P(f) against LZ complexity")
    p.add_argument("table")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--max-lz", type=int, default=20000, help="plot LZ complexity of at most this many most frequent functions")
    p.set_defaults(func=cmd_plot)


def _print_estimates(rows, as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    for r in rows:
        mark = "" if r.seen else "  (never seen: upper bound)"
        print(f"{r.function}  n={r.count}/{r.n_samples}  P={r.p:.4g}  "
              f"{100 * r.confidence:g}% CI [{r.lower:.4g}, {r.upper:.4g}]  LZ={r.lz_complexity:.1f}{mark}")


def cmd_info(args) -> int:
    table = FrequencyTable.load(args.table)
    info = table.info()
    if table.n_samples:
        info["good_turing_unseen_mass"] = good_turing_unseen(table)
        info["entropy_bits"] = entropy_bits(table)
        info["top"] = [r.to_dict() for r in top_estimates(table, args.top)]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"table       {args.table}")
    print(f"spec_id     {info['spec_id']}  {info['name']}")
    print(f"spec        {json.dumps(info['spec'], sort_keys=True)}")
    print(f"draws       {info['n_samples']}  in {info['n_blocks']} blocks")
    print(f"distinct    {info['n_distinct']} functions on {info['n_inputs']} inputs, {info['singletons']} seen once")
    if table.n_samples:
        print(f"unseen mass {info['good_turing_unseen_mass']:.4g} (Good-Turing N1/N)")
        print(f"entropy     {info['entropy_bits']['plugin']:.3f} bits (plug-in), "
              f"{info['entropy_bits']['miller_madow']:.3f} (Miller-Madow)")
        print("most frequent:")
        _print_estimates(top_estimates(table, args.top), False)
    return 0


def cmd_prior(args) -> int:
    table = FrequencyTable.load(args.table)
    _print_estimates(prior_estimates(table, args.functions, args.confidence), args.json)
    return 0


def cmd_posterior(args) -> int:
    table = FrequencyTable.load(args.table)
    if (args.train is None) == (args.train_size is None):
        raise VolumeError("give exactly one of --train INDICES or --train-size K")
    if args.train is not None:
        idx = parse_indices(args.train, table.n_inputs, "--train")
    else:
        if not 1 <= args.train_size < table.n_inputs:
            raise VolumeError(f"--train-size must lie in 1..{table.n_inputs - 1}")
        idx = np.sort(np.random.default_rng(args.train_seed).choice(table.n_inputs, args.train_size, replace=False))
    target = resolve_target(table, args.target) if args.target else None
    if args.labels is not None:
        labels = args.labels
    elif target is not None:
        labels = target[idx]
    else:
        raise VolumeError("give the training labels (--labels) or a target (--target) that provides them")
    res = posterior(table, idx, labels, target, confidence=args.confidence, delta=args.delta, top=args.top)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    print(f"training set  {res.train_size} inputs, test {res.test_size}")
    print(f"P(U)          {res.p_u:.4g}  {100 * res.confidence:g}% CI [{res.p_u_lower:.4g}, {res.p_u_upper:.4g}]  "
          f"({res.n_consistent} of {res.n_samples} draws, {res.n_consistent_functions} distinct functions)")
    if res.expected_error is not None:
        print(f"gen. error    {res.expected_error:.4f} +- {res.expected_error_stderr:.4f} (posterior mean, standard error)")
    if res.pac_bayes_bound is not None:
        print(f"PAC-Bayes     {res.pac_bayes_bound:.4f} (conservative: {res.pac_bayes_bound_conservative:.4f})")
    for entry in res.top:
        err = f"  error={entry['error']:.4f}" if "error" in entry else ""
        print(f"  {entry['function']}  P(f|S)={entry['posterior']:.4g}  n={entry['count']}{err}")
    return 0


def cmd_plot(args) -> int:
    from volume.plot import rank_plot

    table = FrequencyTable.load(args.table)
    rank_plot(table, args.output, max_lz=args.max_lz)
    print(f"wrote {args.output}")
    return 0
