"""Domain XML from a VmProfile, built as an element tree (never pasted strings).

Every value enters the tree as an attribute or text node, so ElementTree
escapes it: a profile cannot inject markup, whatever its strings hold (and
the model already refuses most of what could try).

The profile itself travels inside the domain, in op-dbus's <metadata>
namespace, so it survives daemon restarts and `virsh dumpxml` shows where a
domain came from.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from opdbus.models.vm import (
    Arch,
    DiskBus,
    Firmware,
    Graphics,
    NicKind,
    VmProfile,
)

METADATA_NS = "https://opdbus.org/xmlns/vm/1"
ET.register_namespace("opdbus", METADATA_NS)

_DEV_PREFIX = {DiskBus.VIRTIO: "vd", DiskBus.SATA: "sd", DiskBus.SCSI: "sd", DiskBus.USB: "sd"}


@dataclass(frozen=True)
class DiskSource:
    """A profile disk resolved to a file: a pool volume, or the path it gave."""

    path: str
    format: str
    bus: DiskBus


@dataclass(frozen=True)
class Target:
    """What the host offers for the profile's arch (from libvirt's capabilities)."""

    domain_type: str  # kvm, qemu, or test (libvirt's test driver)
    machine: str | None  # None: let libvirt pick its default machine
    emulator: str | None  # None: let libvirt pick
    arch: str  # as written into <os><type arch=...>


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _dev_name(prefix: str, index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return prefix + letters


def build_domain(
    profile: VmProfile,
    *,
    target: Target,
    disks: list[DiskSource],
    uuid: str | None = None,
    profile_json: str | None = None,
    owner: str = "",
) -> ET.Element:
    dom = ET.Element("domain", type=target.domain_type)
    _sub(dom, "name", profile.name)
    if uuid:
        _sub(dom, "uuid", uuid)
    if profile.description:
        _sub(dom, "title", profile.description.splitlines()[0][:200])
        _sub(dom, "description", profile.description)
    metadata = _sub(dom, "metadata")
    mine = _sub(metadata, f"{{{METADATA_NS}}}vm")
    _sub(mine, f"{{{METADATA_NS}}}profile", profile_json or profile.model_dump_json())
    if owner:  # "state": made by the declarative state (only those are pruned)
        _sub(mine, f"{{{METADATA_NS}}}owner", owner)
    _sub(dom, "memory", str(profile.memory_mb), unit="MiB")
    _sub(dom, "currentMemory", str(profile.memory_mb), unit="MiB")
    _memory_backing(dom, profile)
    _sub(dom, "vcpu", str(profile.cpus), placement="static")
    if profile.cpu_pinning:
        tune = _sub(dom, "cputune")
        for pin in profile.cpu_pinning:
            _sub(tune, "vcpupin", vcpu=str(pin.vcpu), cpuset=pin.cpuset)
    if profile.numa_nodeset:
        numa = _sub(dom, "numatune")
        _sub(numa, "memory", mode="strict", nodeset=profile.numa_nodeset)
    _os(dom, profile, target)
    _features(dom, profile)
    _cpu(dom, profile, target)
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    _devices(dom, profile, target, disks)
    _launch_security(dom, profile)
    return dom


def to_xml(element: ET.Element) -> str:
    ET.indent(element)
    return ET.tostring(element, encoding="unicode")


def _memory_backing(dom: ET.Element, profile: VmProfile) -> None:
    opts = profile.memory_options
    if not (profile.hugepages or opts.guest_memfd or opts.private):
        return
    backing = _sub(dom, "memoryBacking")
    if profile.hugepages:
        _sub(backing, "hugepages")
    if opts.guest_memfd or opts.private:
        # guest_memfd needs memfd-backed RAM that the host does not map shared.
        _sub(backing, "source", type="memfd")
        _sub(backing, "access", mode="private")


def _os(dom: ET.Element, profile: VmProfile, target: Target) -> None:
    os_el = _sub(dom, "os")
    if profile.firmware is Firmware.UEFI:
        os_el.set("firmware", "efi")
    type_attrs = {"arch": target.arch}
    if target.machine:
        type_attrs["machine"] = target.machine
    _sub(os_el, "type", "hvm", **type_attrs)
    if profile.firmware is Firmware.UEFI and profile.secure_boot:
        firmware = _sub(os_el, "firmware")
        _sub(firmware, "feature", enabled="yes", name="secure-boot")
        _sub(firmware, "feature", enabled="yes", name="enrolled-keys")
    if profile.iso_path:
        _sub(os_el, "boot", dev="cdrom")
    _sub(os_el, "boot", dev="hd")


def _features(dom: ET.Element, profile: VmProfile) -> None:
    features = _sub(dom, "features")
    if profile.arch is Arch.X86_64:
        _sub(features, "acpi")
        _sub(features, "apic")
    if profile.secure_boot:
        _sub(features, "smm", state="on")
    if profile.cpu_features.avic:
        # AVIC accelerates the in-kernel APIC; a split irqchip would bypass it.
        _sub(features, "ioapic", driver="kvm")


def _cpu(dom: ET.Element, profile: VmProfile, target: Target) -> None:
    feats = profile.cpu_features
    wanted = [name for name in ("shstk", "ibt") if getattr(feats, name)]
    if feats.avic:
        wanted.append("x2apic")
    numa = bool(profile.numa_nodeset or profile.hugepages)
    if not wanted and not numa:
        # QEMU's default CPU model: host-passthrough is faster but breaks on
        # hosts that cannot pass every MSR through (nested KVM, like CI).
        return
    cpu = _sub(dom, "cpu")
    if target.domain_type == "kvm":
        cpu.set("mode", "host-passthrough")
        cpu.set("check", "none")
    else:
        cpu.set("mode", "maximum")  # TCG: every feature QEMU can emulate
    for name in wanted:
        _sub(cpu, "feature", policy="require", name=name)
    if numa:
        cell_parent = _sub(cpu, "numa")
        _sub(
            cell_parent,
            "cell",
            id="0",
            cpus=f"0-{profile.cpus - 1}",
            memory=str(profile.memory_mb),
            unit="MiB",
        )


def _devices(dom: ET.Element, profile: VmProfile, target: Target, disks: list[DiskSource]) -> None:
    devices = _sub(dom, "devices")
    if target.emulator:
        _sub(devices, "emulator", target.emulator)
    used: dict[str, int] = {}

    def next_dev(bus: DiskBus) -> str:
        prefix = _DEV_PREFIX[bus]
        index = used.get(prefix, 0)
        used[prefix] = index + 1
        return _dev_name(prefix, index)

    needs_scsi = False
    for disk in disks:
        element = _sub(devices, "disk", type="file", device="disk")
        _sub(element, "driver", name="qemu", type=disk.format)
        _sub(element, "source", file=disk.path)
        _sub(element, "target", dev=next_dev(disk.bus), bus=disk.bus.value)
        needs_scsi |= disk.bus is DiskBus.SCSI
    # x86's q35 has SATA for CD-ROMs; the "virt" machines have none: use SCSI.
    cd_bus = DiskBus.SATA if profile.arch is Arch.X86_64 else DiskBus.SCSI
    cdroms = [
        p for p in (profile.iso_path, profile.cloud_init and profile.cloud_init.seed_path) if p
    ]
    for path in cdroms:
        element = _sub(devices, "disk", type="file", device="cdrom")
        _sub(element, "driver", name="qemu", type="raw")
        _sub(element, "source", file=path)
        _sub(element, "target", dev=next_dev(cd_bus), bus=cd_bus.value)
        _sub(element, "readonly")
        needs_scsi |= cd_bus is DiskBus.SCSI
    if needs_scsi:
        _sub(devices, "controller", type="scsi", model="virtio-scsi")
    _nics(devices, profile)
    _hostdevs(devices, profile)
    _consoles(devices, profile, target)


def _nics(devices: ET.Element, profile: VmProfile) -> None:
    for nic in profile.interfaces:
        if nic.kind is NicKind.NETWORK:
            element = _sub(devices, "interface", type="network")
            _sub(element, "source", network=nic.network or "")
        else:
            element = _sub(devices, "interface", type="bridge")
            _sub(element, "source", bridge=nic.bridge or "")
            if nic.kind is NicKind.OVS:
                _sub(element, "virtualport", type="openvswitch")
        if nic.mac:
            _sub(element, "mac", address=nic.mac)
        _sub(element, "model", type=nic.model.value)


def _hostdevs(devices: ET.Element, profile: VmProfile) -> None:
    for address in profile.hostdevs:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        element = _sub(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        source = _sub(element, "source")
        _sub(
            source,
            "address",
            domain=f"0x{domain}",
            bus=f"0x{bus}",
            slot=f"0x{slot}",
            function=f"0x{function}",
        )


def _consoles(devices: ET.Element, profile: VmProfile, target: Target) -> None:
    if profile.serial_console:
        _sub(devices, "serial", type="pty")
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="serial")
    if profile.graphics is not Graphics.NONE:
        graphics = _sub(devices, "graphics", type=profile.graphics.value, autoport="yes")
        _sub(graphics, "listen", type="address", address="127.0.0.1")
        video = _sub(devices, "video")
        _sub(video, "model", type="virtio")
    if profile.tpm:
        model = "tpm-crb" if profile.arch is Arch.X86_64 else "tpm-tis"
        tpm = _sub(devices, "tpm", model=model)
        _sub(tpm, "backend", type="emulator", version="2.0")
    if target.domain_type != "test":
        _sub(devices, "memballoon", model="virtio")


def _launch_security(dom: ET.Element, profile: VmProfile) -> None:
    policy = profile.cpu_features.sev_policy
    if policy is None:
        return
    if policy == "snp":
        _sub(dom, "launchSecurity", type="sev-snp")
        return
    security = _sub(dom, "launchSecurity", type="sev")
    # Bit 0: no debugging; bit 2 (0x4): SEV-ES.
    _sub(security, "policy", "0x0005" if policy == "es" else "0x0001")


def profile_from_domain(xml: str) -> str:
    """The profile JSON op-dbus stored in a domain, or "" for a domain made elsewhere."""
    return _metadata(xml, "profile")


def owner_from_domain(xml: str) -> str:
    """Who made the domain ("state"), as op-dbus noted it; "" otherwise."""
    return _metadata(xml, "owner")


def _metadata(xml: str, name: str) -> str:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return ""
    element = root.find(f"metadata/{{{METADATA_NS}}}vm/{{{METADATA_NS}}}{name}")
    return (element.text or "") if element is not None else ""
