"""opctl.term.columns: the width shutil.get_terminal_size would give, without shutil."""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios

import pytest

from opctl.term import columns

# stdout is the terminal; the answers go to stderr.
SAY_BOTH = (
    "import shutil, sys; from opctl.term import columns; "
    "print(columns(), shutil.get_terminal_size().columns, file=sys.stderr)"
)


@pytest.mark.parametrize("value", ["132", "7", "0", "-3", "wide", ""])
def test_columns_follows_shutil_for_the_environment(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", value)
    assert columns() == shutil.get_terminal_size().columns


def test_columns_on_a_terminal_is_the_terminals_width() -> None:
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 97, 0, 0))
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        done = subprocess.run(
            [sys.executable, "-c", SAY_BOTH],
            stdout=slave,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            timeout=30,
            check=True,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert done.stderr.split() == ["97", "97"]
