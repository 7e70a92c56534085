"""What ``status`` and the list commands print, from the properties on the bus.

Standard library only: opctl's quick path (``opctl.quick``) and its ordinary
path (dbus-fast) both print through these, so the two cannot drift apart.
Each takes the raw property dicts (``Manager1.GetObjects``'s values) and
gives the header and rows ``render.table`` prints.
"""

from __future__ import annotations

from opctl.render import GUEST_COLUMNS, cpu_time

TYPE_CHECKING = False  # typing itself costs ~2 ms to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    Props = Mapping[str, Any]
    Table = tuple[list[str], list[tuple[object, ...]]]


def mib_of_kib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB" if kib else "-"


def mib_of_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n else "-"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def vms(objects: Iterable[Props]) -> Table:
    """VM1 properties, by name."""
    return [*GUEST_COLUMNS, "uuid"], [
        (
            p["Name"],
            p["State"],
            p["VCPUs"],
            f"{p['MemoryMiB']} MiB",
            mib_of_kib(p["MemoryUsedKiB"]),
            cpu_time(p["CPUTime"]),
            _yes(p["Autostart"]),
            p["UUID"],
        )
        for p in sorted(objects, key=lambda p: str(p["Name"]))
    ]


def bridges(objects: Iterable[Props]) -> Table:
    """Bridge1 properties, by name; ports leave out the bridge's own internal port."""
    return ["name", "datapath", "ports", "link", "addresses"], [
        (
            p["Name"],
            p["DatapathType"],
            len(p["Ports"]) - 1,
            p["LinkState"],
            ", ".join(p["Addresses"]) or "-",
        )
        for p in sorted(objects, key=lambda p: str(p["Name"]))
    ]


def containers(objects: Iterable[Props]) -> Table:
    """Container1 properties, by id then name: vm list's columns first, in its order."""
    return [*GUEST_COLUMNS, "id", "pid", "ipv4", "bridge"], [
        (
            p["Name"],
            p["State"],
            p["CPUs"] or "-",
            mib_of_bytes(p["MemoryLimit"]),
            mib_of_bytes(p["MemoryUsed"]),
            cpu_time(p["CPUTime"]),
            _yes(p["Autostart"]),
            p["Id"] or "-",
            p["PID"] or "-",
            ", ".join(p["IPv4"]) or "-",
            f"{p['Bridge']} ({p['Veth']})" if p["Bridge"] else "-",
        )
        for p in sorted(objects, key=lambda p: (int(p["Id"]), str(p["Name"])))
    ]


def status(manager: Props, counts: Mapping[str, int], address: str) -> tuple[str, Table, str]:
    """The first line, the backends' table and the last line of ``opctl status``."""
    first = f"op-dbusd {manager['Version']}, mode {manager['Mode']}, on {address}"
    backends: Table = (
        ["backend", "state", "detail"],
        [
            (name, "up" if ok else "down", detail)
            for name, (ok, detail) in manager["Backends"].items()
        ],
    )
    active = counts.get("running", 0) + counts.get("queued", 0)
    audit = (
        f"audit log: {manager['AuditSeq']} entries"
        if manager.get("AuditEnabled", True)
        else "audit log: off (audit.enabled is false)"
    )
    return first, backends, f"jobs: {active} active, {sum(counts.values())} remembered; {audit}"


def backend_refusal(manager: Props, backend: str) -> bool:
    """Whether a list must refuse (the backend is off or down) instead of showing nothing."""
    up, _ = manager["Backends"].get(backend, (True, ""))
    return not up
