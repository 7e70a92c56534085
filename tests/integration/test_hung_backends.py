"""A hung ovsdb-server: calls fail in time, Backends says so, and nothing a caller was
told failed is applied later.

Two ways to hang it: SIGSTOP on the test's own ovsdb-server, and a proxy between
op-dbusd and the server that answers everything but holds back transactions --
so a change reaches the server only after its caller was answered, and the
daemon must take it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opctl.client import Client
from opdbus import errors
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.support import running

pytestmark = pytest.mark.timeout(90)


async def bridges(ovs: PrivateOvs) -> list[str]:
    return (await asyncio.to_thread(ovs.vsctl, "list-br")).stdout.split()


async def ovsdb_state(client: Client) -> tuple[bool, str]:
    return (await client.status()).backends["ovsdb"]


async def until(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_stopped_ovsdb_server_fails_calls_in_time_and_is_reported(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    config = {"remote": ovs.remote, "datapath_type": "netdev"}
    async with running(tmp_path, private_bus, ovsdb=config):
        await client.create_bridge("live0", {})
        assert ovs.db is not None
        os.kill(ovs.db.pid, signal.SIGSTOP)  # our own ovsdb-server
        try:
            started = time.monotonic()
            with pytest.raises(errors.Timeout, match="did not answer"):
                await client.create_bridge("hung0", {})
            assert time.monotonic() - started < 10
            # Reported, not "up": by the failed call at once, by the probe in any case.
            up, detail = await ovsdb_state(client)
            assert not up and "not answering" in detail, detail
            with pytest.raises((errors.Timeout, errors.BackendUnavailable)):
                await client.delete_bridge("live0")
            job = await client.apply_bridges(json.dumps({"bridges": [{"name": "hung1"}]}))
            record = await client.wait_job(job)
            assert record.error_name in (
                errors.Timeout.dbus_name,
                errors.BackendUnavailable.dbus_name,
            ), record
        finally:
            os.kill(ovs.db.pid, signal.SIGCONT)

        async def back() -> bool:
            return (await ovsdb_state(client))[0]

        await until(back)
        await asyncio.sleep(1.0)  # time for anything carried out late to surface
        assert await bridges(ovs) == ["live0"]  # none of the refused changes happened
        await client.create_bridge("after0", {})
        assert sorted(await bridges(ovs)) == ["after0", "live0"]


class HoldingProxy:
    """Forwards op-dbusd's OVSDB connection, holding back "transact" requests while told to."""

    def __init__(self, path: Path, server: Path) -> None:
        self.path = path
        self.server = server
        self.holding = False
        self.held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self.pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> asyncio.Server:
        return await asyncio.start_unix_server(self._connection, str(self.path))

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.server))
        down = asyncio.ensure_future(self._pipe(up_reader, writer, hold=False))
        up = asyncio.ensure_future(self._pipe(reader, up_writer, hold=True))
        self.pumps |= {down, up}
        with contextlib.suppress(Exception):
            await asyncio.gather(down, up)
        for w in (writer, up_writer):
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        while data := await reader.read(65536):
            if not hold:
                writer.write(data)
                await writer.drain()
                continue
            buffer += data.decode()
            while buffer.strip():
                try:
                    message, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # the rest of this message is still on its way
                raw = buffer.lstrip()[:end].encode()
                buffer = buffer.lstrip()[end:]
                if self.holding and message.get("method") == "transact":
                    self.held.append((writer, raw))
                else:
                    writer.write(raw)
                    await writer.drain()

    async def release(self) -> None:
        self.holding = False
        for writer, raw in self.held:
            writer.write(raw)
            await writer.drain()
        self.held.clear()

    async def close(self, server: asyncio.Server) -> None:
        server.close()
        for task in self.pumps:
            task.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def holding_proxy(tmp: Path, ovs: PrivateOvs) -> AsyncIterator[HoldingProxy]:
    proxy = HoldingProxy(tmp / "proxy.sock", ovs.socket)
    server = await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close(server)


async def test_a_change_answered_too_late_is_taken_back(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    async with holding_proxy(tmp_path, ovs) as proxy:
        config = {
            "remote": f"unix:{proxy.path}",
            "datapath_type": "netdev",
            "request_timeout_seconds": 1.5,
        }
        async with running(tmp_path, private_bus, ovsdb=config):
            await client.create_bridge("keep0", {})
            proxy.holding = True  # the server is alive, but no change reaches it
            with pytest.raises(errors.Timeout, match="it is undone"):
                await client.create_bridge("late0", {})
            # Nothing else goes to the server while that change is in limbo.
            with pytest.raises(errors.BackendUnavailable, match=r"not answering|earlier change"):
                await client.create_bridge("other0", {})
            assert len(proxy.held) == 1, "nothing was held: the test proves nothing"
            up, detail = await ovsdb_state(client)
            assert not up and "not answering" in detail
            await proxy.release()  # now the server carries it out...

            async def answering() -> bool:
                return (await ovsdb_state(client))[0]

            await until(answering)  # ...and the daemon has taken it back
            assert await bridges(ovs) == ["keep0"]

            # The same for a deletion: the bridge comes back, with its ports.
            await client.add_port("keep0", "int0", {"type": "internal", "tag": 7})
            proxy.holding = True
            with pytest.raises(errors.Timeout, match="it is undone"):
                await client.delete_bridge("keep0")
            await proxy.release()
            await until(answering)
            assert await bridges(ovs) == ["keep0"]
            ports = (await asyncio.to_thread(ovs.vsctl, "list-ports", "keep0")).stdout.split()
            assert ports == ["int0"]
            tag = (await asyncio.to_thread(ovs.vsctl, "get", "port", "int0", "tag")).stdout
            assert tag.strip() == "7"
            await client.create_bridge("after0", {})
            assert sorted(await bridges(ovs)) == ["after0", "keep0"]
