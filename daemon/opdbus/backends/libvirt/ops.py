"""Blocking libvirt verbs on a domain (by UUID) and its volumes; run in a libvirt thread.

The VM service decides what to do and when; these functions are the only
place that knows which libvirt calls do it.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from opdbus.backends.libvirt import domains
from opdbus.backends.libvirt.connection import domain_handle, forget_handle

UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)

# name, created (µs since the epoch), state, current, description
Snapshot = tuple[str, int, str, bool, str]


def _dom(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
    return domain_handle(conn, uuid)


def define(conn: libvirt.virConnect, xml: str, *, autostart: bool) -> None:
    """Define (or redefine, same UUID) a domain and set its autostart."""
    dom = conn.defineXML(xml)
    dom.setAutostart(int(autostart))


def start(conn: libvirt.virConnect, uuid: str) -> None:
    _dom(conn, uuid).create()


def destroy(conn: libvirt.virConnect, uuid: str) -> None:
    _dom(conn, uuid).destroy()


def shutdown(conn: libvirt.virConnect, uuid: str) -> None:
    _dom(conn, uuid).shutdown()


def reboot(conn: libvirt.virConnect, uuid: str) -> None:
    _dom(conn, uuid).reboot(0)


def suspend(conn: libvirt.virConnect, uuid: str) -> None:
    _dom(conn, uuid).suspend()


def resume(conn: libvirt.virConnect, uuid: str) -> None:
    _dom(conn, uuid).resume()


def set_autostart(conn: libvirt.virConnect, uuid: str, on: bool) -> None:
    _dom(conn, uuid).setAutostart(int(on))


# (interface, MAC, addresses as ADDRESS/PREFIX): what `virsh domifaddr` shows.
Addresses = list[tuple[str, str, list[str]]]
ADDRESS_SOURCES = {
    "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    "arp": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
}


def addresses(conn: libvirt.virConnect, uuid: str, source: str) -> Addresses:
    found = _dom(conn, uuid).interfaceAddresses(ADDRESS_SOURCES[source], 0) or {}
    return sorted(
        (
            name,
            str(info.get("hwaddr") or ""),
            [f"{a['addr']}/{a['prefix']}" for a in info.get("addrs") or []],
        )
        for name, info in found.items()
    )


def xml(conn: libvirt.virConnect, uuid: str) -> str:
    return str(_dom(conn, uuid).XMLDesc(0))


def undefine(conn: libvirt.virConnect, uuid: str, volumes: list[str]) -> list[str]:
    """Stop and undefine a domain, then delete ``volumes`` libvirt knows; the ones removed."""
    dom = _dom(conn, uuid)
    if dom.isActive():
        dom.destroy()
    try:
        dom.undefineFlags(UNDEFINE_FLAGS)
    except libvirt.libvirtError as e:
        # libvirt's test driver refuses the NVRAM flag as an unknown flag.
        if e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        dom.undefineFlags(UNDEFINE_FLAGS & ~libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    forget_handle(conn, uuid)
    return [path for path in volumes if domains.delete_volume(conn, path)]


def remove_all_traces(conn: libvirt.virConnect, uuid: str | None, volumes: list[str]) -> None:
    """Best effort after a failed create: no domain ``uuid`` (None: keep the domain), none
    of these volumes; any of them may be missing already."""
    if uuid is not None:
        with contextlib.suppress(libvirt.libvirtError):
            undefine(conn, uuid, [])
    for path in volumes:
        with contextlib.suppress(libvirt.libvirtError):
            domains.delete_volume(conn, path)


def volume(
    conn: libvirt.virConnect,
    pool_name: str,
    pool_dir: Path,
    name: str,
    size_bytes: int,
    fmt: str,
    *,
    reuse: bool,
) -> tuple[str, bool]:
    """(path, made now) of a volume in the daemon's pool; an existing one is kept if ``reuse``."""
    pool = domains.ensure_pool(conn, pool_name, pool_dir)
    if reuse:
        with contextlib.suppress(libvirt.libvirtError):
            return str(pool.storageVolLookupByName(name).path()), False
    return domains.create_volume(pool, name, size_bytes, fmt), True


def snapshots(conn: libvirt.virConnect, uuid: str) -> list[Snapshot]:
    out = []
    for snap in _dom(conn, uuid).listAllSnapshots(0):
        root = ET.fromstring(snap.getXMLDesc(0))
        out.append(
            (
                snap.getName(),
                # libvirt says seconds; the bus says µs everywhere (as systemd does).
                int(root.findtext("creationTime") or 0) * 1_000_000,
                root.findtext("state") or "",
                bool(snap.isCurrent(0)),
                root.findtext("description") or "",
            )
        )
    return sorted(out, key=lambda s: (s[1], s[0]))


def create_snapshot(conn: libvirt.virConnect, uuid: str, name: str, description: str) -> None:
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    if description:
        ET.SubElement(root, "description").text = description
    _dom(conn, uuid).snapshotCreateXML(ET.tostring(root, encoding="unicode"), 0)


def revert_snapshot(conn: libvirt.virConnect, uuid: str, name: str) -> None:
    dom = _dom(conn, uuid)
    dom.revertToSnapshot(dom.snapshotLookupByName(name, 0), 0)


def delete_snapshot(conn: libvirt.virConnect, uuid: str, name: str) -> None:
    _dom(conn, uuid).snapshotLookupByName(name, 0).delete(0)
