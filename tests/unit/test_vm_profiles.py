"""VM profiles: the shipped examples, the committed JSON Schema, and the domain XML
each profile field turns into (built as an element tree, so text stays text)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from opdbus.backends.libvirt.domain_xml import (
    DiskSource,
    Target,
    build_domain,
    profile_from_domain,
    to_xml,
)
from opdbus.models.vm import VmProfile, profile_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "daemon" / "opdbus" / "vm-profiles"
PROFILES = sorted(p for p in EXAMPLES.glob("*.json") if p.name != "schema.json")
KVM = Target("kvm", "q35", "/usr/bin/qemu-system-x86_64", "x86_64")


def domain(profile: VmProfile, target: Target = KVM) -> ET.Element:
    disks = [
        DiskSource(d.path or f"/pool/{profile.name}-{i}.qcow2", d.format.value, d.bus)
        for i, d in enumerate(profile.disks)
    ]
    # Through text and back: what libvirt would be handed.
    return ET.fromstring(to_xml(build_domain(profile, target=target, disks=disks)))


def load(name: str) -> VmProfile:
    return VmProfile.model_validate_json((EXAMPLES / name).read_text())


def test_there_are_examples_and_each_is_a_valid_profile() -> None:
    assert len(PROFILES) >= 5
    names = [VmProfile.model_validate_json(p.read_text()).name for p in PROFILES]
    assert len(set(names)) == len(names)


def test_the_committed_schema_is_the_models_schema() -> None:
    committed = json.loads((EXAMPLES / "schema.json").read_text())
    assert committed == profile_schema(), (
        "regenerate: opctl vm profile schema > daemon/opdbus/vm-profiles/schema.json"
    )
    assert committed["required"] == ["name"]
    assert set(committed["properties"]) == set(VmProfile.model_fields)


def test_web_server_puts_its_nic_on_an_ovs_bridge() -> None:
    root = domain(load("web-server.json"))
    nic = root.find("devices/interface")
    assert nic is not None and nic.get("type") == "bridge"
    assert nic.find("source").get("bridge") == "mesh"  # type: ignore[union-attr]
    assert nic.find("virtualport").get("type") == "openvswitch"  # type: ignore[union-attr]
    assert nic.find("mac").get("address") == "52:54:00:0a:00:01"  # type: ignore[union-attr]
    disk = root.find("devices/disk")
    assert disk is not None and disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]
    assert root.find("cpu") is None  # QEMU's default model unless features are asked for


def test_uefi_secure_boot_tpm_and_the_installer_iso() -> None:
    root = domain(load("desktop-uefi.json"))
    assert root.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    features = {f.get("name") for f in root.iterfind("os/firmware/feature")}
    assert features == {"secure-boot", "enrolled-keys"}
    assert root.find("features/smm").get("state") == "on"  # type: ignore[union-attr]
    assert [b.get("dev") for b in root.iterfind("os/boot")] == ["cdrom", "hd"]
    cdrom = root.find("devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("readonly") is not None
    assert cdrom.find("target").get("bus") == "sata"  # type: ignore[union-attr]
    assert root.find("devices/tpm").get("model") == "tpm-crb"  # type: ignore[union-attr]
    assert root.find("devices/graphics/listen").get("address") == "127.0.0.1"  # type: ignore[union-attr]


def test_pinning_hugepages_numa_and_vfio() -> None:
    root = domain(load("pinned-hugepages.json"))
    pins = {p.get("vcpu"): p.get("cpuset") for p in root.iterfind("cputune/vcpupin")}
    assert pins == {"0": "2", "1": "3", "2": "4", "3": "5"}
    assert root.find("memoryBacking/hugepages") is not None
    assert root.find("numatune/memory").get("nodeset") == "0"  # type: ignore[union-attr]
    cell = root.find("cpu/numa/cell")
    assert cell is not None and cell.get("cpus") == "0-3" and cell.get("memory") == "16384"
    address = root.find("devices/hostdev/source/address")
    assert address is not None and address.attrib == {
        "domain": "0x0000",
        "bus": "0x03",
        "slot": "0x00",
        "function": "0x0",
    }


def test_sev_snp_with_private_guest_memfd() -> None:
    root = domain(load("confidential-sev-snp.json"))
    assert root.find("launchSecurity").get("type") == "sev-snp"  # type: ignore[union-attr]
    assert root.find("memoryBacking/source").get("type") == "memfd"  # type: ignore[union-attr]
    assert root.find("memoryBacking/access").get("mode") == "private"  # type: ignore[union-attr]
    seed = root.find("devices/disk[@device='cdrom']/source")
    assert seed is not None and seed.get("file", "").endswith("confidential-seed.iso")
    assert root.find("devices/interface/source").get("network") == "default"  # type: ignore[union-attr]


def test_aarch64_uses_its_target_and_scsi_cdroms() -> None:
    profile = load("arm64-uefi.json").model_copy(update={"iso_path": "/isos/a.iso"})
    root = domain(profile, Target("qemu", "virt", "/usr/bin/qemu-system-aarch64", "aarch64"))
    os_type = root.find("os/type")
    assert os_type is not None and os_type.attrib == {"arch": "aarch64", "machine": "virt"}
    assert root.find("features/acpi") is None  # x86-only features stay out
    assert root.find("devices/disk[@device='cdrom']/target").get("bus") == "scsi"  # type: ignore[union-attr]
    assert root.find("devices/controller").get("model") == "virtio-scsi"  # type: ignore[union-attr]


def test_markup_in_free_text_stays_text_and_the_profile_round_trips() -> None:
    hostile = "</description><devices><hostdev/></devices>&amp; 'x' \"y\""
    profile = VmProfile(name="plain", memory_mb=64, description=hostile)
    xml = to_xml(build_domain(profile, target=KVM, disks=[]))
    root = ET.fromstring(xml)
    assert root.findtext("description") == hostile
    assert root.find("devices/hostdev") is None
    assert VmProfile.model_validate_json(profile_from_domain(xml)) == profile
    assert profile_from_domain("<domain><name>elsewhere</name></domain>") == ""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a<b"),
        ("name", "a/b"),
        ("name", "x..y"),
        ("name", "two\nlines"),
        ("memory_mb", 0),
        ("arch", "sparc64"),
        ("hostdevs", ["0000:01:20.0"]),
        ("iso_path", "relative.iso"),
    ],
)
def test_bad_fields_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field if field != "hostdevs" else "slot"):
        VmProfile.model_validate({"name": "ok", field: value})
