"""Frozen copies of OVSDB rows: the only form in which rows leave the IDL thread.

An IDL Row is live (it changes under the thread's feet and is not
thread-safe); these are immutable snapshots of the columns op-dbus reads.
Optional OVSDB columns (0 or 1 value) become ``None`` or the value; sets
become tuples; a row's UUID and its references become RowId, the UUID's
128-bit integer: unlike text it needs no formatting (thousands per change of
a big bridge) and unlike uuid.UUID it hashes and compares in C (the caches
are dicts keyed by it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from uuid import UUID

# Columns replicated per table. Statistics and the like are left out on
# purpose: ovs-vswitchd rewrites them every few seconds, and every rewrite
# would otherwise cross into the daemon as a change.
COLUMNS: dict[str, list[str]] = {
    "Open_vSwitch": ["bridges", "next_cfg", "cur_cfg", "ovs_version"],
    "Bridge": ["name", "ports", "datapath_type", "fail_mode", "stp_enable", "external_ids"],
    "Port": ["name", "interfaces", "tag", "trunks", "external_ids"],
    "Interface": [
        "name",
        "type",
        "options",
        "ofport",
        "link_state",
        "admin_state",
        "mtu",
        "mtu_request",
        "error",
        "external_ids",
    ],
}

EMPTY: Mapping[str, str] = MappingProxyType({})

RowId = int  # uuid.UUID(...).int of an OVSDB row


def row_uuid(row_id: RowId) -> str:
    """A RowId as OVSDB spells the UUID."""
    return str(UUID(int=row_id))


@dataclass(frozen=True, slots=True)
class RootRow:
    uuid: RowId
    bridges: tuple[RowId, ...] = ()
    next_cfg: int = 0
    cur_cfg: int = 0
    ovs_version: str = ""


@dataclass(frozen=True, slots=True)
class BridgeRow:
    uuid: RowId
    name: str
    ports: tuple[RowId, ...] = ()
    datapath_type: str = ""
    fail_mode: str = ""
    stp_enable: bool = False
    external_ids: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True, slots=True)
class PortRow:
    uuid: RowId
    name: str
    interfaces: tuple[RowId, ...] = ()
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    external_ids: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True, slots=True)
class InterfaceRow:
    uuid: RowId
    name: str
    type: str = ""
    options: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    ofport: int | None = None
    link_state: str = ""
    admin_state: str = ""
    mtu: int | None = None
    mtu_request: int | None = None
    error: str = ""
    external_ids: Mapping[str, str] = field(default_factory=lambda: EMPTY)


Row = RootRow | BridgeRow | PortRow | InterfaceRow


def _row_id(value: Any, base: Any) -> Any:
    """Datum.to_python's hook, called for every scalar: a reference becomes a RowId."""
    return value.int if isinstance(value, UUID) else value


def _get(row: Any, column: str, default: Any) -> Any:
    """A column's committed value, references as RowId.

    Reads the IDL's own datum instead of ``getattr(row, column)``: that
    conversion turns every reference into a Row object, which made freezing
    a bridge with N ports cost N Row lookups on every change of it.
    """
    data = row._data
    datum = data.get(column) if data is not None else None
    if datum is None:
        return default
    return datum.to_python(_row_id)


def _one(value: Any) -> Any:
    """An optional column: [] -> None, [x] -> x, x -> x."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _uuids(values: Any) -> tuple[RowId, ...]:
    return tuple(values)


def _map(value: Any) -> Mapping[str, str]:
    return MappingProxyType(dict(value)) if value else EMPTY


def freeze(table: str, row: Any) -> Row:
    """Copy an IDL Row of ``table`` (in the IDL thread)."""
    uuid: RowId = row.uuid.int
    if table == "Bridge":
        return BridgeRow(
            uuid=uuid,
            name=_get(row, "name", ""),
            ports=_uuids(_get(row, "ports", [])),
            datapath_type=_get(row, "datapath_type", ""),
            fail_mode=_one(_get(row, "fail_mode", [])) or "",
            stp_enable=bool(_get(row, "stp_enable", False)),
            external_ids=_map(_get(row, "external_ids", {})),
        )
    if table == "Port":
        return PortRow(
            uuid=uuid,
            name=_get(row, "name", ""),
            interfaces=_uuids(_get(row, "interfaces", [])),
            tag=_one(_get(row, "tag", [])),
            trunks=tuple(sorted(_get(row, "trunks", []))),
            external_ids=_map(_get(row, "external_ids", {})),
        )
    if table == "Interface":
        return InterfaceRow(
            uuid=uuid,
            name=_get(row, "name", ""),
            type=_get(row, "type", ""),
            options=_map(_get(row, "options", {})),
            ofport=_one(_get(row, "ofport", [])),
            link_state=_one(_get(row, "link_state", [])) or "",
            admin_state=_one(_get(row, "admin_state", [])) or "",
            mtu=_one(_get(row, "mtu", [])),
            mtu_request=_one(_get(row, "mtu_request", [])),
            error=_one(_get(row, "error", [])) or "",
            external_ids=_map(_get(row, "external_ids", {})),
        )
    if table == "Open_vSwitch":
        return RootRow(
            uuid=uuid,
            bridges=_uuids(_get(row, "bridges", [])),
            next_cfg=int(_get(row, "next_cfg", 0)),
            cur_cfg=int(_get(row, "cur_cfg", 0)),
            ovs_version=_one(_get(row, "ovs_version", [])) or "",
        )
    raise ValueError(f"op-dbus does not replicate table {table}")
