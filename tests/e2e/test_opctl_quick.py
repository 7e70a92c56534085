"""opctl's quick path (opctl.quick + opctl.minibus) against op-dbusd --sandbox.

`opctl status`, `vm list`, `net bridge list` and `ct list` answer with the
standard library alone. What they print must be what the ordinary path
(dbus-fast, OPCTL_NO_QUICK=1) prints for the same objects, byte for byte,
and every problem must be reported exactly as the ordinary path reports it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opdbus.sandbox import PrivateBus
from tests.e2e.test_sandbox import start_sandbox, wait_for_file
from tests.support import PYTHON, opctl

QUICK = [["status"], ["vm", "list"], ["net", "bridge", "list"], ["ct", "list"]]
# What the quick path must not load (the ordinary path's machinery).
HEAVY = ("dbus_fast", "asyncio", "argparse", "pydantic", "opdbus", "opctl.client", "opctl.cli")


def run_opctl(address: str, *args: str, quick: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPCTL_NO_QUICK": "" if quick else "1"}
    return subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "opctl", "--bus", address, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def imported(done: subprocess.CompletedProcess[str]) -> set[str]:
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }


def messages(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if not line.startswith("import time:")]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    box = tmp_path_factory.mktemp("quick") / "sandbox"
    daemon = start_sandbox(box)
    try:
        address = wait_for_file(box / "bus-address", daemon)
        for made in (
            opctl(address, "net", "bridge", "create", "qb0", "--address", "10.77.0.1/24"),
            opctl(address, "net", "bridge", "create", "qa1"),
            opctl(address, "net", "port", "add", "qb0", "qp0", "--type", "internal"),
        ):
            assert made.returncode == 0, made.stderr
        if shutil.which("lxc-create"):
            made = opctl(address, "ct", "create", "qct", "--id", "150", "--bridge", "qb0")
            assert made.returncode == 0, made.stderr
        yield address
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.communicate(timeout=30)


@pytest.mark.parametrize("words", QUICK, ids=" ".join)
@pytest.mark.parametrize("headers", [[], ["--no-headers"]], ids=["headers", "no-headers"])
def test_the_quick_path_prints_what_the_ordinary_path_prints(
    sandbox: str, words: list[str], headers: list[str]
) -> None:
    quick = run_opctl(sandbox, *words, *headers, quick=True)
    ordinary = run_opctl(sandbox, *words, *headers, quick=False)
    assert quick.returncode == ordinary.returncode == 0, (quick.stderr, ordinary.stderr)
    assert quick.stdout == ordinary.stdout
    # It was the quick path: none of the ordinary path's machinery was loaded...
    loaded = imported(quick)
    assert "opctl.minibus" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY) == []
    # ...and the ordinary one did load it (the check above can fail).
    assert "dbus_fast" in imported(ordinary)


def test_what_the_quick_lists_show(sandbox: str) -> None:
    bridges = run_opctl(sandbox, "net", "bridge", "list", quick=True).stdout.splitlines()
    rows = [line.split() for line in bridges]
    assert rows[0] == ["NAME", "DATAPATH", "PORTS", "LINK", "ADDRESSES"]
    # By name; the bridge's own internal port is not counted. (LINK is the kernel's say.)
    assert [row[:3] + row[4:] for row in rows[1:]] == [
        ["qa1", "netdev", "0", "-"],
        ["qb0", "netdev", "1", "10.77.0.1/24"],
    ]
    vms = run_opctl(sandbox, "vm", "list", "--no-headers", quick=True).stdout.split()
    assert vms[:2] == ["test", "running"]  # libvirt's test driver's VM
    status = run_opctl(sandbox, "status", quick=True).stdout
    assert status.startswith("op-dbusd ") and ", mode full, on unix:path=" in status
    if shutil.which("lxc-create"):
        containers = run_opctl(sandbox, "ct", "list", quick=True).stdout.splitlines()
        assert containers[1].split()[:2] == ["qct", "stopped"]
        assert containers[1].split()[-3:] == ["-", "qb0", "(vi150)"]


def test_other_options_take_the_ordinary_path(sandbox: str) -> None:
    done = run_opctl(sandbox, "--json", "vm", "list", quick=True)
    assert done.returncode == 0 and '"name": "test"' in done.stdout
    assert "opctl.minibus" not in imported(done)


def test_no_daemon_is_reported_as_the_ordinary_path_reports_it(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/no-bus"
    quick = run_opctl(address, "vm", "list", quick=True)
    ordinary = run_opctl(address, "vm", "list", quick=False)
    assert quick.returncode == ordinary.returncode == 14
    assert messages(quick) == messages(ordinary)
    assert messages(quick)[0].startswith("opctl: Unreachable: cannot connect to the bus")


def test_a_silent_daemon_times_out_once(private_bus: PrivateBus) -> None:
    # A bus whose org.opdbus never answers: the quick path says so after the
    # timeout, in the ordinary path's words, without waiting a second time.
    owner = subprocess.Popen(
        [PYTHON, "-c", SILENT_OWNER, private_bus.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "owned"
        env = {**os.environ, "OPDBUS_CALL_TIMEOUT": "1"}
        started = time.monotonic()
        done = subprocess.run(
            [PYTHON, "-m", "opctl", "--bus", private_bus.address, "status"],
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        waited = time.monotonic() - started
    finally:
        owner.kill()
        owner.wait()
    assert waited < 2  # one timeout, not the quick path's and then the ordinary path's
    assert done.returncode == 12, done.stderr
    assert done.stderr.startswith("opctl: Timeout: no answer to ")
    assert "within 1 s: op-dbusd (or the bus) is not answering" in done.stderr


# Owns org.opdbus and never answers a call (its handler takes every message
# and sends nothing back).
SILENT_OWNER = """
import asyncio, sys
from dbus_fast.aio import MessageBus

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    await bus.request_name("org.opdbus")
    bus.add_message_handler(lambda message: True)
    print("owned", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
