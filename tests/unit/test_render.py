"""opctl's tables for people: cut to a terminal's width, whole in a pipe, headers optional."""

from __future__ import annotations

import io

import pytest

from opctl import render


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ROWS = [(1, "succeeded", "Validate", "x" * 300), (12, "failed", "Rebuild switch", "short")]


def test_a_terminal_gets_lines_that_fit_and_a_pipe_gets_them_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    term = Terminal()
    render.table(["id", "state", "operation", "result"], ROWS, out=term)
    lines = term.getvalue().splitlines()
    assert lines[0].split() == ["ID", "STATE", "OPERATION", "RESULT"]
    assert all(len(line) <= 80 for line in lines) and lines[1].endswith("x…")
    assert lines[2].endswith("short")
    pipe = io.StringIO()
    render.table(["id", "state", "operation", "result"], ROWS, out=pipe)
    assert pipe.getvalue().splitlines()[1].endswith("x" * 300)


def test_no_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "HEADERS", False)
    out = io.StringIO()
    render.table(["id", "state"], [(1, "running"), (22, "queued")], out=out)
    assert out.getvalue() == "1   running\n22  queued\n"
