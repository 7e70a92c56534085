"""One libvirt connection per daemon: opened lazily, watched, reopened.

Blocking libvirt calls run in a small thread pool of their own (libvirt
connections are thread-safe; a slow libvirtd must not starve the default
executor). Events arrive on the event loop through ``libvirtaio``: the
callbacks only record *which* domain changed and hand that on; reading the
domain again is the VM service's job, off the loop.

When libvirtd goes away (close callback, keepalive, or a call that finds the
connection dead) the connection is dropped, ``on_status`` says so, and a
supervisor reopens it with backoff, re-registering the events; ``on_open``
then lets the VM service resynchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt
import libvirtaio

from opdbus.errors import (
    AlreadyExists,
    BackendFailed,
    BackendUnavailable,
    Conflict,
    InvalidArgs,
    NotFound,
    NotSupported,
    OpdbusError,
    Timeout,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

THREADS = 4
RETRY_MIN = 0.5
RETRY_MAX = 5.0
KEEPALIVE_INTERVAL = 2  # seconds between pings
KEEPALIVE_COUNT = 3  # unanswered pings before the connection is declared dead
CALL_BOUND = 120.0  # no libvirt call keeps its caller longer (a VM start can be slow)

# Events that can change what the bus shows of a domain.
DOMAIN_EVENTS = (
    libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
    libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
    libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
)

_NOT_FOUND = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_NODE_DEVICE,
}
_INVALID = {
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_INVALID_ARG,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_XML_INVALID_SCHEMA,
}
_UNSUPPORTED = {
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
}
_GONE = {libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT}


# Domain handles by connection and UUID. A handle names its domain by UUID on
# every call (libvirtd looks it up there), so it stays right across a redefine;
# a domain that is gone fails the verb with NO_DOMAIN just as a fresh lookup
# would. Keeping it saves each verb one round trip to libvirtd (a lookup).
# They hold their connection open: _drop lets go of them before closing it.
_HANDLES: weakref.WeakKeyDictionary[libvirt.virConnect, dict[str, libvirt.virDomain]] = (
    weakref.WeakKeyDictionary()
)


def domain_handle(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
    """(Blocking on first use.) The domain ``uuid`` of ``conn``, looked up once."""
    handles = _HANDLES.setdefault(conn, {})
    dom = handles.get(uuid)
    if dom is None:
        dom = handles[uuid] = conn.lookupByUUIDString(uuid)
    return dom


def forget_handle(conn: libvirt.virConnect, uuid: str) -> None:
    """Drop a domain's handle (it was undefined here; one undefined elsewhere keeps
    its few bytes until the connection is closed)."""
    _HANDLES.get(conn, {}).pop(uuid, None)


DRAIN_WAIT = 5.0  # libvirtaio's removals after a close: moments, normally


def translate(error: libvirt.libvirtError, what: str) -> OpdbusError:
    """A libvirt error as the named error a caller can act on."""
    code = error.get_error_code()
    message = f"{what}: {error.get_error_message() or error}"
    if code in _NOT_FOUND:
        return NotFound(message)
    if code == libvirt.VIR_ERR_DOM_EXIST or "already exists" in message:
        return AlreadyExists(message)
    if code in _INVALID:
        return InvalidArgs(message)
    if code in _UNSUPPORTED:
        return NotSupported(message)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return Conflict(message)  # "domain is not running", "already running", ...
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return Timeout(message)
    if code in _GONE:
        return BackendUnavailable(message)
    return BackendFailed(message)


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr unless told otherwise; we raise them instead."""


class LibvirtConnection:
    def __init__(
        self,
        uri: str,
        *,
        on_status: Callable[[bool, str], None],
        on_open: Callable[[], None],
        on_domain: Callable[[str], None],
    ) -> None:
        self.uri = uri
        self.detail = f"connecting to libvirt at {uri}"
        self._on_status = on_status
        self._on_open = on_open
        self._on_domain = on_domain
        self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="libvirt")
        self._conn: libvirt.virConnect | None = None
        self._callbacks: list[int] = []
        self._lost = asyncio.Event()
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.capabilities = ""  # the host's capabilities XML, read on each open

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def start(self) -> None:
        libvirt.registerErrorHandler(_quiet, None)
        loop = asyncio.get_running_loop()
        impl = libvirtaio.getCurrentImpl()
        if impl is None:
            libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
        elif impl.loop is not loop:
            # libvirt takes one event implementation per process, for good. A
            # process that runs the daemon in successive loops (the in-process
            # tests) re-points it; no connection outlives its loop (stop()).
            impl.loop = loop
        self._task = asyncio.create_task(self._supervise(), name="libvirt-connection")

    async def wait_open(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._opened.wait()
        return self.connected

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()
        # Joining the threads blocks: not on the loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def call(self, fn: Callable[[libvirt.virConnect], T], what: str) -> T:
        """Run fn(connection) in a libvirt thread; libvirt errors come back named."""
        conn = self._conn
        if conn is None:
            raise BackendUnavailable(self.detail)
        loop = asyncio.get_running_loop()
        try:
            # libvirt's keepalive ends a call to a hung libvirtd (the thread then
            # returns an error); this bound answers the caller even before that.
            async with asyncio.timeout(CALL_BOUND):
                return await asyncio.shield(loop.run_in_executor(self._executor, fn, conn))
        except TimeoutError:
            raise Timeout(f"{what}: libvirtd did not answer within {CALL_BOUND:g} s") from None
        except libvirt.libvirtError as e:
            error = translate(e, what)
            # Only a dead connection means libvirtd is gone: a system error
            # (say, ENODEV for a missing bridge) is the operation's failure.
            if not await self._alive(conn):
                self._lose(f"lost libvirtd ({e.get_error_message()}); reconnecting")
                raise BackendUnavailable(f"{what}: libvirtd went away; try again") from None
            raise error from None

    async def _alive(self, conn: libvirt.virConnect) -> bool:
        loop = asyncio.get_running_loop()
        try:
            return bool(await loop.run_in_executor(self._executor, conn.isAlive))
        except libvirt.libvirtError:
            return False

    # -- keeping the connection --------------------------------------------------

    async def _supervise(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                await self._open()
            except libvirt.libvirtError as e:
                self._status(False, f"libvirt not reachable at {self.uri}: {e.get_error_message()}")
                self._opened.set()  # settled: callers may go on without it
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            kind = "libvirt test driver" if self.uri.startswith("test:") else "libvirtd"
            self._status(True, f"{kind} ({self.uri})")
            self._opened.set()
            self._on_open()
            await self._lost.wait()
            await self._drop()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        conn: libvirt.virConnect = await loop.run_in_executor(
            self._executor, libvirt.open, self.uri
        )
        self._lost.clear()
        try:
            await loop.run_in_executor(self._executor, self._watch, conn)
            self.capabilities = await loop.run_in_executor(self._executor, conn.getCapabilities)
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                await loop.run_in_executor(self._executor, conn.close)
            raise
        self._conn = conn

    def _watch(self, conn: libvirt.virConnect) -> None:
        """Register events and liveness checks (in a libvirt thread: these are RPCs)."""
        self._callbacks = [
            conn.domainEventRegisterAny(None, event, self._domain_event, None)
            for event in DOMAIN_EVENTS
        ]
        with contextlib.suppress(libvirt.libvirtError):  # drivers without a daemon
            conn.registerCloseCallback(self._closed, None)
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)

    def _domain_event(self, _conn: Any, dom: Any, *_args: Any) -> None:
        # On the loop (libvirtaio): no RPC here, only who changed.
        try:
            uuid = dom.UUIDString()  # cached in the object: no RPC
        except libvirt.libvirtError:
            return
        self._on_domain(uuid)

    def _closed(self, _conn: Any, reason: int, _opaque: Any) -> None:
        why = {
            libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
            libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "libvirtd stopped answering",
            libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "connection error",
        }.get(reason, "connection closed")
        self._lose(f"lost libvirtd: {why}; reconnecting")

    def _lose(self, detail: str) -> None:
        if self._conn is None or self._lost.is_set():
            return
        self._status(False, detail)
        self._lost.set()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        callbacks, self._callbacks = self._callbacks, []
        # Domain handles keep a connection alive (and its keepalive timer on our loop).
        _HANDLES.pop(conn, None)

        def close() -> None:
            # A domain object still alive keeps the connection open past close(),
            # and with it its timers on our loop; a failed call's traceback holds
            # its frames' domains in a reference cycle until the collector runs.
            gc.collect()
            for callback in callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(callback)
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        # Closing hands libvirtaio the removal of the connection's timers and
        # watches (from the closing thread); wait until it has done them, so no
        # timer task of a closed connection outlives it on our loop.
        impl = libvirtaio.getCurrentImpl()
        if impl is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_WAIT):
                    await impl.drain()

    def _status(self, ok: bool, detail: str) -> None:
        changed = detail != self.detail
        self.detail = detail
        if changed:
            log.log(logging.INFO if ok else logging.WARNING, "%s", detail)
        self._on_status(ok, detail)
