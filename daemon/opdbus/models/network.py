"""Bridges and ports: what a caller may ask for, and what a bridge looks like.

Validation happens here, once: interface names are what the kernel accepts
(1-15 bytes of printable ASCII, no '/', no whitespace), VLAN tags are 0-4095,
addresses are IPv4 CIDRs. Past this module everything is a typed value.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL


def _check_ifname(name: str) -> str:
    if not name:
        raise ValueError("an interface name cannot be empty")
    if len(name.encode()) > IFNAMSIZ - 1:
        raise ValueError(f"{name!r} is longer than {IFNAMSIZ - 1} bytes")
    if not name.isascii() or not name.isprintable():
        raise ValueError(f"{name!r} must be printable ASCII")
    if "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise ValueError(f"{name!r} may not contain '/' or spaces, nor be '.' or '..'")
    return name


IfName = Annotated[str, AfterValidator(_check_ifname)]
VlanTag = Annotated[int, Field(ge=0, le=4095)]


def _check_cidr(text: str) -> str:
    try:
        interface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IPv4 address with a prefix, like 10.0.0.1/24"
        ) from None
    if "/" not in text:
        raise ValueError(f"{text!r} needs a prefix length, like {text}/24")
    return str(interface)


def _check_ip(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


Cidr = Annotated[str, AfterValidator(_check_cidr)]
Ipv4 = Annotated[str, AfterValidator(_check_ip)]
Mtu = Annotated[int, Field(ge=68, le=65535)]


class PortType(StrEnum):
    SYSTEM = "system"  # an existing kernel interface (a NIC, a veth end)
    INTERNAL = "internal"  # a new interface the switch creates
    PATCH = "patch"  # one end of a link to another bridge's patch port


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortOptions(_Strict):
    type: PortType = PortType.SYSTEM
    tag: VlanTag | None = None
    trunks: list[VlanTag] = Field(default_factory=list)
    peer: IfName | None = None

    @model_validator(mode="after")
    def _peer_only_for_patch(self) -> PortOptions:
        if self.type is PortType.PATCH and self.peer is None:
            raise ValueError("a patch port needs 'peer' (the patch port at its other end)")
        if self.type is not PortType.PATCH and self.peer is not None:
            raise ValueError("'peer' is only for patch ports")
        return self


class PortSpec(PortOptions):
    name: IfName


class AddressOptions(_Strict):
    """Layer 3 on a bridge's own interface; applied through netlink."""

    gateway: Ipv4 | None = None
    mtu: Mtu | None = None
    dhcp: bool = False


class Addressing(AddressOptions):
    addresses: list[Cidr] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Addressing:
        if self.dhcp and self.addresses:
            raise ValueError("use static addresses or dhcp, not both")
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("the same address is listed twice")
        if self.gateway is not None and self.addresses:
            gateway = ipaddress.IPv4Address(self.gateway)
            if not any(gateway in ipaddress.IPv4Interface(a).network for a in self.addresses):
                raise ValueError(f"gateway {self.gateway} is not in any of the bridge's subnets")
        return self


class BridgeOptions(Addressing):
    datapath_type: Literal["system", "netdev"] | None = None  # None: the configured default
    fail_mode: Literal["standalone", "secure"] | None = None
    stp: bool = False
    external_ids: dict[str, str] = Field(default_factory=dict)


class BridgeSpec(BridgeOptions):
    name: IfName
    ports: list[PortSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ports(self) -> BridgeSpec:
        names = [port.name for port in self.ports]
        dupes = sorted({name for name in names if names.count(name) > 1})
        if dupes:
            raise ValueError(f"port {dupes[0]} is listed twice")
        if self.name in names:
            raise ValueError(f"{self.name} is the bridge's own port; do not list it")
        return self


class BridgesDocument(_Strict):
    """What ApplyBridges takes: the bridges that should exist, with their ports."""

    bridges: list[BridgeSpec]

    @model_validator(mode="after")
    def _unique(self) -> BridgesDocument:
        names = [bridge.name for bridge in self.bridges]
        dupes = sorted({name for name in names if names.count(name) > 1})
        if dupes:
            raise ValueError(f"bridge {dupes[0]} is listed twice")
        ports = [port.name for bridge in self.bridges for port in bridge.ports]
        dupes = sorted({name for name in ports if ports.count(name) > 1})
        if dupes:
            raise ValueError(f"port {dupes[0]} is listed on two bridges")
        return self


def from_seed_interfaces(data: dict[str, Any]) -> dict[str, Any]:
    """The op-dbus seed's ``net.interfaces`` shape -> a BridgesDocument dict.

    ``{"interfaces": [{"name": "mesh", "type": "ovs-bridge", "ports": [],
    "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip": "10.0.0.1",
    "prefix": 24}], "gateway": "..."}}]}`` -- seed files work unchanged.
    """
    bridges = []
    for item in data.get("interfaces", []):
        if item.get("type", "ovs-bridge") != "ovs-bridge":
            raise ValueError(f"interface {item.get('name')!r}: only type ovs-bridge is supported")
        ipv4 = item.get("ipv4") or {}
        bridge: dict[str, Any] = {
            "name": item["name"],
            "ports": [
                {"name": port} if isinstance(port, str) else port for port in item.get("ports", [])
            ],
        }
        if ipv4.get("enabled", True):
            bridge["dhcp"] = bool(ipv4.get("dhcp", False))
            bridge["addresses"] = [f"{a['ip']}/{a['prefix']}" for a in ipv4.get("address", [])]
            if ipv4.get("gateway"):
                bridge["gateway"] = ipv4["gateway"]
        bridges.append(bridge)
    return {"bridges": bridges}


# -- what a bridge is (the Bridge1 properties) ----------------------------------


class PortInfo(BaseModel):
    name: str
    type: str  # of its (first) interface: system, internal, patch, ...
    tag: int | None = None
    trunks: list[int] = Field(default_factory=list)
    ofport: int | None = None
    interfaces: list[str] = Field(default_factory=list)
    peer: str | None = None


class BridgeInfo(BaseModel):
    name: str
    uuid: str
    datapath_type: str
    fail_mode: str
    stp: bool
    ports: list[PortInfo]
    external_ids: dict[str, str]
    # From the kernel (netlink): what the bridge's own interface really has.
    addresses: list[str] = Field(default_factory=list)
    gateway: str = ""
    mtu: int = 0
    link_state: str = "unknown"  # up, down or unknown (no such interface yet)
    admin_state: str = "unknown"
    dhcp: bool = False
    error: str = ""  # why ovs-vswitchd could not set up the bridge's interface
