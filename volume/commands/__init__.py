"""Subcommands of the `volume` command line, one module per group, each with ``register``.

:func:`add_command` gives every subcommand the same shape of help: a summary (the line in
`volume --help`), a description, examples, and each option's default.
"""

from __future__ import annotations

import argparse
import textwrap

TRAIN_HELP = ("training input indices, e.g. '0-63' or '0,5,9' or a mix (ranges inclusive). Input j of a Boolean "
              "cube is the bits of j, most significant first (the order of itertools.product([0, 1], repeat=n)); "
              "of an image set, the j-th image of the spec's subset (in increasing data-set index)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; '(default: X)' after options that have one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and default is not None and default is not False
                and default is not argparse.SUPPRESS and not action.required
                and "%(default)" not in text and "default" not in text):
            text += " (default: %(default)s)"
        return text


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, description: str = "",
                examples: list[str] | tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A subcommand whose help has ``summary`` (also its line in the parent's list),
    ``description`` and ``examples`` (shell lines)."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    paragraphs = [summary[:1].upper() + summary[1:] + "."] + [
        p if "\n" in p.strip() else textwrap.fill(p.strip(), 90) for p in description.strip().split("\n\n") if p.strip()]
    text = "\n\n".join(paragraphs)
    return sub.add_parser(name, help=summary, description=text, epilog=epilog, formatter_class=HelpFormatter)
