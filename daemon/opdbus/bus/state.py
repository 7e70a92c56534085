"""org.opdbus.State1 (and the original op-dbus's org.opdbus.StateManager) at /org/opdbus/state."""

# No `from __future__ import annotations` here: dbus-fast reads these
# annotations as D-Bus signatures, and a deferred "None" is not one.

import json
from typing import Annotated, Any

from dbus_fast import PropertyAccess
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt64,
)
from dbus_fast.service import dbus_property, dbus_signal

from opdbus.bus.base import BusContext, OpdbusInterface, bus_method, current_caller
from opdbus.bus.codec import decode_options
from opdbus.models.state import ApplyStateOptions, DiffStateOptions, StateDocument
from opdbus.names import STATE_IFACE, STATE_MANAGER_IFACE, STATE_PATH, Action
from opdbus.services.state import ApplyOptions, StateService

DriftT = Annotated[list[tuple[str, str, str]], DBusSignature("a(sss)")]
NamesT = Annotated[list[str], DBusSignature("as")]


def _compact(doc: StateDocument) -> dict[str, Any]:
    """A document as Query answers: what is set, without the defaults (it applies the same)."""
    return doc.model_dump(mode="json", exclude_none=True, exclude_defaults=True)


def _options(opts: ApplyStateOptions) -> ApplyOptions:
    return ApplyOptions(
        dry_run=opts.dry_run,
        prune=opts.prune,
        confirm_timeout=opts.confirm_timeout,
        providers=tuple(opts.providers),
        if_digest=opts.if_digest,
    )


class State1(OpdbusInterface):
    INTERFACE = STATE_IFACE

    def __init__(self, ctx: BusContext, state: StateService) -> None:
        super().__init__(ctx)
        self._state = state

    # -- properties ----------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Digest(self) -> DBusStr:
        return self._state.digest

    @dbus_property(access=PropertyAccess.READ)
    def InSync(self) -> DBusBool:
        return self._state.in_sync

    @dbus_property(access=PropertyAccess.READ)
    def Drift(self) -> DriftT:
        return list(self._state.drift)

    @dbus_property(access=PropertyAccess.READ)
    def PendingCheckpoint(self) -> DBusStr:
        return self._state.pending_id

    @dbus_property(access=PropertyAccess.READ)
    def CheckpointExpires(self) -> DBusUInt64:
        return self._state.pending_expires

    @dbus_property(access=PropertyAccess.READ)
    def DriftPolicy(self) -> DBusStr:
        return self._state.config.drift_policy

    # -- methods ------------------------------------------------------------------------

    @bus_method(action=Action.STATE_APPLY)
    async def Apply(self, document: DBusStr, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(ApplyStateOptions, options, "Apply")
        doc = await self._state.parse(document)
        job = await self._state.apply(doc, _options(opts), current_caller().uid)
        return job.path

    @bus_method(read_only=True, expensive=True)
    async def Diff(self, document: DBusStr, options: DBusDict) -> DBusStr:
        opts = decode_options(DiffStateOptions, options, "Diff")
        return await self._state.diff(document, prune=opts.prune, providers=opts.providers)

    @bus_method(read_only=True, expensive=True)
    async def Query(self, providers: NamesT) -> DBusStr:
        doc = self._state.query(list(providers))
        return json.dumps(_compact(doc), sort_keys=True)

    @bus_method(action=Action.STATE_CONFIRM)
    async def Confirm(self) -> None:
        await self._state.confirm(current_caller().uid)

    @bus_method(action=Action.STATE_CONFIRM)
    async def Rollback(self) -> None:
        await self._state.rollback(current_caller().uid)

    @bus_method(action=Action.STATE_APPLY)
    async def Reload(self) -> DBusObjectPath:
        job = await self._state.reload(current_caller().uid)
        return job.path if job is not None else "/"

    # -- signals -------------------------------------------------------------------------

    @dbus_signal()
    def Drifted(
        self, provider: str, rid: str, what: str
    ) -> Annotated[list[object], DBusSignature("sss")]:
        return [provider, rid, what]

    @dbus_signal()
    def Applied(self, digest: str, job: str) -> Annotated[list[object], DBusSignature("so")]:
        return [digest, job]


class StateManager(OpdbusInterface):
    """The original op-dbus's methods, for its existing users."""

    INTERFACE = STATE_MANAGER_IFACE

    def __init__(self, ctx: BusContext, state: StateService) -> None:
        super().__init__(ctx)
        self._state = state

    @bus_method(action=Action.STATE_APPLY)
    async def ApplyState(self, document: DBusStr) -> DBusStr:
        doc = await self._state.parse(document)
        job = await self._state.apply(doc, ApplyOptions(), current_caller().uid)
        await job.finished.wait()
        record = job.record
        return f"{record.state.value}: {record.result}"

    @bus_method(read_only=True, expensive=True)
    async def QueryState(self, provider: DBusStr) -> DBusStr:
        doc = self._state.query([provider])
        return json.dumps(_compact(doc)[provider], sort_keys=True)


class StateExporter:
    """Both interfaces at /org/opdbus/state, their properties and signals kept current."""

    def __init__(self, ctx: BusContext, state: StateService) -> None:
        self._ctx = ctx
        self._state = state
        self.state1 = State1(ctx, state)
        self.manager = StateManager(ctx, state)

    def attach(self) -> None:
        self._ctx.bus.export(STATE_PATH, self.state1)
        self._ctx.bus.export(STATE_PATH, self.manager)
        self._state.observers.append(self)

    def state_changed(self) -> None:
        s = self._state
        self.state1.emit_properties_changed(
            {
                "Digest": s.digest,
                "InSync": s.in_sync,
                "Drift": list(s.drift),
                "PendingCheckpoint": s.pending_id,
                "CheckpointExpires": s.pending_expires,
            }
        )

    def drifted(self, provider: str, rid: str, what: str) -> None:
        self.state1.Drifted(provider, rid, what)

    def applied(self, digest: str, job: str) -> None:
        self.state1.Applied(digest, job)
