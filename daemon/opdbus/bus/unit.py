"""org.opdbus.Unit1 objects at /org/opdbus/unit/<name>, one per systemd unit op-dbus watches.

Read-only: units change through ApplyState (their ``systemd`` section), so
a unit's enablement and state have one owner and one audit trail.
"""

# No `from __future__ import annotations` here: dbus-fast reads these
# annotations as D-Bus signatures, and a deferred "None" is not one.

from typing import TYPE_CHECKING

from dbus_fast import PropertyAccess
from dbus_fast.annotations import DBusBool, DBusStr
from dbus_fast.service import dbus_property

from opdbus.bus.base import BusContext, OpdbusInterface
from opdbus.bus.exporter import CacheExporter
from opdbus.models.unit import UnitInfo
from opdbus.names import UNIT_IFACE, unit_path

if TYPE_CHECKING:  # the service (and its library) loads only where the kind runs
    from opdbus.services.units import UnitService

# UnitInfo field -> Unit1 property (Enabled and Masked follow file_state).
FIELD_TO_PROPERTY = {
    "description": "Description",
    "load_state": "LoadState",
    "active_state": "ActiveState",
    "sub_state": "SubState",
    "file_state": "UnitFileState",
}


class Unit1(OpdbusInterface):
    INTERFACE = UNIT_IFACE
    CACHE_PROPERTIES = True  # the exporter signals every change

    def __init__(self, ctx: BusContext, units: "UnitService", name: str) -> None:
        super().__init__(ctx)
        self._units = units
        self._name = name

    @property
    def info(self) -> UnitInfo:
        return self._units.get(self._name)

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self._name

    @dbus_property(access=PropertyAccess.READ)
    def Description(self) -> DBusStr:
        return self.info.description

    @dbus_property(access=PropertyAccess.READ)
    def LoadState(self) -> DBusStr:
        return self.info.load_state

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> DBusStr:
        return self.info.active_state

    @dbus_property(access=PropertyAccess.READ)
    def SubState(self) -> DBusStr:
        return self.info.sub_state

    @dbus_property(access=PropertyAccess.READ)
    def UnitFileState(self) -> DBusStr:
        return self.info.file_state

    @dbus_property(access=PropertyAccess.READ)
    def Enabled(self) -> DBusBool:
        return bool(self.info.enabled)

    @dbus_property(access=PropertyAccess.READ)
    def Masked(self) -> DBusBool:
        return self.info.masked


class _UnitExporter(CacheExporter[UnitInfo]):
    def changed(self, key: str, info: UnitInfo, fields: set[str]) -> None:
        # Enabled and Masked are read from UnitFileState: they change with it.
        if "file_state" in fields:
            fields = fields | {"enabled", "masked"}
        super().changed(key, info, fields)


def exporter(ctx: BusContext, units: "UnitService") -> CacheExporter[UnitInfo]:
    """The cache observer that mirrors watched units onto the bus."""
    return _UnitExporter(
        ctx,
        units.cache,
        make=lambda key: Unit1(ctx, units, key),
        path=unit_path,
        fields={**FIELD_TO_PROPERTY, "enabled": "Enabled", "masked": "Masked"},
    )
