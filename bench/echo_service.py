"""The peer: a minimal stock dbus-fast service with one property and one method.

Run by the benchmarks as a separate process on the same private bus as
op-dbusd, so both are measured with the same client in the same run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from dbus_fast import BusType, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusStr
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

NAME = "org.opdbus.BenchEcho"
PATH = "/org/opdbus/BenchEcho"
IFACE = "org.opdbus.BenchEcho1"


class Echo(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(IFACE)

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return "0.1.0"

    @dbus_method()
    async def Echo(self, text: DBusStr) -> DBusStr:
        return text


async def main(address: str) -> None:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    bus.export(PATH, Echo())
    await bus.request_name(NAME)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", notify)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
