"""opctl ct, as a user runs it, against op-dbusd and real LXC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opdbus import errors
from opdbus.sandbox import PrivateBus
from tests.support import PYTHON, base_config, on_a_terminal, opctl, read_until

pytestmark = pytest.mark.skipif(shutil.which("lxc-start") is None, reason="LXC is not installed")


@pytest.fixture
def ctbus(make_daemon: Any, private_bus: PrivateBus, tmp_path: Path) -> Iterator[str]:
    lxcpath = tmp_path / "lxc"
    make_daemon(private_bus, base_config(tmp_path, lxc={"path": str(lxcpath)}))
    yield private_bus.address
    for config in lxcpath.glob("*/config"):
        for tool in ("lxc-stop", "lxc-destroy"):
            argv = [tool, "-P", str(lxcpath), "-n", config.parent.name]
            subprocess.run([*argv, "-k"] if tool == "lxc-stop" else argv, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def shell_in(address: str, name: str, typed: bytes) -> bytes:
    """``opctl ct attach NAME`` on a terminal of its own: type, read until it ends."""
    argv = [PYTHON, "-m", "opctl", "--bus", address, "ct", "attach", name]
    with on_a_terminal(argv) as (attach, master):
        # Type once the shell prompts: lxc-attach flushes what was typed before
        # it took the terminal (raw mode, TCSAFLUSH).
        seen = read_until(master, b"# ", b"", 30, attach)
        os.write(master, typed)
        seen = read_until(master, b"attached-42\r", seen, 30, attach)
        assert attach.wait(timeout=10) == 0, seen
        assert b"attached-42" in seen, seen  # the shell inside ran what was typed
    return seen


def test_a_container_from_the_command_line(ctbus: str) -> None:
    made = ok(opctl(ctbus, "ct", "create", "web", "--id", "120", "--memory", "64", "--start"))
    assert "job 1 succeeded: web created and started" in made
    rows = [line.split() for line in ok(opctl(ctbus, "ct", "list")).splitlines()]
    # vm list's columns, in its order, then the container's own.
    assert rows[0] == [
        "NAME", "STATE", "CPUS", "MEMORY", "USED", "CPU", "TIME", "AUTOSTART",
        "ID", "PID", "IPV4", "BRIDGE",
    ]  # fmt: skip
    assert rows[1][:2] == ["web", "running"]
    picked = ok(opctl(ctbus, "ct", "list", "-o", "id,name,cpu-time", "--no-headers")).split()
    assert picked[:2] == ["120", "web"] and (picked[2] == "-" or picked[2].endswith("s"))
    show = ok(opctl(ctbus, "ct", "show", "web"))
    assert "template: busybox" in show and "limit 64 MiB" in show
    assert ok(opctl(ctbus, "ct", "exec", "web", "--", "echo", "a b", "$x")) == "a b $x\n"
    failed = opctl(ctbus, "ct", "exec", "web", "--", "sh", "-c", "echo oops >&2; exit 7")
    assert (failed.returncode, failed.stderr) == (7, "oops\n")
    data = json.loads(ok(opctl(ctbus, "--json", "ct", "exec", "web", "--", "hostname")))
    assert data == {"status": 0, "stdout": "web\n", "stderr": ""}
    assert ok(opctl(ctbus, "ct", "freeze", "web")).strip() == "web frozen"
    assert json.loads(ok(opctl(ctbus, "--json", "ct", "show", "web")))["state"] == "frozen"
    assert ok(opctl(ctbus, "ct", "unfreeze", "web")).strip() == "web running again"
    changed = json.loads(ok(opctl(ctbus, "--json", "ct", "autostart", "web", "on")))
    assert changed["job"] is None and changed["object"]["autostart"] is True
    # attach: lxc-attach with the daemon's lxcpath, a command or an interactive shell.
    assert ok(opctl(ctbus, "ct", "attach", "web", "--", "hostname")) == "web\n"
    shell_in(ctbus, "web", b"echo attached-$((40 + 2)); exit\n")
    assert "web stopped" in ok(opctl(ctbus, "ct", "stop", "web", "--force"))
    stopped = opctl(ctbus, "ct", "attach", "web")
    assert stopped.returncode == errors.Conflict.exit_code
    assert "web is stopped: start it first (opctl ct start)" in stopped.stderr
    conflict = opctl(ctbus, "ct", "exec", "web", "--", "true")
    assert conflict.returncode == errors.Conflict.exit_code
    assert "Exec needs it running" in conflict.stderr
    job = ok(opctl(ctbus, "ct", "delete", "web", "--no-wait")).strip()
    assert "web deleted" in ok(opctl(ctbus, "jobs", "wait", job))
    assert ok(opctl(ctbus, "ct", "list")).strip() == "no containers"


def test_mistakes_get_named_errors(ctbus: str) -> None:
    missing = opctl(ctbus, "ct", "start", "ghost")
    assert missing.returncode == errors.NotFound.exit_code
    assert "no container named 'ghost'" in missing.stderr
    bad = opctl(ctbus, "ct", "create", "a.b")
    assert bad.returncode == errors.InvalidArgs.exit_code and "name" in bad.stderr
    nobridge = opctl(ctbus, "ct", "create", "c1", "--bridge", "nosuchbr")
    assert nobridge.returncode == errors.NotFound.exit_code
    empty = opctl(ctbus, "ct", "exec", "c1", "--")
    assert empty.returncode == errors.InvalidArgs.exit_code and "no command" in empty.stderr
