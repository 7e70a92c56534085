"""org.opdbus.VM1 objects at /org/opdbus/vm/<uuid>, one per libvirt domain."""

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
from opdbus.models.vm import DeleteVmOptions, ShutdownOptions, SnapshotOptions, VmInfo
from opdbus.names import VM_IFACE, Action, vm_path
from opdbus.services.jobs import JobBody

if TYPE_CHECKING:  # the service (and its library) loads only where the kind runs
    from opdbus.services.vms import VmService


def _snapshot(name: str) -> str:
    from opdbus.services.vms import snapshot_name

    return snapshot_name(name)


DevicesT = Annotated[list[tuple[str, str, str, str]], DBusSignature("a(ssss)")]
AddressesT = Annotated[list[tuple[str, str, list[str]]], DBusSignature("a(ssas)")]
SnapshotsT = Annotated[list[tuple[str, int, str, bool, str]], DBusSignature("a(stsbs)")]

# VmInfo field -> VM1 property.
FIELD_TO_PROPERTY = {
    "name": "Name",
    "state": "State",
    "state_reason": "StateReason",
    "persistent": "Persistent",
    "autostart": "Autostart",
    "vcpus": "VCPUs",
    "memory_mib": "MemoryMiB",
    "arch": "Arch",
    "interfaces": "Interfaces",
    "disks": "Disks",
    "profile": "Profile",
    "managed": "Managed",
    "snapshots": "Snapshots",
    "cpu_time_ns": "CPUTime",
    "memory_used_kib": "MemoryUsedKiB",
}


class VM1(OpdbusInterface):
    INTERFACE = VM_IFACE
    CACHE_PROPERTIES = True  # the exporter signals every change

    def __init__(self, ctx: BusContext, vms: "VmService", uuid: str) -> None:
        super().__init__(ctx)
        self._vms = vms
        self._uuid = uuid

    @property
    def info(self) -> VmInfo:
        return self._vms.get(self._uuid)

    async def _job(self, operation: str, body: JobBody) -> str:
        return await submit_job(
            self._vms.jobs, f"{operation} {self.info.name}", body, [vm_path(self._uuid)]
        )

    # -- properties ------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.info.name

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self.info.state.value

    @dbus_property(access=PropertyAccess.READ)
    def StateReason(self) -> DBusStr:
        return self.info.state_reason

    @dbus_property(access=PropertyAccess.READ)
    def Persistent(self) -> DBusBool:
        return self.info.persistent

    @dbus_property(access=PropertyAccess.READ)
    def Autostart(self) -> DBusBool:
        return self.info.autostart

    @dbus_property(access=PropertyAccess.READ)
    def VCPUs(self) -> DBusUInt32:
        return self.info.vcpus

    @dbus_property(access=PropertyAccess.READ)
    def MemoryMiB(self) -> DBusUInt64:
        return self.info.memory_mib

    @dbus_property(access=PropertyAccess.READ)
    def Arch(self) -> DBusStr:
        return self.info.arch

    @dbus_property(access=PropertyAccess.READ)
    def Interfaces(self) -> DevicesT:
        return list(self.info.interfaces)

    @dbus_property(access=PropertyAccess.READ)
    def Disks(self) -> DevicesT:
        return list(self.info.disks)

    @dbus_property(access=PropertyAccess.READ)
    def Profile(self) -> DBusStr:
        return self.info.profile

    @dbus_property(access=PropertyAccess.READ)
    def Managed(self) -> DBusBool:
        return self.info.managed

    @dbus_property(access=PropertyAccess.READ)
    def Snapshots(self) -> DBusUInt32:
        return self.info.snapshots

    @dbus_property(access=PropertyAccess.READ)
    def CPUTime(self) -> DBusUInt64:
        return self.info.cpu_time_ns

    @dbus_property(access=PropertyAccess.READ)
    def MemoryUsedKiB(self) -> DBusUInt64:
        return self.info.memory_used_kib

    # -- lifecycle ---------------------------------------------------------------

    @bus_method(action=Action.VM_LIFECYCLE)
    async def Start(self) -> DBusObjectPath:
        return await self._job("Start", self._vms.start_job(self._uuid))

    @bus_method(action=Action.VM_LIFECYCLE)
    async def Shutdown(self, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(ShutdownOptions, options, "Shutdown")
        body = self._vms.shutdown_job(self._uuid, timeout=opts.timeout, force=opts.force)
        return await self._job("Shutdown", body)

    @bus_method(action=Action.VM_LIFECYCLE)
    async def Stop(self) -> DBusObjectPath:
        return await self._job("Stop", self._vms.stop_job(self._uuid))

    @bus_method(action=Action.VM_LIFECYCLE)
    async def Reboot(self) -> None:
        await self._vms.reboot(self._uuid)

    @bus_method(action=Action.VM_LIFECYCLE)
    async def Suspend(self) -> None:
        await self._vms.suspend(self._uuid)

    @bus_method(action=Action.VM_LIFECYCLE)
    async def Resume(self) -> None:
        await self._vms.resume(self._uuid)

    @bus_method(action=Action.VM_CONFIGURE)
    async def SetAutostart(self, enabled: DBusBool) -> None:
        await self._vms.set_autostart(self._uuid, enabled)

    @bus_method(action=Action.VM_DELETE)
    async def Delete(self, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(DeleteVmOptions, options, "Delete")
        body = self._vms.delete_job(
            self._uuid, remove_storage=opts.remove_storage, force=opts.force
        )
        return await self._job("Delete", body)

    @bus_method(read_only=True, expensive=True)
    async def GetXML(self) -> DBusStr:
        return await self._vms.get_xml(self._uuid)

    @bus_method(read_only=True, expensive=True)
    async def GetInterfaceAddresses(self, source: DBusStr) -> AddressesT:
        return await self._vms.addresses(self._uuid, source)

    @bus_method(action=Action.VM_CONFIGURE)
    async def UpdateProfile(self, profile: DBusStr) -> None:
        await self._vms.update_profile(self._uuid, profile)

    # -- snapshots -----------------------------------------------------------------

    @bus_method(action=Action.VM_SNAPSHOT)
    async def CreateSnapshot(self, name: DBusStr, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(SnapshotOptions, options, "CreateSnapshot")
        body = self._vms.snapshot_job(self._uuid, _snapshot(name), opts.description)
        return await self._job("CreateSnapshot", body)

    @bus_method(read_only=True, expensive=True)
    async def ListSnapshots(self) -> SnapshotsT:
        return await self._vms.list_snapshots(self._uuid)

    @bus_method(action=Action.VM_SNAPSHOT)
    async def RevertSnapshot(self, name: DBusStr) -> DBusObjectPath:
        body = self._vms.revert_job(self._uuid, _snapshot(name))
        return await self._job("RevertSnapshot", body)

    @bus_method(action=Action.VM_SNAPSHOT)
    async def DeleteSnapshot(self, name: DBusStr) -> DBusObjectPath:
        body = self._vms.delete_snapshot_job(self._uuid, _snapshot(name))
        return await self._job("DeleteSnapshot", body)


def exporter(ctx: BusContext, vms: "VmService") -> CacheExporter[VmInfo]:
    """The cache observer that mirrors domains onto the bus."""
    return CacheExporter(
        ctx,
        vms.cache,
        make=lambda key: VM1(ctx, vms, key),
        path=vm_path,
        fields=FIELD_TO_PROPERTY,
    )
