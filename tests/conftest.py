"""Fixtures: real dbus-daemon with the project's policy, real op-dbusd, and leak guards.

Every async test runs under blockbuster (a blocking call made from opdbus or
opctl code inside the event loop fails the test) and must leave no task
behind; every test must leave no process of its own behind (its own process
tree only: nothing else on the machine is looked at).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import blockbuster_ctx

from opctl.client import Client
from opdbus.backends.process import REAPER
from opdbus.config import Config, parse_config
from opdbus.daemon import Daemon
from opdbus.sandbox import POLKIT_BUS_POLICY, PrivateBus, start_private_bus, user_grant
from opdbus.sandbox_ovs import PrivateOvs, ovs_installed, start_private_ovs
from tests.libvirtd import PrivateLibvirtd, have_libvirtd, start_private_libvirtd
from tests.support import (
    ADMIN_GROUP,
    ADMIN_USER,
    PLAIN_USER,
    POLICY_USER,
    REPO,
    Opdbusd,
    Proc,
    base_config,
    become_subreaper,
    descendants,
    new_descendants,
    private_network_namespace,
    process_table,
    write_config,
)

# Before anything else (and before any thread exists): nothing a test does to
# networking may reach the host's own interfaces and routes.
private_network_namespace()

become_subreaper()
# The test process's own reaper (the fixtures' buses and switches end with
# it) lives for the whole session: start it before any test's snapshot.
REAPER.ensure_started()

# Daemons LXC starts on demand and that end by themselves (lxc-monitord goes
# 30 s after its last client): ours to clean up, not a test's leak.
SELF_ENDING = ("lxc-monitord",)
# Work directories of session-scoped fixtures (the libvirtd shared by all VM
# tests, restarted by some of them): processes running from there are the
# session's, not a test's.
SESSION_DIRS: list[str] = []


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves a process of its own running; signal only those.

    Only descendants of this process count (orphans come back to us: we are a
    subreaper), each known by (pid, start time), so nothing anyone else runs
    -- a system bus, a real op-dbusd -- is ever looked at, let alone killed.
    """
    me = os.getpid()
    before = descendants(process_table(), me)
    yield
    leaked: dict[int, Proc] = {}
    for _ in range(50):  # processes told to stop may take a moment to go
        leaked = {
            pid: proc
            for pid, proc in new_descendants(before, process_table(), me).items()
            if not any(directory in proc.cmdline for directory in SESSION_DIRS)
        }
        if not any(_counts(proc) for proc in leaked.values()):
            break
        subprocess.run(["sleep", "0.1"], check=False)
    for proc in leaked.values():
        _kill_if_same(proc)
    counted = {proc.pid: proc.cmdline for proc in leaked.values() if _counts(proc)}
    if counted:
        pytest.fail(f"test left processes behind: {counted}")


def _counts(proc: Proc) -> bool:
    return not any(name in proc.cmdline for name in SELF_ENDING)


def _kill_if_same(proc: Proc) -> None:
    """SIGKILL ``proc`` unless its pid now names another process."""
    current = process_table().get(proc.pid)
    if current is not None and current.start == proc.start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, 9)


@pytest.fixture
async def loop_guard() -> AsyncIterator[None]:
    """Fail on blocking calls from our code in the loop, and on tasks left running."""
    with blockbuster_ctx(["opdbus", "opctl"]):
        yield
        for _ in range(3):
            await asyncio.sleep(0)
        me = asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
        if left:
            for task in left:
                task.cancel()
            pytest.fail(f"test left tasks behind: {[task.get_name() for task in left]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if asyncio.iscoroutinefunction(getattr(item, "function", None)):
            # First in the list: set up first, torn down last (after the daemon).
            item.fixturenames.insert(0, "loop_guard")  # type: ignore[attr-defined]


# -- the bus ---------------------------------------------------------------------


@pytest.fixture
def private_bus(tmp_path: Path) -> Iterator[PrivateBus]:
    bus = start_private_bus(tmp_path / "bus")
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture
def bus_address(private_bus: PrivateBus) -> str:
    return private_bus.address


# -- op-dbusd as a process ---------------------------------------------------------


@pytest.fixture
def make_daemon(tmp_path: Path, private_bus: PrivateBus) -> Iterator[Any]:
    """Start op-dbusd processes on a given bus; all are stopped after the test.

    It depends on private_bus so that the daemons stop before that bus does.
    """
    started: list[Opdbusd] = []

    def make(
        bus: PrivateBus,
        config: dict[str, Any] | None = None,
        *,
        name: str = "d",
        start: bool = True,
    ) -> Opdbusd:
        daemon = Opdbusd(tmp_path, bus.address, config or base_config(tmp_path), name=name)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(make_daemon: Any, private_bus: PrivateBus) -> Opdbusd:
    result: Opdbusd = make_daemon(private_bus)
    return result


# -- op-dbusd in this event loop (for tests that look inside) ------------------------


@pytest.fixture
def inproc_config(tmp_path: Path) -> Config:
    return parse_config(base_config(tmp_path), tmp_path / "config.json")


@pytest.fixture
async def inproc(
    tmp_path: Path, private_bus: PrivateBus, inproc_config: Config
) -> AsyncIterator[Daemon]:
    config_path = write_config(
        tmp_path / "config.json", inproc_config.model_dump(mode="json", by_alias=True)
    )
    daemon = Daemon(inproc_config, bus_address=private_bus.address, config_path=config_path)
    try:
        await daemon.start()
        yield daemon
    finally:
        await daemon.stop()


@pytest.fixture
async def client(private_bus: PrivateBus) -> AsyncIterator[Client]:
    c = await Client.connect(private_bus.address)
    try:
        yield c
    finally:
        await c.close()


# -- other users -------------------------------------------------------------------


def _ensure_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return False
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True)
        return True


def _ensure_user(name: str, groups: list[str]) -> bool:
    try:
        pwd.getpwnam(name)
        subprocess.run(["usermod", "-G", ",".join(groups), name], check=True)
        return False
    except KeyError:
        argv = [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
        ]
        if groups:
            argv += ["-G", ",".join(groups)]
        subprocess.run([*argv, name], check=True)
        return True


@pytest.fixture(scope="session")
def test_users() -> Iterator[dict[str, str]]:
    """Three real users: plain, admin (group opdbus), policy (let in by an extra bus policy)."""
    if os.geteuid() != 0:
        pytest.skip("creating users and switching to them needs root")
    made_group = _ensure_group(ADMIN_GROUP)
    made = [
        name
        for name, groups in ((PLAIN_USER, []), (ADMIN_USER, [ADMIN_GROUP]), (POLICY_USER, []))
        if _ensure_user(name, groups)
    ]
    yield {"plain": PLAIN_USER, "admin": ADMIN_USER, "policy": POLICY_USER}
    for name in made:
        subprocess.run(["userdel", name], check=False)
    if made_group:
        subprocess.run(["groupdel", ADMIN_GROUP], check=False)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="opdbus-auth-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def auth_bus(test_users: dict[str, str], shared_dir: Path) -> Iterator[PrivateBus]:
    """A bus that knows the test users (made first) and carries polkit's own bus policy."""
    # A site policy letting one more user call op-dbus: the daemon must still say no.
    extra = {"site-grant.conf": user_grant(test_users["policy"], own=False)}
    if POLKIT_BUS_POLICY.is_file():
        extra[POLKIT_BUS_POLICY.name] = POLKIT_BUS_POLICY.read_text()
    bus = start_private_bus(shared_dir / "bus", policy_files=extra)
    (shared_dir / "bus").chmod(0o755)
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture(scope="session")
def nixpkgs_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nixpkgs' real lib/, unpacked from ../shared/vendor (tests skip without it)."""
    tarball = REPO.parent / "shared" / "vendor" / "nixpkgs-lib.tar.gz"
    if not tarball.exists():
        pytest.skip("../shared/vendor/nixpkgs-lib.tar.gz is not beside this clone")
    where = tmp_path_factory.mktemp("nixpkgs-lib")
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(where)], check=True, timeout=60)
    return where / "lib"


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    """A real libvirtd + virtlogd (QEMU driver), one for the session: its first start probes QEMU."""
    if not have_libvirtd():
        pytest.skip("libvirtd is not installed (make deps installs libvirt-daemon-system)")
    daemon = start_private_libvirtd()
    SESSION_DIRS.append(str(daemon.workdir))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def ovs(tmp_path: Path) -> Iterator[PrivateOvs]:
    """A real ovsdb-server + ovs-vswitchd (userspace datapath) of the test's own."""
    if not ovs_installed():
        pytest.skip("Open vSwitch is not installed (make deps installs openvswitch-switch)")
    switch = start_private_ovs(tmp_path / "ovs")
    try:
        yield switch
    finally:
        switch.stop()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.json", base_config(tmp_path))
