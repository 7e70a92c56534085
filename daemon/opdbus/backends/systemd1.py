"""A client of systemd's own D-Bus API, ``org.freedesktop.systemd1``, on the system bus.

The model for every client of someone else's D-Bus service (logind,
PackageKit): one connection of its own, typed answers, the service's errors
raised as :class:`SystemdError` with systemd's name and text, and changes
heard from its signals (``Subscribe`` once, then ``PropertiesChanged`` of the
units, ``UnitNew``/``UnitRemoved``, ``UnitFilesChanged``, ``Reloading``) --
never by polling. A start or stop is systemd's job: the call returns the
job's path and :meth:`Systemd1.run_job` waits for its ``JobRemoved``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

NAME = "org.freedesktop.systemd1"
PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
UNIT_PREFIX = PATH + "/unit/"
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
# systemd answers within milliseconds; a call this slow means it is stuck (or gone).
CALL_TIMEOUT = 30.0
FINISHED_KEPT = 256  # JobRemoved results remembered for a waiter that comes late


class SystemdError(Exception):
    """systemd (or the bus) refused a call: its error name and its own words."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


@dataclass(frozen=True)
class UnitStatus:
    """What ``ListUnitsByNames`` and ``ListUnitFilesByPatterns`` say of one unit."""

    name: str
    description: str
    load_state: str  # loaded, not-found, masked, error, ...
    active_state: str  # active, inactive, failed, activating, deactivating, reloading
    sub_state: str
    file_state: str  # enabled, disabled, static, masked, ... ("" if it has no unit file)


def unit_name_from_path(path: str) -> str | None:
    """``/org/freedesktop/systemd1/unit/ssh_2eservice`` -> ``ssh.service`` (systemd's escaping)."""
    if not path.startswith(UNIT_PREFIX):
        return None
    escaped, out, i = path[len(UNIT_PREFIX) :], [], 0
    while i < len(escaped):
        if escaped[i] == "_" and i + 2 < len(escaped):
            with contextlib.suppress(ValueError):
                out.append(chr(int(escaped[i + 1 : i + 3], 16)))
                i += 3
                continue
        out.append(escaped[i])
        i += 1
    return "".join(out)


class Systemd1:
    """One connection to systemd's bus; ``on_unit(name)`` hears every unit that changed.

    ``on_unit("")`` means "anything may have changed" (unit files were
    enabled or disabled, or systemd reloaded): read again what you keep.
    """

    def __init__(self, address: str, on_unit: Callable[[str], None]) -> None:
        self.address = address
        self._on_unit = on_unit
        self._bus: MessageBus | None = None
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._finished: OrderedDict[str, str] = OrderedDict()

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    async def connect(self, timeout: float) -> str:
        """Connect, subscribe to the signals; returns systemd's version."""
        bus = (
            MessageBus(bus_type=BusType.SYSTEM)
            if self.address == SYSTEM_BUS
            else MessageBus(bus_address=self.address)
        )
        try:
            async with asyncio.timeout(timeout):
                await bus.connect()
        except BaseException:
            bus.disconnect()  # its socket may be open: tried again later, it must not pile up
            raise
        try:
            self._bus = bus
            bus.add_message_handler(self._on_message)
            for rule in (
                f"type='signal',sender='{NAME}',interface='{MANAGER}'",
                f"type='signal',sender='{NAME}',interface='org.freedesktop.DBus.Properties',"
                f"member='PropertiesChanged',path_namespace='{PATH}/unit'",
            ):
                await self._call(
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "AddMatch",
                    "s",
                    [rule],
                )
            await self._manager("Subscribe")
            (version,) = await self._call(
                NAME,
                PATH,
                "org.freedesktop.DBus.Properties",
                "Get",
                "ss",
                [MANAGER, "Version"],
            )
        except BaseException:
            self.close()
            raise
        return str(version.value)

    async def wait_closed(self) -> None:
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(SystemdError("", "the connection to systemd was lost"))
        self._waiters.clear()

    # -- reading -----------------------------------------------------------------------------

    async def units(self, names: Sequence[str]) -> list[UnitStatus]:
        """The state of these units (loaded on demand by systemd; "not-found" if none)."""
        if not names:
            return []
        (listed,) = await self._manager("ListUnitsByNames", "as", [list(names)])
        (files,) = await self._manager("ListUnitFilesByPatterns", "asas", [[], list(names)])
        file_state = {path.rsplit("/", 1)[-1]: state for path, state in files}
        return [
            UnitStatus(
                name=row[0],
                description=row[1],
                load_state=row[2],
                active_state=row[3],
                sub_state=row[4],
                file_state=file_state.get(row[0], ""),
            )
            for row in listed
        ]

    # -- changing ---------------------------------------------------------------------------

    async def start(self, name: str) -> str:
        """Queue a start (mode "replace"); returns the job's path for :meth:`run_job`."""
        (job,) = await self._manager("StartUnit", "ss", [name, "replace"])
        return str(job)

    async def stop(self, name: str) -> str:
        (job,) = await self._manager("StopUnit", "ss", [name, "replace"])
        return str(job)

    async def run_job(self, job: str, timeout: float) -> str:
        """Wait for a job systemd queued; its result: done, failed, timeout, dependency, ..."""
        if job in self._finished:
            return self._finished.pop(job)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[job] = waiter
        try:
            async with asyncio.timeout(timeout):
                return str(await waiter)
        finally:
            self._waiters.pop(job, None)

    async def enable(self, names: Sequence[str]) -> list[tuple[str, str, str]]:
        """Enable unit files (their [Install] section); the symlinks made."""
        carries, changes = await self._manager(
            "EnableUnitFiles", "asbb", [list(names), False, False]
        )
        if not carries and not changes:
            raise SystemdError(
                "org.opdbus.NoInstallInfo",
                f"{', '.join(names)} has no [Install] section: it cannot be enabled",
            )
        return [tuple(c) for c in changes]

    async def disable(self, names: Sequence[str]) -> list[tuple[str, str, str]]:
        (changes,) = await self._manager("DisableUnitFiles", "asb", [list(names), False])
        return [tuple(c) for c in changes]

    async def mask(self, names: Sequence[str]) -> list[tuple[str, str, str]]:
        (changes,) = await self._manager("MaskUnitFiles", "asbb", [list(names), False, True])
        return [tuple(c) for c in changes]

    async def unmask(self, names: Sequence[str]) -> list[tuple[str, str, str]]:
        (changes,) = await self._manager("UnmaskUnitFiles", "asb", [list(names), False])
        return [tuple(c) for c in changes]

    async def reload(self) -> None:
        """What ``systemctl daemon-reload`` does: unit files are read again."""
        await self._manager("Reload")

    # -- the wire ----------------------------------------------------------------------------

    def _manager(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        return self._call(NAME, PATH, MANAGER, member, signature, body or [])

    async def _call(
        self, destination: str, path: str, interface: str, member: str, sig: str, body: list[Any]
    ) -> list[Any]:
        bus = self._bus
        if bus is None or not bus.connected:
            raise SystemdError("", f"not connected to systemd's bus ({self.address})")
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=sig,
            body=body,
        )
        async with asyncio.timeout(CALL_TIMEOUT):
            reply = await bus.call(message)
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else reply.error_name or "error"
            raise SystemdError(reply.error_name or "", text)
        return list(reply.body)

    def _on_message(self, message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        member, body = message.member, message.body
        if member == "PropertiesChanged":
            name = unit_name_from_path(message.path or "")
            if name:
                self._on_unit(name)
        elif member == "JobRemoved" and len(body) == 4:
            self._job_removed(str(body[1]), str(body[2]), str(body[3]))
        elif member in ("UnitNew", "UnitRemoved") and body:
            self._on_unit(str(body[0]))
        elif member == "UnitFilesChanged" or (member == "Reloading" and body == [False]):
            self._on_unit("")

    def _job_removed(self, job: str, unit: str, result: str) -> None:
        waiter = self._waiters.pop(job, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(result)
        else:
            # The reply with the job's path may come after its end (a no-op start).
            self._finished[job] = result
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        self._on_unit(unit)
