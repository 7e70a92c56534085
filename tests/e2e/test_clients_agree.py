"""Independent clients agree with `opctl --json`: busctl (systemd), gdbus (GLib) and
dbus-send (libdbus) read the same values and get the same error names.

Against a real op-dbusd with libvirt's test driver (its VM "test" runs).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from opdbus import names
from opdbus.sandbox import PrivateBus
from tests.support import base_config, busctl, opctl, run


@pytest.fixture
def address(make_daemon: Any, private_bus: PrivateBus, tmp_path: Path) -> str:
    make_daemon(private_bus, base_config(tmp_path, libvirt={"uri": "test:///default"}))
    return private_bus.address


def vm(address: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(opctl(address, "--json", "vm", "show", "test").stdout)
    return shown


def test_busctl_reads_what_opctl_shows(address: str) -> None:
    shown = vm(address)
    for prop, key in (("Name", "name"), ("UUID", "uuid"), ("State", "state"), ("VCPUs", "vcpus")):
        got = busctl(address, "--json=short", "get-property", names.BUS_NAME, shown["path"],
                     names.VM_IFACE, prop)  # fmt: skip
        assert json.loads(got.stdout)["data"] == shown[key], prop
    memory = busctl(address, "get-property", names.BUS_NAME, shown["path"], names.VM_IFACE,
                    "MemoryMiB").stdout.split()  # fmt: skip
    assert memory == ["t", str(shown["memory"] // (1024 * 1024))]  # JSON: bytes; the bus: MiB
    status = json.loads(opctl(address, "--json", "status").stdout)
    mode = busctl(address, "get-property", names.BUS_NAME, names.ROOT_PATH, names.MANAGER_IFACE,
                  "Mode").stdout  # fmt: skip
    assert mode.strip() == f's "{status["mode"]}"'


@pytest.mark.skipif(shutil.which("gdbus") is None, reason="make deps installs libglib2.0-bin")
def test_gdbus_reads_what_opctl_shows(address: str) -> None:
    shown = vm(address)
    got = run(["gdbus", "call", "--address", address, "--dest", names.BUS_NAME,
               "--object-path", shown["path"], "--method",
               "org.freedesktop.DBus.Properties.Get", names.VM_IFACE, "Name"])  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == f"(<'{shown['name']}'>,)"
    tree = run(["gdbus", "call", "--address", address, "--dest", names.BUS_NAME,
                "--object-path", names.ROOT_PATH, "--method",
                "org.freedesktop.DBus.ObjectManager.GetManagedObjects"])  # fmt: skip
    assert f"objectpath '{shown['path']}'" in tree.stdout and f"'{shown['uuid']}'" in tree.stdout


def test_dbus_send_reads_what_opctl_shows(address: str) -> None:
    shown = vm(address)
    got = run(["dbus-send", f"--bus={address}", "--print-reply", f"--dest={names.BUS_NAME}",
               shown["path"], "org.freedesktop.DBus.Properties.Get",
               f"string:{names.VM_IFACE}", "string:State"])  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert re.search(rf'variant\s+string "{shown["state"]}"', got.stdout), got.stdout


def test_every_client_gets_the_same_error_name(address: str) -> None:
    """VM1.Resume on a VM that runs (not paused): Conflict, whoever asks."""
    shown = vm(address)
    wanted = "org.opdbus.Error.Conflict"
    by_opctl = opctl(address, "--json", "vm", "resume", "test")
    assert by_opctl.returncode == 10 and json.loads(by_opctl.stderr)["error"]["name"] == wanted
    by_busctl = busctl(address, "call", names.BUS_NAME, shown["path"], names.VM_IFACE, "Resume")
    by_dbus_send = run(["dbus-send", f"--bus={address}", "--print-reply",
                        f"--dest={names.BUS_NAME}", shown["path"], f"{names.VM_IFACE}.Resume"])  # fmt: skip
    by_gdbus = run(["gdbus", "call", "--address", address, "--dest", names.BUS_NAME,
                    "--object-path", shown["path"], "--method", f"{names.VM_IFACE}.Resume"])  # fmt: skip
    assert by_busctl.returncode and by_dbus_send.returncode and by_gdbus.returncode
    # Each prints the name its own way; the message a person reads is the same.
    message = json.loads(by_opctl.stderr)["error"]["message"]
    assert f"Error {wanted}: {message}" in by_dbus_send.stderr, by_dbus_send.stderr
    assert wanted in by_gdbus.stderr and message in by_gdbus.stderr, by_gdbus.stderr
    assert message in by_busctl.stderr, by_busctl.stderr
