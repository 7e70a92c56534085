"""opctl builds only the part of its parser a command line needs, and says the same.

`opctl vm list` builds the vm command in full and every other command as a
help line (the whole tree is ~100 argparse parsers). Every command's --help,
and what a command line parses to, must be what the whole tree gives.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from opctl import parser


def paths(p: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the tree (vm, vm snapshot, vm snapshot create, ...)."""
    out = [prefix]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += paths(child, (*prefix, name))
    return out


ALL = paths(parser.build_parser())


def helped(p: argparse.ArgumentParser, words: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        p.parse_args(words)
    return out.getvalue()


@pytest.mark.parametrize("path", ALL, ids=lambda path: " ".join(path) or "(top)")
def test_every_help_is_the_whole_trees(path: tuple[str, ...]) -> None:
    words = [*path, "--help"]
    part = parser.build_parser(parser.command_word(words))
    assert helped(part, words) == helped(parser.build_parser(), words)


def test_the_tree_is_there_to_walk() -> None:
    assert len(ALL) > 60 and ("vm", "snapshot", "create") in ALL


@pytest.mark.parametrize(
    "words",
    [
        ["status"],
        ["--bus", "unix:path=/x", "vm", "list"],
        ["--bu", "unix:path=/x", "vm", "list"],  # an abbreviated option taking a value
        ["--bus=unix:path=/x", "net", "bridge", "show", "br0"],
        ["-o", "name,state", "ct", "list"],
        ["vm", "list", "--json", "--call-timeout", "5"],
        ["jobs", "log", "3", "--follow"],
        ["vm", "snapshot", "create", "tiny", "before"],
    ],
)
def test_a_command_line_parses_as_the_whole_tree_parses_it(words: list[str]) -> None:
    assert vars(parser.parse(words)) == vars(parser.build_parser().parse_args(words))


def test_errors_are_the_whole_trees(capsys: pytest.CaptureFixture[str]) -> None:
    for words in (["--bu", "x", "vm", "lst"], ["nosuch"], ["vm"]):
        with pytest.raises(SystemExit) as part:
            parser.parse(words)
        said = capsys.readouterr().err
        with pytest.raises(SystemExit) as whole:
            parser.build_parser().parse_args(words)
        assert (part.value.code, said) == (whole.value.code, capsys.readouterr().err)
        assert said  # an error was printed
