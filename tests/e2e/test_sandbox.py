"""`op-dbusd --sandbox DIR`: the README's first command, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from opdbus.sandbox import PrivateBus
from tests.support import PYTHON, Proc, busctl, descendants, opctl, process_table, run


def wait_for_file(path: Path, process: subprocess.Popen[Any], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text().strip()
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def test_sandbox_runs_serves_and_cleans_up(tmp_path: Path) -> None:
    box = tmp_path / "sandbox"
    daemon = subprocess.Popen(
        [PYTHON, "-m", "opdbus", "--sandbox", str(box)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = wait_for_file(box / "bus-address", daemon)
        assert address.startswith(f"unix:path={box}/bus/bus.sock")
        status = json.loads(opctl(address, "--json", "status").stdout)
        assert status["mode"] == "full"
        assert "libvirt test driver" in status["backends"]["libvirt"]["detail"]
        # Its own Open vSwitch, on the userspace datapath.
        assert status["backends"]["ovsdb"] == {
            "available": True,
            "detail": f"ovsdb-server at unix:{box}/ovs/db.sock",
        }
        made = opctl(address, "net", "bridge", "create", "sbx0")
        assert made.returncode == 0, made.stderr
        assert (
            json.loads(opctl(address, "--json", "net", "bridge", "show", "sbx0").stdout)[
                "datapath_type"
            ]
            == "netdev"
        )
        # In the sandbox's own network namespace, not in ours (the host's, here).
        assert run(["ip", "link", "show", "sbx0"]).returncode != 0
        sandbox_net = f"/proc/{daemon.pid}/ns/net"
        assert os.readlink(sandbox_net) != os.readlink("/proc/self/ns/net")
        # The invoking user is the sandbox's admin: mutating calls work, state stays inside.
        result = opctl(address, "--json", "validate", "--quick")
        assert json.loads(result.stdout)["job"]["operation"] == "Validate"
        assert (box / "state" / "audit" / "audit.jsonl").stat().st_size > 0
        assert (box / "state" / "jobs" / "1.json").exists()
        # A second sandbox in the same place refuses instead of stealing the bus.
        second = run([PYTHON, "-m", "opdbus", "--sandbox", str(box)])
        assert second.returncode == 1 and f"a sandbox is already running in {box}" in second.stderr
        assert json.loads(opctl(address, "--json", "status").stdout)["mode"] == "full"
    finally:
        daemon.send_signal(signal.SIGINT)
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert out.startswith(f"op-dbusd sandbox ready in {box}\n  bus address: {address}")
    assert f"opctl --bus '{address}' status" in out and "busctl --address=" in out
    assert "network: a namespace of its own" in out
    # The command printed runs as printed: its name on PATH, else its full path.
    printed = out.split("try:", 1)[1].split(" --bus", 1)[0].strip()
    assert shutil.which(printed) is not None, printed
    assert not (box / "bus-address").exists()
    assert "stopped" in err
    # The sandbox leaves no bridge behind on the host.
    assert run(["ip", "link", "show", "sbx0"]).returncode != 0


def _tree(root: int) -> dict[int, Proc]:
    return descendants(process_table(), root)


def test_kill_9_takes_everything_the_sandbox_started_and_a_restart_works(
    tmp_path: Path,
) -> None:
    """After SIGKILL nothing the sandbox started lives on: its bus, its Open vSwitch,
    lxc-monitor, a rebuild and the rebuild's own child; then the sandbox starts again."""
    box = tmp_path / "sandbox"
    box.mkdir()
    fake = Path(__file__).resolve().parent.parent / "fake_nixos_rebuild.py"
    (box / "config.json").write_text(json.dumps({"rebuild": {"command": str(fake)}}))
    env = {**os.environ, "FAKE_REBUILD_DELAY": "1", "FAKE_REBUILD_LINES": "100"}
    daemon = subprocess.Popen(
        [PYTHON, "-m", "opdbus", "--sandbox", str(box)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    address = wait_for_file(box / "bus-address", daemon)
    started = opctl(address, "--json", "rebuild", "build", "--no-wait")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        "sleep 300" in p.cmdline for p in _tree(daemon.pid).values()
    ):
        time.sleep(0.05)
    started_by_it = _tree(daemon.pid)
    kinds = " ".join(p.cmdline for p in started_by_it.values())
    for kind in ("dbus-daemon", "ovsdb-server", "ovs-vswitchd", "lxc-monitor", "sleep 300"):
        assert kind in kinds, f"{kind} not running under the sandbox: {kinds}"

    daemon.kill()
    daemon.wait()
    # They were ours (we are their subreaper now); none may survive the daemon.
    left: dict[int, Proc] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = process_table()
        left = {
            pid: p
            for pid, p in started_by_it.items()
            if pid in now
            and now[pid].start == p.start
            and now[pid].state != "Z"
            and "lxc-monitord" not in p.cmdline  # LXC's own: ends 30 s after its last client
        }
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"outlived the sandbox: {[p.cmdline for p in left.values()]}"

    # The dead sandbox's leftovers (its socket, its bus-address) do not block a new one.
    stale = (box / "bus-address").read_text()
    again = subprocess.Popen(
        [PYTHON, "-m", "opdbus", "--sandbox", str(box)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while (box / "bus-address").exists() and (box / "bus-address").read_text() == stale:
            assert time.monotonic() < deadline and again.poll() is None
            time.sleep(0.05)
        address = wait_for_file(box / "bus-address", again)
        # A refused second start touches nothing of the running one.
        second = run([PYTHON, "-m", "opdbus", "--sandbox", str(box)])
        assert second.returncode == 1 and "already running" in second.stderr
        assert (box / "bus-address").read_text().strip() == address
        assert json.loads(opctl(address, "--json", "status").stdout)["mode"] == "full"
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=30)
    assert again.returncode == 0


@pytest.mark.parametrize(
    "argv",
    [["busctl", "monitor", "--json=short"], ["dbus-monitor"]],
    ids=["busctl", "dbus-monitor"],
)
def test_root_may_monitor_the_private_bus(private_bus: PrivateBus, argv: list[str]) -> None:
    """As on the system bus (root's Monitoring rule); dbus-monitor without its eavesdrop fallback."""
    if argv[0] == "dbus-monitor":
        cmd = [argv[0], "--address", private_bus.address, *argv[1:]]
    else:
        cmd = [argv[0], f"--address={private_bus.address}", *argv[1:]]
    watcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # it has become a monitor
        busctl(private_bus.address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
               "org.freedesktop.DBus", "GetId")  # fmt: skip
        time.sleep(0.5)
    finally:
        watcher.terminate()  # our own child
        out, err = watcher.communicate(timeout=10)
    assert "GetId" in out, err
    assert "denied" not in err.lower() and "falling back" not in err.lower(), err


def start_sandbox(box: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "opdbus", "--sandbox", str(box), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(shutil.which("lxc-start") is None, reason="LXC is not installed")
def test_the_sandboxs_containers_end_with_it(tmp_path: Path) -> None:
    box = tmp_path / "sandbox"
    daemon = start_sandbox(box)
    try:
        address = wait_for_file(box / "bus-address", daemon)
        # On a bridge of the sandbox (LXC finds it: the sandbox sees its own sysfs).
        bridge = opctl(address, "net", "bridge", "create", "sbbr")
        assert bridge.returncode == 0, bridge.stderr
        made = opctl(address, "ct", "create", "sbc", "--bridge", "sbbr", "--start")
        assert made.returncode == 0, made.stderr
        # LXC's command socket is abstract: asked from inside the sandbox's network.
        info = ["nsenter", f"--net=/proc/{daemon.pid}/ns/net", "lxc-info", "-P",
                str(box / "lxc"), "-n", "sbc", "-sH"]  # fmt: skip
        assert run(info).stdout.strip() == "RUNNING"
        assert lxc_processes(box)  # its monitor and init, while the sandbox runs
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.communicate(timeout=60)
    # Stopped with the sandbox: nothing of it is left (LXC's monitor exits a
    # moment after its container does).
    deadline = time.monotonic() + 10
    while lxc_processes(box) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lxc_processes(box) == []


def lxc_processes(box: Path) -> list[int]:
    """Processes of containers in the sandbox's lxcpath ([lxc monitor] names it).

    lxc-monitord is left out: LXC starts it on demand and it ends by itself
    (conftest's SELF_ENDING).
    """
    return [
        pid
        for pid, proc in process_table().items()
        if str(box / "lxc") in proc.cmdline and "lxc-monitord" not in proc.cmdline
    ]


def test_host_network_is_said_loudly_and_shares_our_namespace(tmp_path: Path) -> None:
    box = tmp_path / "sandbox"
    daemon = start_sandbox(box, "--host-network")
    try:
        wait_for_file(box / "bus-address", daemon)
        assert os.readlink(f"/proc/{daemon.pid}/ns/net") == os.readlink("/proc/self/ns/net")
    finally:
        daemon.send_signal(signal.SIGINT)
        out, _ = daemon.communicate(timeout=60)
    assert "NETWORK: --host-network" in out and "THIS HOST's network" in out
