"""`volume info | prior | posterior | plot`: read a table and report estimates."""

from __future__ import annotations

import argparse
import json

import numpy as np

from volume.commands import TRAIN_HELP, add_command
from volume.errors import VolumeError
from volume.parsing import parse_indices


TABLE_HELP = "a table written by `volume sample` (.h5)"
CONFIDENCE_HELP = "confidence level of the intervals (Wilson score; the one-sided bound for unseen functions)"
JSON_HELP = "machine-readable output (JSON on stdout)"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "info", "summary of a table: spec, draws, distinct functions, most frequent functions",
                    "Also the Good-Turing unseen mass N1/N and the entropy of the functions drawn (plug-in and "
                    "Miller-Madow), in bits.",
                    ["volume info boolean7.h5", "volume info boolean7.h5 --top 20 --json"])
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("--top", type=int, default=5, help="how many of the most frequent functions to list")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_info)

    p = add_command(sub, "prior", "P(f) with its interval for functions ('0'/'1' strings or hex keys)",
                    "P(f) = n_f / N with a Wilson interval; for a function never drawn, 0 and the upper bound "
                    "1 - (1 - confidence)^(1/N) (about 3/N at 95%).",
                    ["volume prior boolean7.h5 " + "0" * 16 + "...  (128 characters, one per input)",
                     "volume prior boolean7.h5 0x" + "00" * 15 + "ff --json"])
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("functions", nargs="+",
                   help="functions: one label character per input (input order as in --train of `volume posterior`), "
                        "or a hex key 0x... (the labels packed 8 to a byte, first input in the top bit)")
    p.add_argument("--confidence", type=float, default=0.95, help=CONFIDENCE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_prior)

    p = add_command(sub, "posterior", "zero-error posterior on a training set and the Bayesian generalization error",
                    "U(S) is the set of functions that agree with the training set S. Reports P(U) with its "
                    "interval, P(f|S) = n_f/n_U of the most probable consistent functions, and with a target the "
                    "posterior-mean generalization error on the inputs outside S (with its standard error and "
                    "distribution) and the PAC-Bayes bound of Valle-Perez et al. (2019).",
                    ["volume posterior boolean7.h5 --train 0-63 --target parity",
                     "volume posterior boolean7.h5 --train-size 32 --train-seed 1 --target majority --json",
                     "volume posterior digits.h5 --train 0-19 --target ge5",
                     "volume posterior boolean7.h5 --train 0-7 --labels 00010111"])
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("--train", default=None, help=TRAIN_HELP + " (default for a table of optimizer-found functions: "
                   "its spec's training set and target)")
    p.add_argument("--train-size", type=int, default=None, help="instead of --train: a random training set of this size")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the random training set of --train-size")
    p.add_argument("--labels", default=None, help="training labels, one character per training index (else from --target)")
    p.add_argument("--target", default=None,
                   help="target function on all inputs: a rule (Boolean: parity, majority, bit:i; images: ge5, even, "
                        "class:k; both: zero, one), a '0'/'1' string, a 0x-hex key, or @FILE holding one of these; "
                        "gives the training labels and the generalization error")
    p.add_argument("--top", type=int, default=5, help="how many of the most probable consistent functions to list")
    p.add_argument("--confidence", type=float, default=0.95, help=CONFIDENCE_HELP + " of P(U)")
    p.add_argument("--delta", type=float, default=0.05, help="PAC-Bayes confidence parameter (the bound holds "
                                                              "with probability 1 - delta)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_posterior)

    p = add_command(sub, "plot", "rank plot (P(f) against rank, log-log) and P(f) against LZ complexity",
                    "The image format follows the file name's extension (.png, .pdf, .svg ...); the directory "
                    "must exist.",
                    ["volume plot boolean7.h5 -o rank.png", "volume plot boolean7.h5 -o rank.pdf --max-lz 5000"])
    p.add_argument("table", help=TABLE_HELP)
    p.add_argument("-o", "--output", required=True, help="image file (.png, .pdf, .svg, ...)")
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
    from volume.estimate import entropy_bits, good_turing_unseen, top_estimates
    from volume.table import FrequencyTable

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
    if "n_failed" in info:
        print(f"trainings   {info['n_trainings']}: {info['n_samples']} reached zero training error and are counted, "
              f"{info['n_failed']} did not")
    if table.n_samples:
        print(f"unseen mass {info['good_turing_unseen_mass']:.4g} (Good-Turing N1/N)")
        print(f"entropy     {info['entropy_bits']['plugin']:.3f} bits (plug-in), "
              f"{info['entropy_bits']['miller_madow']:.3f} (Miller-Madow)")
        print("most frequent:")
        _print_estimates(top_estimates(table, args.top), False)
    return 0


def cmd_prior(args) -> int:
    from volume.estimate import prior_estimates
    from volume.table import FrequencyTable

    table = FrequencyTable.load(args.table)
    _print_estimates(prior_estimates(table, args.functions, args.confidence), args.json)
    return 0


def cmd_posterior(args) -> int:
    from volume.estimate import posterior
    from volume.table import FrequencyTable

    table = FrequencyTable.load(args.table)
    tr = table.spec.training
    if tr is not None and args.train is None and args.train_size is None:
        args.train = ",".join(str(i) for i in tr.train_indices)  # an optimizer table's own training set
        args.target = args.target or tr.target
    if (args.train is None) == (args.train_size is None):
        raise VolumeError("give exactly one of --train INDICES or --train-size K")
    if args.train is not None:
        idx = parse_indices(args.train, table.n_inputs, "--train")
    else:
        if not 1 <= args.train_size < table.n_inputs:
            raise VolumeError(f"--train-size must lie in 1..{table.n_inputs - 1}")
        idx = np.sort(np.random.default_rng(args.train_seed).choice(table.n_inputs, args.train_size, replace=False))
    target = None
    if args.target:
        from volume.inputs import resolve_labels

        target = resolve_labels(args.target, table.spec, table.classes, allow_file=True)
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
    if res.kind == "optimizer":
        print(f"optimizer     {res.n_samples} of {res.n_samples + res.n_failed} trainings reached zero training error "
              f"({res.n_failed} did not: not counted), {res.n_consistent_functions} distinct functions")
    else:
        print(f"P(U)          {res.p_u:.4g}  {100 * res.confidence:g}% CI [{res.p_u_lower:.4g}, {res.p_u_upper:.4g}]  "
              f"({res.n_consistent} of {res.n_samples} draws, {res.n_consistent_functions} distinct functions)")
    if res.expected_error is not None:
        what = "optimizer's mean over P_opt(f|S)" if res.kind == "optimizer" else "posterior mean"
        print(f"gen. error    {res.expected_error:.4f} +- {res.expected_error_stderr:.4f} ({what}, standard error)")
    if res.pac_bayes_bound is not None:
        print(f"PAC-Bayes     {res.pac_bayes_bound:.4f} (conservative: {res.pac_bayes_bound_conservative:.4f})")
    for note in res.notes:
        print(f"note          {note}")
    name = "P_opt(f|S)" if res.kind == "optimizer" else "P(f|S)"
    for entry in res.top:
        err = f"  error={entry['error']:.4f}" if "error" in entry else ""
        print(f"  {entry['function']}  {name}={entry['posterior']:.4g}  n={entry['count']}{err}")
    return 0


def cmd_plot(args) -> int:
    from volume.plot import rank_plot
    from volume.table import FrequencyTable

    table = FrequencyTable.load(args.table)
    rank_plot(table, args.output, max_lz=args.max_lz)
    print(f"wrote {args.output}")
    return 0
