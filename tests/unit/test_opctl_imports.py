"""opctl's parser and help import nothing heavy (the speed users feel starts there).

`opctl --help`, a usage error and the parsing of every command run before
dbus-fast, asyncio and pydantic are imported; only the command that then
runs imports what it needs. Checked with Python's own import log.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "pydantic",
    "dbus_fast",
    "asyncio",
    "opdbus.models",
    "opdbus.bus",
    "opctl.client",
    "shutil",  # for the terminal's width: opctl.term finds it without bz2, lzma, fnmatch
)


def imported(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "import opctl.cli; opctl.cli.build_parser()"],
        ["-m", "opctl", "--help"],
        ["-m", "opctl", "vm", "--help"],
        ["-m", "opctl", "state", "apply", "--help"],
        ["-m", "opctl", "no-such-command"],
    ],
)
def test_parsing_and_help_import_no_dbus_asyncio_or_pydantic(argv: list[str]) -> None:
    modules = imported(*argv)
    assert "opctl.parser" in modules  # the log is real: the parser was imported
    assert heavy_in(modules) == []


def test_a_command_that_runs_does_import_what_it_needs() -> None:
    # The check above could pass by never importing anything: a real command
    # (here failing to reach a bus that is not there) does load the client.
    modules = imported("-m", "opctl", "--bus", "unix:path=/nonexistent/bus", "status")
    assert "opctl.client" in modules and "dbus_fast" in modules
