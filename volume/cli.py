"""The `volume` command line. Each group of subcommands lives in a module of
``volume.commands`` with a ``register(subparsers)`` function; this file only assembles
them and turns user errors (:class:`volume.errors.VolumeError`) into one-line messages
and exit status 2, without a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from volume import __version__
from volume.errors import VolumeError

COMMAND_MODULES = [
    "volume.commands.sample",
    "volume.commands.core",
    "volume.commands.serve",
    "volume.commands.flatness",
    "volume.commands.gp",
    "volume.commands.logp",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volume",
        description="Monte-Carlo estimates of the prior P(f) over the functions neural networks compute.",
    )
    parser.add_argument("--version", action="version", version=f"volume {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VolumeError as e:
        print(f"volume {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"volume {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
