"""systemd units as state, against a real systemd (PID 1 of its own namespace), same run.

1. A no-op Apply of 100 units (each enabled and active, as the document says)
   vs ONE ListUnitsByNames of the same 100 units, asked of systemd directly
   by a client like ours: target <= 1.2x.
2. A unit stopped by hand (StopUnit by another client, as `systemctl stop`
   does) -> the State1 Drifted signal: p99 target <= 100 ms (40 stops).

op-dbusd runs in agent mode on a private bus; systemd's own bus is the
namespace's. Medians of alternating rounds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from common import environment, median, report, start_opdbusd
from opctl.client import Client
from opdbus import names
from opdbus.models.job import JobState
from tests.systemd_ns import PrivateSystemd, service

COUNT = 100
ROUNDS = 30
DRIFTS = 40
UNITS = [f"bench{i}.service" for i in range(COUNT)]


async def systemd_call(bus: MessageBus, member: str, signature: str, body: list[Any]) -> Any:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.systemd1",
            path="/org/freedesktop/systemd1",
            interface="org.freedesktop.systemd1.Manager",
            member=member,
            signature=signature,
            body=body,
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    return reply.body


async def noop_apply(client: Client, text: str) -> float:
    started = time.perf_counter()
    record = await client.run_job(lambda: client.state_apply(text))
    took = time.perf_counter() - started
    assert record.state is JobState.SUCCEEDED and "nothing to change" in record.result
    return took


async def list_units(bus: MessageBus) -> float:
    started = time.perf_counter()
    (rows,) = await systemd_call(bus, "ListUnitsByNames", "as", [UNITS])
    took = time.perf_counter() - started
    assert len(rows) == COUNT
    return took


async def drift_latency(client: Client, bus: MessageBus, queue: asyncio.Queue[Any]) -> list[float]:
    out: list[float] = []
    for i in range(DRIFTS):
        unit = UNITS[i % COUNT]
        while not queue.empty():
            queue.get_nowait()
        started = time.perf_counter()
        await systemd_call(bus, "StopUnit", "ss", [unit, "replace"])
        while True:
            event = await asyncio.wait_for(queue.get(), 10)
            if event.member == "Drifted" and event.args[1] == unit:
                out.append(time.perf_counter() - started)
                break
        await systemd_call(bus, "StartUnit", "ss", [unit, "replace"])
        for _ in range(1000):  # back in sync before the next stop
            if (await client.state())["InSync"]:
                break
            await asyncio.sleep(0.01)
    return out


async def measure(workdir: Path, address: str, sd: PrivateSystemd) -> None:
    doc = {"systemd": {"units": {u: {"enabled": True, "active_state": "active"} for u in UNITS}}}
    text = json.dumps(doc)
    client = await Client.connect(address)
    systemd = await MessageBus(bus_address=sd.address).connect()
    try:
        first = await client.run_job(lambda: client.state_apply(text))
        assert first.state is JobState.SUCCEEDED, first.result
        applies, lists, replies = [], [], []
        for _ in range(ROUNDS):
            applies.append(await noop_apply(client, text))
            lists.append(await list_units(systemd))
            started = time.perf_counter()
            await client.state_apply(text, dry_run=True)  # the reply alone: job path
            replies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
        a, b, c = median(applies), median(lists), median(replies)
        report(
            f"no-op Apply of {COUNT} units vs one ListUnitsByNames",
            a / b,
            "<= 1.2x",
            a / b <= 1.2,
            f"{a * 1000:.1f} ms vs {b * 1000:.1f} ms; the Apply call's reply alone "
            f"{c * 1000:.1f} ms",
        )
        async with client.signals(f"path='{names.STATE_PATH}'") as queue:
            lat = sorted(await drift_latency(client, systemd, queue))
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        report(
            "unit stopped by hand -> Drifted, p99",
            p99,
            "<= 100 ms",
            p99 <= 100,
            f"p50 {statistics.median(lat) * 1000:.1f} ms over {len(lat)}",
            unit="ms",
        )
    finally:
        systemd.disconnect()
        await client.close()


def main() -> None:
    with environment() as (bus, workdir):
        sd = PrivateSystemd(workdir / "systemd", {u: service(f"bench unit {u}") for u in UNITS})
        sd.start()
        try:
            daemon = start_opdbusd(bus, workdir, mode="agent", systemd={"bus_address": sd.address})
            try:
                asyncio.run(measure(workdir, bus.address, sd))
            finally:
                daemon.stop()
        finally:
            sd.stop()


if __name__ == "__main__":
    main()
