"""``opctl vm console``: a running QEMU guest's serial console, through virsh, on a real
libvirtd (the guest has no OS: the console connects and stays quiet)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opdbus.sandbox import PrivateBus
from tests.libvirtd import TEST_PREFIX, PrivateLibvirtd
from tests.support import PYTHON, base_config, on_a_terminal, read_until

NAME = TEST_PREFIX + "console"


@pytest.fixture
def guest(libvirtd: PrivateLibvirtd, tmp_path: Path) -> Iterator[PrivateLibvirtd]:
    if not libvirtd.socket.exists():
        libvirtd.restart()
    libvirtd.cleanup()
    kind = "kvm" if Path("/dev/kvm").exists() else "qemu"
    xml = tmp_path / "console.xml"
    xml.write_text(
        f"<domain type='{kind}'><name>{NAME}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os>"
        "<devices><serial type='pty'/><console type='pty'/></devices></domain>"
    )
    libvirtd.virsh("define", str(xml))
    libvirtd.virsh("start", NAME)
    try:
        yield libvirtd
    finally:
        libvirtd.cleanup()


def test_console_hands_the_terminal_to_virsh_and_ctrl_bracket_leaves(
    guest: PrivateLibvirtd, make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    libvirt = {"uri": guest.uri, "pool": f"{TEST_PREFIX}pool", "pool_dir": str(guest.pool_dir)}
    make_daemon(private_bus, base_config(tmp_path, libvirt=libvirt))
    argv = [PYTHON, "-m", "opctl", "--bus", private_bus.address, "vm", "console", NAME]
    with on_a_terminal(argv) as (console, master):
        seen = read_until(master, b"Escape character is ^]", b"", 30)
        assert f"Connecting to {NAME}'s serial console (Ctrl-] leaves)".encode() in seen, seen
        assert f"Connected to domain '{NAME}'".encode() in seen, seen
        # Ctrl-]: virsh leaves the console. Sent again until it does: virsh prints
        # its banner before it puts the terminal in raw mode, and setting that
        # mode drops what was typed before.
        deadline = time.monotonic() + 15
        while console.poll() is None and time.monotonic() < deadline:
            os.write(master, b"\x1d")
            with contextlib.suppress(subprocess.TimeoutExpired):
                console.wait(timeout=0.5)
        assert console.wait(timeout=5) == 0
    assert guest.virsh("domstate", NAME).stdout.strip() == "running"  # leaving stops nothing
