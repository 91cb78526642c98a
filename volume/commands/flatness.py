"""`volume experiment flatness-vs-volume CONFIG` (volume.experiments.flatness_vs_volume) and
`volume experiment sgd-vs-bayes CONFIG` (volume.experiments.sgd_vs_bayes): each writes CSVs,
strict JSON, plots and report.md to --out."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from volume.experiments.output import dumps


def _command(args) -> str:
    return "volume " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("volume") else \
        f"volume experiment {args.experiment} {args.config}" + (f" --out {args.out}" if args.out else "")


def register(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="run a packaged experiment")
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    sub.required = True
    f = sub.add_parser("flatness-vs-volume",
                       help="train networks, measure flatness and log P(f) at the minima, alpha-rescale, correlate")
    f.add_argument("config", help="experiment TOML (examples/flatness.toml, examples/flatness_small.toml)")
    f.add_argument("--out", default=None, help="output directory (default: results/<config name>)")
    f.add_argument("--quiet", action="store_true", help="print only the summary")
    f.set_defaults(func=_flatness)
    g = sub.add_parser("sgd-vs-bayes",
                       help="functions an optimizer finds (P_opt(f|S)) against the Bayesian posterior P(f|S)")
    g.add_argument("config", help="experiment TOML (examples/sgd_vs_bayes_boolean.toml, examples/sgd_vs_bayes_small.toml)")
    g.add_argument("--out", default=None, help="output directory (default: results/<config name>)")
    g.add_argument("--quiet", action="store_true", help="print only the summary")
    g.set_defaults(func=_sgd_vs_bayes)


def _flatness(args) -> int:
    from volume.experiments.config import FlatnessConfig
    from volume.experiments.flatness_vs_volume import run

    config = FlatnessConfig.load(args.config)
    out = Path(args.out) if args.out else Path("results") / config.name
    summary = run(config, out, log=(lambda s: None) if args.quiet else (lambda s: print(s, flush=True)),
                  command=_command(args))
    print(dumps({k: v for k, v in summary.items() if k != "correlations"}))
    print(f"outputs in {out}")
    return 0


def _sgd_vs_bayes(args) -> int:
    from volume.experiments.sgd_vs_bayes import SgdBayesConfig, run

    config = SgdBayesConfig.load(args.config)
    out = Path(args.out) if args.out else Path("results") / config.name
    summary = run(config, out, log=(lambda s: None) if args.quiet else (lambda s: print(s, flush=True)),
                  command=_command(args))
    print(dumps(summary))
    print(f"outputs in {out}")
    return 0
