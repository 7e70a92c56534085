"""org.opdbus.Bridge1 objects at /org/opdbus/bridge/<name>, one per OVS bridge."""

# No `from __future__ import annotations` here: dbus-fast reads these
# annotations as D-Bus signatures, and a deferred "None" is not one.

from typing import TYPE_CHECKING, Annotated

from dbus_fast import PropertyAccess
from dbus_fast.annotations import DBusBool, DBusDict, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import dbus_property

from opdbus.bus.base import BusContext, OpdbusInterface, bus_method
from opdbus.bus.codec import decode_options
from opdbus.bus.exporter import CacheExporter
from opdbus.models.network import Addressing, BridgeInfo, PortSpec
from opdbus.names import BRIDGE_IFACE, Action, bridge_path

if TYPE_CHECKING:  # the service (and its library) loads only where the kind runs
    from opdbus.services.network import NetworkService

PortsT = Annotated[
    list[tuple[str, str, int, list[int], int, list[str], str]], DBusSignature("a(ssiaiiass)")
]
StringsT = Annotated[list[str], DBusSignature("as")]
StringMapT = Annotated[dict[str, str], DBusSignature("a{ss}")]

PORTS_SENT_IN_FULL = 256

# BridgeInfo field -> Bridge1 property.
FIELD_TO_PROPERTY = {
    "uuid": "UUID",
    "datapath_type": "DatapathType",
    "fail_mode": "FailMode",
    "stp": "STP",
    "ports": "Ports",
    "addresses": "Addresses",
    "gateway": "Gateway",
    "mtu": "MTU",
    "external_ids": "ExternalIds",
    "link_state": "LinkState",
    "admin_state": "AdminState",
    "dhcp": "DHCP",
    "error": "Error",
}


class Bridge1(OpdbusInterface):
    INTERFACE = BRIDGE_IFACE

    def __init__(self, ctx: BusContext, network: "NetworkService", name: str) -> None:
        super().__init__(ctx)
        self._network = network
        self._name = name

    @property
    def info(self) -> BridgeInfo:
        return self._network.get(self._name)

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self._name

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.info.uuid

    @dbus_property(access=PropertyAccess.READ)
    def DatapathType(self) -> DBusStr:
        return self.info.datapath_type

    @dbus_property(access=PropertyAccess.READ)
    def FailMode(self) -> DBusStr:
        return self.info.fail_mode

    @dbus_property(access=PropertyAccess.READ)
    def STP(self) -> DBusBool:
        return self.info.stp

    @dbus_property(access=PropertyAccess.READ)
    def Ports(self) -> PortsT:
        return [
            (
                p.name,
                p.type,
                -1 if p.tag is None else p.tag,
                list(p.trunks),
                -1 if p.ofport is None else p.ofport,
                list(p.interfaces),
                p.peer or "",
            )
            for p in self.info.ports
        ]

    @dbus_property(access=PropertyAccess.READ)
    def Addresses(self) -> StringsT:
        return list(self.info.addresses)

    @dbus_property(access=PropertyAccess.READ)
    def Gateway(self) -> DBusStr:
        return self.info.gateway

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt32:
        return self.info.mtu

    @dbus_property(access=PropertyAccess.READ)
    def ExternalIds(self) -> StringMapT:
        return dict(self.info.external_ids)

    @dbus_property(access=PropertyAccess.READ)
    def LinkState(self) -> DBusStr:
        return self.info.link_state

    @dbus_property(access=PropertyAccess.READ)
    def AdminState(self) -> DBusStr:
        return self.info.admin_state

    @dbus_property(access=PropertyAccess.READ)
    def DHCP(self) -> DBusBool:
        return self.info.dhcp

    @dbus_property(access=PropertyAccess.READ)
    def Error(self) -> DBusStr:
        return self.info.error

    @bus_method(action=Action.BRIDGE_PORT)
    async def AddPort(self, name: DBusStr, options: DBusDict) -> None:
        spec = decode_options(PortSpec, options, "AddPort", name=name)
        await self._network.add_port(self._name, spec)

    @bus_method(action=Action.BRIDGE_PORT)
    async def RemovePort(self, name: DBusStr) -> None:
        await self._network.remove_port(self._name, name)

    @bus_method(action=Action.BRIDGE_ADDRESS)
    async def SetAddresses(self, addresses: StringsT, options: DBusDict) -> None:
        addressing = decode_options(Addressing, options, "SetAddresses", addresses=addresses)
        await self._network.set_addresses(self._name, addressing)

    @bus_method(action=Action.BRIDGE_DELETE)
    async def Delete(self) -> None:
        await self._network.delete_bridge(self._name)


def exporter(ctx: BusContext, network: "NetworkService") -> CacheExporter[BridgeInfo]:
    """The cache observer that mirrors bridges onto the bus."""
    return CacheExporter(
        ctx,
        network.cache,
        make=lambda key: Bridge1(ctx, network, key),
        path=bridge_path,
        fields=FIELD_TO_PROPERTY,
        # Past this many ports, Ports is only invalidated: whoever cares reads it (one Get).
        too_big={"Ports": lambda info: len(info.ports) > PORTS_SENT_IN_FULL},
    )
