"""The ``systemd`` provider: units by name, with enablement, active state and mask.

A field left out is not managed. Units are never created or deleted (their
files belong to packages or NixOS): a unit the document names that systemd
cannot find fails the apply with NotFound, and prune leaves units alone. The
provider sees only the units documents name (``prepare`` watches them), so a
query lists those, not all of systemd.

One unit's changes run in the order that cannot fail halfway for a reason
of its own making: unmask, then enable or disable, then start or stop, then
mask (a running unit is stopped before it is masked). systemd's jobs are
awaited; rollback applies the checkpoint the same way, so it restores both
the enablement and the active state it found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import BaseModel

from opdbus.errors import NotFound
from opdbus.models.state import Change, SystemdSection, SystemdUnit
from opdbus.models.unit import UnitInfo
from opdbus.names import unit_path
from opdbus.services.cache import Memo, Notify
from opdbus.services.jobs import JobContext
from opdbus.services.providers.base import Difference, Provider
from opdbus.services.units import UnitService

FIELDS = ("masked", "enabled", "active_state")


class SystemdProvider(Provider):
    name = "systemd"

    def __init__(self, units: UnitService) -> None:
        self.units = units
        self._memo: Memo[UnitInfo, SystemdUnit] = Memo(self._unit)

    def available(self) -> str | None:
        return self.units.problem

    async def prepare(self, section: BaseModel) -> None:
        await self.units.watch(self.resources(section))

    def query(self) -> SystemdSection:
        self._memo.keep(self.units.cache.items.keys())
        return SystemdSection(
            units={i.name: self._memo.get(i.name, i) for i in self.units.all() if i.found}
        )

    @staticmethod
    def _unit(info: UnitInfo) -> SystemdUnit:
        return SystemdUnit(
            enabled=info.enabled,
            active_state="active" if info.active else "inactive",
            masked=info.masked,
        )

    def resources(self, section: BaseModel) -> Mapping[str, BaseModel]:
        assert isinstance(section, SystemdSection)
        return section.units

    def section(self, resources: Mapping[str, BaseModel]) -> SystemdSection:
        return SystemdSection(
            units={k: v for k, v in resources.items() if isinstance(v, SystemdUnit)}
        )

    def compare(self, want: BaseModel, have: BaseModel, *, exact: bool = False) -> list[Difference]:
        assert isinstance(want, SystemdUnit) and isinstance(have, SystemdUnit)
        out: list[Difference] = []
        for field in FIELDS:
            wanted = getattr(want, field)
            if field == "masked" and wanted is None and exact:
                wanted = False
            if wanted is not None and wanted != getattr(have, field):
                out.append((field, getattr(have, field), wanted))
        return out

    def owned(self) -> set[str]:
        return set()  # units are never made by op-dbus: prune has nothing to delete

    def targets(self, ids: set[str]) -> list[str]:
        return [unit_path(name) for name in sorted(ids)]

    async def apply(self, desired: BaseModel, changes: list[Change], ctx: JobContext) -> None:
        want = self.resources(desired)
        by_id: dict[str, set[str]] = {}
        for change in changes:
            if change.op == "delete":
                continue  # never: owned() is empty
            if change.op == "create":
                raise NotFound(
                    f"unit {change.id} is not installed (systemd has no unit file for it)"
                )
            by_id.setdefault(change.id, set()).add(change.field)
        for name, fields in by_id.items():
            item = want[name]
            assert isinstance(item, SystemdUnit)
            await self._unit_changes(ctx, name, item, fields)

    async def _unit_changes(
        self, ctx: JobContext, name: str, item: SystemdUnit, fields: set[str]
    ) -> None:
        if "masked" in fields and not item.masked:
            ctx.log(f"  unmask {name}")
            await self.units.set_files(ctx, name, "unmask")
        if "enabled" in fields:
            ctx.log(f"  {'enable' if item.enabled else 'disable'} {name}")
            await self.units.set_files(ctx, name, "enable" if item.enabled else "disable")
        info = self.units.get(name)
        active = item.active_state == "active"
        stop_first = bool(item.masked) and "masked" in fields and info.active
        if ("active_state" in fields and active != info.active) or stop_first:
            ctx.log(f"  {'start' if active else 'stop'} {name}")
            await self.units.run(ctx, name, start=active)
        if "masked" in fields and item.masked:
            ctx.log(f"  mask {name}")
            await self.units.set_files(ctx, name, "mask")

    def subscribe(self, callback: Callable[[], None]) -> None:
        # SubState and Description say nothing a document names.
        self.units.cache.observers.append(Notify(callback, frozenset({"sub_state", "description"})))
