"""The peer: a minimal stock dbus-fast service with one property and two methods.

``Append`` is the stock way to do what an audited op-dbus change does at the
least: write one record and fsync it before answering (in a thread, as
op-dbusd's audit writer does).

Run by the benchmarks as a separate process on the same private bus as
op-dbusd, so both are measured with the same client in the same run.
"""

# No `from __future__ import annotations`: dbus-fast reads the annotations
# as D-Bus signatures, and a deferred "None" is not one.

import asyncio
import json
import os
import signal
import socket
import sys
import time

from dbus_fast import BusType, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusStr
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

NAME = "org.opdbus.BenchEcho"
PATH = "/org/opdbus/BenchEcho"
IFACE = "org.opdbus.BenchEcho1"


class Echo(ServiceInterface):
    def __init__(self, log: str) -> None:
        super().__init__(IFACE)
        self._fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _append(self, line: bytes) -> None:
        os.write(self._fd, line)
        os.fsync(self._fd)

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return "0.1.0"

    @dbus_method()
    async def Echo(self, text: DBusStr) -> DBusStr:
        return text

    @dbus_method()
    async def Append(self, text: DBusStr) -> None:
        line = json.dumps({"time": time.time(), "text": text}).encode() + b"\n"
        await asyncio.to_thread(self._append, line)


async def main(address: str) -> None:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    bus.export(PATH, Echo(sys.argv[2]))
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
