"""`volume experiment flatness-vs-volume CONFIG`: the flatness-vs-volume comparison
(volume.experiments.flatness_vs_volume); writes CSVs, plots and a summary to --out."""

from __future__ import annotations

import json
from pathlib import Path

from volume.commands import add_command


def register(subparsers) -> None:
    p = add_command(subparsers, "experiment", "run a packaged experiment",
                    "flatness-vs-volume is the one packaged experiment; `volume experiment flatness-vs-volume -h` "
                    "describes it.", ["volume experiment flatness-vs-volume examples/flatness_small.toml"])
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", help="the experiment to run")
    sub.required = True
    f = add_command(sub, "flatness-vs-volume",
                    "train networks, measure flatness and log P(f) at the minima, alpha-rescale, correlate",
                    "Writes results.csv (one row per trained network), correlations.csv (Kendall and Spearman of "
                    "each measure with the test error, before and after rescaling), plots and summary.json to --out.",
                    ["volume experiment flatness-vs-volume examples/flatness_small.toml --out results/small",
                     "volume experiment flatness-vs-volume examples/flatness.toml --quiet"])
    f.add_argument("config", help="experiment TOML (examples/flatness.toml, examples/flatness_small.toml)")
    f.add_argument("--out", default=None, help="output directory (default: results/<config name>)")
    f.add_argument("--quiet", action="store_true", help="print only the summary")
    f.set_defaults(func=_flatness)


def _flatness(args) -> int:
    from volume.experiments.config import FlatnessConfig
    from volume.experiments.flatness_vs_volume import run

    config = FlatnessConfig.load(args.config)
    out = Path(args.out) if args.out else Path("results") / config.name
    summary = run(config, out, log=(lambda s: None) if args.quiet else (lambda s: print(s, flush=True)))
    print(json.dumps(summary, indent=2))
    print(f"outputs in {out}")
    return 0
