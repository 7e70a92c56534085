"""An async proxy for op-dbusd: typed methods, errors mapped back to their classes.

It imports only the daemon's public contract: names, errors, models, and the
flow-controlled connection class (which survives thousands of calls in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from dbus_fast import DBusError, Message, MessageType, Variant
from dbus_fast.errors import InvalidAddressError

from opctl.defaults import CALL_TIMEOUT
from opctl.follow import follow_job
from opctl.wire import (
    SignalEvent,
    Status,
    Unreachable,
    as_bridge_info,
    as_container_info,
    as_job_record,
    as_log_line,
    as_variants,
    as_vm_info,
    map_error,
    no_answer,
    plain,
    resolve_address,
)
from opdbus import errors, names
from opdbus.bus.transport import FlowControlledBus

if TYPE_CHECKING:
    from opdbus.models.audit import AuditEntry, AuditVerdict
    from opdbus.models.container import ContainerInfo
    from opdbus.models.job import JobRecord, LogLine
    from opdbus.models.network import BridgeInfo
    from opdbus.models.vm import VmInfo


class Client:
    def __init__(
        self, bus: FlowControlledBus, address: str, call_timeout: float = CALL_TIMEOUT
    ) -> None:
        self.bus = bus
        self.address = address
        self.call_timeout = call_timeout
        # D-Bus keeps one sender's messages in order, so arrival order tells
        # whether a signal is older than a reply (a snapshot) or newer.
        self._arrivals = 0
        self._reply_arrival: dict[int, int] = {}
        bus.add_message_handler(self._stamp)
        # The unique name that owns org.opdbus: signals from anyone else are
        # forgeries (any local user may send a unicast signal to anyone).
        self._owner: str | None = None
        self._owner_seen_at = 0  # arrival of the NameOwnerChanged it came from
        self._tracking: asyncio.Future[None] | None = None
        # Told the new owner of org.opdbus ("" when it left the bus): opctl watch.
        self.on_owner_change: Callable[[str], None] | None = None

    def _stamp(self, msg: Message) -> None:
        self._arrivals += 1
        if msg.reply_serial in self._reply_arrival:
            self._reply_arrival[msg.reply_serial] = self._arrivals

    @classmethod
    async def connect(
        cls, address: str | None = None, *, call_timeout: float = CALL_TIMEOUT
    ) -> Client:
        resolved = resolve_address(address)
        try:
            bus = FlowControlledBus(resolved)
        except (InvalidAddressError, ValueError) as e:
            raise errors.InvalidArgs(
                f"{resolved!r} is not a D-Bus address ({e}); one looks like "
                "unix:path=/run/dbus/system_bus_socket"
            ) from None
        try:
            await bus.connect()
        except Exception as e:
            raise Unreachable(f"cannot connect to the bus at {resolved}: {e}") from None
        return cls(bus, resolved, call_timeout)

    async def close(self) -> None:
        if self.bus.connected:
            self.bus.disconnect()
            with contextlib.suppress(Exception):
                await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- raw calls -------------------------------------------------------------

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        destination: str = names.BUS_NAME,
        *,
        timeout: float | None = None,
    ) -> list[Any]:
        """One method call; errors.Timeout when no answer comes within ``timeout``
        (default: the client's call_timeout)."""
        message = self._message(path, interface, member, signature, body, destination)
        return (await self._send(message, timeout=timeout))[0]

    def _message(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        destination: str = names.BUS_NAME,
    ) -> Message:
        # Our own serial, so _stamp can recognize the reply.
        return Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
            serial=self.bus.next_serial(),
        )

    async def _send(
        self, message: Message, *, stamp: bool = False, timeout: float | None = None
    ) -> tuple[list[Any], int]:
        """The reply's body, and (when ``stamp``) where it arrived among all messages."""
        if stamp:
            self._reply_arrival[message.serial] = 0
        limit = timeout or self.call_timeout
        try:
            async with asyncio.timeout(limit):
                reply = await self.bus.call(message)
        except TimeoutError:
            # Every method answers at once (long work is a job), so this is a
            # daemon or bus that stopped answering: say what we waited for.
            raise errors.Timeout(
                no_answer(f"{message.interface}.{message.member}", message.path or "/", limit)
            ) from None
        except DBusError as e:
            raise map_error(e) from None
        except (OSError, EOFError) as e:
            raise Unreachable(f"lost the bus connection: {e}") from None
        finally:
            arrival = self._reply_arrival.pop(message.serial, 0)
        if reply.message_type is MessageType.ERROR:
            raise map_error(DBusError(reply.error_name or "", reply.body[0] if reply.body else ""))
        return list(reply.body), arrival

    async def get_all(self, path: str, interface: str) -> dict[str, Any]:
        return (await self.snapshot(path, interface))[0]

    async def snapshot(self, path: str, interface: str) -> tuple[dict[str, Any], int]:
        """Properties, and the arrival position of the reply that carried them."""
        message = self._message(path, names.PROPERTIES_IFACE, "GetAll", "s", [interface])
        (props,), arrival = await self._send(message, stamp=True)
        return {key: plain(value) for key, value in props.items()}, arrival

    async def add_match(self, rule: str) -> None:
        await self.call(names.DBUS_PATH, names.DBUS_IFACE, "AddMatch", "s", [rule], names.DBUS_NAME)

    # -- manager -----------------------------------------------------------------

    async def status(self) -> Status:
        props = await self.get_all(names.ROOT_PATH, names.MANAGER_IFACE)
        return Status(
            version=props["Version"],
            mode=props["Mode"],
            backends={
                name: (bool(ok), str(detail)) for name, (ok, detail) in props["Backends"].items()
            },
            audit_seq=props["AuditSeq"],
            audit_enabled=bool(props.get("AuditEnabled", True)),
            libvirt_uri=str(props.get("LibvirtURI", "")),
            lxc_path=str(props.get("LXCPath", "")),
        )

    async def count_jobs(self) -> dict[str, int]:
        """Remembered jobs by state (one small call, not the object tree)."""
        (counts,) = await self.call(names.ROOT_PATH, names.MANAGER_IFACE, "CountJobs")
        return {str(state): int(n) for state, n in counts.items()}

    async def jobs(self) -> list[JobRecord]:
        (objects,) = await self.call(
            names.ROOT_PATH, names.OBJECT_MANAGER_IFACE, "GetManagedObjects"
        )
        out = []
        for ifaces in objects.values():
            if names.JOB_IFACE in ifaces:
                out.append(as_job_record({k: plain(v) for k, v in ifaces[names.JOB_IFACE].items()}))
        return sorted(out, key=lambda record: record.id)

    async def job(self, path: str) -> JobRecord:
        return as_job_record(await self.get_all(path, names.JOB_IFACE))

    async def job_log(self, path: str, start: int = 1, limit: int = 0) -> list[LogLine]:
        (lines,) = await self.call(path, names.JOB_IFACE, "GetLog", "uu", [start, limit])
        return [as_log_line(int(n), int(ts), str(text)) for n, ts, text in lines]

    async def cancel(self, path: str) -> None:
        await self.call(path, names.JOB_IFACE, "Cancel")

    async def validate(self, *, quick: bool = False, fix: bool = False) -> str:
        options = {"quick": Variant("b", quick), "fix": Variant("b", fix)}
        (path,) = await self.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "Validate", "a{sv}", [options]
        )
        return str(path)

    # -- bridges -------------------------------------------------------------------

    async def bridges(self) -> list[BridgeInfo]:
        out = [as_bridge_info(props) for props in (await self.managed(names.BRIDGE_IFACE)).values()]
        return sorted(out, key=lambda bridge: bridge.name)

    async def bridge(self, name: str) -> BridgeInfo:
        return as_bridge_info(await self.get_all(names.bridge_path(name), names.BRIDGE_IFACE))

    async def create_bridge(self, name: str, options: dict[str, Any]) -> str:
        (path,) = await self.call(
            names.ROOT_PATH,
            names.MANAGER_IFACE,
            "CreateBridge",
            "sa{sv}",
            [name, as_variants(options)],
        )
        return str(path)

    async def delete_bridge(self, name: str) -> None:
        await self.call(names.bridge_path(name), names.BRIDGE_IFACE, "Delete")

    async def add_port(self, bridge: str, name: str, options: dict[str, Any]) -> None:
        await self.call(
            names.bridge_path(bridge),
            names.BRIDGE_IFACE,
            "AddPort",
            "sa{sv}",
            [name, as_variants(options)],
        )

    async def remove_port(self, bridge: str, name: str) -> None:
        await self.call(names.bridge_path(bridge), names.BRIDGE_IFACE, "RemovePort", "s", [name])

    async def set_addresses(
        self, bridge: str, addresses: list[str], options: dict[str, Any]
    ) -> None:
        await self.call(
            names.bridge_path(bridge),
            names.BRIDGE_IFACE,
            "SetAddresses",
            "asa{sv}",
            [addresses, as_variants(options)],
        )

    async def apply_bridges(self, document: str) -> str:
        (path,) = await self.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "ApplyBridges", "s", [document]
        )
        return str(path)

    # -- virtual machines ---------------------------------------------------------

    async def create_vm(self, profile: str, *, start: bool = False) -> str:
        (path,) = await self.call(
            names.ROOT_PATH,
            names.MANAGER_IFACE,
            "CreateVM",
            "sa{sv}",
            [profile, as_variants({"start": start})],
        )
        return str(path)

    async def check_vm_profile(self, profile: str) -> tuple[str, list[str]]:
        xml, warnings = await self.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "CheckVMProfile", "s", [profile]
        )
        return str(xml), [str(w) for w in warnings]

    async def require_backend(self, backend: str, what: str) -> None:
        """Refuse to show an empty list for a backend that is down (as virsh does).

        NotSupported when the daemon's mode does not run it, BackendUnavailable
        with the daemon's reason when it is down.
        """
        props = await self.get_all(names.ROOT_PATH, names.MANAGER_IFACE)
        up, detail = props["Backends"].get(backend, (True, ""))
        if up:
            return
        if detail == f"off in {props['Mode']} mode":
            raise errors.NotSupported(f"{what} are off in {props['Mode']} mode")
        raise errors.BackendUnavailable(f"{what} cannot be listed: {backend}: {detail}")

    async def managed(self, interface: str) -> dict[str, dict[str, Any]]:
        """Object path -> properties of every object with ``interface`` (Manager1.GetObjects:
        that kind alone, not the whole tree)."""
        (objects,) = await self.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "GetObjects", "s", [interface]
        )
        return {
            str(path): {key: plain(value) for key, value in props.items()}
            for path, props in objects.items()
        }

    async def vms(self) -> dict[str, dict[str, Any]]:
        """Object path -> VM1 properties of every VM."""
        return await self.managed(names.VM_IFACE)

    async def containers(self) -> list[ContainerInfo]:
        infos = [as_container_info(p) for p in (await self.managed(names.CONTAINER_IFACE)).values()]
        return sorted(infos, key=lambda info: (info.id, info.name))

    async def container(self, name: str) -> ContainerInfo:
        try:
            props = await self.get_all(names.container_path(name), names.CONTAINER_IFACE)
        except errors.NotFound:
            raise errors.NotFound(
                f"no container named {name!r} (opctl ct list shows them)"
            ) from None
        return as_container_info(props)

    async def create_container(self, name: str, options: dict[str, Any]) -> str:
        (path,) = await self.call(
            names.ROOT_PATH,
            names.MANAGER_IFACE,
            "CreateContainer",
            "sa{sv}",
            [name, as_variants(options)],
        )
        return str(path)

    async def container_call(
        self,
        name: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[Any]:
        return await self.call(
            names.container_path(name),
            names.CONTAINER_IFACE,
            member,
            signature,
            body,
            timeout=timeout,
        )

    async def vm(self, ref: str) -> tuple[str, VmInfo]:
        """A VM by name or UUID: its object path and properties."""
        for path, props in (await self.vms()).items():
            if ref in (props["Name"], props["UUID"]):
                return path, as_vm_info(props)
        raise errors.NotFound(f"no VM named {ref!r} (opctl vm list shows them)")

    async def vm_call(
        self, path: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        return await self.call(path, names.VM_IFACE, member, signature, body)

    async def vm_job(
        self, path: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> str:
        """Call a VM1 method that returns a job; the job's path."""
        (job,) = await self.vm_call(path, member, signature, body)
        return str(job)

    # -- declarative state ---------------------------------------------------------

    async def state_apply(self, document: str, **options: Any) -> str:
        (path,) = await self.call(
            names.STATE_PATH,
            names.STATE_IFACE,
            "Apply",
            "sa{sv}",
            [document, as_variants(options)],
        )
        return str(path)

    async def state_diff(self, document: str, **options: Any) -> list[dict[str, Any]]:
        (plan,) = await self.call(
            names.STATE_PATH, names.STATE_IFACE, "Diff", "sa{sv}", [document, as_variants(options)]
        )
        result: list[dict[str, Any]] = json.loads(plan)
        return result

    async def state_query(self, providers: list[str] | None = None) -> dict[str, Any]:
        (document,) = await self.call(
            names.STATE_PATH, names.STATE_IFACE, "Query", "as", [providers or []]
        )
        result: dict[str, Any] = json.loads(document)
        return result

    async def state_call(self, member: str) -> list[Any]:
        return await self.call(names.STATE_PATH, names.STATE_IFACE, member)

    async def state(self) -> dict[str, Any]:
        return await self.get_all(names.STATE_PATH, names.STATE_IFACE)

    async def verify_audit(self) -> AuditVerdict:
        ok, first_bad, reason = await self.call(names.ROOT_PATH, names.MANAGER_IFACE, "VerifyAudit")
        from opdbus.models.audit import AuditVerdict

        return AuditVerdict(ok=ok, first_bad_seq=first_bad, reason=reason)

    async def init_audit_sealing(self, epoch_seconds: int, *, force: bool) -> str:
        (key,) = await self.call(
            names.ROOT_PATH,
            names.MANAGER_IFACE,
            "InitAuditSealing",
            "a{sv}",
            [as_variants({"epoch_seconds": epoch_seconds, "force": force})],
        )
        return str(key)

    async def audit(self, start: int, limit: int) -> list[AuditEntry]:
        (entries,) = await self.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "GetAudit", "tu", [start, limit]
        )
        from opdbus.models.audit import AuditEntry, us_to_rfc3339

        out = []
        for entry in entries:
            fields = plain(entry)
            fields["time"] = us_to_rfc3339(fields["time"])  # the text the chain hashes
            out.append(AuditEntry.model_validate(fields))
        return out

    # -- signals -----------------------------------------------------------------

    @property
    def owner(self) -> str | None:
        """The unique name that owns org.opdbus now (once signals are in use)."""
        return self._owner

    def _owner_changed(self, msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.sender == names.DBUS_NAME  # only the bus itself can send as the bus
            and msg.member == "NameOwnerChanged"
            and msg.body
            and msg.body[0] == names.BUS_NAME
        ):
            self._owner = msg.body[2] or None
            self._owner_seen_at = self._arrivals
            if self.on_owner_change is not None:
                self.on_owner_change(msg.body[2])

    async def track_owner(self) -> None:
        """Follow who owns org.opdbus (NameOwnerChanged), once per connection."""
        if self._tracking is None:
            self._tracking = asyncio.ensure_future(self._start_tracking())
        await asyncio.shield(self._tracking)

    async def _start_tracking(self) -> None:
        self.bus.add_message_handler(self._owner_changed)
        await self.add_match(
            f"type='signal',sender='{names.DBUS_NAME}',interface='{names.DBUS_IFACE}',"
            f"member='NameOwnerChanged',arg0='{names.BUS_NAME}'"
        )
        message = self._message(
            names.DBUS_PATH,
            names.DBUS_IFACE,
            "GetNameOwner",
            "s",
            [names.BUS_NAME],
            names.DBUS_NAME,
        )
        try:
            (owner,), arrival = await self._send(message, stamp=True)
        except Unreachable:
            owner, arrival = None, self._arrivals  # nobody owns it (yet)
        if self._owner_seen_at <= arrival:  # a change signalled after the reply is newer
            self._owner = owner

    @asynccontextmanager
    async def signals(self, rule: str) -> AsyncIterator[asyncio.Queue[SignalEvent]]:
        """Queue every signal from op-dbusd matching ``rule`` while the context is open.

        Only signals whose sender is the current owner of org.opdbus count;
        any other connection's are dropped, however they are addressed.
        """
        queue: asyncio.Queue[SignalEvent] = asyncio.Queue()

        def handler(msg: Message) -> None:
            if (
                msg.message_type is MessageType.SIGNAL
                and msg.sender is not None
                and msg.sender == self._owner
            ):
                queue.put_nowait(
                    SignalEvent(
                        msg.path or "",
                        msg.interface or "",
                        msg.member or "",
                        plain(list(msg.body)),
                        self._arrivals,
                    )
                )

        await self.track_owner()
        self.bus.add_message_handler(handler)
        try:
            await self.add_match(
                f"type='signal',sender='{names.BUS_NAME}',{rule}"
                if rule
                else f"type='signal',sender='{names.BUS_NAME}'"
            )
            yield queue
        finally:
            self.bus.remove_message_handler(handler)

    async def run_job(
        self,
        start: Callable[[], Awaitable[str]],
        *,
        on_update: Callable[[JobRecord], None] | None = None,
        on_log: Callable[[LogLine], None] | None = None,
        on_started: Callable[[str], None] | None = None,
    ) -> JobRecord:
        """Start a job and follow it to the end (subscribing first, so nothing is missed)."""
        async with self.signals(f"path_namespace='{names.JOB_PATH_PREFIX}'") as queue:
            path = await start()
            if on_started is not None:
                on_started(path)
            return await follow_job(self, path, queue, on_update, on_log)

    async def wait_job(
        self,
        path: str,
        *,
        on_update: Callable[[JobRecord], None] | None = None,
        on_log: Callable[[LogLine], None] | None = None,
    ) -> JobRecord:
        async with self.signals(f"path='{path}'") as queue:
            return await follow_job(self, path, queue, on_update, on_log)
