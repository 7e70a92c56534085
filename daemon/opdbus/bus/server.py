"""The daemon's bus connection: connect, export the objects, own org.opdbus, let go."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from dbus_fast import BusType, DBusError, NameFlag, RequestNameReply
from dbus_fast._private.address import get_bus_address

from opdbus import names
from opdbus.bus.base import BusContext, load_docs
from opdbus.bus.exporter import Exported
from opdbus.bus.guard import CallGuard
from opdbus.bus.job import Job1, JobExporter
from opdbus.bus.manager import Manager1, ManagerServices
from opdbus.bus.peers import CallerResolver, PolkitClient, bus_call
from opdbus.bus.state import State1, StateExporter, StateManager
from opdbus.bus.transport import FlowControlledBus
from opdbus.config import AuthConfig
from opdbus.models.health import Probe
from opdbus.services.audit import AuditLog
from opdbus.services.authz import Authorizer
from opdbus.services.state import StateService

log = logging.getLogger(__name__)


class NameTaken(Exception):
    """org.opdbus cannot be owned (someone has it, or the policy forbids it)."""


def resolve_bus_address(spec: str) -> str:
    """``system``, ``session`` or a D-Bus address -> an address."""
    if spec == "system":
        return get_bus_address(BusType.SYSTEM)
    if spec == "session":
        return get_bus_address(BusType.SESSION)
    return spec


class BusServer:
    def __init__(self, address: str, auth: AuthConfig, audit: AuditLog) -> None:
        self.address = address
        self._auth = auth
        self._audit = audit
        self._bus: FlowControlledBus | None = None
        self._ctx: BusContext | None = None
        self._polkit: PolkitClient | None = None
        self._watch: asyncio.Task[None] | None = None
        self.disconnected = asyncio.Event()

    @property
    def ctx(self) -> BusContext:
        assert self._ctx is not None, "connect() first"
        return self._ctx

    async def connect(self) -> None:
        bus = FlowControlledBus(self.address)
        try:
            await bus.connect()
        except (OSError, DBusError) as e:
            raise ConnectionError(f"cannot connect to the bus at {self.address}: {e}") from None
        self._bus = bus
        self._watch = asyncio.create_task(self._watch_bus(bus), name="bus-watch")
        callers = CallerResolver(bus)
        await callers.start()
        self._polkit = PolkitClient(bus)
        docs = await asyncio.to_thread(load_docs)
        self._ctx = BusContext(
            bus=bus,
            callers=callers,
            authorizer=Authorizer(self._auth, self._polkit),
            audit=self._audit,
            docs=docs,
        )

    async def probe_polkit(self) -> Probe:
        assert self._polkit is not None
        if await self._polkit.available():
            return Probe(True, f"{names.POLKIT_NAME} on the bus")
        return Probe(False, f"{names.POLKIT_NAME} is not on the bus")

    def serve(
        self,
        services: ManagerServices,
        kinds: Sequence[Exported],
        state: StateService | None,
        machine_id: str = "",
    ) -> None:
        """Export the root object, every job and every resource (before owning the name:
        no half-ready daemon)."""
        ctx = self.ctx
        ctx.bus.object_managers.add(names.ROOT_PATH)
        manager = Manager1(ctx, services)
        guard = CallGuard(ctx.bus, machine_id)
        guard.learn(Manager1)
        guard.learn(Job1)
        for kind in kinds:
            guard.learn(kind.interface)
        guard.learn(State1)
        guard.learn(StateManager)
        ctx.bus.add_message_handler(guard)
        ctx.bus.export(names.ROOT_PATH, manager)
        JobExporter(ctx, services.jobs, manager).attach()
        for kind in kinds:
            if kind.exporter is not None:
                kind.exporter(ctx).attach()
        if state is not None:
            StateExporter(ctx, state).attach()

    async def own_name(self) -> None:
        bus = self.ctx.bus
        try:
            reply = await bus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as e:
            raise NameTaken(
                f"not allowed to own {names.BUS_NAME} on {self.address}: {e.text}. "
                "The bus policy (dbus-policy/org.opdbus.conf) lets only root own it; "
                "run as root, or try `op-dbusd --sandbox DIR`"
            ) from None
        if reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            return
        owner, pid = "another process", "?"
        try:
            (owner,) = await bus_call(
                bus,
                names.DBUS_NAME,
                names.DBUS_PATH,
                names.DBUS_IFACE,
                "GetNameOwner",
                "s",
                [names.BUS_NAME],
            )
            (pid,) = await bus_call(
                bus,
                names.DBUS_NAME,
                names.DBUS_PATH,
                names.DBUS_IFACE,
                "GetConnectionUnixProcessID",
                "s",
                [owner],
            )
        except DBusError:
            pass
        raise NameTaken(
            f"{names.BUS_NAME} is already owned by {owner} (pid {pid}) on {self.address}; "
            "is another op-dbusd running?"
        )

    def stop_accepting(self) -> None:
        self.ctx.accepting = False

    async def _watch_bus(self, bus: FlowControlledBus) -> None:
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except Exception as e:  # the bus reports why it dropped us
            log.error("lost the bus connection: %s", e or type(e).__name__)
        self.disconnected.set()

    async def close(self) -> None:
        bus = self._bus
        if bus is None:
            return
        if not bus.connected:
            if self._watch is not None:
                await self._watch
            return
        try:
            async with asyncio.timeout(5):
                await bus.release_name(names.BUS_NAME)
                await bus.flush()
        except (DBusError, TimeoutError, OSError) as e:
            log.warning("could not release %s cleanly: %s", names.BUS_NAME, e)
        bus.disconnect()
        if self._watch is not None:
            await self._watch
