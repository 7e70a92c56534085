"""The ``net`` provider: Open vSwitch bridges as the op-dbus seed's ``interfaces``.

A bridge's ``ports`` lists the ports it must have; ports it has beyond those
stay (LXC adds its own). ``ipv4`` absent means the addressing is not managed;
``{"enabled": false}`` means no addresses. The host's addressing is what the
bridge is told to have (``opdbus:*`` external_ids), else what its interface
really has: so a document from ``Query`` applied again changes nothing.
Bridges the state creates are marked ``opdbus:owner=state``; prune deletes
only those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from opdbus.models.network import (
    BridgeInfo,
    BridgesDocument,
    BridgeSpec,
    PortInfo,
    PortSpec,
    PortType,
    SeedAddress,
    SeedInterface,
    SeedIpv4,
)
from opdbus.models.state import Change, NetSection
from opdbus.names import bridge_path
from opdbus.services.cache import Memo, Notify
from opdbus.services.jobs import JobContext
from opdbus.services.network import KEY_OWNER, NetworkService, port_spec, wanted_addressing
from opdbus.services.network_apply import apply_bridges
from opdbus.services.providers.base import Difference, Provider

OWNER = "state"
Addressing = tuple[bool, tuple[str, ...], str | None]  # (dhcp, addresses, gateway)


def addressing(ipv4: SeedIpv4) -> Addressing:
    if not ipv4.enabled:
        return (False, (), None)
    if ipv4.dhcp:
        return (True, (), None)
    return (False, tuple(sorted(f"{a.ip}/{a.prefix}" for a in ipv4.address)), ipv4.gateway)


def _port(entry: str | PortSpec) -> PortSpec:
    return PortSpec(name=entry) if isinstance(entry, str) else entry


def _entry(spec: PortSpec) -> str | PortSpec:
    """A port as Query writes it: its bare name when it is a plain system port."""
    plain = spec.type is PortType.SYSTEM and spec.tag is None and not spec.trunks
    return spec.name if plain else spec


class NetProvider(Provider):
    name = "net"

    def __init__(self, network: NetworkService) -> None:
        self.network = network
        self._memo: Memo[BridgeInfo, SeedInterface] = Memo(self._interface)

    def available(self) -> str | None:
        return None if self.network.ovsdb.connected else self.network.ovsdb.detail

    def query(self) -> NetSection:
        self._memo.keep(self.network.bridges.keys())
        return NetSection(
            interfaces=[self._memo.get(info.name, info) for info in self.network.all()]
        )

    def _interface(self, info: BridgeInfo) -> SeedInterface:
        ports: list[str | PortSpec] = [
            _entry(port_spec(p)) for p in info.ports if p.name != info.name
        ]
        return SeedInterface(name=info.name, ports=ports, ipv4=self._ipv4(info))

    @staticmethod
    def _ipv4(info: BridgeInfo) -> SeedIpv4:
        wanted = wanted_addressing(info.external_ids, None)
        if wanted.dhcp:
            return SeedIpv4(enabled=True, dhcp=True)
        addresses = wanted.addresses or list(info.addresses)
        gateway = wanted.gateway if wanted.addresses else (wanted.gateway or info.gateway or None)
        if not addresses:
            return SeedIpv4(enabled=False)
        return SeedIpv4(
            address=[
                SeedAddress(ip=cidr.split("/")[0], prefix=int(cidr.split("/")[1]))
                for cidr in addresses
            ],
            gateway=gateway,
        )

    def resources(self, section: BaseModel) -> Mapping[str, BaseModel]:
        assert isinstance(section, NetSection)
        return {item.name: item for item in section.interfaces}

    def section(self, resources: Mapping[str, BaseModel]) -> NetSection:
        return NetSection(
            interfaces=[r for r in resources.values() if isinstance(r, SeedInterface)]
        )

    def compare(self, want: BaseModel, have: BaseModel, *, exact: bool = False) -> list[Difference]:
        assert isinstance(want, SeedInterface) and isinstance(have, SeedInterface)
        out: list[Difference] = []
        had = {p.name: p for p in map(_port, have.ports)}
        named = {p.name: p for p in map(_port, want.ports)}
        for port in named.values():
            current = had.get(port.name)
            if current != port:
                before = None if current is None else current.model_dump(exclude_defaults=True)
                out.append((f"ports[{port.name}]", before, port.model_dump(exclude_defaults=True)))
        if exact:  # a checkpoint's ports are all the bridge had: the rest were added since
            for name in sorted(had.keys() - named.keys()):
                out.append((f"ports[{name}]", had[name].model_dump(exclude_defaults=True), None))
        if want.ipv4 is not None:
            wanted = addressing(want.ipv4)
            current_ipv4 = addressing(have.ipv4 or SeedIpv4(enabled=False))
            if wanted != current_ipv4:
                out.append(("ipv4", _show(current_ipv4), _show(wanted)))
        return out

    def owned(self) -> set[str]:
        return {
            info.name for info in self.network.all() if info.external_ids.get(KEY_OWNER) == OWNER
        }

    def targets(self, ids: set[str]) -> list[str]:
        return [bridge_path(name) for name in sorted(ids)]

    async def apply(self, desired: BaseModel, changes: list[Change], ctx: JobContext) -> None:
        want = self.resources(desired)
        touched = sorted({c.id for c in changes if c.op != "delete"})
        if touched:
            specs = [self._bridge_spec(want[name]) for name in touched]
            await apply_bridges(self.network, BridgesDocument(bridges=specs), ctx, owner=OWNER)
        for change in changes:
            if change.op == "modify" and change.field.startswith("ports[") and change.after is None:
                port = change.field.removeprefix("ports[").removesuffix("]")
                ctx.log(f"  remove port {port} from {change.id}")
                await self.network.remove_port(change.id, port, job=True)
        for change in changes:
            if change.op == "delete":
                ctx.log(f"  delete bridge {change.id}")
                await self.network.delete_bridge(change.id, job=True)

    @staticmethod
    def _bridge_spec(item: BaseModel) -> BridgeSpec:
        assert isinstance(item, SeedInterface)
        fields: dict[str, Any] = {
            "name": item.name,
            "ports": [_port(p) for p in item.ports],
        }
        if item.ipv4 is not None:  # only then is the addressing managed
            dhcp, addresses, gateway = addressing(item.ipv4)
            fields |= {"dhcp": dhcp, "addresses": list(addresses), "gateway": gateway}
        return BridgeSpec.model_validate(fields)

    def subscribe(self, callback: Callable[[], None]) -> None:
        self.network.cache.observers.append(Notify(callback))


def _show(value: Addressing) -> dict[str, Any]:
    dhcp, addresses, gateway = value
    if dhcp:
        return {"dhcp": True}
    return {"addresses": list(addresses), "gateway": gateway} if addresses else {"enabled": False}


__all__ = ["NetProvider", "PortInfo"]
