"""The one thread that owns the OVSDB connection (python ``ovs`` IDL).

Everything that touches the IDL happens here: connecting (and reconnecting
by itself, with the IDL's backoff), replicating the tables op-dbus reads, and
running transactions. Only frozen copies of rows leave, as updates handed to
the event loop with ``call_soon_threadsafe``:

- a ``Snapshot`` of every replicated row after each (re)connection,
- a list of ``RowEvent`` after each batch of changes (from anyone: us,
  ``ovs-vsctl``, ovs-vswitchd),
- a ``Status`` when the connection comes or goes.

Requests (transactions) are queued from the loop and executed here one by
one; each is a single OVSDB transaction, retried on TRY_AGAIN. The events a
transaction caused are handed over before its result, so the loop's cache
already shows a change when its caller hears that it is done.

Nothing waits forever on a hung ovsdb-server (SIGSTOP, a wedged host): an
inactivity probe drops a silent connection (unix sockets get none by
default), every write first checks with an echo that the server answers,
and a commit that gets no answer in time fails with Timeout. Such a commit
may still be carried out once the server wakes; its request's undo is then
run as soon as the outcome is known, before any other request, so a change
whose caller was told it failed does not stay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream
import ovs.timeval

from opdbus.backends.ovsdb.rows import COLUMNS, RootRow, Row, RowId, freeze
from opdbus.backends.ovsdb.txn import Txn
from opdbus.errors import BackendFailed, BackendUnavailable, OpdbusError, Timeout

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_TIMEOUT = 5.0
MAX_TRIES = 5
PROBE_MS = 2000  # idle this long: an echo; no answer in as long again: reconnect
PING_TIMEOUT = 2.0  # a write waits this long for ovsdb-server to show it is alive
COMMIT_TIMEOUT = 10.0  # and, by default, this long for its transaction's answer
# idl.wait() alone once left the loop asleep with data pending: wake anyway.
MAX_SLEEP_MS = 1000

_EVENTS = {
    ovs.db.idl.ROW_CREATE: "create",
    ovs.db.idl.ROW_UPDATE: "update",
    ovs.db.idl.ROW_DELETE: "delete",
}


@dataclass(frozen=True, slots=True)
class RowEvent:
    kind: str  # create, update, delete
    table: str
    row: Row


@dataclass(frozen=True, slots=True)
class Snapshot:
    rows: dict[str, dict[RowId, Row]]  # table -> row id -> row


@dataclass(frozen=True, slots=True)
class Status:
    connected: bool
    detail: str
    settled: bool = True  # False while a first connection attempt is still under way


@dataclass(frozen=True, slots=True)
class LateChange:
    """A timed-out change that ovsdb-server carried out after all (and what became of it)."""

    detail: str


Update = list[RowEvent] | Snapshot | Status | LateChange


@dataclass(frozen=True)
class Committed(Generic[T]):
    """What a transaction returned, and what ovs-vswitchd now has to do."""

    value: T
    next_cfg: int | None  # wait for cur_cfg to reach this; None: nothing to apply
    interfaces: int  # interfaces made or removed


@dataclass
class _Request(Generic[T]):
    build: Callable[[Txn], T]
    future: asyncio.Future[Committed[T]]
    undo: Callable[[Txn], object] | None  # idempotent inverse, for a commit answered too late
    what: str


@dataclass
class _Abandoned:
    """A commit whose caller was told it timed out; its outcome is still to come."""

    txn: Any
    undo: Callable[[Txn], object] | None
    what: str


class _Idl(ovs.db.idl.Idl):  # type: ignore[misc]
    def __init__(self, remote: str, helper: Any, on_notify: Callable[[int, Any], None]) -> None:
        super().__init__(remote, helper)
        self._on_notify = on_notify

    def notify(self, event: int, row: Any, updates: Any = None) -> None:
        self._on_notify(event, row)


class IdlThread(threading.Thread):
    def __init__(
        self,
        remote: str,
        loop: asyncio.AbstractEventLoop,
        sink: Callable[[Update], None],
        *,
        commit_timeout: float = COMMIT_TIMEOUT,
    ) -> None:
        super().__init__(name="ovsdb-idl", daemon=False)
        self.remote = remote
        self.commit_timeout = commit_timeout
        self._loop = loop
        self._sink = sink
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._requests: collections.deque[_Request[Any]] = collections.deque()
        self._idl: _Idl | None = None
        self._names: dict[str, dict[str, UUID]] = {
            table: {} for table in ("Bridge", "Port", "Interface")
        }
        self._name_of: dict[UUID, str] = {}  # uuid -> the name it is indexed under
        self._events: list[RowEvent] = []
        self._connected: bool | None = None
        self._resync = True
        self._status_detail = ""
        self._abandoned: list[_Abandoned] = []
        self._silent_since: int | None = None  # msec: the server stopped answering then
        self._ping_id: Any = None
        self._pinged = False

    # -- from the event loop -----------------------------------------------------

    def submit(
        self,
        build: Callable[[Txn], T],
        undo: Callable[[Txn], object] | None = None,
        what: str = "a change",
    ) -> asyncio.Future[Committed[T]]:
        future: asyncio.Future[Committed[T]] = self._loop.create_future()
        with self._lock:
            self._requests.append(_Request(build, future, undo, what))
        self._wake()
        return future

    def stop(self) -> None:
        self._stopping.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already woken
            os.write(self._wake_w, b"x")

    # -- in the thread -------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._idl is None and not self._connect():
                    continue
                assert self._idl is not None
                self._idl.run()
                self._publish()
                self._settle_abandoned()
                self._serve()
                self._sleep()
        except Exception as e:
            log.exception("the OVSDB thread failed")
            self._post(Status(False, f"the OVSDB thread failed: {e}"))
        finally:
            self._fail_pending(BackendUnavailable("the OVSDB connection is closed"))
            if self._idl is not None:
                self._idl.close()

    def close(self) -> None:
        """Release the wake pipe; only after join() (stop() may still be writing to it)."""
        assert not self.is_alive()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _connect(self) -> bool:
        """Fetch the server's schema and make the IDL; False (after a pause) if not reachable."""
        try:
            schema = _fetch_schema(self.remote, SCHEMA_TIMEOUT, self._wake_r)
        except OSError as e:
            if self._stopping.is_set():
                return False
            self._set_status(
                False, f"ovsdb-server not reachable at {self.remote}: {e.strerror or e}"
            )
            self._fail_pending(BackendUnavailable(self._status_detail))
            self._stopping.wait(1.0)
            return False
        helper = ovs.db.idl.SchemaHelper(schema_json=schema)
        tables = schema["tables"]
        for table, columns in COLUMNS.items():
            helper.register_columns(table, [c for c in columns if c in tables[table]["columns"]])
        self._idl = _Idl(self.remote, helper, self._on_notify)
        session = self._idl._session
        # The ovs library probes TCP peers only; a stopped server behind a unix
        # socket would look connected forever.
        session.reconnect.set_probe_interval(PROBE_MS)
        receive = session.recv

        def recv() -> Any:  # our pings' answers are ours, not the IDL's
            while True:
                msg = receive()
                if msg is None or msg.type != ovs.jsonrpc.Message.T_REPLY:
                    return msg
                if msg.id != self._ping_id:
                    return msg
                self._pinged = True

        session.recv = recv
        return True

    def _on_notify(self, event: int, row: Any) -> None:
        table = row._table.name
        if table not in COLUMNS:
            return
        frozen = freeze(table, row)
        kind = _EVENTS[event]
        if table in self._names:
            self._index(table, kind, row.uuid, getattr(frozen, "name", ""))
        self._events.append(RowEvent(kind, table, frozen))

    def _index(self, table: str, kind: str, uuid: UUID, name: str) -> None:
        """Keep name -> uuid current in O(1) per row (renames included)."""
        names = self._names[table]
        old = self._name_of.pop(uuid, None)
        if old is not None and names.get(old) == uuid:
            del names[old]
        if kind != "delete":
            names[name] = uuid
            self._name_of[uuid] = name

    def _publish(self) -> None:
        idl = self._idl
        assert idl is not None
        connected = idl._session.is_connected() and idl.state == idl.IDL_S_MONITORING
        if not connected:
            if self._connected is None:
                self._set_status(
                    False, f"connecting to ovsdb-server at {self.remote}", settled=False
                )
            elif self._connected:
                self._set_status(False, f"lost ovsdb-server at {self.remote}; reconnecting")
            self._resync = True
            self._events.clear()  # the resync after reconnecting replaces them
            return
        if self._silent_since is not None:
            if idl._session.reconnect.last_activity <= self._silent_since or self._abandoned:
                return  # still silent, or a change still in limbo: stay reported down
            self._silent_since = None
            self._set_status(True, f"ovsdb-server at {self.remote} answers again")
        if self._resync:
            self._events.clear()
            self._post(Snapshot(self._snapshot()))
            self._resync = False
            version = next((r.ovs_version for r in self._roots()), "")
            suffix = f" (Open vSwitch {version})" if version else ""
            self._set_status(True, f"ovsdb-server at {self.remote}{suffix}")
        elif self._events:
            events, self._events = self._events, []
            self._post(events)

    def _roots(self) -> list[RootRow]:
        assert self._idl is not None
        rows = self._idl.tables["Open_vSwitch"].rows.values()
        return [r for r in (freeze("Open_vSwitch", row) for row in rows) if isinstance(r, RootRow)]

    def _snapshot(self) -> dict[str, dict[RowId, Row]]:
        assert self._idl is not None
        out: dict[str, dict[RowId, Row]] = {}
        for table in COLUMNS:
            rows = {
                key.int: freeze(table, row) for key, row in self._idl.tables[table].rows.items()
            }
            out[table] = rows
            if table in self._names:
                self._names[table] = {getattr(r, "name", ""): UUID(int=u) for u, r in rows.items()}
                self._name_of.update({UUID(int=u): getattr(r, "name", "") for u, r in rows.items()})
        return out

    def _serve(self) -> None:
        while True:
            with self._lock:
                if not self._requests:
                    return
                request = self._requests.popleft()
            if self._abandoned:
                # An earlier change is in limbo; its undo (if needed) must come
                # before anything else, and nobody waits on it meanwhile.
                self._resolve(
                    request.future,
                    error=BackendUnavailable(
                        "ovsdb-server has not answered an earlier change yet; "
                        "try again once Backends shows it up"
                    ),
                )
                continue
            if request.future.cancelled():
                continue
            try:
                result = self._execute(request)
            except OpdbusError as e:
                self._publish()
                self._resolve(request.future, error=e)
            except Exception as e:
                log.exception("OVSDB transaction failed")
                self._publish()
                self._resolve(request.future, error=BackendFailed(f"OVSDB transaction failed: {e}"))
            else:
                self._publish()  # the events first, then the answer
                self._resolve(request.future, result=result)

    def _execute(self, request: _Request[T]) -> Committed[T]:
        assert self._idl is not None
        for _ in range(MAX_TRIES):
            if self._connected is not True or self._resync or self._silent_since is not None:
                raise BackendUnavailable(self._status_detail or "not connected to ovsdb-server yet")
            if not self._ping(PING_TIMEOUT):
                self._went_silent()
                raise Timeout(
                    f"ovsdb-server did not answer within {PING_TIMEOUT:g} s (is it stopped?); "
                    "nothing was changed"
                )
            txn = Txn(self._idl, self._names)
            try:
                value = request.build(txn)
            except BaseException:
                txn.abort()
                raise
            status, next_cfg = self._commit(txn, request.undo, request.what)
            if status != ovs.db.idl.Transaction.TRY_AGAIN:
                return Committed(value, next_cfg, txn.interfaces_touched)
            # Someone changed what we read: catch up, then build it again.
            self._idl.run()
            self._publish()
        raise BackendFailed(f"OVSDB asked to try again {MAX_TRIES} times; giving up")

    def _ping(self, timeout: float) -> bool:
        """An echo to the server; True once it answers (it reads what we send)."""
        assert self._idl is not None
        message = ovs.jsonrpc.Message.create_request("echo", ["op-dbus"])
        self._ping_id, self._pinged = message.id, False
        if self._idl._session.send(message):
            return False
        return self._wait(lambda: self._pinged, timeout)

    def _wait(self, done: Callable[[], bool], timeout: float, txn: Any = None) -> bool:
        """Run the IDL until ``done()`` or ``timeout`` seconds pass."""
        assert self._idl is not None
        deadline = time.monotonic() + timeout
        while True:
            self._idl.run()
            if done():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping.is_set():
                return False
            poller = ovs.poller.Poller()
            self._idl.wait(poller)
            if txn is not None:
                txn.wait(poller)
            poller.fd_wait(self._wake_r, ovs.poller.POLLIN)
            poller.timer_wait(int(remaining * 1000) + 1)
            poller.block()

    def _commit(
        self, txn: Txn, undo: Callable[[Txn], object] | None, what: str
    ) -> tuple[str, int | None]:
        status, next_cfg = txn.commit()
        if status != ovs.db.idl.Transaction.INCOMPLETE:
            return status, next_cfg
        incomplete = ovs.db.idl.Transaction.INCOMPLETE
        if self._wait(lambda: txn.status() != incomplete, self.commit_timeout, txn.raw):
            return txn.finish()
        self._abandoned.append(_Abandoned(txn.raw, undo, what))
        self._went_silent()
        raise Timeout(
            f"ovsdb-server did not answer within {self.commit_timeout:g} s; if it carries the "
            "change out later, it is undone"
        )

    def _went_silent(self) -> None:
        """Report the server down until it says anything again (the probe asks it)."""
        assert self._idl is not None
        self._silent_since = ovs.timeval.msec()
        self._set_status(False, f"ovsdb-server at {self.remote} is not answering (stopped?)")

    def _settle_abandoned(self) -> None:
        """Undo timed-out commits that were carried out after all (or may have been)."""
        idl = self._idl
        if not self._abandoned or idl is None or self._resync:
            return
        if not (idl._session.is_connected() and idl.state == idl.IDL_S_MONITORING):
            return  # its outcome is known once we are back in sync
        done = ovs.db.idl.Transaction
        for item in list(self._abandoned):
            status = item.txn.commit()  # its status so far; nothing is sent again
            if status == done.INCOMPLETE:
                continue
            self._abandoned.remove(item)
            if status in (done.ERROR, done.ABORTED, done.NOT_LOCKED, done.UNCHANGED):
                continue  # the server refused it: nothing to undo
            # SUCCESS: it was applied late. TRY_AGAIN: the connection dropped
            # before the answer, so it may have been: the undo is idempotent.
            outcome = self._undo(item)
            log.warning("OVSDB: %s (timed out earlier): %s", item.what, outcome)
            self._post(LateChange(f"{item.what}: {outcome}"))

    def _undo(self, item: _Abandoned) -> str:
        if item.undo is None:
            return "carried out late, and there is no undo for it"
        assert self._idl is not None
        txn = Txn(self._idl, self._names)
        try:
            item.undo(txn)
        except OpdbusError as e:
            txn.abort()
            return f"not carried out ({e.message})"
        try:
            status, _ = self._commit(txn, None, f"undoing {item.what}")
        except OpdbusError as e:
            return f"carried out late; undoing it failed: {e.message}"
        if status == ovs.db.idl.Transaction.UNCHANGED:
            return "not carried out"
        self._publish()
        return "carried out late, and undone"

    def _sleep(self) -> None:
        assert self._idl is not None
        poller = ovs.poller.Poller()
        self._idl.wait(poller)
        poller.fd_wait(self._wake_r, ovs.poller.POLLIN)
        poller.timer_wait(MAX_SLEEP_MS)
        poller.block()
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- handing things to the loop ----------------------------------------------------

    def _set_status(self, connected: bool, detail: str, *, settled: bool = True) -> None:
        if self._connected == connected and self._status_detail == detail:
            return
        self._connected = connected
        self._status_detail = detail
        self._post(Status(connected, detail, settled))

    def _post(self, update: Update) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self._loop.call_soon_threadsafe(self._sink, update)

    def _resolve(
        self, future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
    ) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle)

    def _fail_pending(self, error: OpdbusError) -> None:
        with self._lock:
            pending, self._requests = list(self._requests), collections.deque()
        for request in pending:
            self._resolve(request.future, error=type(error)(error.message))


def _fetch_schema(remote: str, timeout: float, wake_fd: int) -> dict[str, Any]:
    """get_schema("Open_vSwitch") over a short-lived JSON-RPC connection.

    Bounded in time, and given up as soon as ``wake_fd`` turns readable (stop).
    """
    deadline = time.monotonic() + timeout

    def wait(register: Callable[[ovs.poller.Poller], object]) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OSError(errno.ETIMEDOUT, "timed out")
        poller = ovs.poller.Poller()
        register(poller)
        poller.fd_wait(wake_fd, ovs.poller.POLLIN)
        poller.timer_wait(int(remaining * 1000))
        poller.block()
        if select.select([wake_fd], [], [], 0)[0]:
            raise OSError(errno.ECANCELED, "interrupted")

    error, stream = ovs.stream.Stream.open(remote)
    if error:
        raise OSError(error, os.strerror(error))
    try:
        while (error := stream.connect()) == errno.EAGAIN:
            wait(lambda p: (stream.run_wait(p), stream.connect_wait(p)))
        if error:
            raise OSError(error, os.strerror(error))
        rpc = ovs.jsonrpc.Connection(stream)
        stream = None
        try:
            rpc.send(ovs.jsonrpc.Message.create_request("get_schema", ["Open_vSwitch"]))
            while True:
                rpc.run()
                error, msg = rpc.recv()
                if error == 0 and msg is not None:
                    break
                if error not in (0, errno.EAGAIN):
                    raise OSError(error, os.strerror(error))
                wait(lambda p: (rpc.wait(p), rpc.recv_wait(p)))
        finally:
            rpc.close()
    finally:
        if stream is not None:
            stream.close()
    if msg.type != ovs.jsonrpc.Message.T_REPLY:
        raise OSError(errno.EPROTO, f"get_schema failed: {msg.error}")
    result: dict[str, Any] = msg.result
    return result
