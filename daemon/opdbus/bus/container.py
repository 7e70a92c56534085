"""org.opdbus.Container1 objects at /org/opdbus/container/<name>, one per LXC container."""

# No `from __future__ import annotations` here: dbus-fast reads these
# annotations as D-Bus signatures, and a deferred "None" is not one.

from typing import TYPE_CHECKING, Annotated

from dbus_fast import PropertyAccess
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import dbus_property

from opdbus.bus.base import BusContext, OpdbusInterface, bus_method, submit_job
from opdbus.bus.codec import decode_options
from opdbus.bus.exporter import CacheExporter
from opdbus.models.container import ContainerInfo, DeleteContainerOptions, ExecOptions, StopOptions
from opdbus.names import CONTAINER_IFACE, Action, container_path
from opdbus.services.jobs import JobBody

if TYPE_CHECKING:  # the service (and its library) loads only where the kind runs
    from opdbus.services.containers import ContainerService

StringsT = Annotated[list[str], DBusSignature("as")]
ExecResultT = Annotated[tuple[int, str, str], DBusSignature("iss")]

# ContainerInfo field -> Container1 property.
FIELD_TO_PROPERTY = {
    "id": "Id",
    "state": "State",
    "pid": "PID",
    "template": "Template",
    "bridge": "Bridge",
    "veth": "Veth",
    "ipv4": "IPv4",
    "memory_limit": "MemoryLimit",
    "cpus": "CPUs",
    "autostart": "Autostart",
    "memory_used": "MemoryUsed",
    "cpu_time_ns": "CPUTime",
}


class Container1(OpdbusInterface):
    INTERFACE = CONTAINER_IFACE
    CACHE_PROPERTIES = True  # the exporter signals every change

    def __init__(self, ctx: BusContext, containers: "ContainerService", name: str) -> None:
        super().__init__(ctx)
        self._containers = containers
        self._name = name

    @property
    def info(self) -> ContainerInfo:
        return self._containers.get(self._name)

    async def _job(self, operation: str, body: JobBody) -> str:
        return await submit_job(
            self._containers.jobs, f"{operation} {self._name}", body, [container_path(self._name)]
        )

    # -- properties ------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self._name

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusUInt32:
        return self.info.id

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self.info.state.value

    @dbus_property(access=PropertyAccess.READ)
    def PID(self) -> DBusUInt32:
        return self.info.pid

    @dbus_property(access=PropertyAccess.READ)
    def Template(self) -> DBusStr:
        return self.info.template

    @dbus_property(access=PropertyAccess.READ)
    def Bridge(self) -> DBusStr:
        return self.info.bridge

    @dbus_property(access=PropertyAccess.READ)
    def Veth(self) -> DBusStr:
        return self.info.veth

    @dbus_property(access=PropertyAccess.READ)
    def IPv4(self) -> StringsT:
        return list(self.info.ipv4)

    @dbus_property(access=PropertyAccess.READ)
    def MemoryLimit(self) -> DBusUInt64:
        return self.info.memory_limit

    @dbus_property(access=PropertyAccess.READ)
    def CPUs(self) -> DBusUInt32:
        return self.info.cpus

    @dbus_property(access=PropertyAccess.READ)
    def Autostart(self) -> DBusBool:
        return self.info.autostart

    @dbus_property(access=PropertyAccess.READ)
    def MemoryUsed(self) -> DBusUInt64:
        return self.info.memory_used

    @dbus_property(access=PropertyAccess.READ)
    def CPUTime(self) -> DBusUInt64:
        return self.info.cpu_time_ns

    # -- methods -----------------------------------------------------------------

    @bus_method(action=Action.CONTAINER_LIFECYCLE)
    async def Start(self) -> DBusObjectPath:
        return await self._job("Start", self._containers.start_job(self._name))

    @bus_method(action=Action.CONTAINER_LIFECYCLE)
    async def Stop(self, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(StopOptions, options, "Stop")
        body = self._containers.stop_job(self._name, timeout=opts.timeout, force=opts.force)
        return await self._job("Stop", body)

    @bus_method(action=Action.CONTAINER_LIFECYCLE)
    async def Restart(self) -> DBusObjectPath:
        return await self._job("Restart", self._containers.restart_job(self._name))

    @bus_method(action=Action.CONTAINER_LIFECYCLE)
    async def Freeze(self) -> None:
        await self._containers.freeze(self._name)

    @bus_method(action=Action.CONTAINER_LIFECYCLE)
    async def Unfreeze(self) -> None:
        await self._containers.unfreeze(self._name)

    @bus_method(action=Action.CONTAINER_DELETE)
    async def Delete(self, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(DeleteContainerOptions, options, "Delete")
        return await self._job("Delete", self._containers.delete_job(self._name, force=opts.force))

    @bus_method(action=Action.CONTAINER_EXEC)
    async def Exec(self, argv: StringsT, options: DBusDict) -> ExecResultT:
        opts = decode_options(ExecOptions, options, "Exec")
        return await self._containers.exec(self._name, list(argv), opts.timeout)

    @bus_method(action=Action.CONTAINER_CONFIGURE)
    async def SetAutostart(self, enabled: DBusBool) -> None:
        await self._containers.set_autostart(self._name, enabled)


def exporter(ctx: BusContext, containers: "ContainerService") -> CacheExporter[ContainerInfo]:
    """The cache observer that mirrors containers onto the bus."""
    return CacheExporter(
        ctx,
        containers.cache,
        make=lambda key: Container1(ctx, containers, key),
        path=container_path,
        fields=FIELD_TO_PROPERTY,
    )
