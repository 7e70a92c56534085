"""Who is calling (bus credentials, cached per connection) and what polkit says."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from dbus_fast import DBusError, Message, MessageType, Variant

from opdbus import names
from opdbus.bus.transport import FlowControlledBus
from opdbus.errors import BackendFailed, BackendUnavailable, NotAuthorized
from opdbus.services.authz import Caller, PolkitAnswer

log = logging.getLogger(__name__)

POLKIT_TIMEOUT = 25.0
CACHE_LIMIT = 4096


async def bus_call(
    bus: FlowControlledBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
) -> list[Any]:
    """One method call; a D-Bus error reply is raised as DBusError."""
    reply = await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    if reply.message_type is MessageType.ERROR:
        raise DBusError(reply.error_name or "", str(reply.body[0]) if reply.body else "")
    return list(reply.body)


class CallerResolver:
    """sender -> Caller via GetConnectionCredentials, cached until the peer leaves.

    Unique names are never reused on a bus, so a cached answer cannot go
    stale; entries are dropped on NameOwnerChanged and the cache is bounded.
    Concurrent calls from one peer share a single lookup.
    """

    def __init__(self, bus: FlowControlledBus) -> None:
        self._bus = bus
        self._cache: dict[str, Caller] = {}
        self._inflight: dict[str, asyncio.Future[Caller]] = {}

    async def start(self) -> None:
        self._bus.add_message_handler(self._on_message)
        await bus_call(
            self._bus,
            names.DBUS_NAME,
            names.DBUS_PATH,
            names.DBUS_IFACE,
            "AddMatch",
            "s",
            [
                "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                "member='NameOwnerChanged'"
            ],
        )

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == names.DBUS_NAME
            and msg.body
            and not msg.body[2]
        ):
            self._cache.pop(msg.body[0], None)

    async def resolve(self, sender: str) -> Caller:
        cached = self._cache.get(sender)
        if cached is not None:
            return cached
        pending = self._inflight.get(sender)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(sender))
            self._inflight[sender] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(sender, None))
        return await asyncio.shield(pending)

    async def _lookup(self, sender: str) -> Caller:
        try:
            (creds,) = await bus_call(
                self._bus,
                names.DBUS_NAME,
                names.DBUS_PATH,
                names.DBUS_IFACE,
                "GetConnectionCredentials",
                "s",
                [sender],
            )
        except DBusError as e:
            raise NotAuthorized(f"cannot identify the caller {sender}: {e.text}") from None
        if "UnixUserID" not in creds:
            raise NotAuthorized(f"the bus does not vouch for a uid of {sender}")
        gids = creds.get("UnixGroupIDs")
        caller = Caller(
            sender=sender,
            uid=int(creds["UnixUserID"].value),
            pid=int(creds["ProcessID"].value) if "ProcessID" in creds else 0,
            gids=frozenset(gids.value) if gids is not None else None,
        )
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.pop(next(iter(self._cache)))
        self._cache[sender] = caller
        return caller


class PolkitClient:
    """org.freedesktop.PolicyKit1.Authority.CheckAuthorization for a bus-name subject."""

    def __init__(self, bus: FlowControlledBus) -> None:
        self._bus = bus

    async def available(self) -> bool:
        try:
            (has_owner,) = await bus_call(
                self._bus,
                names.DBUS_NAME,
                names.DBUS_PATH,
                names.DBUS_IFACE,
                "NameHasOwner",
                "s",
                [names.POLKIT_NAME],
            )
            if has_owner:
                return True
            (activatable,) = await bus_call(
                self._bus,
                names.DBUS_NAME,
                names.DBUS_PATH,
                names.DBUS_IFACE,
                "ListActivatableNames",
            )
        except DBusError:
            return False
        return names.POLKIT_NAME in activatable

    async def check(self, sender: str, action_id: str, details: Mapping[str, str]) -> PolkitAnswer:
        subject = ["system-bus-name", {"name": Variant("s", sender)}]
        try:
            async with asyncio.timeout(POLKIT_TIMEOUT):
                (result,) = await bus_call(
                    self._bus,
                    names.POLKIT_NAME,
                    names.POLKIT_PATH,
                    names.POLKIT_IFACE,
                    "CheckAuthorization",
                    "(sa{sv})sa{ss}us",
                    [subject, action_id, dict(details), 0, ""],
                )
        except TimeoutError:
            raise BackendUnavailable("polkit did not answer in time") from None
        except DBusError as e:
            log.warning("polkit refused to check %s for %s: %s", action_id, sender, e.text)
            raise BackendFailed(f"polkit could not check {action_id}: {e.text}") from None
        authorized, challenge, _ = result
        return PolkitAnswer(bool(authorized), bool(challenge))
