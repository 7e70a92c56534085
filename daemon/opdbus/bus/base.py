"""The one decorator every D-Bus method goes through, and the interface base class.

``@bus_method`` maps errors (OpdbusError -> its D-Bus name; anything else ->
Failed with a reference, traceback only in the daemon log), checks the caller
of every mutating method, and audits every accepted mutating call. Methods are
mutating unless marked ``read_only=True``; a mutating method must name its
polkit action id.

``OpdbusInterface.introspect`` adds the committed documentation
(``opdbus/introspection/*.xml``) to what dbus-fast generates from the code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dbus_fast import DBusError, Variant
from dbus_fast import introspection as intr
from dbus_fast.service import ServiceInterface, _Method, _Property, dbus_method

from opdbus.bus.codec import plain
from opdbus.bus.peers import CallerResolver
from opdbus.bus.transport import CURRENT_CALL, CallInfo, FlowControlledBus, property_values
from opdbus.errors import Busy, Failed, OpdbusError
from opdbus.models.audit import digest_args
from opdbus.names import ERROR_PREFIX
from opdbus.services.audit import PENDING_CALL, AuditLog, PendingCall
from opdbus.services.authz import Authorizer, Caller
from opdbus.services.jobs import JobBody, JobManager

log = logging.getLogger(__name__)

INTROSPECTION_DIR = Path(__file__).resolve().parent.parent / "introspection"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")

CURRENT_CALLER: ContextVar[Caller | None] = ContextVar("opdbus_current_caller", default=None)


@dataclass
class BusContext:
    """What every adapter needs from the daemon besides its own service."""

    bus: FlowControlledBus
    callers: CallerResolver
    authorizer: Authorizer
    audit: AuditLog
    accepting: bool = True  # False once shutdown begins
    docs: dict[str, ET.Element] = field(default_factory=dict)
    expensive: dict[int, int] = field(default_factory=dict)  # uid -> expensive calls in flight
    # Called after a call with a big argument (the daemon gives memory back then).
    on_large_call: Callable[[], None] = lambda: None


# An argument this big makes a call "large" (see BusContext.on_large_call).
LARGE_ARGUMENT = 1024 * 1024


# Expensive reads (a whole-log verify, a profile check, a page of the audit
# log) one caller may have in flight at once; more are refused with Busy at
# once, so one user's flood costs the daemon a few computations, not a queue.
EXPENSIVE_PER_CALLER = 4


@dataclass(frozen=True)
class MethodPolicy:
    read_only: bool
    action: str | None


def current_caller() -> Caller:
    """The authorized caller of the mutating method being served."""
    caller = CURRENT_CALLER.get()
    if caller is None:
        raise RuntimeError("current_caller() outside an authorized bus method")
    return caller


async def caller_is_admin(ctx: BusContext) -> bool:
    """Whether the caller of this (read-only) call is an administrator."""
    call = CURRENT_CALL.get()
    if call is None:
        return False
    try:
        return await ctx.authorizer.is_admin(await ctx.callers.resolve(call.sender))
    except OpdbusError:
        return False


async def submit_job(jobs: JobManager, operation: str, body: JobBody, targets: list[str]) -> str:
    """Start a job on behalf of the caller of this method call; its object path."""
    job = await jobs.submit(operation, body, targets=targets, uid=current_caller().uid)
    return job.path


def bus_method(
    *,
    read_only: bool = False,
    action: str | None = None,
    name: str | None = None,
    expensive: bool = False,
) -> Callable[[F], F]:
    if not read_only and action is None:
        raise TypeError("a mutating bus method needs its polkit action id")
    policy = MethodPolicy(read_only, action)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(self: OpdbusInterface, *args: Any) -> Any:
            ctx = self.ctx
            call = CURRENT_CALL.get()
            what = f"{self.name}.{name or fn.__name__}"
            pending: PendingCall | None = None
            # Flow control: while replies and signals are backed up on our
            # socket, new work waits instead of queueing more output.
            await ctx.bus.drain()
            if any(isinstance(arg, str) and len(arg) > LARGE_ARGUMENT for arg in args):
                ctx.on_large_call()
            try:
                if not read_only:
                    assert action is not None
                    pending = await _admit(ctx, call, action, what, args)
                if expensive:
                    result = await _limited(ctx, call, fn(self, *args))
                else:
                    result = await fn(self, *args)
            except asyncio.CancelledError:
                if pending is not None and not pending.recorded:
                    ctx.audit.release()
                raise
            except OpdbusError as e:
                await _audit(ctx, pending, f"error: {e.dbus_name}")
                raise DBusError(e.dbus_name, e.message) from None
            except DBusError as e:
                if e.type.startswith(ERROR_PREFIX):
                    raise
                # Someone else's error name (a backend's bus call) would break
                # the promise that only org.opdbus.Error.* crosses our bus.
                ref = uuid.uuid4().hex[:8]
                log.error("%s failed (ref %s): %s: %s", what, ref, e.type, e.text)
                await _audit(ctx, pending, f"error: {Failed.dbus_name}")
                raise DBusError(Failed.dbus_name, f"{e.text} (ref {ref})") from None
            except Exception:
                ref = uuid.uuid4().hex[:8]
                log.exception("%s failed (ref %s)", what, ref)
                await _audit(ctx, pending, f"error: {Failed.dbus_name}")
                raise DBusError(
                    Failed.dbus_name, f"internal error (ref {ref}); the daemon log has the details"
                ) from None
            await _audit(ctx, pending, "ok")
            return result

        wrapper.__opdbus_policy__ = policy  # type: ignore[attr-defined]
        return dbus_method(name)(wrapper)  # type: ignore[return-value]

    return decorate


async def _admit(
    ctx: BusContext, call: CallInfo | None, action: str, what: str, args: tuple[Any, ...]
) -> PendingCall:
    """Let a mutating call in: a caller allowed to make it, and room for its audit entry."""
    if not ctx.accepting:
        raise Failed("the daemon is shutting down; try again when it is back")
    if call is None:
        raise Failed("no caller information for this call")
    caller = await ctx.callers.resolve(call.sender)
    await ctx.authorizer.authorize(
        caller, action, what=what, details={"object": call.path, "verb": call.member}
    )
    CURRENT_CALLER.set(caller)
    # Fail closed: room for this call's entry, or no call at all.
    await ctx.audit.reserve()
    pending = PendingCall(caller.uid, what, call.path, digest_args(plain(list(args))))
    PENDING_CALL.set(pending)
    return pending


async def _limited(ctx: BusContext, call: CallInfo | None, work: Awaitable[T]) -> T:
    """Run an expensive call unless its caller already has EXPENSIVE_PER_CALLER running."""
    if call is None:
        return await work
    try:
        uid = (await ctx.callers.resolve(call.sender)).uid
    except BaseException:
        if asyncio.iscoroutine(work):
            work.close()
        raise
    running = ctx.expensive.get(uid, 0)
    if running >= EXPENSIVE_PER_CALLER:
        if asyncio.iscoroutine(work):
            work.close()
        raise Busy(
            f"uid {uid} already has {running} expensive requests in progress; "
            "wait for their answers"
        )
    ctx.expensive[uid] = running + 1
    try:
        return await work
    finally:
        left = ctx.expensive[uid] - 1
        if left:
            ctx.expensive[uid] = left
        else:
            del ctx.expensive[uid]


async def _audit(ctx: BusContext, pending: PendingCall | None, result: str) -> None:
    """Record an accepted call (in the room it reserved) unless a job submit already did."""
    if pending is None or pending.recorded:
        return
    try:
        await ctx.audit.record_call(pending, result)
    except OpdbusError as e:
        # The call already happened and its entry stays queued for the disk;
        # failing the call now would lie about what it did.
        log.error("audit entry of %s by uid %d not durable yet: %s", pending.method, pending.uid, e)


def dbus_methods(interface: type[ServiceInterface]) -> dict[str, _Method]:
    """D-Bus member name -> dbus-fast's record of every method an interface class declares."""
    out: dict[str, _Method] = {}
    for attr in vars(interface).values():
        method = getattr(attr, "__dict__", {}).get("__DBUS_METHOD")
        if isinstance(method, _Method):
            out[method.name] = method
    return out


def dbus_properties(interface: type[ServiceInterface]) -> dict[str, bool]:
    """D-Bus property name -> whether it is writable, for an interface class."""
    return {
        attr.name: attr.access.writable()
        for attr in vars(interface).values()
        if isinstance(attr, _Property)
    }


def method_policies(interface: type[ServiceInterface]) -> dict[str, MethodPolicy | None]:
    """D-Bus member name -> policy for every method of an interface class (None: undecorated)."""
    return {
        name: getattr(method.fn, "__opdbus_policy__", None)
        for name, method in dbus_methods(interface).items()
    }


def load_docs() -> dict[str, ET.Element]:
    """The committed introspection XML, one <interface> element per name (blocks: use a thread)."""
    docs: dict[str, ET.Element] = {}
    for path in sorted(INTROSPECTION_DIR.glob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            # Documentation only: serve the interface without it rather than not at all.
            log.error("introspection docs %s unreadable: %s", path, e)
            continue
        for element in root.iter("interface"):
            docs[element.attrib["name"]] = element
    return docs


class OpdbusInterface(ServiceInterface):
    INTERFACE: ClassVar[str]  # the D-Bus interface name each subclass implements
    # True where every property change goes out through emit_properties_changed:
    # then the values are kept between reads (GetManagedObjects over 1000 VMs
    # re-reads nothing that has not changed).
    CACHE_PROPERTIES: ClassVar[bool] = False

    def __init__(self, ctx: BusContext) -> None:
        super().__init__(self.INTERFACE)
        self.ctx = ctx
        self._values: dict[str, Variant] | None = None

    def property_values(self) -> dict[str, Variant]:
        """Every readable property (FlowControlledBus's GetManagedObjects asks this)."""
        if not self.CACHE_PROPERTIES:
            return property_values(self)
        if self._values is None:
            self._values = property_values(self)
        return self._values

    def emit_properties_changed(
        self, changed_properties: dict[str, Any], invalidated_properties: list[str] | None = None
    ) -> None:
        self._values = None
        super().emit_properties_changed(changed_properties, invalidated_properties or [])

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        undecorated = [member for member, policy in method_policies(cls).items() if policy is None]
        if undecorated:
            raise TypeError(f"{cls.__name__}: methods not declared with @bus_method: {undecorated}")

    def introspect(self) -> intr.Interface:
        generated = super().introspect()
        committed = self.ctx.docs.get(self.name)
        if committed is not None:
            _merge_docs(generated, committed)
        return generated


def _annotations(element: ET.Element) -> dict[str, str]:
    return {
        child.attrib["name"]: child.attrib["value"]
        for child in element
        if child.tag == "annotation"
    }


def _merge_docs(generated: intr.Interface, committed: ET.Element) -> None:
    """Copy doc annotations and out-arg names from the committed XML by member name."""
    generated.annotations.update(_annotations(committed))
    by_kind = {
        kind: {el.attrib["name"]: el for el in committed.iter(kind)}
        for kind in ("method", "signal", "property")
    }
    for method in generated.methods:
        element = by_kind["method"].get(method.name)
        if element is None:
            continue
        method.annotations.update(_annotations(element))
        outs = [arg for arg in element.iter("arg") if arg.attrib.get("direction") == "out"]
        for arg, doc in zip(method.out_args, outs, strict=False):
            arg.name = arg.name or doc.attrib.get("name")
    for signal in generated.signals:
        element = by_kind["signal"].get(signal.name)
        if element is None:
            continue
        signal.annotations.update(_annotations(element))
        for arg, doc in zip(signal.args, element.iter("arg"), strict=False):
            arg.name = arg.name or doc.attrib.get("name")
    for prop in generated.properties:
        element = by_kind["property"].get(prop.name)
        if element is not None:
            prop.annotations.update(_annotations(element))
