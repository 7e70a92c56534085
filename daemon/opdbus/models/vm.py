"""VM profiles: what a caller may ask a virtual machine to be.

The fields follow the Hyper-NixOS profiles (``/var/lib/hypervisor/vm-profiles
/*.json``: name, cpus, memory_mb, disks, iso_path, network, arch, hugepages,
numa, cpu_pinning, hostdevs, the Linux 6.18 ``cpu_features`` and
``memory_options`` toggles). Everything is checked here, once; the domain XML
is then built from these typed values as an element tree, so no field can
smuggle markup into it.

What needs the host (does the ISO lie in an allowed directory, does a disk
path exist) is checked by the VM service, which knows the configuration.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from opdbus.models.base import Model
from opdbus.models.network import IfName
from opdbus.models.text import Description

NAME_MAX = 64
# Letters, digits, '.', '_', '-'; starting with a letter or digit. Keeps names
# safe as file names (volumes are named after the VM) and in any shell.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_PCI = re.compile(r"(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])")
_CPUSET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")

MEMORY_MAX_MB = 16 * 1024 * 1024  # 16 TiB: QEMU's practical ceiling on x86_64
CPUS_MAX = 1024
DISK_MAX_GB = 64 * 1024


def _check_name(name: str) -> str:
    if not name:
        raise ValueError("a VM name cannot be empty")
    if len(name) > NAME_MAX:
        raise ValueError(f"a VM name has at most {NAME_MAX} characters")
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{name!r}: use letters, digits, '.', '_' and '-', starting with a letter or "
            "digit (no '/', '..', spaces, quotes or markup)"
        )
    return name


PATH_MAX = 4096


def _check_abs_path(text: str) -> str:
    if len(text) > PATH_MAX:
        raise ValueError(f"a path has at most {PATH_MAX} characters")
    path = PurePosixPath(text)
    if not path.is_absolute():
        raise ValueError(f"{text!r} must be an absolute path")
    if ".." in path.parts:
        raise ValueError(f"{text!r} may not contain '..'")
    if any(c in text for c in "\n\r\0"):
        raise ValueError("a path may not contain newlines or NUL")
    return str(path)


def _check_mac(text: str) -> str:
    mac = text.lower()
    if not _MAC.fullmatch(mac):
        raise ValueError(f"{text!r} is not a MAC address like 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{text!r} is a multicast address; a NIC needs a unicast one")
    return mac


def _check_pci(text: str) -> str:
    match = _PCI.fullmatch(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a PCI address like 0000:01:00.0")
    domain, bus, slot, function = match.groups()
    if int(slot, 16) > 0x1F:
        raise ValueError(f"{text!r}: the slot (device) is at most 1f")
    return f"{domain or '0000'}:{bus}:{slot}.{function}"


def _check_cpuset(text: str) -> str:
    if len(text) > 4096 or not _CPUSET.fullmatch(text):
        raise ValueError(f"{text!r} is not a CPU list like 0-3,6")
    for part in text.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise ValueError(f"{text!r}: range {part} runs backwards")
    return text


VmName = Annotated[str, AfterValidator(_check_name)]
AbsPath = Annotated[str, AfterValidator(_check_abs_path)]
Mac = Annotated[str, AfterValidator(_check_mac)]
PciAddress = Annotated[str, AfterValidator(_check_pci)]
CpuSet = Annotated[str, AfterValidator(_check_cpuset)]


class Arch(StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"
    RISCV64 = "riscv64"
    LOONGARCH64 = "loongarch64"


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class DiskBus(StrEnum):
    VIRTIO = "virtio"
    SATA = "sata"
    SCSI = "scsi"
    USB = "usb"


class DiskFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


class NicKind(StrEnum):
    OVS = "ovs"  # an Open vSwitch bridge: <virtualport type='openvswitch'/>
    BRIDGE = "bridge"  # a Linux bridge
    NETWORK = "network"  # a libvirt network (e.g. "default")


class NicModel(StrEnum):
    VIRTIO = "virtio"
    E1000E = "e1000e"
    E1000 = "e1000"
    RTL8139 = "rtl8139"


class Graphics(StrEnum):
    NONE = "none"
    VNC = "vnc"
    SPICE = "spice"


class _Strict(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Disk(_Strict):
    """A new volume (size_gb) in the daemon's pool, or an existing image (path)."""

    size_gb: Annotated[float, Field(gt=0, le=DISK_MAX_GB)] | None = None
    path: AbsPath | None = None
    bus: DiskBus = DiskBus.VIRTIO
    format: DiskFormat = DiskFormat.QCOW2

    @model_validator(mode="after")
    def _one_source(self) -> Disk:
        if (self.size_gb is None) == (self.path is None):
            raise ValueError("a disk needs exactly one of size_gb (a new volume) or path")
        return self


class Nic(_Strict):
    bridge: IfName | None = None  # for ovs and bridge
    network: VmName | None = None  # for kind "network"
    kind: NicKind = NicKind.OVS
    mac: Mac | None = None
    model: NicModel = NicModel.VIRTIO

    @model_validator(mode="after")
    def _has_target(self) -> Nic:
        if self.kind is NicKind.NETWORK:
            if self.network is None or self.bridge is not None:
                raise ValueError("a 'network' interface names a libvirt network, not a bridge")
        elif self.bridge is None or self.network is not None:
            raise ValueError(f"an '{self.kind.value}' interface needs 'bridge' (and no 'network')")
        return self


class CpuPin(_Strict):
    vcpu: Annotated[int, Field(ge=0, lt=CPUS_MAX)]
    cpuset: CpuSet


class CpuFeatures(_Strict):
    """Linux 6.18 toggles (seed 003); on only where the host supports them."""

    shstk: bool = False  # shadow stacks (CET)
    ibt: bool = False  # indirect branch tracking (CET)
    avic: bool = False  # AMD virtual interrupt controller
    sev: bool = False
    sev_es: bool = False
    sev_snp: bool = False

    @model_validator(mode="after")
    def _sev_chain(self) -> CpuFeatures:
        if self.sev_snp and self.sev_es:
            raise ValueError("sev_snp and sev_es are alternatives: choose one")
        return self

    @property
    def sev_policy(self) -> str | None:
        if self.sev_snp:
            return "snp"
        if self.sev_es:
            return "es"
        return "sev" if self.sev else None


class MemoryOptions(_Strict):
    guest_memfd: bool = False  # back guest RAM with guest_memfd (confidential guests)
    private: bool = False  # memfd-backed, not shared with the host


class CloudInit(_Strict):
    """A NoCloud seed image (made with cloud-localds) attached as a CD-ROM."""

    seed_path: AbsPath


class VmProfile(_Strict):
    name: VmName
    cpus: Annotated[int, Field(ge=1, le=CPUS_MAX)] = 1
    memory_mb: Annotated[int, Field(ge=16, le=MEMORY_MAX_MB)] = 512
    disks: list[Disk] = Field(default_factory=list, max_length=26)
    iso_path: AbsPath | None = None
    interfaces: list[Nic] = Field(default_factory=list, max_length=32)
    arch: Arch = Arch.X86_64
    firmware: Firmware = Firmware.BIOS
    secure_boot: bool = False
    autostart: bool = False
    hugepages: bool = False
    numa_nodeset: CpuSet | None = None
    cpu_pinning: list[CpuPin] = Field(default_factory=list, max_length=CPUS_MAX)
    hostdevs: list[PciAddress] = Field(default_factory=list, max_length=16)
    tpm: bool = False
    cpu_features: CpuFeatures = CpuFeatures()
    memory_options: MemoryOptions = MemoryOptions()
    cloud_init: CloudInit | None = None
    graphics: Graphics = Graphics.NONE
    serial_console: bool = True
    description: Description = ""

    @model_validator(mode="after")
    def _consistent(self) -> VmProfile:
        if self.secure_boot and self.firmware is not Firmware.UEFI:
            raise ValueError("secure_boot needs firmware 'uefi'")
        pinned = [pin.vcpu for pin in self.cpu_pinning]
        if len(set(pinned)) != len(pinned):
            raise ValueError("cpu_pinning names a vcpu twice")
        too_high = [v for v in pinned if v >= self.cpus]
        if too_high:
            raise ValueError(f"cpu_pinning: vcpu {too_high[0]} >= cpus ({self.cpus})")
        if len(set(self.hostdevs)) != len(self.hostdevs):
            raise ValueError("hostdevs lists a PCI address twice")
        feats = self.cpu_features
        if (feats.sev or feats.sev_es or feats.sev_snp or feats.avic) and (
            self.arch is not Arch.X86_64
        ):
            raise ValueError("sev, sev_es, sev_snp and avic are AMD x86_64 features")
        if (feats.shstk or feats.ibt) and self.arch is not Arch.X86_64:
            raise ValueError("shstk and ibt are x86_64 features")
        if feats.sev_policy is not None and self.firmware is not Firmware.UEFI:
            raise ValueError("SEV guests boot with firmware 'uefi'")
        macs = [nic.mac for nic in self.interfaces if nic.mac]
        if len(set(macs)) != len(macs):
            raise ValueError("two interfaces have the same MAC address")
        return self


def profile_schema() -> dict[str, Any]:
    """The profile's JSON Schema (for editors and `opctl vm profile schema`)."""
    return VmProfile.model_json_schema()


class VmState(StrEnum):
    """libvirt's domain states, as the bus shows them."""

    NOSTATE = "nostate"
    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SHUTDOWN = "shutting-down"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"


class VmInfo(Model):
    """What the daemon knows of one domain (from libvirt, kept current by events)."""

    model_config = ConfigDict(frozen=True)

    uuid: str
    name: str
    state: VmState
    state_reason: str = ""
    persistent: bool = True
    autostart: bool = False
    vcpus: int = 0
    memory_mib: int = 0
    arch: str = ""
    interfaces: tuple[tuple[str, str, str, str], ...] = ()  # (kind, source, mac, model)
    disks: tuple[tuple[str, str, str, str], ...] = ()  # (target, source, device, format)
    profile: str = ""  # the profile JSON op-dbus defined it from; "" if made elsewhere
    managed: bool = False  # made by op-dbus
    owner: str = ""  # "state": made by the declarative state (not on the bus)
    snapshots: int = 0
    cpu_time_ns: int = 0
    memory_used_kib: int = 0


class CreateVmOptions(_Strict):
    start: bool = False


class ShutdownOptions(_Strict):
    timeout: Annotated[float, Field(gt=0, le=3600)] | None = None  # default from config
    force: bool = False  # destroy it when the timeout passes


class DeleteVmOptions(_Strict):
    remove_storage: bool = False  # also delete its volumes (never ISOs or foreign paths)
    force: bool = False  # stop it first when it runs


class SnapshotOptions(_Strict):
    description: Description = ""
