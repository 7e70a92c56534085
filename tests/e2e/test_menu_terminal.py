"""The console menu in a real terminal: tmux at 80x24 with TERM=linux, driven by
keystrokes, asserted on the captured screen. op-dbusd runs on a private bus
with libvirt's test driver; `virsh` is a stand-in on PATH (the test driver's
VMs live inside the daemon, so a real virsh could not reach them): it prints
what virsh console prints, reads a line, and exits, so the test sees the menu
hand the terminal over and take it back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opdbus.sandbox import PrivateBus
from tests.support import REPO, base_config

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make deps)"),
]
FAKE_VIRSH = """#!/bin/sh
echo "Connected to domain '$4'"
echo "Escape character is ^] (Ctrl + ])"
read line
echo "console of $4 closed"
"""


class Terminal:
    """One tmux server of our own (its own socket), one 80x24 window running the menu."""

    def __init__(self, workdir: Path, argv: list[str], user: str | None = None) -> None:
        own = workdir / f"tmux-{user or 'root'}"  # the server's socket, in a directory it owns
        own.mkdir(mode=0o700)
        if user is not None:
            shutil.chown(own, user, user)
        self.socket = own / "sock"
        self.user = user
        self.tmux(
            "new-session", "-d", "-x", "80", "-y", "24", "--",
            "env", "TERM=linux", f"PATH={workdir}:/usr/bin:/bin", *argv,
        )  # fmt: skip

    def tmux(self, *args: str) -> str:
        argv = ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args]
        if self.user is not None:
            argv = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups",
                    *argv]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0 or args[0] == "kill-server", done.stderr
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def until(self, check: Callable[[str], bool], timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if check(text):
                return text
            assert time.monotonic() < deadline, f"screen never matched:\n{text}"
            time.sleep(0.1)

    def alive(self) -> bool:
        argv = ["tmux", "-S", str(self.socket), "has-session"]
        if self.user is not None:
            argv = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups",
                    *argv]  # fmt: skip
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def terminal(shared_dir: Path) -> Iterator[Callable[..., Terminal]]:
    made: list[Terminal] = []
    virsh = shared_dir / "virsh"
    virsh.write_text(FAKE_VIRSH)
    virsh.chmod(0o755)

    def make(address: str, user: str | None = None) -> Terminal:
        argv = [sys.executable, "-m", "opctl", "--bus", address, "menu"]
        made.append(Terminal(shared_dir, argv, user))
        return made[-1]

    yield make
    for term in made:
        term.close()


def vm_row(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip().startswith("test ")), "")


def test_the_menu_in_a_real_80x24_linux_terminal(
    make_daemon: Any, auth_bus: PrivateBus, tmp_path: Path, terminal: Any,
    test_users: dict[str, str],
) -> None:  # fmt: skip
    config = base_config(tmp_path, mode="full", libvirt={"uri": "test:///default"})
    make_daemon(auth_bus, config)
    term = terminal(auth_bus.address)
    text = term.until(lambda t: "running" in vm_row(t))
    assert "NAME" in text and "STATE" in text and "mode full" in text
    assert len(text.splitlines()) <= 24 and all(len(line) <= 80 for line in text.splitlines())

    term.keys("f")  # force stop: the job runs, the row follows
    term.until(lambda t: "shutoff" in vm_row(t))
    term.keys("s")
    term.until(lambda t: "running" in vm_row(t) and "test started" in t)

    term.keys("c")  # the console gets the terminal, and gives it back
    term.until(lambda t: "Connected to domain 'test'" in t)
    term.keys("Enter")
    term.until(lambda t: "running" in vm_row(t) and "Connected to domain" not in t)

    term.keys("o")
    term.until(lambda t: "Validate the host" in t and "Power off the host" in t)
    term.keys("Escape")
    term.until(lambda t: "running" in vm_row(t))
    term.keys("q")
    deadline = time.monotonic() + 15
    while term.alive():
        assert time.monotonic() < deadline, "the menu did not quit"
        time.sleep(0.1)

    # A user outside the admin group sees everything and is told no, plainly.
    plain = terminal(auth_bus.address, user=test_users["plain"])
    plain.until(lambda t: "running" in vm_row(t))
    plain.keys("f")
    text = plain.until(lambda t: "not authorized: org.opdbus.VM1.Stop is refused" in t)
    assert "running" in vm_row(text)
    assert str(REPO) not in text  # no traceback, no paths of ours
