"""A dbus-fast connection that survives a full socket buffer.

dbus-fast 5.x treats EAGAIN from ``send()`` as a fatal error and finalizes
the whole connection: 2000 calls in flight, or one method emitting a burst of
1000+ signals, kills it. This connection keeps the message queued and waits
for the socket to become writable instead, counts the queued bytes, and lets
producers ``await drain()`` while the backlog is above a high-water mark.

It also (a) records each incoming call in a context variable before dispatch,
so handlers know their caller (dbus-fast does not pass the message),
(b) finds an interface's object path in O(1) when it emits a signal (dbus-fast
scans every export per signal), and (c) answers GetManagedObjects in one pass
(dbus-fast's is quadratic), taking values an interface keeps when it offers them.

The daemon and its clients both use it, so it is part of the public contract
(``opctl`` imports it alongside names, errors and models).
"""

from __future__ import annotations

import array
import asyncio
import logging
import socket
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _future_set_exception, _future_set_result, _MessageWriter
from dbus_fast.service import ServiceInterface, _Method

_LOG = logging.getLogger(__name__)
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
HIGH_WATER = 8 * 1024 * 1024
LOW_WATER = 1 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CallInfo:
    sender: str
    path: str
    interface: str
    member: str


CURRENT_CALL: ContextVar[CallInfo | None] = ContextVar("opdbus_current_call", default=None)


def property_values(interface: ServiceInterface) -> dict[str, Variant]:
    """Every readable property of ``interface``, read synchronously."""
    values: dict[str, Variant] = {}
    for prop in ServiceInterface._get_properties(interface):
        if not prop.disabled and prop.access.readable():
            values[prop.name] = Variant(
                prop.signature, getattr(interface, prop.prop_getter.__name__)
            )
    return values


def _values_of(interface: ServiceInterface) -> dict[str, Variant]:
    # op-dbus interfaces may keep their values (OpdbusInterface.property_values).
    own: Callable[[], dict[str, Variant]] | None = getattr(interface, "property_values", None)
    return own() if own is not None else property_values(interface)


class _FlowControlledWriter(_MessageWriter):
    """dbus-fast's writer, except a full socket means "wait", not "disconnect"."""

    def __init__(self, bus: MessageBus) -> None:
        super().__init__(bus)
        self.backlog = 0  # bytes queued or partly sent
        self.stalls = 0  # times the socket buffer was full (where stock dbus-fast would die)
        self._drain_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def buffer_message(self, msg: Message, future: asyncio.Future[Any] | None = None) -> None:
        super().buffer_message(msg, future)
        self.backlog += len(self.messages[-1][0])

    def write_callback(self, remove_writer: bool = True) -> None:  # noqa: PLR0912 (mirrors dbus-fast)
        sock, fd = self.sock, self.fd
        assert sock is not None and fd is not None
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if remove_writer:
                            self.loop.remove_writer(fd)
                        self._wake_drainers(everyone=True)
                        return
                    buf, unix_fds, fut = self.messages.popleft()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                try:
                    if self.unix_fds and self.negotiate_unix_fd:
                        ancdata = [
                            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", self.unix_fds))
                        ]
                        self.offset += sock.sendmsg([self.buf[self.offset :]], ancdata)
                        self.unix_fds = None
                    else:
                        self.offset += sock.send(self.buf[self.offset :])
                except (BlockingIOError, InterruptedError):
                    self.stalls += 1
                    # Socket buffer full: keep the message; the loop calls us
                    # again when it is writable (schedule_write registers us
                    # when we were called directly).
                    return
                if self.offset < len(self.buf):
                    return
                self.backlog -= len(self.buf)
                self.buf = None
                if self.fut is not None:
                    _future_set_result(self.fut, None)
                if self._drain_waiters:
                    self._wake_drainers()
        except Exception as e:
            if self.fut is not None:
                if self.bus._user_disconnect:
                    _future_set_result(self.fut, None)
                else:
                    _future_set_exception(self.fut, e)
            self._wake_drainers(everyone=True)
            self.bus._finalize(e)

    def _wake_drainers(self, everyone: bool = False) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for low, waiter in self._drain_waiters:
            if everyone or self.backlog <= low:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append((low, waiter))
        self._drain_waiters = keep

    async def drain(self, high: int = HIGH_WATER, low: int = LOW_WATER) -> None:
        if self.backlog <= high or self.bus._disconnected:
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiters.append((low, waiter))
        await waiter


class FlowControlledBus(MessageBus):
    """``dbus_fast.aio.MessageBus`` with flow control; use it everywhere."""

    # MessageBus declares __slots__; our extra state needs its own.
    __slots__ = ("_handlers", "_iface_paths", "object_managers")

    def __init__(self, bus_address: str | None = None, **kwargs: Any) -> None:
        super().__init__(bus_address, **kwargs)
        self._iface_paths: dict[int, str] = {}
        # One method handler per (interface name, method), shared by every object
        # exporting that interface (see _make_method_handler).
        self._handlers: dict[tuple[str, _Method], Callable[[Message, Any], None]] = {}
        # Paths implementing ObjectManager: InterfacesAdded/Removed for objects
        # below one are emitted from it, as the spec says (dbus-fast emits
        # them from the object's own path, which ObjectManager clients miss).
        self.object_managers: set[str] = set()

    async def connect(self) -> FlowControlledBus:
        await super().connect()
        old = self._writer
        assert old is not None
        new = _FlowControlledWriter(self)
        # Nothing is normally queued right after Hello, but carry it over if so.
        new.messages, new.buf, new.offset = old.messages, old.buf, old.offset
        new.unix_fds, new.fut = old.unix_fds, old.fut
        new.backlog = sum(len(item[0]) for item in new.messages)
        self._writer = new
        if (new.buf is not None or new.messages) and self._fd is not None:
            self._loop.add_writer(self._fd, new.write_callback)
        return self

    @property
    def stalls(self) -> int:
        writer = self._writer
        return writer.stalls if isinstance(writer, _FlowControlledWriter) else 0

    @property
    def backlog_bytes(self) -> int:
        writer = self._writer
        return writer.backlog if isinstance(writer, _FlowControlledWriter) else 0

    async def drain(self) -> None:
        """Wait while more than HIGH_WATER bytes are queued, until below LOW_WATER."""
        writer = self._writer
        if isinstance(writer, _FlowControlledWriter):
            await writer.drain()

    async def flush(self) -> None:
        """Wait until everything queued so far has been written to the socket."""
        writer = self._writer
        if isinstance(writer, _FlowControlledWriter):
            await writer.drain(high=0, low=0)

    def export(self, path: str, interface: ServiceInterface) -> None:
        super().export(path, interface)
        self._iface_paths[id(interface)] = path

    def unexport(self, path: str, interface: ServiceInterface | str | None = None) -> None:
        exported = dict(self._path_exports.get(path, {}))
        super().unexport(path, interface)
        for name, iface in exported.items():
            if interface is None or interface is iface or interface == name:
                self._iface_paths.pop(id(iface), None)

    def _interface_signal_notify(
        self,
        interface: ServiceInterface,
        interface_name: str,
        member: str,
        signature: str,
        body: list[Any],
        unix_fds: list[int] | None = None,
    ) -> None:
        path = self._iface_paths.get(id(interface))
        if path is None:
            return  # unexported meanwhile: nobody can address it any more
        self.send(
            Message.new_signal(
                path=path,
                interface=interface_name,
                member=member,
                signature=signature,
                body=body,
                unix_fds=unix_fds or [],
            )
        )

    def _manager_for(self, path: str) -> str:
        best = path
        for manager in self.object_managers:
            prefix = manager.rstrip("/") + "/"
            if path.startswith(prefix) and (best == path or len(manager) > len(best)):
                best = manager
        return best

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self._disconnected:
            return
        sender_path = self._manager_for(path)

        def send(iface: ServiceInterface, values: Any, _: Any, error: Exception | None) -> None:
            if error is not None:
                _LOG.error("properties of %s at %s unreadable: %s", iface.name, path, error)
            self.send(
                Message.new_signal(
                    path=sender_path,
                    interface=OBJECT_MANAGER,
                    member="InterfacesAdded",
                    signature="oa{sa{sv}}",
                    body=[path, {iface.name: values}],
                )
            )

        ServiceInterface._get_all_property_values(interface, send)

    def _default_get_managed_objects_handler(self, msg: Message, send_reply: Any) -> None:
        """GetManagedObjects in one pass over the exports.

        dbus-fast's own re-scans the whole reply each time one interface's
        properties are in, and each interface's values each time one property
        is in: quadratic, ~70 ms for 1000 VMs. op-dbus property getters are
        all plain functions, so read them in place.
        """
        prefix = "/" if msg.path == "/" else f"{msg.path}/"
        try:
            result = {
                node: {name: _values_of(iface) for name, iface in interfaces.items()}
                for node, interfaces in self._path_exports.items()
                if node.startswith(prefix)
            }
        except Exception as e:
            _LOG.error("GetManagedObjects on %s: %s", msg.path, e)
            send_reply.send_error(e)
            return
        send_reply(Message.new_method_return(msg, "a{oa{sa{sv}}}", [result]))

    def objects_with(self, interface: str) -> dict[str, dict[str, Variant]]:
        """Path -> properties of every exported object that has ``interface``.

        Manager1.GetObjects: what a list shows, without the rest of the tree
        (a bridge list need not carry 5000 VMs and every finished job).
        """
        return {
            node: _values_of(interfaces[interface])
            for node, interfaces in self._path_exports.items()
            if interface in interfaces
        }

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if self._disconnected:
            return
        self.send(
            Message.new_signal(
                path=self._manager_for(path),
                interface=OBJECT_MANAGER,
                member="InterfacesRemoved",
                signature="oas",
                body=[path, removed_interfaces],
            )
        )

    def _make_method_handler(
        self, interface: ServiceInterface, method: _Method
    ) -> Callable[[Message, Callable[[Message], None]], None]:
        """The handler of ``method`` for every object with ``interface``'s name.

        dbus-fast makes one per object and method, each holding its object:
        with 5000 VMs of 15 methods that was 75 000 closures (~6 KB a VM). This
        one finds its object by the call's path when it is called, and has
        dbus-fast's own handler for it made then (a closure for one call).
        """
        key = (interface.name, method)
        shared = self._handlers.get(key)
        if shared is not None:
            return shared
        name = interface.name
        make = super()._make_method_handler

        def handler(msg: Message, send_reply: Callable[[Message], None]) -> None:
            target = self._path_exports[msg.path or "/"][name]
            # The coroutine's task copies this context when it is created inside the call.
            token = CURRENT_CALL.set(
                CallInfo(msg.sender or "", msg.path or "", msg.interface or "", msg.member or "")
            )
            try:
                make(target, method)(msg, send_reply)
            finally:
                CURRENT_CALL.reset(token)

        self._handlers[key] = handler
        return handler
