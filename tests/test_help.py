"""Every subcommand's help has a description, examples and defaults; every option a help line;
the examples parse; --train states the input order of the Boolean cube."""

import argparse
import shlex

import pytest

from volume.cli import build_parser


def _commands(parser, path=("volume",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))


COMMANDS = list(_commands(build_parser()))


@pytest.mark.parametrize("path, parser", COMMANDS[1:], ids=[" ".join(p) for p, _ in COMMANDS[1:]])
def test_help_is_complete(path, parser, capsys):
    assert parser.description and parser.epilog and parser.epilog.startswith("examples:"), path
    for action in parser._actions:
        assert action.help, f"{' '.join(path)} {action.option_strings or action.dest} has no help line"
    text = parser.format_help()
    if any(a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and not a.required
           and not isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        assert "(default:" in text or "default" in text
    top = build_parser()
    for line in parser.epilog.splitlines()[1:]:
        argv = shlex.split(line, comments=True)
        while argv and "=" in argv[0]:  # VAR=value prefixes
            argv.pop(0)
        assert argv[0] == "volume", line
        top.parse_args(argv[1:])  # the example is a valid command line


def test_train_states_the_input_order():
    for path, parser in COMMANDS:
        for action in parser._actions:
            if "--train" in action.option_strings:
                assert "most significant first" in action.help, path
