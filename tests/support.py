"""Helpers the tests share: a real op-dbusd process, other users, busctl, configs."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opctl.wire import SignalEvent
from opdbus.config import parse_config
from opdbus.daemon import Daemon
from opdbus.sandbox import PrivateBus

REPO = Path(__file__).resolve().parent.parent

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000


def private_network_namespace() -> bool:
    """Move this process into a fresh network namespace (root only).

    Tests and benchmarks make bridges, addresses, routes and veth pairs; in a
    namespace of their own none of that can touch the host's network (a
    bridge's gateway would otherwise replace the host's default route). Call
    it while the process has a single thread: threads keep the namespace
    they had, and new ones inherit it from their creator.
    """
    if os.geteuid() != 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET | CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET | CLONE_NEWNS) failed")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _own_sysfs_net()
    return True


def _own_sysfs_net() -> None:
    """/sys/class/net shows the namespace that mounted sysfs: the host's, still.

    LXC looks a bridge up there before attaching a veth to it, so give this
    namespace its own view: a fresh sysfs (mounted from inside it), bound
    over /sys/class/net and /sys/devices/virtual/net (where those entries
    point). The rest of /sys (cgroups above all) stays as it is; a private
    mount namespace keeps all of it from the host.
    """
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    fresh = tempfile.mkdtemp(prefix="sysfs-")
    try:
        subprocess.run(["mount", "-t", "sysfs", "sysfs", fresh], check=True)
        for sub in ("class/net", "devices/virtual/net"):
            subprocess.run(["mount", "--bind", f"{fresh}/{sub}", f"/sys/{sub}"], check=True)
        subprocess.run(["umount", "-l", fresh], check=True)
    finally:
        os.rmdir(fresh)


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of our descendants are re-parented to us, not to PID 1.

    Daemons fork into the background (lxc-monitord, a container's monitor, a
    killed op-dbusd's children, QEMU under libvirtd); as a subreaper this
    process stays their ancestor, so the leak guard can find everything a
    test started by walking its own process tree -- and never has to look at
    anyone else's processes.

    A subreaper must also do PID 1's other job: reap the orphans that exit.
    Left as zombies they would still answer kill(pid, 0), and libvirtd, for
    one, would wait for ever for its QEMU to go. Children we spawned ourselves
    are left to their Popen (which waits for them); every other zombie child
    is an orphan, reaped by a thread woken on SIGCHLD.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    execute = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def tracked(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        with _SPAWN_LOCK:  # the pid is known before the reaper can see it exit
            execute(self, *args, **kwargs)
            _SPAWNED.add(self.pid)

    subprocess.Popen._execute_child = tracked  # type: ignore[attr-defined]
    # The handler only writes a byte to a pipe: it may interrupt any code in
    # the main thread (an Event's lock, say), so it must take no lock itself.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: _poke(wake_w))
    threading.Thread(
        target=_reap_orphans, args=(wake_r,), name="orphan-reaper", daemon=True
    ).start()


_SPAWN_LOCK = threading.Lock()
_SPAWNED: set[int] = set()


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):  # full: the reaper has been woken already
        os.write(fd, b"x")


def _reap_orphans(wake: int) -> None:
    me = os.getpid()
    while True:
        select.select([wake], [], [], 1.0)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake, 4096):
                pass
        with _SPAWN_LOCK:
            table = process_table()
            _SPAWNED.intersection_update(table)  # waited for by their Popen: forget them
            for proc in table.values():
                if proc.ppid == me and proc.state == "Z" and proc.pid not in _SPAWNED:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(proc.pid, os.WNOHANG)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: (pid, start) names one process for good
    state: str
    cmdline: str


def process_table() -> dict[int, Proc]:
    """Every process we can see, from /proc."""
    table: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        table[int(entry)] = Proc(int(entry), int(fields[1]), int(fields[19]), fields[0], cmdline)
    return table


def descendants(table: dict[int, Proc], root: int) -> dict[int, Proc]:
    """The live (not zombie) processes below ``root`` in ``table``."""
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: dict[int, Proc] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found[pid] = table[pid]
        todo.extend(children.get(pid, []))
    return {pid: proc for pid, proc in found.items() if proc.state != "Z"}


def new_descendants(before: dict[int, Proc], table: dict[int, Proc], root: int) -> dict[int, Proc]:
    """Processes below ``root`` now that were not there (as the same process) before."""
    known = {(proc.pid, proc.start) for proc in before.values()}
    return {
        pid: proc
        for pid, proc in descendants(table, root).items()
        if (proc.pid, proc.start) not in known
    }


PYTHON = sys.executable

# Users the authorization tests act as (created by the test_users fixture).
PLAIN_USER = "opdbus-t-plain"  # nobody special: reads only
ADMIN_USER = "opdbus-t-admin"  # member of the admin group "opdbus"
POLICY_USER = "opdbus-t-policy"  # let through by an extra bus policy, not by the daemon
ADMIN_GROUP = "opdbus"


def base_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """A config that keeps every path inside ``tmp`` and probes nothing real by accident."""
    config: dict[str, Any] = {
        "mode": "full",
        "state_dir": str(tmp / "state"),
        "jobs": {"retention_seconds": 3600, "cancel_wait_seconds": 10},
        "health": {"interval_seconds": 3600, "timeout_seconds": 2},
        "paths": {
            "source_dir": str(tmp / "hypervisor" / "src"),
            "flake_dir": str(tmp / "nixos"),
            "configuration_dir": str(tmp / "hypervisor" / "configuration"),
            "host_root": str(tmp / "root"),
            "bus_policy": [str(REPO / "dbus-policy" / "org.opdbus.conf")],
            "polkit_actions": str(REPO / "dbus-policy" / "org.opdbus.policy"),
        },
        "libvirt": {"uri": f"qemu+unix:///system?socket={tmp}/no-libvirt-sock"},
        "ovsdb": {"remote": f"unix:{tmp}/no-ovsdb.sock"},
        "lxc": {"path": str(tmp / "lxc")},
        "state": {"file": str(tmp / "state.json")},
        "systemd": {"bus_address": f"unix:path={tmp}/no-systemd-bus"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


# Thresholds of 0 make disk and memory pass on any machine; agent mode skips
# the VM checks: a quick validation then succeeds deterministically. The audit
# log, off by default in agent mode, is kept: these tests read it.
CALM: dict[str, Any] = {
    "mode": "agent",
    "audit": {"enabled": True},
    "validate": {
        "disk_warn_gib": 0,
        "disk_fail_gib": 0,
        "memory_warn_mib": 0,
        "memory_fail_mib": 0,
    },
}


def _structure(interface: ET.Element) -> dict[str, Any]:
    """What a client depends on: members, argument names and types, property access."""

    def args(element: ET.Element, direction: str | None) -> list[tuple[str | None, str]]:
        return [
            (arg.attrib.get("name") if direction != "out" else None, arg.attrib["type"])
            for arg in element.iter("arg")
            if direction is None or arg.attrib.get("direction", "in") == direction
        ]

    return {
        "methods": {
            m.attrib["name"]: (args(m, "in"), args(m, "out")) for m in interface.iter("method")
        },
        "signals": {
            s.attrib["name"]: [t for _, t in args(s, None)] for s in interface.iter("signal")
        },
        "properties": {
            p.attrib["name"]: (p.attrib["type"], p.attrib["access"])
            for p in interface.iter("property")
        },
    }


def assert_introspection_matches(live: dict[str, ET.Element], interfaces: list[str]) -> None:
    """The running daemon's interfaces equal the committed XML, which documents every member."""
    doc = "org.gtk.GDBus.DocString"
    for name in interfaces:
        (committed,) = (
            ET.parse(REPO / "daemon" / "opdbus" / "introspection" / f"{name}.xml")
            .getroot()
            .iter("interface")
        )
        assert _structure(live[name]) == _structure(committed), (
            f"{name}.xml differs from the daemon"
        )
        for member in committed:
            if member.tag in ("method", "signal", "property"):
                assert any(a.attrib["name"] == doc for a in member.iter("annotation")), (
                    f"{name}.{member.attrib['name']} has no documentation"
                )
        served = [a for a in live[name].iter("annotation") if a.attrib["name"] == doc]
        assert len(served) >= len(committed.findall(f".//annotation[@name='{doc}']")), (
            "docs not served"
        )


@contextlib.asynccontextmanager
async def running(tmp: Path, bus: PrivateBus, **overrides: Any) -> AsyncIterator[Daemon]:
    """op-dbusd in this event loop (so blockbuster watches it), stopped on exit."""
    raw = base_config(tmp, **overrides)
    config_path = write_config(tmp / "config.json", raw)
    daemon = Daemon(
        parse_config(raw, config_path), bus_address=bus.address, config_path=config_path
    )
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.stop()


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


@contextlib.contextmanager
def silent_socket(path: Path) -> Iterator[Path]:
    """A unix socket that accepts connections (backlog) and never answers.

    A probe of it waits for its whole timeout: a real, slow step that a test
    can cancel halfway.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    try:
        yield path
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class Opdbusd:
    """op-dbusd as a real process; ready once it sends READY=1 to our NOTIFY_SOCKET."""

    def __init__(
        self, tmp: Path, bus_address: str, config: dict[str, Any], *, name: str = "d"
    ) -> None:
        self.tmp = tmp
        self.bus_address = bus_address
        self.config = config
        self.config_path = write_config(tmp / f"{name}-config.json", config)
        self.log_path = tmp / f"{name}.log"
        self.notify_path = tmp / f"{name}.notify"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])

    def start(self, *extra: str, wait: bool = True, timeout: float = 20.0) -> Opdbusd:
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(self.notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "opdbus",
                    "--bus",
                    self.bus_address,
                    "--config",
                    str(self.config_path),
                    *extra,
                ],
                stdout=log,
                stderr=log,
                env=env,
            )
        try:
            if wait:
                self._wait_ready(notify, timeout)
        finally:
            notify.close()
        return self

    def _wait_ready(self, notify: socket.socket, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        notify.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                message = notify.recv(4096).decode()
            except TimeoutError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"op-dbusd exited with {self.process.returncode}:\n{self.log()}"
                    ) from None
                continue
            if "READY=1" in message.split("\n"):
                return
        raise RuntimeError(f"op-dbusd not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def run(
    argv: list[str], *, user: str | None = None, timeout: float = 30, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command, as ``user`` (with that user's groups) when given."""
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def busctl(address: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(["busctl", f"--address={address}", "--timeout=30", *args], user=user)


def manager_call(address: str, member: str, *args: str) -> Any:
    """Call a Manager1 method with busctl (as root) and return its decoded reply."""
    out = busctl(
        address,
        "--json=short",
        "call",
        "org.opdbus",
        "/org/opdbus",
        "org.opdbus.Manager1",
        member,
        *args,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["data"]


def opctl(
    address: str, *args: str, user: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run([PYTHON, "-m", "opctl", "--bus", address, *args], user=user, timeout=timeout)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait for ``condition`` (checked every 50 ms): for states no signal announces."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def next_event(
    queue: asyncio.Queue[SignalEvent], match: Any, timeout: float = 1.0
) -> SignalEvent:
    """The first signal satisfying ``match`` within ``timeout`` (the issues' "within a second")."""
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if match(event):
                return event


@contextlib.contextmanager
def on_a_terminal(argv: list[str], **popen: Any) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``argv`` on a pty of its own, as its controlling terminal (``setsid --ctty``: as
    a login's is; virsh console and lxc-attach want one); yields it and the pty's
    master end. Ended (killed if still running) and closed afterwards."""
    master, terminal = pty.openpty()
    child = subprocess.Popen(
        ["setsid", "--ctty", *argv], stdin=terminal, stdout=terminal, stderr=terminal, **popen
    )
    os.close(terminal)
    try:
        yield child, master
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)


def read_until(
    fd: int,
    wanted: bytes,
    seen: bytes,
    timeout: float,
    child: subprocess.Popen[bytes] | None = None,
) -> bytes:
    """What ``fd`` gives until ``wanted`` is among it, ``child`` ends, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        if child is not None and child.poll() is not None and not select.select([fd], [], [], 0)[0]:
            break
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break  # the terminal's other end is gone
    return seen
