"""The event loop's side of OVSDB: a cache of frozen rows, and transactions.

The cache is fed only by the IDL thread's updates, so it shows what OVSDB
holds whoever changed it. Each batch is turned into per-bridge news (added,
changed, removed) for the network service. A transaction returns once
ovs-vswitchd has applied it (``cur_cfg`` reached the ``next_cfg`` it set),
or fails with BackendUnavailable when ovs-vswitchd does not do so in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from opdbus.backends.ovsdb.idl import (
    MAX_TRIES,
    PING_TIMEOUT,
    IdlThread,
    LateChange,
    RowEvent,
    Snapshot,
    Status,
    Update,
)
from opdbus.backends.ovsdb.rows import BridgeRow, InterfaceRow, PortRow, RootRow, Row, RowId
from opdbus.backends.ovsdb.txn import Txn
from opdbus.errors import BackendUnavailable, Timeout

log = logging.getLogger(__name__)

T = TypeVar("T")

PER_INTERFACE_SECONDS = 0.05
EXTRA_BOUND = PING_TIMEOUT + 5.0 * MAX_TRIES


@dataclass
class Changes:
    """Bridge names touched by one batch of OVSDB updates."""

    added: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


class OvsCache:
    """Frozen rows by RowId, plus the links from interface to port to bridge."""

    def __init__(self) -> None:
        self.root: RootRow | None = None
        self.bridges: dict[RowId, BridgeRow] = {}
        self.ports: dict[RowId, PortRow] = {}
        self.interfaces: dict[RowId, InterfaceRow] = {}
        self._by_name: dict[str, RowId] = {}
        self._port_bridge: dict[RowId, RowId] = {}
        self._iface_port: dict[RowId, RowId] = {}
        self._port_by_name: dict[str, RowId] = {}
        # Bumped whenever a port's row or one of its interfaces' rows changes:
        # lets a reader tell an unchanged port in O(1).
        self.port_version: dict[RowId, int] = {}
        self._versions = 0

    def bridge(self, name: str) -> BridgeRow | None:
        uuid = self._by_name.get(name)
        return None if uuid is None else self.bridges.get(uuid)

    def bridge_names(self) -> list[str]:
        return sorted(self._by_name)

    def ports_of(self, bridge: BridgeRow) -> list[PortRow]:
        return [self.ports[uuid] for uuid in bridge.ports if uuid in self.ports]

    def bridge_port(self, bridge: BridgeRow) -> PortRow | None:
        """The bridge's own port (named like the bridge), found without a scan."""
        uuid = self._port_by_name.get(bridge.name)
        port = None if uuid is None else self.ports.get(uuid)
        return (
            port if port is not None and self._port_bridge.get(port.uuid) == bridge.uuid else None
        )

    def interfaces_of(self, port: PortRow) -> list[InterfaceRow]:
        return [self.interfaces[uuid] for uuid in port.interfaces if uuid in self.interfaces]

    def bridge_of_port(self, name: str) -> BridgeRow | None:
        for uuid, port in self.ports.items():
            if port.name == name:
                owner = self._port_bridge.get(uuid)
                return None if owner is None else self.bridges.get(owner)
        return None

    def load(self, snapshot: Snapshot) -> Changes:
        before = set(self._by_name)
        self.__init__()  # type: ignore[misc]
        for table, rows in snapshot.rows.items():
            for row in rows.values():
                self._store(table, row)
        after = set(self._by_name)
        return Changes(added=after - before, changed=after & before, removed=before - after)

    def apply(self, events: list[RowEvent]) -> Changes:
        changes = Changes()
        for event in events:
            name = self._touched(event)
            if event.kind == "delete":
                self._remove(event.table, event.row)
            else:
                self._store(event.table, event.row)
            if event.table == "Bridge":
                bridge_name = event.row.name  # type: ignore[union-attr]
                if event.kind == "create":
                    changes.added.add(bridge_name)
                elif event.kind == "delete":
                    changes.removed.add(bridge_name)
                else:
                    changes.changed.add(bridge_name)
            elif name is not None:
                changes.changed.add(name)
            if event.table in ("Port", "Interface") and event.kind != "delete":
                owner = self._touched(event)  # the links may only be known now
                if owner is not None:
                    changes.changed.add(owner)
        changes.changed -= changes.added | changes.removed
        return changes

    def _touched(self, event: RowEvent) -> str | None:
        """The name of the bridge a Port or Interface row belongs to, if known."""
        uuid: RowId | None = event.row.uuid
        if event.table == "Interface":
            uuid = self._iface_port.get(event.row.uuid)
        if event.table in ("Port", "Interface") and uuid is not None:
            owner = self._port_bridge.get(uuid)
            bridge = None if owner is None else self.bridges.get(owner)
            return None if bridge is None else bridge.name
        return None

    def _store(self, table: str, row: Row) -> None:
        if isinstance(row, BridgeRow):
            old = self.bridges.get(row.uuid)
            before: set[RowId] = set()
            if old is not None:
                if self._by_name.get(old.name) == row.uuid:
                    del self._by_name[old.name]
                before = set(old.ports)
            now = set(row.ports)
            for port in before - now:
                self._port_bridge.pop(port, None)
            self._port_bridge.update(dict.fromkeys(now - before, row.uuid))
            self.bridges[row.uuid] = row
            self._by_name[row.name] = row.uuid
        elif isinstance(row, PortRow):
            old_port = self.ports.get(row.uuid)
            if old_port is not None:
                for iface in set(old_port.interfaces) - set(row.interfaces):
                    self._iface_port.pop(iface, None)
            self.ports[row.uuid] = row
            self._port_by_name[row.name] = row.uuid
            for iface in row.interfaces:
                self._iface_port[iface] = row.uuid
            self._bump(row.uuid)
        elif isinstance(row, InterfaceRow):
            self.interfaces[row.uuid] = row
            owner = self._iface_port.get(row.uuid)
            if owner is not None:
                self._bump(owner)
        elif isinstance(row, RootRow):
            self.root = row

    def _bump(self, port: RowId) -> None:
        self._versions += 1
        self.port_version[port] = self._versions

    def _remove(self, table: str, row: Row) -> None:
        if isinstance(row, BridgeRow):
            self.bridges.pop(row.uuid, None)
            if self._by_name.get(row.name) == row.uuid:
                del self._by_name[row.name]
        elif isinstance(row, PortRow):
            self.ports.pop(row.uuid, None)
            self._port_bridge.pop(row.uuid, None)
            if self._port_by_name.get(row.name) == row.uuid:
                del self._port_by_name[row.name]
            self.port_version.pop(row.uuid, None)
        elif isinstance(row, InterfaceRow):
            self.interfaces.pop(row.uuid, None)
            self._iface_port.pop(row.uuid, None)
        elif isinstance(row, RootRow):
            self.root = None


class OvsdbClient:
    def __init__(
        self, remote: str, *, apply_timeout: float = 10.0, request_timeout: float = 10.0
    ) -> None:
        self.remote = remote
        self.apply_timeout = apply_timeout
        self.request_timeout = request_timeout
        self.cache = OvsCache()
        self.connected = False
        self.detail = f"connecting to ovsdb-server at {remote}"
        self.on_status: list[Callable[[bool, str], None]] = []
        self.on_change: list[Callable[[Changes], None]] = []
        # A change ovsdb-server carried out after its caller was told it timed out.
        self.on_late: list[Callable[[str], None]] = []
        self._thread: IdlThread | None = None
        self._cfg_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._synced = asyncio.Event()
        self._settled = asyncio.Event()  # synced, or known to be unreachable

    async def start(self) -> None:
        self._thread = IdlThread(
            self.remote,
            asyncio.get_running_loop(),
            self._on_update,
            commit_timeout=self.request_timeout,
        )
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._thread.stop()
        await asyncio.to_thread(self._thread.join)
        self._thread.close()
        self._thread = None
        self._fail_waiters("the daemon is stopping")

    async def wait_settled(self, timeout: float) -> bool:
        """Wait for the first answer: synced (True), or unreachable or out of time (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._settled.wait()
        return self._synced.is_set()

    async def transact(
        self,
        build: Callable[[Txn], T],
        *,
        undo: Callable[[Txn], object] | None = None,
        what: str = "a change",
        apply: bool = True,
    ) -> T:
        """Run ``build`` as one transaction in the IDL thread; wait for ovs-vswitchd to apply it.

        ``undo`` (idempotent: it raises when there is nothing to undo) runs if
        the commit timed out and ovsdb-server carries it out later anyway.
        """
        if self._thread is None or not self.connected:
            raise BackendUnavailable(self.detail)
        future = self._thread.submit(build, undo, what)
        bound = self.request_timeout + EXTRA_BOUND
        try:
            # The thread bounds every step itself; this only guards against a bug there.
            async with asyncio.timeout(bound):
                done = await asyncio.shield(future)
        except TimeoutError:
            raise Timeout(f"{what}: the OVSDB thread gave no answer in {bound:g} s") from None
        if apply and done.next_cfg is not None:
            # ovs-vswitchd takes longer the more interfaces it opens or closes.
            timeout = self.apply_timeout + PER_INTERFACE_SECONDS * done.interfaces
            await self._applied(done.next_cfg, timeout)
        return done.value

    async def _applied(self, next_cfg: int, timeout: float) -> None:
        root = self.cache.root
        if root is not None and root.cur_cfg >= next_cfg:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._cfg_waiters.append((next_cfg, waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise BackendUnavailable(
                f"ovs-vswitchd did not apply the change within {timeout:g} s; "
                "is ovs-vswitchd running?"
            ) from None
        finally:
            self._cfg_waiters = [(cfg, w) for cfg, w in self._cfg_waiters if w is not waiter]

    def _on_status(self, update: Status) -> None:
        self.connected = update.connected
        self.detail = update.detail
        if not update.connected:
            self._fail_waiters(update.detail)
            if update.settled:
                self._settled.set()
        for status_callback in self.on_status:
            status_callback(update.connected, update.detail)

    def _on_update(self, update: Update) -> None:
        if isinstance(update, Status):
            self._on_status(update)
            return
        if isinstance(update, LateChange):
            for late_callback in self.on_late:
                late_callback(update.detail)
            return
        if isinstance(update, Snapshot):
            changes = self.cache.load(update)
            self._synced.set()
            self._settled.set()
        else:
            changes = self.cache.apply(update)
        root = self.cache.root
        if root is not None and self._cfg_waiters:
            for cfg, waiter in self._cfg_waiters:
                if cfg <= root.cur_cfg and not waiter.done():
                    waiter.set_result(None)
        if changes:
            for change_callback in self.on_change:
                change_callback(changes)

    def _fail_waiters(self, detail: str) -> None:
        for _, waiter in self._cfg_waiters:
            if not waiter.done():
                waiter.set_exception(BackendUnavailable(detail))
