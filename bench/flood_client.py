"""A plain user's flood: one connection, many calls in flight, every read-only method.

Run as the flooding user: ``flood_client.py ADDRESS SECONDS IN_FLIGHT VM_PATH``.
Prints one JSON line: how the calls were answered.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from dbus_fast import Message, MessageType

from opdbus.bus.transport import FlowControlledBus

BIG_PROFILE = json.dumps(
    {
        "name": "big",
        "cpus": 1024,
        "memory_mb": 64,
        "cpu_pinning": [{"vcpu": i, "cpuset": "0"} for i in range(1024)],
    }
)


def calls(vm: str) -> list[tuple[str, str, str, str, list[Any]]]:
    manager = ("/org/opdbus", "org.opdbus.Manager1")
    return [
        (*manager, "VerifyAudit", "", []),
        (*manager, "CheckVMProfile", "s", [BIG_PROFILE]),
        (*manager, "GetAudit", "tu", [1, 1000]),
        ("/org/opdbus", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", "", []),
        ("/org/opdbus/job/1", "org.opdbus.Job1", "GetLog", "uu", [1, 0]),
        (vm, "org.opdbus.VM1", "GetXML", "", []),
        (vm, "org.opdbus.VM1", "ListSnapshots", "", []),
    ]


async def flood(address: str, seconds: float, in_flight: int, vm: str) -> Counter[str]:
    bus = await FlowControlledBus(address).connect()
    outcomes: Counter[str] = Counter()
    menu = calls(vm)
    deadline = time.monotonic() + seconds

    async def worker(i: int) -> None:
        while time.monotonic() < deadline:
            path, iface, member, sig, body = menu[i % len(menu)]
            i += 1
            reply = await bus.call(
                Message(
                    destination="org.opdbus",
                    path=path,
                    interface=iface,
                    member=member,
                    signature=sig,
                    body=body,
                )
            )
            if reply.message_type is MessageType.ERROR:
                outcomes[reply.error_name or "?"] += 1
            else:
                outcomes["ok"] += 1

    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    bus.disconnect()
    return outcomes


def main() -> None:
    address, seconds, in_flight, vm = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(json.dumps(dict(asyncio.run(flood(address, seconds, in_flight, vm)))))


if __name__ == "__main__":
    main()
