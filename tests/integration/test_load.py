"""The daemon's connection survives what kills stock dbus-fast: thousands of calls
in flight and a burst of thousands of signals, with nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

from opctl.client import Client
from opdbus import errors, names
from opdbus.daemon import Daemon
from opdbus.sandbox import PrivateBus
from opdbus.services.jobs import JobContext, JobOutcome
from tests.support import Opdbusd

CALLS = 2000
SIGNALS = 5000


@contextlib.asynccontextmanager
async def bus_frozen(bus: PrivateBus, seconds: float = 0.3) -> AsyncIterator[None]:
    """Stop the real dbus-daemon for a moment: whatever we write meanwhile fills
    our socket, so the flow-control path is exercised every time, not by luck."""
    os.kill(bus.process.pid, signal.SIGSTOP)
    try:
        yield
        await asyncio.sleep(seconds)
    finally:
        os.kill(bus.process.pid, signal.SIGCONT)


async def test_2000_concurrent_calls_all_answered(daemon: Opdbusd, private_bus: PrivateBus) -> None:
    client = await Client.connect(private_bus.address)
    try:
        # GetAll replies are ~0.5 kB: 2000 of them also overflow the daemon's socket.
        async with bus_frozen(private_bus):
            calls = asyncio.gather(
                *(client.get_all(names.ROOT_PATH, names.MANAGER_IFACE) for _ in range(CALLS))
            )
        replies = await calls
        assert len(replies) == CALLS and all(reply["Mode"] == "full" for reply in replies)
        failures = await asyncio.gather(
            *(
                client.call(names.ROOT_PATH, names.MANAGER_IFACE, "GetJob", "u", [i + 1000])
                for i in range(CALLS)
            ),
            return_exceptions=True,
        )
        assert all(isinstance(f, errors.NotFound) for f in failures)
        assert {str(f) for f in failures} == {
            f"no job {i + 1000} (finished jobs are kept for a while, then removed)"
            for i in range(CALLS)
        }
        assert client.bus.stalls > 0, (
            "the client never filled its socket: the test did not load anything"
        )
        # Still the same connection, still answering, and so is the daemon.
        assert (await client.status()).mode == "full"
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        await client.close()
    assert "lost the bus" not in daemon.log()


async def test_many_clients_at_once(daemon: Opdbusd, private_bus: PrivateBus) -> None:
    clients = await asyncio.gather(*(Client.connect(private_bus.address) for _ in range(40)))
    try:
        results = await asyncio.gather(
            *(c.get_all(names.ROOT_PATH, names.MANAGER_IFACE) for c in clients for _ in range(50))
        )
        assert len(results) == 40 * 50
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_signal_burst_of_5000_arrives_complete_and_in_order(
    private_bus: PrivateBus, inproc: Daemon, client: Client
) -> None:
    async def burst(ctx: JobContext) -> JobOutcome:
        for i in range(1, SIGNALS + 1):  # no await in between: one burst
            ctx.log(f"line {i} " + "x" * 60)
        return JobOutcome("burst done")

    received: list[int] = []
    async with client.signals(f"path_namespace='{names.JOB_PATH_PREFIX}'") as queue:
        async with bus_frozen(private_bus):
            job = await inproc.jobs.submit("Burst", burst, targets=[], uid=0)
        while True:
            event = await asyncio.wait_for(queue.get(), timeout=30)
            if event.member == "Log":
                received.append(event.args[0])
            if event.member == "Completed":
                break
    assert received == list(range(1, SIGNALS + 1))
    assert job.record.log_lines == SIGNALS
    bus: Any = inproc.server.ctx.bus
    assert bus.stalls > 0, "the daemon's socket never filled: the burst did not test flow control"
    assert bus.connected
    assert (await client.status()).mode == "full"
    lines = await client.job_log(job.path, SIGNALS - 1, 0)
    assert [line.number for line in lines] == [SIGNALS - 1, SIGNALS]
