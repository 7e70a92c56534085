"""D-Bus values <-> the daemon's models: properties to records, options to a{sv}."""

from __future__ import annotations

import json
from typing import Any

from dbus_fast import Variant

from opdbus.models.container import ContainerInfo, ContainerState
from opdbus.models.job import JobRecord, JobState
from opdbus.models.network import BridgeInfo, PortInfo
from opdbus.models.vm import VmInfo, VmState


def job_record(props: dict[str, Any]) -> JobRecord:
    """Job1 properties -> the record the daemon keeps."""
    return JobRecord(
        id=props["Id"],
        operation=props["Operation"],
        state=JobState(props["State"]),
        progress=props["Progress"],
        progress_valid=props["ProgressValid"],
        targets=props["Targets"],
        started_by_uid=props["StartedByUID"],
        cancelable=props["Cancelable"],
        created_at=props["CreatedAt"],
        started_at=props["StartedAt"],
        finished_at=props["FinishedAt"],
        result=props["Result"],
        error_name=props["ErrorName"],
        output=json.loads(props["Output"] or "{}"),
        log_lines=props["LogLines"],
    )


def bridge_info(props: dict[str, Any]) -> BridgeInfo:
    """Bridge1 properties -> the model the daemon serves them from."""
    return BridgeInfo(
        name=props["Name"],
        uuid=props["UUID"],
        datapath_type=props["DatapathType"],
        fail_mode=props["FailMode"],
        stp=props["STP"],
        ports=[
            PortInfo(
                name=name,
                type=kind,
                tag=None if tag < 0 else tag,
                trunks=list(trunks),
                ofport=None if ofport < 0 else ofport,
                interfaces=list(ifaces),
                peer=peer or None,
            )
            for name, kind, tag, trunks, ofport, ifaces, peer in props["Ports"]
        ],
        external_ids=dict(props["ExternalIds"]),
        addresses=list(props["Addresses"]),
        gateway=props["Gateway"],
        mtu=props["MTU"],
        link_state=props["LinkState"],
        admin_state=props["AdminState"],
        dhcp=props["DHCP"],
        error=props["Error"],
    )


def vm_info(props: dict[str, Any]) -> VmInfo:
    """VM1 properties -> the model the daemon serves them from."""
    return VmInfo(
        uuid=props["UUID"],
        name=props["Name"],
        state=VmState(props["State"]),
        state_reason=props["StateReason"],
        persistent=props["Persistent"],
        autostart=props["Autostart"],
        vcpus=props["VCPUs"],
        memory_mib=props["MemoryMiB"],
        arch=props["Arch"],
        interfaces=tuple(tuple(nic) for nic in props["Interfaces"]),
        disks=tuple(tuple(disk) for disk in props["Disks"]),
        profile=props["Profile"],
        managed=props["Managed"],
        snapshots=props["Snapshots"],
        cpu_time_ns=props["CPUTime"],
        memory_used_kib=props["MemoryUsedKiB"],
    )


def container_info(props: dict[str, Any]) -> ContainerInfo:
    """Container1 properties -> the model the daemon serves them from."""
    return ContainerInfo(
        name=props["Name"],
        id=props["Id"],
        state=ContainerState(props["State"]),
        pid=props["PID"],
        template=props["Template"],
        bridge=props["Bridge"],
        veth=props["Veth"],
        ipv4=tuple(props["IPv4"]),
        memory_limit=props["MemoryLimit"],
        cpus=props["CPUs"],
        autostart=props["Autostart"],
        memory_used=props["MemoryUsed"],
        cpu_time_ns=props["CPUTime"],
    )


def to_variants(options: dict[str, Any]) -> dict[str, Variant]:
    """Plain option values -> a{sv} (None means: leave the option out)."""
    out: dict[str, Variant] = {}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = Variant("b", value)
        elif isinstance(value, int):
            out[key] = Variant("i", value)
        elif isinstance(value, float):
            out[key] = Variant("d", value)
        elif isinstance(value, str):
            out[key] = Variant("s", value)
        elif isinstance(value, dict):
            out[key] = Variant("a{ss}", {str(k): str(v) for k, v in value.items()})
        elif isinstance(value, list) and all(isinstance(v, int) for v in value) and value:
            out[key] = Variant("ai", value)
        elif isinstance(value, list):
            out[key] = Variant("as", [str(v) for v in value])
        else:
            raise TypeError(f"option {key}: cannot send {type(value).__name__}")
    return out
