"""Blocking reads and writes of domains and volumes (run in a libvirt thread).

Each function takes the open connection and returns plain values; nothing
here touches the event loop.
"""

from __future__ import annotations

import contextlib
import functools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from opdbus.backends.libvirt.domain_xml import Target, owner_from_domain, profile_from_domain
from opdbus.models.vm import Arch, VmInfo, VmState

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: VmState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VmState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VmState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: VmState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VmState.PMSUSPENDED,
}
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shut down",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "stopped",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed to start",
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "reverted to a snapshot",
}
_PAUSED_REASONS = {
    libvirt.VIR_DOMAIN_PAUSED_USER: "suspended",
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: "I/O error",
    libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT: "taking a snapshot",
}


def read_domain(dom: libvirt.virDomain) -> VmInfo:
    state, reason = dom.state()
    vm_state = _STATES.get(state, VmState.NOSTATE)
    why = ""
    if vm_state is VmState.SHUTOFF:
        why = _SHUTOFF_REASONS.get(reason, "")
    elif vm_state is VmState.PAUSED:
        why = _PAUSED_REASONS.get(reason, "")
    info = dom.info()  # [state, max KiB, used KiB, vcpus, cpu ns]
    xml = dom.XMLDesc(0)
    root = ET.fromstring(xml)
    profile = profile_from_domain(xml)
    try:
        snapshots = dom.snapshotNum(0)
    except libvirt.libvirtError:
        snapshots = 0
    persistent = bool(dom.isPersistent())
    return VmInfo(
        uuid=dom.UUIDString(),
        name=dom.name(),
        state=vm_state,
        state_reason=why,
        persistent=persistent,
        autostart=bool(dom.autostart()) if persistent else False,
        vcpus=int(info[3]),
        memory_mib=int(info[1]) // 1024,
        arch=_arch(root, profile),
        interfaces=tuple(_interfaces(root)),
        disks=tuple(_disks(root)),
        profile=profile,
        managed=bool(profile),
        owner=owner_from_domain(xml) if profile else "",
        snapshots=snapshots,
        cpu_time_ns=int(info[4]),
        memory_used_kib=int(info[2]) if vm_state is VmState.RUNNING else 0,
    )


def _arch(root: ET.Element, profile: str) -> str:
    if profile:
        # The profile's arch wins: the test driver only simulates i686.
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(profile).get("arch", "")) or Arch.X86_64.value
    element = root.find("os/type")
    return "" if element is None else element.get("arch", "")


def _interfaces(root: ET.Element) -> list[tuple[str, str, str, str]]:
    out = []
    for nic in root.findall("devices/interface"):
        kind = nic.get("type", "")
        source = nic.find("source")
        where = ""
        if source is not None:
            where = source.get("bridge") or source.get("network") or source.get("dev") or ""
        if kind == "bridge" and nic.find("virtualport[@type='openvswitch']") is not None:
            kind = "ovs"
        mac = nic.find("mac")
        model = nic.find("model")
        out.append(
            (
                kind,
                where,
                "" if mac is None else mac.get("address", ""),
                "" if model is None else model.get("type", ""),
            )
        )
    return out


def _disks(root: ET.Element) -> list[tuple[str, str, str, str]]:
    out = []
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        driver = disk.find("driver")
        out.append(
            (
                "" if target is None else target.get("dev", ""),
                "" if source is None else source.get("file") or source.get("dev") or "",
                disk.get("device", "disk"),
                "" if driver is None else driver.get("type", ""),
            )
        )
    return out


def read_all(conn: libvirt.virConnect) -> list[VmInfo]:
    out = []
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):  # gone while we looked
            out.append(read_domain(dom))
    return out


def read_one(conn: libvirt.virConnect, uuid: str) -> VmInfo | None:
    try:
        return read_domain(conn.lookupByUUIDString(uuid))
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def stats(conn: libvirt.virConnect) -> dict[str, dict[str, int]]:
    """uuid -> {cpu_time_ns, memory_used_kib} of running domains, in one RPC.

    A value the driver does not report is left out (libvirt's test driver has
    no balloon or CPU statistics), so the caller keeps what it had.
    """
    wanted = libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON
    out: dict[str, dict[str, int]] = {}
    for dom, values in conn.getAllDomainStats(
        wanted, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
    ):
        found: dict[str, int] = {}
        if "cpu.time" in values:
            found["cpu_time_ns"] = int(values["cpu.time"])
        memory = values.get("balloon.rss", values.get("balloon.current"))
        if memory is not None:
            found["memory_used_kib"] = int(memory)
        out[dom.UUIDString()] = found
    return out


# -- the host ----------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def target_for(capabilities: str, arch: Arch, uri: str) -> Target | str:
    """What the host can run a guest of ``arch`` as, or why it cannot.

    Remembered: the capabilities are the same text until libvirt reconnects,
    and QEMU's are tens of kilobytes to parse for every profile checked.
    """
    root = ET.fromstring(capabilities)
    offered: dict[str, ET.Element] = {}
    for guest in root.findall("guest"):
        if guest.findtext("os_type") != "hvm":
            continue
        element = guest.find("arch")
        if element is not None:
            offered.setdefault(element.get("name", ""), element)
    if uri.startswith("test:"):
        # The test driver simulates i686 guests only; the profile keeps its arch.
        return Target(domain_type="test", machine=None, emulator=None, arch="i686")
    element = offered.get(arch.value)
    if element is None:
        return (
            f"this host cannot run {arch.value} guests (no qemu-system-{arch.value}); "
            f"it offers {', '.join(sorted(offered)) or 'none'}"
        )
    domains = {d.get("type", "") for d in element.findall("domain")}
    domain_type = "kvm" if "kvm" in domains else "qemu"
    machines = {m.text or "" for m in element.findall("machine")}
    machine = "q35" if arch is Arch.X86_64 else "virt"
    return Target(
        domain_type=domain_type,
        machine=machine if machine in machines else None,
        emulator=element.findtext("emulator"),
        arch=arch.value,
    )


def ensure_pool(conn: libvirt.virConnect, name: str, path: Path) -> libvirt.virStoragePool:
    """The daemon's directory pool, defined, built and started if need be."""
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        root = ET.Element("pool", type="dir")
        ET.SubElement(root, "name").text = name
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "path").text = str(path)
        pool = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
        with contextlib.suppress(libvirt.libvirtError):
            pool.build(0)
        pool.setAutostart(1)
    if not pool.isActive():
        pool.create(0)
    return pool


def create_volume(pool: libvirt.virStoragePool, name: str, size_bytes: int, fmt: str) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(size_bytes)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type=fmt)
    volume = pool.createXML(ET.tostring(root, encoding="unicode"), 0)
    return str(volume.path())


def delete_volume(conn: libvirt.virConnect, path: str) -> bool:
    """Remove a volume by path; False when libvirt knows no volume there."""
    try:
        volume = conn.storageVolLookupByPath(path)
    except libvirt.libvirtError:
        return False
    volume.delete(0)
    return True
