"""org.opdbus.Job1 objects, exported and updated as the job manager reports."""

# No `from __future__ import annotations` here: dbus-fast reads these
# annotations as D-Bus signatures, and a deferred "None" is not one.

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

from dbus_fast import PropertyAccess, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusDouble,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import dbus_property, dbus_signal

from opdbus.bus.base import BusContext, OpdbusInterface, bus_method, current_caller
from opdbus.bus.transport import property_values
from opdbus.models.job import JobState, LogLine
from opdbus.names import JOB_IFACE, Action
from opdbus.services.jobs import Job, JobManager

if TYPE_CHECKING:
    from opdbus.bus.manager import Manager1

LogEntriesT = Annotated[list[tuple[int, int, str]], DBusSignature("a(uts)")]
ObjectPathsT = Annotated[list[str], DBusSignature("ao")]

# JobRecord field -> Job1 property. log_lines is left out on purpose: the Log
# signal already carries every line number, one more signal per line is noise.
FIELD_TO_PROPERTY = {
    "state": "State",
    "progress": "Progress",
    "progress_valid": "ProgressValid",
    "started_at": "StartedAt",
    "finished_at": "FinishedAt",
    "result": "Result",
    "error_name": "ErrorName",
    "output": "Output",
}
# Progress-only changes are coalesced for this long; others go out at once.
PROGRESS_COALESCE_SECONDS = 0.05


class Job1(OpdbusInterface):
    INTERFACE = JOB_IFACE

    def __init__(self, ctx: BusContext, jobs: JobManager, job: Job) -> None:
        super().__init__(ctx)
        self._jobs = jobs
        self._job = job
        self._lines_read = -1  # LogLines when the values were kept

    @property
    def job(self) -> Job:
        return self._job

    def property_values(self) -> dict[str, Variant]:
        """A finished job never changes again: its values (Output's JSON text among
        them) are read once, so GetManagedObjects over 1000 remembered jobs
        re-reads none of them. A running job's are read afresh (its progress moves)."""
        record = self._job.record
        # LogLines has no PropertiesChanged of its own (see FIELD_TO_PROPERTY): a
        # line written after the end must still show.
        if self._values is not None and self._lines_read == record.log_lines:
            return self._values
        values = property_values(self)
        if record.state.finished:
            self._values, self._lines_read = values, record.log_lines
        return values

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusUInt32:
        return self._job.id

    @dbus_property(access=PropertyAccess.READ)
    def Operation(self) -> DBusStr:
        return self._job.record.operation

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self._job.record.state.value

    @dbus_property(access=PropertyAccess.READ)
    def Progress(self) -> DBusDouble:
        return self._job.record.progress

    @dbus_property(access=PropertyAccess.READ)
    def ProgressValid(self) -> DBusBool:
        return self._job.record.progress_valid

    @dbus_property(access=PropertyAccess.READ)
    def Targets(self) -> ObjectPathsT:
        return list(self._job.record.targets)

    @dbus_property(access=PropertyAccess.READ)
    def StartedByUID(self) -> DBusUInt32:
        return self._job.record.started_by_uid

    @dbus_property(access=PropertyAccess.READ)
    def Cancelable(self) -> DBusBool:
        return self._job.record.cancelable and not self._job.record.state.finished

    @dbus_property(access=PropertyAccess.READ)
    def CreatedAt(self) -> DBusUInt64:
        return self._job.record.created_at

    @dbus_property(access=PropertyAccess.READ)
    def StartedAt(self) -> DBusUInt64:
        return self._job.record.started_at

    @dbus_property(access=PropertyAccess.READ)
    def FinishedAt(self) -> DBusUInt64:
        return self._job.record.finished_at

    @dbus_property(access=PropertyAccess.READ)
    def Result(self) -> DBusStr:
        return self._job.record.result

    @dbus_property(access=PropertyAccess.READ)
    def ErrorName(self) -> DBusStr:
        return self._job.record.error_name

    @dbus_property(access=PropertyAccess.READ)
    def Output(self) -> DBusStr:
        return json.dumps(self._job.record.output, separators=(",", ":"))

    @dbus_property(access=PropertyAccess.READ)
    def LogLines(self) -> DBusUInt32:
        return self._job.record.log_lines

    @bus_method(read_only=True, expensive=True)
    async def GetLog(self, start: DBusUInt32, limit: DBusUInt32) -> LogEntriesT:
        lines = await self._jobs.get_log(self._job.id, start, limit)
        return [(line.number, line.timestamp_us, line.text) for line in lines]

    @bus_method(action=Action.JOB_CANCEL)
    async def Cancel(self) -> None:
        await self._jobs.cancel(self._job.id, current_caller().uid)

    @dbus_signal()
    def Completed(
        self, success: bool, message: str
    ) -> Annotated[list[object], DBusSignature("bs")]:
        return [success, message]

    @dbus_signal()
    def Log(self, line: LogLine) -> Annotated[list[object], DBusSignature("uts")]:
        return [line.number, line.timestamp_us, line.text]


class JobExporter:
    """The JobObserver that mirrors jobs onto the bus."""

    def __init__(self, ctx: BusContext, jobs: JobManager, manager: "Manager1") -> None:
        self._ctx = ctx
        self._jobs = jobs
        self._manager = manager
        self._objects: dict[int, Job1] = {}
        self._dirty: dict[int, set[str]] = {}
        self._flush_handle: asyncio.Handle | None = None

    def attach(self) -> None:
        """Export the jobs the manager already has, then follow it."""
        for job in self._jobs.all():
            self._export(job)
        self._jobs.observers.append(self)

    def _export(self, job: Job) -> Job1:
        obj = Job1(self._ctx, self._jobs, job)
        self._objects[job.id] = obj
        self._ctx.bus.export(job.path, obj)
        return obj

    def job_added(self, job: Job) -> None:
        # A job submitted while the server was starting is already exported by
        # attach() (it was in the manager's list); it is still announced.
        if job.id not in self._objects:
            self._export(job)
        self._manager.JobNew(job.path)

    def job_changed(self, job: Job, fields: Sequence[str]) -> None:
        names = {FIELD_TO_PROPERTY[name] for name in fields if name in FIELD_TO_PROPERTY}
        if not names or job.id not in self._objects:
            return
        self._dirty.setdefault(job.id, set()).update(names)
        urgent = bool(names - {"Progress", "ProgressValid"})
        loop = asyncio.get_running_loop()
        if urgent:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = loop.call_soon(self._flush_all)
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(PROGRESS_COALESCE_SECONDS, self._flush_all)

    def _flush_all(self) -> None:
        self._flush_handle = None
        for job_id in list(self._dirty):
            self._flush(job_id)

    def _flush(self, job_id: int) -> None:
        names = self._dirty.pop(job_id, None)
        obj = self._objects.get(job_id)
        if not names or obj is None:
            return
        record = obj.job.record
        values: dict[str, object] = {}
        for name in names:
            values[name] = getattr(obj, name)  # the property's current value
        if "State" in names:
            values["Cancelable"] = record.cancelable and not record.state.finished
        obj.emit_properties_changed(values)

    def job_log(self, job: Job, line: LogLine) -> None:
        obj = self._objects.get(job.id)
        if obj is not None:
            obj.Log(line)

    def job_finished(self, job: Job) -> None:
        obj = self._objects.get(job.id)
        if obj is None:
            return
        self._flush(job.id)  # State before Completed, always
        record = job.record
        message = record.result or record.state.value
        obj.Completed(record.state is JobState.SUCCEEDED, message)
        self._manager.JobRemoved(job.path, record.state.value)

    def job_removed(self, job: Job) -> None:
        self._dirty.pop(job.id, None)
        if self._objects.pop(job.id, None) is not None:
            self._ctx.bus.unexport(job.path)

    async def drain(self) -> None:
        await self._ctx.bus.drain()
