"""LXC containers: a cache of every container in the lxcpath, fed by lxc-monitor, and the verbs.

The cache is what the bus shows: listing runs no tool. ``lxc-monitor``
reports every state change (ours, ``lxc-start``/``lxc-stop`` by hand, an init
dying); the new state is stored at once and the container re-read (PID,
addresses) in the background. Running containers' usage is refreshed every
``stats_interval_seconds``.

A failed create leaves nothing behind: the container it made is destroyed
(rootfs and config) before the error is reported.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from opdbus.backends import files
from opdbus.backends.lxc import lxcconf
from opdbus.backends.lxc.monitor import Monitor
from opdbus.backends.lxc.tools import Info, Lxc
from opdbus.config import LxcConfig
from opdbus.errors import AlreadyExists, Busy, Conflict, InvalidArgs, NotFound, Timeout
from opdbus.models.container import (
    ContainerInfo,
    ContainerMeta,
    ContainerState,
    CreateContainerOptions,
    Template,
)
from opdbus.names import container_path
from opdbus.services.jobs import JobBody, JobContext, JobManager, JobOutcome
from opdbus.services.resource import ResourceService, Wiring

log = logging.getLogger(__name__)

FIRST_ID = 100  # the seed's containers are 100-102
READ_CONCURRENCY = 8
READ_TRIES = 3  # reads of one container while its state keeps changing, before the events win
OUTPUT_MAX = 1024 * 1024  # Exec returns at most this much of stdout and of stderr
STATE_WAIT = 15.0
READ_WAIT = 2.0  # for the refresher's read after a state event, before reading ourselves


def ovs_env(remote: str | None) -> dict[str, str] | None:
    """LXC adds a veth to an OVS bridge with ovs-vsctl, which finds the database
    through OVS_RUNDIR: point it at the daemon's own ovsdb socket's directory."""
    if remote is None or not remote.startswith("unix:"):
        return None
    socket = Path(remote.removeprefix("unix:"))
    if socket.name != "db.sock":
        return None
    return {**os.environ, "OVS_RUNDIR": str(socket.parent)}


class ContainerService(ResourceService[ContainerInfo]):
    kind = "containers"

    def __init__(
        self,
        config: LxcConfig,
        state_dir: Path,
        jobs: JobManager,
        *,
        ovsdb_remote: str | None,
        ovs_bridges: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        super().__init__()  # the cache is keyed by name
        self.config = config
        self.ovs_bridges = ovs_bridges  # the OVS bridges the network service knows
        self.state_dir = state_dir
        self.jobs = jobs
        self.lxc = Lxc(config.path, env=ovs_env(ovsdb_remote))
        self.monitor = Monitor(config.path, on_change=self._event, on_connected=self.resync)
        self._creating: set[str] = set()
        # A marker per create in progress, so a start after a crash finds what it left.
        self._creating_dir = state_dir / "lxc-creating"
        self._reading: dict[str, asyncio.Lock] = {}
        # Bumped by every state lxc-monitor reports: a read that saw it change
        # while LXC was asked may hold the state from before it (see refresh).
        self._changes: dict[str, int] = {}

    # -- running -------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.config.path.mkdir, parents=True, exist_ok=True)
        await self._remove_half_made()
        await self._resync()
        self._spawn(self.monitor.run(), "lxc-monitor")
        self._start_refresher()
        self._every(self.config.stats_interval_seconds, self._read_running, "lxc-stats")
        # Autostart runs once per boot: a daemon restart must not start what a user stopped.
        if await asyncio.to_thread(files.first_since_boot, self.state_dir / "autostart.boot"):
            self._spawn(self._autostart(), "lxc-autostart")

    def _event(self, name: str, what: str) -> None:
        try:
            state = ContainerState(what.lower())
        except ValueError:
            state = None  # "exited with status [N]": STOPPING/STOPPED follow
        info = self.cache.items.get(name)
        if state is not None and info is not None:
            self._changes[name] = self._changes.get(name, 0) + 1
            self.cache.store(name, info.model_copy(update={"state": state}))
        self.mark(name)

    async def _resync(self) -> None:
        await self._read_all()

    async def _refresh_some(self, keys: list[str]) -> None:
        await self._read_some(keys)

    async def _read_all(self) -> None:
        names = await asyncio.to_thread(self.lxc.names)
        for gone in set(self.cache.items) - set(names):
            self.cache.forget(gone)
        await self._read_some(names)

    async def _read_some(self, names: list[str]) -> None:
        limit = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(name: str) -> None:
            async with limit:
                await self.refresh(name)

        # Every read finishes (none is left running on its own); then the first
        # failure, if any, goes to the refresh loop, which tries again later.
        results = await asyncio.gather(*(one(name) for name in names), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def refresh(self, name: str) -> ContainerInfo | None:
        """Read one container again (config and lxc-info); store or forget it.

        Reads of one container take turns: a read begun before a change must
        not store its older answer after a read begun after it.
        """
        lock = self._reading.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._creating:
                return None  # half made: it appears when its create job is done
            for _ in range(READ_TRIES):
                begun = self._changes.get(name, 0)
                try:
                    info = await self._read(name)
                except OSError as e:
                    log.warning("reading container %s: %s", name, e)
                    return self.cache.items.get(name)
                # lxc-monitor reported a new state while LXC was asked: the answer
                # may be from before it (FROZEN read, then RUNNING reported by the
                # Unfreeze); storing it would undo the newer state. Ask again.
                if self._changes.get(name, 0) == begun:
                    break
            else:
                return self.cache.items.get(name)  # it keeps changing: the events say it
            if info is None:
                self.cache.forget(name)
            else:
                self.cache.store(name, info)
        if info is None and not lock.locked():
            self._reading.pop(name, None)
            self._changes.pop(name, None)
        return info

    async def _read(self, name: str) -> ContainerInfo | None:
        directory = self.config.path / name
        config = directory / "config"
        if not await asyncio.to_thread(config.is_file):
            return None
        entries = await asyncio.to_thread(lxcconf.read, config)
        meta = await asyncio.to_thread(lxcconf.read_meta, directory)
        live = await self.lxc.info(name)
        return _info(name, entries, meta, live)

    async def _read_running(self) -> None:
        running = [
            name for name, info in self.cache.items.items() if info.state is ContainerState.RUNNING
        ]
        await self._read_some(running)

    async def _remove_half_made(self) -> None:
        """Containers whose create was cut short by a crash: never finished, never shown; gone."""
        for name in await asyncio.to_thread(files.marks, self._creating_dir):
            log.warning("removing container %s: its creation was cut short", name)
            await self._remove(name)
            await asyncio.to_thread(files.unmark, self._creating_dir, name)

    # -- autostart -------------------------------------------------------------------

    async def _autostart(self) -> None:
        """Containers marked autostart, in id order (Phoenix: core ids first), each a job."""
        wanted = sorted(
            (info for info in self.cache.items.values() if info.autostart),
            key=lambda info: (info.id or 1 << 40, info.name),
        )
        for info in wanted:
            if info.state is not ContainerState.STOPPED:
                continue
            job = await self.jobs.submit(
                f"Start {info.name} (autostart)",
                self.start_job(info.name),
                targets=[container_path(info.name)],
                uid=0,
            )
            await job.finished.wait()
            log.info("autostart %s: %s", info.name, job.record.result)

    # -- reading -------------------------------------------------------------------

    def get(self, name: str) -> ContainerInfo:
        info = self.cache.items.get(name)
        if info is None:
            raise NotFound(f"no container {name}")
        return info

    def all(self) -> list[ContainerInfo]:
        return sorted(self.cache.items.values(), key=lambda info: (info.id, info.name))

    def _idle(self, name: str) -> ContainerInfo:
        info = self.get(name)
        holder = self.jobs.active_on(container_path(name))
        if holder is not None:
            raise Busy(f"{name} is busy with job {holder.id} ({holder.record.operation})")
        return info

    async def _wait_state(self, name: str, state: ContainerState, *, read: bool = False) -> None:
        """Until lxc-monitor says ``name`` is ``state``; ``read``: then until LXC is read so.

        The event carries the state alone and marks the container to be read
        again: with ``read`` that read, the refresher's, is awaited (a running
        container has a PID, a stopped one none) rather than one of our own
        queued behind it -- one lxc-info fewer per start. A state that moves
        on meanwhile (an init that exits at once) ends the wait too.
        """
        reached = await self.cache.wait_for(
            name, lambda i: i is not None and i.state is state, STATE_WAIT
        )
        if not reached:
            info = await self.refresh(name)  # an event lost? ask LXC itself
            if info is None or info.state is not state:
                raise Timeout(f"{name} did not become {state.value} within {STATE_WAIT:g} s")
            return

        def read_so(info: ContainerInfo | None) -> bool:
            if info is None or info.state is not state:
                return True
            return (info.pid > 0) == (state is not ContainerState.STOPPED)

        if read and not await self.cache.wait_for(name, read_so, READ_WAIT):
            await self.refresh(name)  # the refresher is slow (backing off): read it here

    # -- creating ------------------------------------------------------------------

    async def prepare_create(
        self, name: str, opts: CreateContainerOptions, *, job: bool = False
    ) -> int:
        """Checks a caller hears about at once (before a job); returns the id.

        ``job``: called by the job that already holds the container's target.
        """
        if not job:
            self.jobs.check_idle(container_path(name), name)
        if name in self.cache.items or name in self._creating:
            raise AlreadyExists(f"a container named {name} already exists")
        if await asyncio.to_thread((self.config.path / name).exists):
            raise AlreadyExists(f"{self.config.path / name} already exists")
        ids = {info.id for info in self.cache.items.values() if info.id}
        if opts.id is not None and opts.id in ids:
            owner = next(i.name for i in self.cache.items.values() if i.id == opts.id)
            raise AlreadyExists(f"id {opts.id} is taken by {owner}")
        cid = (
            opts.id
            if opts.id is not None
            else next(i for i in range(FIRST_ID, 1 << 30) if i not in ids)
        )
        if opts.template is Template.DOWNLOAD and not self.config.download_server:
            raise InvalidArgs(
                "the download template needs a mirror: set lxc.download_server in the config"
            )
        await asyncio.to_thread(_host_checks, opts, set(self.ovs_bridges()), cid)
        return cid

    def create_job(
        self, name: str, cid: int, opts: CreateContainerOptions, *, owner: str = ""
    ) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            directory = self.config.path / name
            # Hidden until configured (lxc-monitor may report it before); a second
            # create of the same name meanwhile is Busy on the job's target.
            self._creating.add(name)
            await asyncio.to_thread(files.mark, self._creating_dir, name)
            try:
                ctx.log(f"creating {name} from the {opts.template.value} template")
                await self.lxc.create(name, opts.template.value, self._template_args(opts))
                ctx.progress(0.6)
                settings = lxcconf.settings(name, cid, opts)
                meta = ContainerMeta(
                    id=cid,
                    template=opts.template.value,
                    ipv4=opts.ipv4,
                    gateway=opts.gateway,
                    owner=owner,
                )
                await asyncio.to_thread(self._configure, directory, settings, meta, opts)
                ctx.log(f"configured {name} (id {cid})")
                self._creating.discard(name)
                await self.refresh(name)
                if opts.start:
                    await self._start(name)
                    ctx.log(f"started {name}")
            except BaseException:
                ctx.log("failed: removing what was made")
                await asyncio.shield(self._remove(name))
                raise
            finally:
                self._creating.discard(name)
                await asyncio.shield(asyncio.to_thread(files.unmark, self._creating_dir, name))
            return JobOutcome(
                f"{name} created" + (" and started" if opts.start else ""),
                {"name": name, "id": cid, "path": container_path(name)},
            )

        return run

    def _template_args(self, opts: CreateContainerOptions) -> list[str]:
        if opts.template is Template.DOWNLOAD:
            return [
                "--dist", opts.distribution, "--release", opts.release, "--arch", "amd64",
                "--server", self.config.download_server or "",
            ]  # fmt: skip
        return []

    @staticmethod
    def _configure(
        directory: Path,
        settings: list[tuple[str, str]],
        meta: ContainerMeta,
        opts: CreateContainerOptions,
    ) -> None:
        lxcconf.rewrite(directory / "config", settings)
        lxcconf.write_meta(directory, meta)
        if opts.ipv4 and opts.template is Template.BUSYBOX:
            lxcconf.static_addressing(directory / "rootfs")

    async def _remove(self, name: str) -> None:
        """Best effort: no container ``name`` left, whatever state it was in."""
        directory = self.config.path / name
        try:
            if await asyncio.to_thread((directory / "config").is_file):
                await self.lxc.stop(name, timeout=5, kill=True)
        except Exception as e:
            log.debug("lxc-stop %s after a failed create: %s", name, e)  # it was not running
        try:
            if await asyncio.to_thread((directory / "config").is_file):
                await self.lxc.destroy(name)
        except Exception as e:
            log.warning("lxc-destroy %s after a failed create: %s", name, e)
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        await self.refresh(name)

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self, name: str) -> None:
        await self.lxc.start(name)
        await self._wait_state(name, ContainerState.RUNNING, read=True)

    def start_job(self, name: str) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(name)
            if info.state is not ContainerState.STOPPED:
                raise Conflict(f"{name} is {info.state.value}, not stopped")
            await self._start(name)
            return JobOutcome(f"{name} started")

        return run

    async def _stop(self, name: str, timeout: float | None, force: bool) -> None:
        wait = self.config.stop_timeout_seconds if timeout is None else timeout
        await self.lxc.stop(name, timeout=wait, kill=force)
        # Read, not only reported: the PID, usage and addresses go with the state.
        await self._wait_state(name, ContainerState.STOPPED, read=True)

    def stop_job(self, name: str, *, timeout: float | None, force: bool) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(name)
            if info.state is ContainerState.STOPPED:
                raise Conflict(f"{name} is not running")
            if not force:
                ctx.log(f"asking {name} to halt; killed if it has not within the timeout")
            await self._stop(name, timeout, force)
            return JobOutcome(f"{name} stopped")

        return run

    def restart_job(self, name: str) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            if self.get(name).state is not ContainerState.STOPPED:
                await self._stop(name, None, False)
                ctx.log(f"{name} stopped")
            await self._start(name)
            return JobOutcome(f"{name} restarted")

        return run

    async def freeze(self, name: str) -> None:
        info = self._idle(name)
        if info.state is not ContainerState.RUNNING:
            raise Conflict(f"{name} is {info.state.value}: only a running container freezes")
        await self.lxc.freeze(name)
        await self._wait_state(name, ContainerState.FROZEN)

    async def unfreeze(self, name: str) -> None:
        info = self._idle(name)
        if info.state is not ContainerState.FROZEN:
            raise Conflict(f"{name} is {info.state.value}, not frozen")
        await self.lxc.unfreeze(name)
        await self._wait_state(name, ContainerState.RUNNING)

    def delete_job(self, name: str, *, force: bool) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(name)
            if info.state is not ContainerState.STOPPED:
                if not force:
                    raise Conflict(f"{name} is {info.state.value}: stop it first, or use force")
                await self._stop(name, None, True)
                ctx.log(f"{name} stopped")
            await self.lxc.destroy(name)
            await self.refresh(name)
            return JobOutcome(f"{name} deleted")

        return run

    async def reconfigure(
        self, ctx: JobContext, name: str, cid: int, opts: CreateContainerOptions
    ) -> None:
        """Give an existing container new settings (network, addresses, limits, id): it is
        stopped while its config is rewritten and started again if it ran."""
        info = self.get(name)
        ran = info.state is not ContainerState.STOPPED
        if ran:
            await self._stop(name, None, True)
            ctx.log(f"  {name} stopped to change its settings")
        directory = self.config.path / name
        old = await asyncio.to_thread(lxcconf.read_meta, directory)
        meta = ContainerMeta(
            id=cid,
            template=old.template if old else info.template or opts.template.value,
            ipv4=opts.ipv4,
            gateway=opts.gateway,
            owner=old.owner if old else "",
        )
        settings = lxcconf.settings(name, cid, opts)

        def write() -> None:
            lxcconf.rewrite(directory / "config", settings, lxcconf.limit_keys_all())
            lxcconf.write_meta(directory, meta)
            if opts.ipv4 and meta.template == Template.BUSYBOX.value:
                lxcconf.static_addressing(directory / "rootfs")

        await asyncio.to_thread(write)
        await self.refresh(name)
        if ran:
            await self._start(name)
            ctx.log(f"  {name} started again")

    async def set_autostart(self, name: str, on: bool, *, job: bool = False) -> None:
        """``job``: called by the job that holds the container (the desired state's apply)."""
        if not job:
            self._idle(name)
        await asyncio.to_thread(lxcconf.set_autostart, self.lxc.config_path(name), on)
        await self.refresh(name)

    async def exec(self, name: str, argv: list[str], timeout: float) -> tuple[int, str, str]:
        info = self.get(name)
        if info.state is not ContainerState.RUNNING:
            raise Conflict(f"{name} is {info.state.value}: Exec needs it running")
        if not argv or not argv[0]:
            raise InvalidArgs("Exec needs a command: argv[0] is empty")
        result = await self.lxc.attach(name, argv, timeout=timeout)
        return result.status, result.stdout[:OUTPUT_MAX], result.stderr[:OUTPUT_MAX]


def _host_checks(opts: CreateContainerOptions, ovs_bridges: set[str], cid: int) -> None:
    if opts.template is Template.BUSYBOX and shutil.which("busybox") is None:
        raise InvalidArgs("the busybox template needs busybox on the host (apt busybox-static)")
    linux_bridge = Path(f"/sys/class/net/{opts.bridge}/bridge")
    if opts.bridge and opts.bridge not in ovs_bridges and not linux_bridge.is_dir():
        raise NotFound(f"no bridge {opts.bridge} on this host (neither OVS nor Linux)")
    veth = opts.veth or f"vi{cid}"
    if opts.bridge and Path(f"/sys/class/net/{veth}").exists():
        # LXC would only say "Failed to spawn container" at the first start.
        raise AlreadyExists(
            f"interface {veth} already exists on this host (an OVS port or another "
            f"container's veth): the container's host-side veth needs that name; "
            f"choose another with --veth (option veth)"
        )


def _info(
    name: str,
    entries: list[tuple[str, str]],
    meta: ContainerMeta | None,
    live: Info,
) -> ContainerInfo:
    memory_key, cpu_key = lxcconf.limit_keys()
    memory = lxcconf.first(entries, memory_key)
    cpus = 0
    quota = lxcconf.first(entries, cpu_key).split()
    if quota and quota[0].isdigit():
        period = (
            quota[1] if len(quota) > 1 else lxcconf.first(entries, "lxc.cgroup.cpu.cfs_period_us")
        )
        cpus = int(quota[0]) // int(period or 100000)
    order = lxcconf.first(entries, "lxc.start.order")
    try:
        state = ContainerState(live.state.lower())
    except ValueError:
        state = ContainerState.STOPPED
    return ContainerInfo(
        name=name,
        id=meta.id if meta else int(order) if order.isdigit() else 0,
        state=state,
        pid=live.pid if state is not ContainerState.STOPPED else 0,
        template=meta.template if meta else "",
        bridge=lxcconf.first(entries, "lxc.net.0.link"),
        veth=lxcconf.first(entries, "lxc.net.0.veth.pair"),
        ipv4=live.ipv4,
        memory_limit=int(memory) if memory.isdigit() else 0,
        cpus=cpus,
        autostart=lxcconf.first(entries, "lxc.start.auto") == "1",
        memory_used=live.memory_used,
        cpu_time_ns=live.cpu_time_ns,
        ipv4_config=tuple(meta.ipv4) if meta else (),
        gateway=(meta.gateway or "") if meta else "",
        owner=meta.owner if meta else "",
    )


async def start(w: Wiring) -> ContainerService | None:
    """The containers kind, started (kinds.py); None when LXC cannot work here."""
    probe = await w.health.probe("lxc")
    if not probe.available:
        log.warning("containers off: %s", probe.detail)
        return None
    network = w.started.get("network")  # a port on an OVS bridge needs to know the bridges
    containers = ContainerService(
        w.config.lxc,
        w.state_dir,
        w.jobs,
        ovsdb_remote=w.config.ovsdb.remote if network is not None else None,
        ovs_bridges=network.cache.items.keys if network is not None else tuple,
    )
    await containers.start()
    return containers
