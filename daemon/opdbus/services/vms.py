"""Virtual machines: a cache of every libvirt domain, fed by events, and the verbs.

The cache is what the bus shows: listing costs no libvirt call. libvirt's
events (whoever caused them: us, `virsh` by hand, a guest powering off) mark
a domain dirty; one task re-reads the dirty domains in a libvirt thread and
tells the observers what changed. After libvirtd comes back the whole list is
read again and diffed.

A failed create leaves nothing behind: volumes it made are deleted and a
domain it defined is undefined before the error is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from opdbus.backends.files import atomic_write
from opdbus.backends.host import meminfo
from opdbus.backends.libvirt import domains, ops
from opdbus.backends.libvirt.connection import LibvirtConnection
from opdbus.backends.libvirt.domain_xml import DiskSource, Target, build_domain, to_xml
from opdbus.backends.state_files import read_text
from opdbus.config import LibvirtConfig
from opdbus.errors import (
    AlreadyExists,
    BackendUnavailable,
    Busy,
    Conflict,
    InvalidArgs,
    NotFound,
    NotSupported,
    Timeout,
)
from opdbus.models.document import check_document, check_size, parse_json
from opdbus.models.vm import VmInfo, VmName, VmProfile, VmState
from opdbus.names import vm_name_target, vm_path
from opdbus.services.jobs import JobBody, JobContext, JobManager, JobOutcome
from opdbus.services.resource import ResourceService, Wiring
from opdbus.services.workers import Workers

log = logging.getLogger(__name__)


OPEN_WAIT = 3.0
PROFILE_MAX_BYTES = 256 * 1024  # the largest real profile is a few KB


def parse_profile(text: str, what: str) -> VmProfile:
    """A profile from JSON; InvalidArgs names every problem with its JSON path."""
    return check_document(VmProfile, parse_json(text, what, max_bytes=PROFILE_MAX_BYTES), what)


_NAME_CHECK: TypeAdapter[str] = TypeAdapter(VmName)


def snapshot_name(name: str) -> str:
    try:
        return str(_NAME_CHECK.validate_python(name))
    except ValidationError as e:
        raise InvalidArgs(f"snapshot name: {e.errors()[0]['msg']}") from None


class VmService(ResourceService[VmInfo]):
    kind = "VMs"

    def __init__(
        self, config: LibvirtConfig, state_dir: Path, jobs: JobManager, checks: Workers
    ) -> None:
        super().__init__()  # the cache is keyed by UUID
        self.config = config
        self._checks = checks  # expensive checks anyone may ask for, on threads of their own
        self.pool_dir = config.pool_dir or state_dir / "images"
        self.jobs = jobs
        self.vms = self.cache.items
        self.on_status: list[Callable[[bool, str], None]] = []
        # The VM last started through us: the console menu starts it again at
        # boot after a countdown (seed 003, "Boot menu behavior").
        self.last_run = ""
        self._last_run_file = state_dir / "last-run-vm"
        self.on_last_run: list[Callable[[str], None]] = []
        self.conn = LibvirtConnection(
            config.uri, on_status=self._status, on_open=self.resync, on_domain=self.mark
        )

    # -- running -------------------------------------------------------------------

    async def start(self) -> None:
        self.last_run = (await asyncio.to_thread(read_text, self._last_run_file) or "").strip()
        await self.conn.start()
        self._start_refresher()
        self._every(self.config.stats_interval_seconds, self._read_stats, "vm-stats")
        await self.conn.wait_open(OPEN_WAIT)
        if self.conn.connected:
            await self._resync()

    async def stop(self) -> None:
        await super().stop()
        await self.conn.stop()

    def _status(self, ok: bool, detail: str) -> None:
        for callback in self.on_status:
            callback(ok, detail)

    async def _resync(self) -> None:
        infos = await self.conn.call(domains.read_all, "listing domains")
        seen = {info.uuid for info in infos}
        for info in infos:
            self._store(info)
        for uuid in [u for u in self.vms if u not in seen]:
            self._forget(uuid)

    async def _refresh_some(self, keys: list[str]) -> None:
        for uuid in keys:
            await self.refresh(uuid)

    async def refresh(self, uuid: str) -> VmInfo | None:
        info = await self.conn.call(lambda c: domains.read_one(c, uuid), "reading a domain")
        if info is None:
            self._forget(uuid)
        else:
            self._store(info)
        return info

    async def _read_stats(self) -> None:
        if not self.conn.connected or not any(
            info.state is VmState.RUNNING for info in self.vms.values()
        ):
            return
        values = await self.conn.call(domains.stats, "reading domain statistics")
        for uuid, found in values.items():
            info = self.vms.get(uuid)
            if info is not None and found:
                self._store(info.model_copy(update=found))

    def _store(self, info: VmInfo) -> None:
        self.cache.store(info.uuid, info)

    def _forget(self, uuid: str) -> None:
        self.cache.forget(uuid)

    # -- reading -------------------------------------------------------------------

    def get(self, uuid: str) -> VmInfo:
        info = self.vms.get(uuid)
        if info is None:
            raise NotFound(f"no VM {uuid}")
        return info

    def all(self) -> list[VmInfo]:
        return sorted(self.vms.values(), key=lambda info: info.name)

    def by_name(self, name: str) -> VmInfo | None:
        return next((info for info in self.vms.values() if info.name == name), None)

    async def get_xml(self, uuid: str) -> str:
        self.get(uuid)
        return await self.conn.call(lambda c: ops.xml(c, uuid), "reading the domain XML")

    async def addresses(self, uuid: str, source: str) -> ops.Addresses:
        """The VM's IP addresses as ``source`` knows them; "" tries the DHCP leases
        of libvirt's networks, then the host's ARP table (neither needs the guest's
        help; ``agent`` asks the QEMU guest agent)."""
        info = self.get(uuid)
        if source and source not in ops.ADDRESS_SOURCES:
            raise InvalidArgs(
                f"unknown address source {source!r}: use lease, agent or arp (or '' for "
                "lease, then arp)"
            )
        if info.state is not VmState.RUNNING:
            raise Conflict(f"{info.name} is {info.state.value}: only a running VM has addresses")
        found: ops.Addresses = []
        for each in [source] if source else ["lease", "arp"]:
            found = await self.conn.call(
                functools.partial(ops.addresses, uuid=uuid, source=each),
                f"asking {each} for addresses",
            )
            if any(addrs for _, _, addrs in found):
                break
        return found

    async def list_snapshots(self, uuid: str) -> list[ops.Snapshot]:
        self.get(uuid)
        return await self.conn.call(lambda c: ops.snapshots(c, uuid), "listing snapshots")

    # -- profiles ------------------------------------------------------------------

    async def _target(self, profile: VmProfile) -> Target:
        return _target_for(self.conn.capabilities, profile, self.config.uri)

    async def check_profile(
        self, text: str, *, trusted: bool = True
    ) -> tuple[VmProfile, str, list[str]]:
        """Validate a profile against this host; (profile, domain XML, warnings).

        ``trusted`` (an administrator asks): disk paths anywhere are checked for
        existence. Otherwise only paths inside the image directories are looked
        at, so the answer says nothing about the rest of the file system. All of
        it -- parsing, looking at files, building the XML -- runs on the checks
        pool: anyone may call this, with the largest profile there is.
        """
        check_size(text, "profile", PROFILE_MAX_BYTES)  # here: a 10 MB text never leaves the loop
        connected = self.conn.connected
        return await self._checks.run(
            self._check_sync,
            text,
            trusted,
            self.conn.capabilities if connected else None,
            self.conn.detail,
        )

    def _check_sync(
        self, text: str, trusted: bool, capabilities: str | None, detail: str
    ) -> tuple[VmProfile, str, list[str]]:
        profile = parse_profile(text, "profile")
        warnings = self._check_host(profile, trusted=trusted)
        if capabilities is not None:
            target = _target_for(capabilities, profile, self.config.uri)
        else:
            warnings.append(f"libvirt is not connected ({detail}): XML for KVM shown")
            target = Target("kvm", None, None, profile.arch.value)
        if target.domain_type == "test" and profile.arch.value != target.arch:
            warnings.append(
                f"libvirt's test driver simulates {target.arch} guests only; "
                f"the profile keeps arch {profile.arch.value}"
            )
        sources = [
            DiskSource(
                disk.path or str(self.pool_dir / _volume_name(profile.name, i, disk.format.value)),
                disk.format.value,
                disk.bus,
            )
            for i, disk in enumerate(profile.disks)
        ]
        xml = to_xml(build_domain(profile, target=target, disks=sources))
        return profile, xml, warnings

    def _check_host(self, profile: VmProfile, *, trusted: bool) -> list[str]:
        """(Blocking.) What needs the host: image directories, disk paths, memory."""
        images = [
            p for p in (profile.iso_path, profile.cloud_init and profile.cloud_init.seed_path) if p
        ]
        warnings: list[str] = []
        allowed = [Path(os.path.realpath(d)) for d in self.config.iso_dirs]
        for image in images:
            # An untrusted caller's path is judged by its text: resolving it
            # would follow symlinks where the caller cannot look.
            real = Path(os.path.realpath(image) if trusted else os.path.normpath(image))
            if not any(real.is_relative_to(d) for d in allowed):
                raise InvalidArgs(
                    f"{image} is outside the allowed image directories "
                    f"({', '.join(str(d) for d in self.config.iso_dirs)})"
                )
            if not real.is_file():
                raise NotFound(f"{image}: no such file")
        inside = [*allowed, Path(os.path.realpath(self.pool_dir))]
        for disk in profile.disks:
            if disk.path is None:
                continue
            path = Path(os.path.normpath(disk.path))
            if not trusted and not any(path.is_relative_to(d) for d in inside):
                warnings.append(
                    f"disk {disk.path}: not checked (only administrators learn whether "
                    "files outside the image directories exist)"
                )
            elif not path.exists():
                raise NotFound(f"disk {disk.path}: no such file")
        if not self.config.uri.startswith("test:"):
            total_mib = meminfo().get("MemTotal", 0) // (1024 * 1024)
            if total_mib and profile.memory_mb > total_mib:
                raise InvalidArgs(
                    f"memory_mb {profile.memory_mb} is more than this host has ({total_mib} MiB)"
                )
        return warnings

    # -- creating ------------------------------------------------------------------

    async def prepare_create(self, text: str, *, job: bool = False) -> tuple[VmProfile, str]:
        """Checks a caller hears about at once (before a job): returns (profile, new uuid).

        ``job``: called by the job that already holds the name's target.
        """
        profile, _, _ = await self.check_profile(text)
        if not job:
            self.jobs.check_idle(vm_name_target(profile.name), f"VM name {profile.name}")
        if not self.conn.connected:
            raise BackendUnavailable(self.conn.detail)
        if self.by_name(profile.name) is not None:
            raise AlreadyExists(f"a VM named {profile.name} already exists")
        return profile, str(uuidlib.uuid4())

    def _domain_xml(
        self,
        profile: VmProfile,
        target: Target,
        disks: list[DiskSource],
        uuid: str,
        owner: str = "",
    ) -> str:
        return to_xml(
            build_domain(
                profile,
                target=target,
                disks=disks,
                uuid=uuid,
                profile_json=profile.model_dump_json(exclude_defaults=True),
                owner=owner,
            )
        )

    def create_job(self, profile: VmProfile, uuid: str, *, start: bool, owner: str = "") -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            target = await self._target(profile)
            made: list[str] = []
            try:
                sources = await self._disks(ctx, profile, made, reuse=False)
                xml = self._domain_xml(profile, target, sources, uuid, owner)
                await self.conn.call(
                    lambda c: ops.define(c, xml, autostart=profile.autostart),
                    f"defining {profile.name}",
                )
                ctx.log(f"defined {profile.name} ({uuid})")
                ctx.progress(0.7)
                if start:
                    await self.conn.call(lambda c: ops.start(c, uuid), f"starting {profile.name}")
                    ctx.log(f"started {profile.name}")
                    await self._started(profile.name)
            except BaseException:
                ctx.log("failed: removing what was made")
                await asyncio.shield(self._undo_create(uuid, made))
                raise
            await self.refresh(uuid)
            return JobOutcome(
                f"{profile.name} {'created and started' if start else 'created'}",
                {"uuid": uuid, "path": vm_path(uuid), "volumes": made},
            )

        return run

    async def _disks(
        self, ctx: JobContext | None, profile: VmProfile, made: list[str], *, reuse: bool
    ) -> list[DiskSource]:
        """Each profile disk as a file: its path, or a pool volume (new ones go in ``made``)."""
        sources: list[DiskSource] = []
        for i, disk in enumerate(profile.disks):
            fmt = disk.format.value
            if disk.path is not None:
                sources.append(DiskSource(disk.path, fmt, disk.bus))
                continue
            name = _volume_name(profile.name, i, fmt)
            find_or_make = functools.partial(
                ops.volume,
                pool_name=self.config.pool,
                pool_dir=self.pool_dir,
                name=name,
                size_bytes=int((disk.size_gb or 0) * 1024**3),
                fmt=fmt,
                reuse=reuse,
            )
            path, new = await self.conn.call(find_or_make, f"volume {name}")
            if new:
                made.append(path)
                if ctx is not None:
                    ctx.log(f"created volume {path} ({disk.size_gb:g} GB {fmt})")
            sources.append(DiskSource(path, fmt, disk.bus))
        return sources

    async def _undo_create(self, uuid: str | None, volumes: list[str]) -> None:
        try:
            await self.conn.call(
                lambda c: ops.remove_all_traces(c, uuid, volumes), "cleaning up a failed create"
            )
        except Exception as e:
            log.error("cleaning up after a failed create: %s", e)
        if uuid is not None:
            with contextlib.suppress(Exception):
                await self.refresh(uuid)

    # -- lifecycle -----------------------------------------------------------------

    async def _verb(self, verb: Callable[[Any, str], None], uuid: str, what: str) -> None:
        """One libvirt verb (from backends.libvirt.ops) on a domain."""
        await self.conn.call(lambda c: verb(c, uuid), what)

    def _idle(self, uuid: str) -> VmInfo:
        info = self.get(uuid)
        holder = self.jobs.active_on(vm_path(uuid))
        if holder is not None:
            raise Busy(f"{info.name} is busy with job {holder.id} ({holder.record.operation})")
        return info

    def start_job(self, uuid: str) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(uuid)
            if info.state in (VmState.RUNNING, VmState.BLOCKED):
                raise Conflict(f"{info.name} is already running")
            if info.state is VmState.PAUSED:
                raise Conflict(f"{info.name} is suspended: resume it instead")
            await self._verb(ops.start, uuid, f"starting {info.name}")
            await self.refresh(uuid)
            await self._started(info.name)
            return JobOutcome(f"{info.name} started")

        return run

    async def _started(self, name: str) -> None:
        if name != self.last_run:
            data = f"{name}\n".encode()
            await asyncio.to_thread(atomic_write, self._last_run_file, data, mode=0o644)
            self.last_run = name
            for callback in self.on_last_run:
                callback(name)

    def stop_job(self, uuid: str) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(uuid)
            if info.state is VmState.SHUTOFF:
                raise Conflict(f"{info.name} is not running")
            await self._verb(ops.destroy, uuid, f"stopping {info.name}")
            await self.refresh(uuid)
            return JobOutcome(f"{info.name} stopped")

        return run

    def shutdown_job(self, uuid: str, *, timeout: float | None, force: bool) -> JobBody:
        wait = self.config.shutdown_timeout_seconds if timeout is None else timeout

        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(uuid)
            if info.state is VmState.SHUTOFF:
                raise Conflict(f"{info.name} is not running")
            await self._verb(ops.shutdown, uuid, f"shutting down {info.name}")
            ctx.log(f"asked {info.name} to shut down (ACPI); waiting up to {wait:g} s")
            off = await self.cache.wait_for(
                uuid, lambda i: i is None or i.state is VmState.SHUTOFF, wait
            )
            if off:
                return JobOutcome(f"{info.name} shut down")
            if not force:
                raise Timeout(
                    f"{info.name} did not shut down within {wait:g} s (does its guest answer "
                    "ACPI?); use force, or Stop"
                )
            ctx.log(f"{info.name} ignored the request: stopping it")
            await self._verb(ops.destroy, uuid, f"stopping {info.name}")
            await self.refresh(uuid)
            return JobOutcome(f"{info.name} stopped after {wait:g} s without shutting down")

        return run

    async def reboot(self, uuid: str) -> None:
        info = self._idle(uuid)
        await self._verb(ops.reboot, uuid, f"rebooting {info.name}")

    async def suspend(self, uuid: str) -> None:
        info = self._idle(uuid)
        if info.state not in (VmState.RUNNING, VmState.BLOCKED):
            raise Conflict(f"{info.name} is {info.state.value}: only a running VM suspends")
        await self._verb(ops.suspend, uuid, f"suspending {info.name}")
        await self.refresh(uuid)

    async def resume(self, uuid: str) -> None:
        info = self._idle(uuid)
        if info.state is not VmState.PAUSED:
            raise Conflict(f"{info.name} is {info.state.value}, not suspended")
        await self._verb(ops.resume, uuid, f"resuming {info.name}")
        await self.refresh(uuid)

    async def set_autostart(self, uuid: str, on: bool, *, job: bool = False) -> None:
        """``job``: called by the job that holds the VM (the desired state's apply)."""
        info = self.get(uuid) if job else self._idle(uuid)
        if not info.persistent:
            raise Conflict(f"{info.name} is transient: only defined VMs start with the host")
        await self.conn.call(lambda c: ops.set_autostart(c, uuid, on), f"autostart of {info.name}")
        # libvirt took it, and nothing else about the domain changed: store the
        # one field rather than read the whole domain again (half the call's time).
        self.cache.store(uuid, self.get(uuid).model_copy(update={"autostart": on}))

    def delete_job(self, uuid: str, *, remove_storage: bool, force: bool) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(uuid)
            if info.state is not VmState.SHUTOFF and not force:
                raise Conflict(f"{info.name} is {info.state.value}: stop it first, or use force")
            volumes = [
                source
                for _, source, device, _ in info.disks
                if remove_storage and device == "disk" and source
            ]
            removed = await self.conn.call(
                lambda c: ops.undefine(c, uuid, volumes), f"deleting {info.name}"
            )
            for path in removed:
                ctx.log(f"removed volume {path}")
            await self.refresh(uuid)
            return JobOutcome(f"{info.name} deleted", {"removed_volumes": removed})

        return run

    async def update_profile(self, uuid: str, text: str, *, job: bool = False) -> None:
        """``job``: called by the job that holds the VM (the desired state's apply)."""
        info = self.get(uuid) if job else self._idle(uuid)
        if info.state is not VmState.SHUTOFF:
            raise Busy(
                f"{info.name} is {info.state.value}: its profile changes only when it is off"
            )
        profile, _, _ = await self.check_profile(text)
        if profile.name != info.name:
            raise InvalidArgs(
                f"the profile names {profile.name}, not {info.name}: renaming is not supported"
            )
        target = await self._target(profile)
        made: list[str] = []
        try:
            sources = await self._disks(None, profile, made, reuse=True)
            xml = self._domain_xml(profile, target, sources, uuid, info.owner)
            await self.conn.call(
                lambda c: ops.define(c, xml, autostart=profile.autostart),
                f"redefining {info.name}",
            )
        except BaseException:
            await self._undo_create(None, made)
            raise
        await self.refresh(uuid)

    # -- snapshots -----------------------------------------------------------------

    def snapshot_job(self, uuid: str, name: str, description: str) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(uuid)
            await self.conn.call(
                lambda c: ops.create_snapshot(c, uuid, name, description),
                f"snapshot {name} of {info.name}",
            )
            await self.refresh(uuid)
            return JobOutcome(f"snapshot {name} of {info.name} taken")

        return run

    def revert_job(self, uuid: str, name: str) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(uuid)
            await self.conn.call(
                lambda c: ops.revert_snapshot(c, uuid, name), f"reverting {info.name} to {name}"
            )
            await self.refresh(uuid)
            return JobOutcome(f"{info.name} reverted to {name}")

        return run

    def delete_snapshot_job(self, uuid: str, name: str) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            info = self.get(uuid)
            await self.conn.call(
                lambda c: ops.delete_snapshot(c, uuid, name),
                f"deleting snapshot {name} of {info.name}",
            )
            await self.refresh(uuid)
            return JobOutcome(f"snapshot {name} of {info.name} deleted")

        return run


def _target_for(capabilities: str, profile: VmProfile, uri: str) -> Target:
    target = domains.target_for(capabilities, profile.arch, uri)
    if isinstance(target, str):
        raise NotSupported(target)
    return target


def _volume_name(vm: str, index: int, fmt: str) -> str:
    return f"{vm}-disk{index}.{fmt}"


async def start(w: Wiring) -> VmService:
    """The VMs kind, started (kinds.py): connected to libvirt, domains read."""
    w.health.attach("libvirt")
    vms = VmService(w.config.libvirt, w.state_dir, w.jobs, w.checks)
    vms.on_status.append(lambda ok, detail: w.health.report("libvirt", ok, detail))
    # Bounded: with libvirtd up, the VMs are on the bus at READY.
    await vms.start()
    return vms
