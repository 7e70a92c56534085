"""The ``vms`` provider: libvirt domains by name, as profiles with a state.

A domain made by op-dbus is compared field by field with its profile (kept in
the domain's metadata); its profile changes only while it is off. A domain
made elsewhere has no profile: Query shows its name, CPUs and memory, and
only ``running`` and ``autostart`` can be managed. ``autostart`` left out
follows the profile's; ``running`` left out is not managed. Domains the state
creates carry ``owner: state`` in op-dbus's metadata; prune deletes only
those (their volumes stay).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import BaseModel, ValidationError

from opdbus.errors import Conflict
from opdbus.models.state import Change, VmDomain, VmsSection
from opdbus.models.vm import VmInfo, VmProfile, VmState
from opdbus.names import vm_name_target, vm_path
from opdbus.services.cache import Memo, Notify
from opdbus.services.jobs import JobContext
from opdbus.services.providers.base import Difference, Provider, follow_running
from opdbus.services.vms import VmService

OWNER = "state"
RUNNING = (VmState.RUNNING, VmState.BLOCKED, VmState.PAUSED)
NOISE = frozenset({"cpu_time_ns", "memory_used_kib", "state_reason", "snapshots"})


def _autostart(item: VmDomain) -> bool:
    return item.autostart if item.autostart is not None else item.profile.autostart


def _same_but_autostart(a: VmProfile, b: VmProfile) -> bool:
    """Equal but for autostart, which the domain keeps (SetAutostart changes it)."""
    return {**a.__dict__, "autostart": False} == {**b.__dict__, "autostart": False}


class VmsProvider(Provider):
    name = "vms"

    def __init__(self, vms: VmService) -> None:
        self.vms = vms
        # Profiles read back from domains, by their JSON: parsed once, not per query.
        self._parsed: dict[str, VmProfile] = {}
        self._memo: Memo[VmInfo, VmDomain | None] = Memo(self._domain)

    def available(self) -> str | None:
        return None if self.vms.conn.connected else self.vms.conn.detail

    def query(self) -> VmsSection:
        self._memo.keep(self.vms.vms.keys())
        found = (self._memo.get(info.uuid, info) for info in self.vms.all())
        # A foreign name op-dbus could not accept is left out.
        return VmsSection(domains=[domain for domain in found if domain is not None])

    def _domain(self, info: VmInfo) -> VmDomain | None:
        profile = self._profile(info)
        if profile is None:
            return None
        return VmDomain(profile=profile, running=info.state in RUNNING, autostart=info.autostart)

    def _profile(self, info: VmInfo) -> VmProfile | None:
        try:
            if info.profile:
                found = self._parsed.get(info.profile)
                if found is None:
                    if len(self._parsed) > 2 * len(self.vms.vms) + 64:  # VMs went meanwhile
                        self._parsed.clear()
                    found = self._parsed[info.profile] = VmProfile.model_validate_json(info.profile)
                return found
            return VmProfile(
                name=info.name, cpus=max(info.vcpus, 1), memory_mb=max(info.memory_mib, 16)
            )
        except ValidationError:
            return None

    def resources(self, section: BaseModel) -> Mapping[str, BaseModel]:
        assert isinstance(section, VmsSection)
        return {item.profile.name: item for item in section.domains}

    def section(self, resources: Mapping[str, BaseModel]) -> VmsSection:
        return VmsSection(domains=[r for r in resources.values() if isinstance(r, VmDomain)])

    def compare(self, want: BaseModel, have: BaseModel, *, exact: bool = False) -> list[Difference]:
        assert isinstance(want, VmDomain) and isinstance(have, VmDomain)
        out: list[Difference] = []
        if not _same_but_autostart(want.profile, have.profile):
            for field in VmProfile.model_fields:
                a, b = getattr(want.profile, field), getattr(have.profile, field)
                if a != b and field != "autostart":
                    out.append((f"profile.{field}", _json(b), _json(a)))
        if _autostart(want) != have.autostart:
            out.append(("autostart", have.autostart, _autostart(want)))
        if want.running is not None and want.running != have.running:
            out.append(("running", have.running, want.running))
        return out

    def owned(self) -> set[str]:
        return {info.name for info in self.vms.all() if info.owner == OWNER}

    def targets(self, ids: set[str]) -> list[str]:
        out = [vm_name_target(name) for name in sorted(ids)]
        found = [self.vms.by_name(name) for name in sorted(ids)]
        return out + [vm_path(info.uuid) for info in found if info is not None]

    async def apply(self, desired: BaseModel, changes: list[Change], ctx: JobContext) -> None:
        want = self.resources(desired)
        by_id: dict[str, list[Change]] = {}
        for change in changes:
            by_id.setdefault(change.id, []).append(change)
        for name, mine in by_id.items():
            ops = {change.op for change in mine}
            info = self.vms.by_name(name)
            if "delete" in ops:
                if info is not None:
                    ctx.log(f"  delete VM {name} (its volumes stay)")
                    await self.vms.delete_job(info.uuid, remove_storage=False, force=True)(ctx)
                continue
            item = want[name]
            assert isinstance(item, VmDomain)
            if "create" in ops or info is None:
                await self._create(ctx, item)
            else:
                await self._modify(ctx, item, info, {change.field for change in mine})

    async def _create(self, ctx: JobContext, item: VmDomain) -> None:
        ctx.log(f"  create VM {item.profile.name}")
        profile = item.profile.model_copy(update={"autostart": _autostart(item)})
        spec, uuid = await self.vms.prepare_create(
            profile.model_dump_json(exclude_defaults=True), job=True
        )
        await self.vms.create_job(spec, uuid, start=bool(item.running), owner=OWNER)(ctx)

    async def _modify(
        self, ctx: JobContext, item: VmDomain, info: VmInfo, fields: set[str]
    ) -> None:
        name, uuid = item.profile.name, info.uuid
        if any(field.startswith("profile.") for field in fields):
            if not info.managed:
                raise Conflict(
                    f"VM {name} was not made by op-dbus: only its running and autostart "
                    "can be managed, not its definition"
                )
            if info.state in RUNNING:
                if item.running is not False:
                    raise Conflict(
                        f"VM {name} is running: its profile changes only when it is off "
                        "(say running: false, apply, then running: true)"
                    )
                ctx.log(f"  shut down VM {name} to change its profile")
                await self.vms.shutdown_job(uuid, timeout=None, force=True)(ctx)
            ctx.log(f"  update the profile of VM {name}")
            profile = item.profile.model_copy(update={"autostart": _autostart(item)})
            await self.vms.update_profile(
                uuid, profile.model_dump_json(exclude_defaults=True), job=True
            )
        current = self.vms.get(uuid)
        if _autostart(item) != current.autostart:
            ctx.log(f"  VM {name}: autostart {'on' if _autostart(item) else 'off'}")
            await self.vms.set_autostart(uuid, _autostart(item), job=True)
        await follow_running(
            ctx,
            f"VM {name}",
            item.running,
            self.vms.get(uuid).state in RUNNING,
            lambda: self.vms.start_job(uuid),
            ("shut down", lambda: self.vms.shutdown_job(uuid, timeout=None, force=True)),
        )

    def subscribe(self, callback: Callable[[], None]) -> None:
        self.vms.cache.observers.append(Notify(callback, NOISE))


def _json(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value.value if hasattr(value, "value") else value
