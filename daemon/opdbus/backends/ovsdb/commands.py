"""The writes op-dbus makes to OVSDB, each run inside one IDL-thread transaction.

A command checks what it needs against the live IDL (so two callers racing
for one name cannot both win) and raises a named error instead of writing.
Several commands may share one transaction: ApplyBridges runs them all at
once, so OVSDB ends with everything or nothing.

Sets of references are changed with mutations (``addvalue``/``delvalue``),
never by rewriting the whole set: adding the 1000th port to a bridge costs
what adding the first did.
"""

from __future__ import annotations

from typing import Any

from opdbus.backends.ovsdb.txn import Txn
from opdbus.errors import AlreadyExists, InvalidArgs, NotFound
from opdbus.models.network import PortSpec, PortType

# Port type -> OVSDB Interface.type ("" is a system interface).
IFACE_TYPE = {PortType.SYSTEM: "", PortType.INTERNAL: "internal", PortType.PATCH: "patch"}


def _bridge(tx: Txn, name: str) -> Any:
    bridge = tx.find("Bridge", name)
    if bridge is None:
        raise NotFound(f"no bridge {name}")
    return bridge


def add_bridge(
    tx: Txn,
    name: str,
    *,
    datapath_type: str,
    fail_mode: str | None,
    stp: bool,
    external_ids: dict[str, str],
    mtu: int | None,
) -> None:
    if tx.find("Bridge", name) is not None:
        raise AlreadyExists(f"bridge {name} already exists")
    if tx.find("Port", name) is not None or tx.find("Interface", name) is not None:
        raise AlreadyExists(f"{name} is already a port or interface name in OVSDB")
    iface = tx.insert(
        "Interface", name=name, type="internal", mtu_request=[] if mtu is None else mtu
    )
    port = tx.insert("Port", name=name, interfaces=[iface])
    bridge = tx.insert(
        "Bridge",
        name=name,
        ports=[port],
        datapath_type=datapath_type,
        fail_mode=[] if fail_mode is None else fail_mode,
        stp_enable=stp,
        external_ids=external_ids,
    )
    tx.add_ref(tx.root, "bridges", bridge)
    tx.bump = True


def update_bridge(
    tx: Txn,
    name: str,
    *,
    datapath_type: str | None = None,
    fail_mode: str | None = None,
    stp: bool | None = None,
    external_ids: dict[str, str] | None = None,
    mtu: int | None = None,
) -> None:
    """Change only what differs; None means leave it."""
    bridge = _bridge(tx, name)
    wanted: dict[str, Any] = {}
    if datapath_type is not None and bridge.datapath_type != datapath_type:
        wanted["datapath_type"] = datapath_type
    if fail_mode is not None and (bridge.fail_mode or [""])[0] != fail_mode:
        wanted["fail_mode"] = fail_mode
    if stp is not None and bool(bridge.stp_enable) != stp:
        wanted["stp_enable"] = stp
    if external_ids is not None and dict(bridge.external_ids) != external_ids:
        wanted["external_ids"] = external_ids
    if wanted:
        tx.set(bridge, **wanted)
        tx.bump = True
    if mtu is not None:
        iface = tx.find("Interface", name)
        if iface is not None and (iface.mtu_request or [None])[0] != mtu:
            tx.set(iface, mtu_request=mtu)
            tx.bump = True


def delete_bridge(tx: Txn, name: str) -> None:
    bridge = _bridge(tx, name)
    for port in bridge.ports:
        for iface in port.interfaces:
            tx.delete(iface)
        tx.delete(port)
    tx.remove_ref(tx.root, "bridges", bridge)
    tx.delete(bridge)
    tx.bump = True


def add_port(tx: Txn, bridge_name: str, spec: PortSpec) -> None:
    bridge = _bridge(tx, bridge_name)
    if tx.find("Port", spec.name) is not None:
        owner = next(
            (b.name for b in _bridges(tx) if any(p.name == spec.name for p in b.ports)), "?"
        )
        raise AlreadyExists(f"port {spec.name} already exists (on bridge {owner})")
    if tx.find("Interface", spec.name) is not None:
        raise AlreadyExists(f"interface {spec.name} already exists in OVSDB")
    if spec.type is PortType.PATCH and spec.peer == spec.name:
        raise InvalidArgs(f"patch port {spec.name} cannot be its own peer")
    iface = tx.insert(
        "Interface",
        name=spec.name,
        type=IFACE_TYPE[spec.type],
        options={"peer": spec.peer} if spec.peer else {},
    )
    port = tx.insert(
        "Port",
        name=spec.name,
        interfaces=[iface],
        tag=[] if spec.tag is None else spec.tag,
        trunks=list(spec.trunks),
    )
    tx.add_ref(bridge, "ports", port)
    tx.bump = True


def update_port(tx: Txn, spec: PortSpec) -> None:
    """Bring an existing port to ``spec`` (tag, trunks, type, peer), changing only what differs."""
    port = tx.find("Port", spec.name)
    if port is None:
        raise NotFound(f"no port {spec.name}")
    tag = None if not port.tag else port.tag[0]
    if tag != spec.tag:
        tx.set(port, tag=[] if spec.tag is None else spec.tag)
        tx.bump = True
    if sorted(port.trunks) != sorted(spec.trunks):
        tx.set(port, trunks=list(spec.trunks))
        tx.bump = True
    for iface in port.interfaces:
        options = {"peer": spec.peer} if spec.peer else {}
        if iface.type != IFACE_TYPE[spec.type] or dict(iface.options) != options:
            tx.set(iface, type=IFACE_TYPE[spec.type], options=options)
            tx.bump = True


def delete_port(tx: Txn, bridge_name: str, name: str) -> None:
    bridge = _bridge(tx, bridge_name)
    port = next((p for p in bridge.ports if p.name == name), None)
    if port is None:
        raise NotFound(f"bridge {bridge_name} has no port {name}")
    if name == bridge_name:
        raise InvalidArgs(f"{name} is the bridge's own port; delete the bridge instead")
    for iface in port.interfaces:
        tx.delete(iface)
    tx.remove_ref(bridge, "ports", port)
    tx.delete(port)
    tx.bump = True


def move_port(tx: Txn, name: str, to_bridge: str) -> None:
    """Move a port (with its interfaces) to another bridge in the same transaction."""
    target = _bridge(tx, to_bridge)
    port = tx.find("Port", name)
    if port is None:
        raise NotFound(f"no port {name}")
    for bridge in _bridges(tx):
        if any(p.name == name for p in bridge.ports):
            tx.remove_ref(bridge, "ports", port)
    tx.add_ref(target, "ports", port)
    tx.bump = True


def _bridges(tx: Txn) -> list[Any]:
    return list(tx.root.bridges)
