"""`volume experiment flatness-vs-volume CONFIG`: the flatness-vs-volume comparison
(volume.experiments.flatness_vs_volume); writes CSVs, plots and a summary to --out."""

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
