"""``opctl --json``: one contract for every command (the README documents it).

- Objects with named keys, never positional arrays.
- Points in time: ISO 8601 UTC text with microseconds (``2026-12-02T17:32:47.123456Z``).
  Durations: seconds, as numbers. Sizes: bytes.
- Absent is ``null``, never ``""`` or 0.
- What a mutation prints has one shape: ``{"job": JOB | null, "object": OBJECT | null}``:
  the job it ran (or started, with ``--no-wait``) and the object as it is after
  an immediate change (``null`` where the object is gone or a job did the work).
- Errors go to stderr as ``{"error": {"name", "kind", "message", "exit_code"}}``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from opdbus import names

if TYPE_CHECKING:
    from opdbus.errors import OpdbusError
    from opdbus.models.container import ContainerInfo
    from opdbus.models.job import JobRecord, LogLine
    from opdbus.models.network import BridgeInfo
    from opdbus.models.vm import VmInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp(us: int) -> str | None:
    """µs since the epoch (the bus's one time unit) -> ISO 8601 UTC; 0 -> null."""
    if not us:
        return None
    when = _EPOCH + timedelta(microseconds=us)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso(text: str) -> str | None:
    """An RFC 3339 time with an offset -> the same instant in the contract's form."""
    if not text:
        return None
    when = datetime.fromisoformat(text).astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def absent(value: Any) -> Any:
    """``""`` -> null, in a value and in every object inside it."""
    if value == "":
        return None
    if isinstance(value, dict):
        return {key: absent(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [absent(item) for item in value]
    return value


def job(record: JobRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "path": names.job_path(record.id),
        "operation": record.operation,
        "state": record.state.value,
        "progress": record.progress if record.progress_valid else None,
        "targets": list(record.targets),
        "started_by_uid": record.started_by_uid,
        "cancelable": record.cancelable,
        "created_at": stamp(record.created_at),
        "started_at": stamp(record.started_at),
        "finished_at": stamp(record.finished_at),
        "result": record.result or None,
        "error": record.error_name or None,
        "output": record.output,
        "log_lines": record.log_lines,
    }


def log_line(line: LogLine) -> dict[str, Any]:
    return {"number": line.number, "time": stamp(line.timestamp_us), "text": line.text}


def vm(path: str, info: VmInfo) -> dict[str, Any]:
    out: dict[str, Any] = absent(
        {
            "path": path,
            "uuid": info.uuid,
            "name": info.name,
            "state": info.state.value,
            "state_reason": info.state_reason,
            "persistent": info.persistent,
            "autostart": info.autostart,
            "vcpus": info.vcpus,
            "memory": info.memory_mib * 1024 * 1024,
            "memory_used": info.memory_used_kib * 1024 or None,
            "cpu_time": info.cpu_time_ns / 1e9 if info.cpu_time_ns else None,
            "arch": info.arch,
            "managed": info.managed,
            "profile": info.profile,
            "snapshots": info.snapshots,
            "disks": [
                {"target": t, "source": s, "device": d, "format": f} for t, s, d, f in info.disks
            ],
            "interfaces": [
                {"kind": k, "source": s, "mac": m, "model": mo} for k, s, m, mo in info.interfaces
            ],
        }
    )
    return out


def container(info: ContainerInfo) -> dict[str, Any]:
    out: dict[str, Any] = absent(
        {
            "path": names.container_path(info.name),
            "name": info.name,
            "id": info.id or None,
            "state": info.state.value,
            "pid": info.pid or None,
            "template": info.template,
            "bridge": info.bridge,
            "veth": info.veth,
            "ipv4": list(info.ipv4),
            "memory_limit": info.memory_limit or None,
            "memory_used": info.memory_used or None,
            "cpus": info.cpus or None,
            "cpu_time": info.cpu_time_ns / 1e9 if info.cpu_time_ns else None,
            "autostart": info.autostart,
        }
    )
    return out


def bridge(info: BridgeInfo) -> dict[str, Any]:
    out: dict[str, Any] = absent(info.model_dump(mode="json"))
    out["mtu"] = info.mtu or None
    return {"path": names.bridge_path(info.name), **out}


def mutation(
    job_record: JobRecord | None = None, obj: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"job": job(job_record) if job_record is not None else None, "object": obj}


def error(e: OpdbusError, kind: str) -> dict[str, Any]:
    return {
        "error": {
            "name": e.dbus_name,
            "kind": kind,
            "message": e.message,
            "exit_code": e.exit_code,
        }
    }
