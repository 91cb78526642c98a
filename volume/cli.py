"""The `volume` command line. Each group of subcommands lives in a module of
``volume.commands`` with a ``register(subparsers)`` function; this file only assembles
them and turns user errors (:class:`volume.errors.VolumeError`) into one-line messages
and exit status 2, without a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from volume import __version__
from volume.errors import Interrupted, VolumeError

# modules of the optional extras (pyproject.toml), and the extra that installs each
OPTIONAL_MODULES = {"torch": "run", "scipy": "run", "ray": "run", "h5py": "run", "matplotlib": "run", "tqdm": "run",
                    "fastapi": "run", "sklearn": "digits", "pandas": "notebook"}

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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="`volume COMMAND -h` describes each, with examples")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Interrupted as e:
        print(f"volume {args.command}: {e}", file=sys.stderr)
        return e.exit_status
    except VolumeError as e:
        print(f"volume {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = OPTIONAL_MODULES.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"volume {args.command}: error: this command needs {e.name!r}, which is not installed "
              f"(the base install is the client only): pip install 'volume[{extra}]'", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of the output went away (`volume info T --json | head`): not an error; send
        # what is left to /dev/null so that the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"volume {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
