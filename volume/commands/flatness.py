"""`volume experiment flatness-vs-volume CONFIG` (volume.experiments.flatness_vs_volume) and
`volume experiment sgd-vs-bayes CONFIG` (volume.experiments.sgd_vs_bayes): each writes CSVs,
strict JSON, plots and report.md to --out."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from volume.commands import add_command
from volume.experiments.output import dumps


def _command(args) -> str:
    return "volume " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("volume") else \
        f"volume experiment {args.experiment} {args.config}" + (f" --out {args.out}" if args.out else "")


EXPERIMENTS = {  # name: (help, example configs, module with the config class and run)
    "flatness-vs-volume": ("train networks (optionally with attack sets), measure flatness and log P(f) at the "
                           "minima, alpha-rescale, correlate with test error",
                           "examples/flatness.toml, examples/attack_mnist.toml, examples/attack_small.toml",
                           "volume.experiments.flatness_vs_volume", "volume.experiments.config:FlatnessConfig"),
    "sgd-vs-bayes": ("functions an optimizer finds (P_opt(f|S)) against the Bayesian posterior P(f|S)",
                     "examples/sgd_vs_bayes_boolean.toml, examples/sgd_vs_bayes_small.toml",
                     "volume.experiments.sgd_vs_bayes", "volume.experiments.sgd_vs_bayes:SgdBayesConfig"),
}


def register(subparsers) -> None:
    p = add_command(subparsers, "experiment", "run a packaged experiment",
                    "flatness-vs-volume (with optional attack sets) and sgd-vs-bayes; `volume experiment NAME -h` "
                    "describes each.", ["volume experiment flatness-vs-volume examples/flatness_small.toml",
                                        "volume experiment sgd-vs-bayes examples/sgd_vs_bayes_small.toml"])
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", help="the experiment to run")
    sub.required = True
    for name, (help_, examples, _, _) in EXPERIMENTS.items():
        f = add_command(sub, name, help_,
                        "Writes CSV, strict JSON (missing values are null), PNG plots and report.md (its figures "
                        f"and the config that made them) to --out. Example configs: {examples}.",
                        [f"volume experiment {name} {examples.split(', ')[-1]} --out results/{name}"])
        f.add_argument("config", help=f"experiment TOML ({examples})")
        f.add_argument("--out", default=None, help="output directory (default: results/<config name>)")
        f.add_argument("--quiet", action="store_true", help="print only the summary")
        f.set_defaults(func=_run)


def _run(args) -> int:
    import importlib

    _, _, module, config_path = EXPERIMENTS[args.experiment]
    cfg_module, cls = config_path.split(":")
    config = getattr(importlib.import_module(cfg_module), cls).load(args.config)
    out = Path(args.out) if args.out else Path("results") / config.name
    summary = importlib.import_module(module).run(
        config, out, log=(lambda s: None) if args.quiet else (lambda s: print(s, flush=True)), command=_command(args))
    print(dumps({k: v for k, v in summary.items() if k != "correlations"}))
    print(f"outputs in {out}")
    return 0
