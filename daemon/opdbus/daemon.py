"""The composition root: build the services, put them on the bus, run, stop.

Start order matters: state first (audit, jobs: a restart reports interrupted
jobs before anyone can call), then the objects, then the name -- so nobody
sees org.opdbus before it can answer -- then READY=1.

Stop order: refuse new mutating calls, cancel jobs (recorded interrupted),
stop probing, make the audit log durable, release the name, disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opdbus import kinds
from opdbus.backends import host
from opdbus.backends.job_store import JobStore
from opdbus.backends.process import REAPER
from opdbus.backends.state_files import StateFiles
from opdbus.bus.manager import ManagerServices
from opdbus.bus.server import BusServer
from opdbus.config import Config
from opdbus.errors import OpdbusError
from opdbus.services.audit import AuditLog
from opdbus.services.health import BackendHealth
from opdbus.services.jobs import JobManager
from opdbus.services.rebuild import RebuildService
from opdbus.services.resource import ResourceService, Wiring
from opdbus.services.snapshots import SnapshotCache
from opdbus.services.state import StateService
from opdbus.services.sync import SyncService
from opdbus.services.trim import Trimmer
from opdbus.services.validate import HostPaths, Validator
from opdbus.services.workers import Workers

if TYPE_CHECKING:
    from opdbus.services.install import Installer

log = logging.getLogger(__name__)


def _installed_version() -> str:
    try:
        return version("op-dbus")
    except PackageNotFoundError:
        return "0+unknown"


# Read once at import (package metadata is file I/O, never done in the loop).
VERSION = _installed_version()


def sd_notify(message: str) -> None:
    """Tell systemd (or a test) about our state, if it gave us $NOTIFY_SOCKET."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    # Non-blocking: a datagram to a local socket either goes at once or not at all.
    with socket.socket(
        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    ) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as e:
            # Like libsystemd's sd_notify: a listener that went away is not our problem.
            log.debug("could not notify %s: %s", target, e)


class StartupError(Exception):
    """The daemon cannot start; the message is one line saying why and what to do."""


# Directories the daemon keeps under its state dir.
STATE_SUBDIRS = ("audit", "jobs", "rebuild", "sync")


def prepare_state_dir(state: Path) -> None:
    """Make the state dir and its parts, or one clear line about what is in the way."""
    for path in (state, *(state / sub for sub in STATE_SUBDIRS)):
        try:
            path.mkdir(mode=0o750, parents=True, exist_ok=True)
        except FileExistsError:
            raise StartupError(
                f"{path} is in the state directory's way: it exists and is not a directory "
                "(move it aside, or set state_dir)"
            ) from None
        except OSError as e:
            raise StartupError(f"cannot use the state directory {path}: {e.strerror}") from None


def lazy_installer(
    config: Config, sync: SyncService, rebuild: RebuildService
) -> Callable[[], Awaitable[Installer]]:
    """The installer, imported (in a thread) and made on its first use: start-up
    does not pay for what a host runs once."""
    made: list[Installer] = []
    load = kinds.Lazy("opdbus.services.install", "make", also=("opdbus.models.install",))

    async def get() -> Installer:
        if not made:
            make = await load.load()
            made.append(make(config.paths, config.install, sync, rebuild))
        return made[0]

    return get


class Daemon:
    def __init__(self, config: Config, *, bus_address: str, config_path: Path) -> None:
        self.config = config
        self.config_path = config_path
        state = config.state_dir
        self.audit = AuditLog(state / "audit", enabled=self.config.audit_enabled)
        self.jobs = JobManager(JobStore(state / "jobs"), config.jobs, self.audit)
        self.server = BusServer(bus_address, config.auth, self.audit)
        # Expensive checks of caller input (profiles, documents), off the loop.
        self.checks = Workers("check", threads=1)
        self.trimmer = Trimmer(host.trim_memory)
        self.health: BackendHealth | None = None
        # Every running kind of resource (opdbus.kinds), by name, in start order.
        self.started: dict[str, ResourceService[Any]] = {}
        self.state: StateService | None = None
        # Awaited once org.opdbus is owned (the sandbox announces its address).
        self.ready_hooks: list[Callable[[], Awaitable[None]]] = []
        self._stopped = False
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # Before any child: whatever we start must end with us, even on SIGKILL.
        await asyncio.to_thread(REAPER.ensure_started)
        await asyncio.to_thread(prepare_state_dir, self.config.state_dir)
        await self.audit.open()
        await self.jobs.start()
        await self.server.connect()
        self.server.ctx.on_large_call = self.trimmer.note
        self.health = BackendHealth(
            self.config,
            bus_detail=f"connected to {self.server.address}",
            backends=kinds.backends(self.config, self.server.probe_polkit),
        )
        self.snapshots = SnapshotCache(self.config.cache, self.config.state_dir)
        await self.snapshots.start()
        sync = SyncService(
            self.config.sync,
            self.config.state_dir,
            self.config.paths.source_dir,
            self.config_path.parent,
            self.snapshots,
        )
        await sync.start()
        validator = Validator(
            self.config, HostPaths(config_file=self.config_path), self.health, self.audit
        )
        wiring = Wiring(self.config, self.jobs, self.checks, self.health, self.started)
        await kinds.start_all(kinds.enabled(self.config), wiring)
        self.state = StateService(
            self.config.state,
            self.config.mode,
            await kinds.providers(self.started),
            kinds.provider_modes(),
            self.jobs,
            self.checks,
            StateFiles(self.config.state_dir / "state"),
            self.snapshots,
        )
        rebuild = RebuildService(
            self.config.rebuild, self.config.state_dir, self.config.paths.flake_dir
        )
        self.server.serve(
            ManagerServices(
                version=VERSION,
                mode=self.config.mode,
                jobs=self.jobs,
                audit=self.audit,
                checks=self.checks,
                health=self.health,
                validator=validator,
                sync=sync,
                rebuild=rebuild,
                installer=lazy_installer(self.config, sync, rebuild),
                kinds=self.started,
                snapshots=self.snapshots,
                in_mode=frozenset(kind.name for kind in kinds.enabled(self.config)),
                menu_timeout=self.config.menu.autostart_timeout_seconds,
                libvirt_uri=self.config.libvirt.uri,
                lxc_path=str(self.config.lxc.path),
            ),
            kinds.exported(self.started),
            self.state,
            await asyncio.to_thread(host.read_machine_id),
        )
        await self.state.start()
        self.health.start()
        await self.server.own_name()
        log.info(
            "op-dbusd %s ready on %s (mode %s, state in %s)",
            VERSION,
            self.server.address,
            self.config.mode.value,
            self.config.state_dir,
        )
        for hook in self.ready_hooks:
            await hook()
        sd_notify("READY=1\nSTATUS=serving org.opdbus")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        sd_notify("STOPPING=1")
        log.info("stopping: no new calls, interrupting running jobs")
        with contextlib.suppress(AssertionError):
            self.server.stop_accepting()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.state is not None:
            await self.state.stop()
        await self.jobs.shutdown()
        for service in reversed(list(self.started.values())):
            await service.stop()
        if self.health is not None:
            await self.health.stop()
        await self.audit.close()
        await self.checks.close()
        await self.trimmer.close()
        await self.server.close()
        log.info("stopped")

    def _sighup(self) -> None:
        """SIGHUP: apply the state file again (as Reload() does)."""
        if self.state is None:
            return
        task = asyncio.ensure_future(self._reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload(self) -> None:
        assert self.state is not None
        try:
            await self.state.reload(uid=0)
        except OpdbusError as e:
            log.error("SIGHUP: the state file was not applied: %s", e.message)

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT or the bus goes away, stop. Returns the exit status."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        try:
            await self.start()
            lost = asyncio.create_task(self.server.disconnected.wait(), name="bus-lost")
            asked = asyncio.create_task(stop.wait(), name="signal-watch")
            await asyncio.wait({lost, asked}, return_when=asyncio.FIRST_COMPLETED)
            status = 0 if asked.done() else 1
            for task in (lost, asked):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return status
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await self.stop()
