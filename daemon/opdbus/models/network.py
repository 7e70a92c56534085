"""Bridges and ports: what a caller may ask for, and what a bridge looks like.

Validation happens here, once: interface names are what the kernel accepts
(1-15 bytes of printable ASCII, no '/', no whitespace), VLAN tags are 0-4095,
addresses are IPv4 CIDRs. Past this module everything is a typed value.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from opdbus.models.base import Model

IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL
# Bounds on what one call may ask for (far above any real host's needs).
BRIDGES_MAX = 4096
PORTS_MAX = 4096
ADDRESSES_MAX = 256
EXTERNAL_IDS_MAX = 64
ID_TEXT_MAX = 256


def first_duplicate(names: Iterable[str]) -> str | None:
    """The first name (in sorted order) that occurs twice; linear, not names.count per name."""
    dupes = sorted(name for name, count in Counter(names).items() if count > 1)
    return dupes[0] if dupes else None


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


class _Strict(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortOptions(_Strict):
    type: PortType = PortType.SYSTEM
    tag: VlanTag | None = None
    trunks: list[VlanTag] = Field(default_factory=list, max_length=4096)
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
    addresses: list[Cidr] = Field(default_factory=list, max_length=ADDRESSES_MAX)

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
    external_ids: dict[
        Annotated[str, Field(min_length=1, max_length=ID_TEXT_MAX)],
        Annotated[str, Field(max_length=ID_TEXT_MAX)],
    ] = Field(default_factory=dict, max_length=EXTERNAL_IDS_MAX)


class BridgeSpec(BridgeOptions):
    name: IfName
    ports: list[PortSpec] = Field(default_factory=list, max_length=PORTS_MAX)

    @model_validator(mode="after")
    def _unique_ports(self) -> BridgeSpec:
        twice = first_duplicate(port.name for port in self.ports)
        if twice is not None:
            raise ValueError(f"port {twice} is listed twice")
        if any(port.name == self.name for port in self.ports):
            raise ValueError(f"{self.name} is the bridge's own port; do not list it")
        return self


class BridgesDocument(_Strict):
    """What ApplyBridges takes: the bridges that should exist, with their ports."""

    bridges: list[BridgeSpec] = Field(max_length=BRIDGES_MAX)

    @model_validator(mode="after")
    def _unique(self) -> BridgesDocument:
        twice = first_duplicate(bridge.name for bridge in self.bridges)
        if twice is not None:
            raise ValueError(f"bridge {twice} is listed twice")
        twice = first_duplicate(port.name for bridge in self.bridges for port in bridge.ports)
        if twice is not None:
            raise ValueError(f"port {twice} is listed on two bridges")
        return self


# -- the op-dbus seed's network format ------------------------------------------


class SeedAddress(_Strict):
    ip: Ipv4
    prefix: Annotated[int, Field(ge=0, le=32)]


class SeedIpv4(_Strict):
    enabled: bool = True
    dhcp: bool = False
    address: list[SeedAddress] = Field(default_factory=list, max_length=ADDRESSES_MAX)
    gateway: Ipv4 | None = None


class SeedInterface(_Strict):
    """One entry of the seed's ``net.interfaces`` (only OVS bridges are op-dbus's)."""

    name: IfName
    type: Literal["ovs-bridge"] = "ovs-bridge"
    ports: list[IfName | PortSpec] = Field(default_factory=list, max_length=PORTS_MAX)
    ipv4: SeedIpv4 | None = None

    def bridge(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "ports": [
                {"name": p} if isinstance(p, str) else p.model_dump(exclude_defaults=True)
                for p in self.ports
            ],
        }
        ipv4 = self.ipv4 or SeedIpv4()
        if ipv4.enabled:
            out["dhcp"] = ipv4.dhcp
            out["addresses"] = [f"{a.ip}/{a.prefix}" for a in ipv4.address]
            if ipv4.gateway:
                out["gateway"] = ipv4.gateway
        return out


class SeedNet(_Strict):
    """The seed's ``{"interfaces": [...]}``: ``{"name": "mesh", "type": "ovs-bridge",
    "ports": [], "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip":
    "10.0.0.1", "prefix": 24}], "gateway": "..."}}`` -- seed files work unchanged."""

    interfaces: list[SeedInterface] = Field(max_length=BRIDGES_MAX)

    def bridges(self) -> dict[str, Any]:
        return {"bridges": [item.bridge() for item in self.interfaces]}


# -- what a bridge is (the Bridge1 properties) ----------------------------------


class PortInfo(Model):
    name: str
    type: str  # of its (first) interface: system, internal, patch, ...
    tag: int | None = None
    trunks: list[int] = Field(default_factory=list)
    ofport: int | None = None
    interfaces: list[str] = Field(default_factory=list)
    peer: str | None = None


class BridgeInfo(Model):
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
