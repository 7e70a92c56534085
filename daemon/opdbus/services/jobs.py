"""Jobs: every operation that can take longer than a moment runs as one.

A job is an owned asyncio task with a public record (``JobRecord``), a
numbered log and a set of target objects it locks: a second job on a locked
target is refused with Busy instead of interleaving. Records persist in the
state dir; a job found queued or running after a restart is marked
``interrupted``. Finished jobs stay readable for ``retention_seconds``.

The bus layer watches jobs through ``JobObserver``; nothing here knows D-Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opdbus.backends.job_store import JobStore
from opdbus.config import JobsConfig
from opdbus.errors import (
    BackendUnavailable,
    Busy,
    Conflict,
    Failed,
    NotFound,
    NotSupported,
    OpdbusError,
    Timeout,
)
from opdbus.models.job import JobRecord, JobState, LogLine
from opdbus.names import job_path
from opdbus.services.audit import PENDING_CALL, AuditLog

log = logging.getLogger(__name__)

MAX_LOG_READ = 10_000
# Lines kept in memory per running job, and once it has finished; older ones
# are read back from the state dir (a rebuild can print 100 000 lines).
MEMORY_LINES = 2_000
FINISHED_LINES = 100


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class JobOutcome:
    """What a successful job body returns: the Result line and structured Output."""

    message: str
    output: dict[str, Any] = field(default_factory=dict)


class JobFailed(OpdbusError):
    """A job body's way to fail with structured output kept (e.g. failed checks)."""

    def __init__(self, error: OpdbusError, output: dict[str, Any]) -> None:
        super().__init__(error.message)
        self.error = error
        self.output = output


class JobObserver(Protocol):
    def job_added(self, job: Job) -> None: ...
    def job_changed(self, job: Job, fields: Sequence[str]) -> None: ...
    def job_log(self, job: Job, line: LogLine) -> None: ...
    def job_finished(self, job: Job) -> None: ...
    def job_removed(self, job: Job) -> None: ...
    async def drain(self) -> None: ...


class Job:
    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.lines: list[LogLine] = []
        self.first_line = 1  # number of lines[0]; older lines live only on disk
        self.task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        if record.state.finished:
            self.finished.set()
        self.cancelled_by: int | None = None

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def path(self) -> str:
        return job_path(self.record.id)


class JobContext:
    """Handed to a job body: its log, its progress, and flow control."""

    def __init__(self, manager: JobManager, job: Job) -> None:
        self._manager = manager
        self.job = job

    def log(self, text: str) -> None:
        self._manager._add_line(self.job, text)

    def progress(self, value: float) -> None:
        value = min(max(value, 0.0), 1.0)
        record = self.job.record
        if record.progress != value or not record.progress_valid:
            self._manager._update(self.job, progress=value, progress_valid=True)

    def step(self, done: int, total: int) -> None:
        self.progress(done / total if total else 1.0)

    async def drain(self) -> None:
        """Wait while observers (the bus connection) are backed up."""
        await self._manager._drain()


JobBody = Callable[[JobContext], Awaitable[JobOutcome]]


class JobManager:
    def __init__(self, store: JobStore, config: JobsConfig, audit: AuditLog) -> None:
        self._store = store
        self._config = config
        self._audit = audit
        self._jobs: dict[int, Job] = {}
        self._busy: dict[str, Job] = {}  # target path -> the active job holding it
        self._next_id = 1
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._stopping = False
        self._janitor: asyncio.Task[None] | None = None
        self._wake_janitor = asyncio.Event()
        self.observers: list[JobObserver] = []

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Load persisted records; what was queued or running is now interrupted."""
        records, self._next_id = await self._store.load()
        for record in records:
            job = Job(record)
            if not record.state.finished:
                was = record.state.value
                record.state = JobState.INTERRUPTED
                record.result = f"interrupted: the daemon stopped while the job was {was}"
                record.finished_at = now_us()
                # Lines written after the record's last save are on disk only.
                record.log_lines = await self._store.count_log_lines(job.id)
                job.finished.set()
                self._store.save_record(record)
                await self._audit_outcome(job, reserved=False)
            job.first_line = record.log_lines + 1  # nothing in memory: GetLog reads the file
            self._jobs[job.id] = job
        try:
            await self._store.flush()
        except BackendUnavailable as e:  # a full disk must not keep the daemon from starting
            log.error("%s", e)
        self._janitor = asyncio.create_task(self._expire_loop(), name="job-janitor")

    async def shutdown(self) -> None:
        """Cancel every active job (recorded as interrupted) and wait for all of them."""
        self._stopping = True
        active = [job for job in self._jobs.values() if job.task and not job.task.done()]
        for job in active:
            assert job.task is not None
            job.task.cancel()
        for job in active:
            assert job.task is not None
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        await self._store.close()

    # -- queries -----------------------------------------------------------

    def get(self, job_id: int) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(
                f"no job {job_id} (finished jobs are kept for a while, then removed)"
            ) from None

    def all(self) -> list[Job]:
        return [self._jobs[key] for key in sorted(self._jobs)]

    def counts(self) -> dict[str, int]:
        """Remembered jobs by state (states with none left out)."""
        out: dict[str, int] = {}
        for job in self._jobs.values():
            state = job.record.state.value
            out[state] = out.get(state, 0) + 1
        return out

    def active_on(self, target: str) -> Job | None:
        return self._busy.get(target)

    def check_idle(self, target: str, what: str) -> None:
        """Busy when a job holds ``target`` (an imperative call must not interleave with it)."""
        holder = self._busy.get(target)
        if holder is not None:
            raise Busy(
                f"{what} is busy with job {holder.id} ({holder.record.operation}); "
                "wait for it or cancel it"
            )

    async def get_log(self, job_id: int, start: int, limit: int) -> list[LogLine]:
        job = self.get(job_id)
        start = max(start, 1)
        limit = min(limit or MAX_LOG_READ, MAX_LOG_READ)
        if start >= job.first_line:
            index = start - job.first_line
            return job.lines[index : index + limit]
        older = await self._store.read_log(job_id, start, limit)
        if len(older) < limit and job.lines:
            seen = older[-1].number if older else start - 1
            index = max(seen + 1 - job.first_line, 0)
            older.extend(job.lines[index : index + limit - len(older)])
        return older

    # -- submitting and cancelling ------------------------------------------

    async def submit(
        self,
        operation: str,
        body: JobBody,
        *,
        targets: Sequence[str],
        uid: int,
        cancelable: bool = True,
    ) -> Job:
        """Start a job, or raise Busy when a target is held by an active job.

        Returns once the queued record is on disk, so a job a client has
        heard of is never lost by a crash (it comes back as interrupted).
        """
        if self._stopping:
            raise Failed("the daemon is shutting down; no new jobs are accepted")
        # Room for the outcome's entry first: a job that could not be audited
        # at its end is one that must not start. (Before the Busy check: no
        # await may come between that check and taking the targets.)
        await self._audit.reserve()
        for target in targets:
            holder = self._busy.get(target)
            if holder is not None:
                self._audit.release()
                raise Busy(
                    f"{target} is busy with job {holder.id} ({holder.record.operation}, "
                    f"{holder.record.state.value}); wait for it or cancel it"
                )
        record = JobRecord(
            id=self._next_id,
            operation=operation,
            targets=list(targets),
            started_by_uid=uid,
            cancelable=cancelable,
            created_at=now_us(),
        )
        self._next_id += 1
        job = Job(record)
        self._jobs[job.id] = job
        for target in targets:
            self._busy[target] = job
        self._store.save_next_id(self._next_id)
        try:
            # On disk before anyone hears of it (a crash reports it interrupted).
            await self._store.create(record)
            call = PENDING_CALL.get()
            if call is not None and not call.recorded:
                # The call that makes a job is on record before the job can end.
                await self._audit.record_call(call, "ok", job.path)
        except BaseException:
            self._forget(job)
            self._audit.release()
            raise
        job.task = asyncio.create_task(self._run(job, body), name=f"job-{job.id}-{operation}")
        for observer in self.observers:
            observer.job_added(job)
        return job

    def _forget(self, job: Job) -> None:
        """Undo a submit that could not complete: no trace but the burnt id."""
        self._jobs.pop(job.id, None)
        for target in job.record.targets:
            if self._busy.get(target) is job:
                del self._busy[target]
        self._store.remove(job.id)

    async def cancel(self, job_id: int, uid: int) -> Job:
        """Cancel and wait (bounded) until the job has really stopped."""
        job = self.get(job_id)
        if job.record.state.finished:
            raise Conflict(f"job {job_id} already {job.record.state.value}")
        if job.task is None:
            raise Busy(f"job {job_id} is still being created; try again in a moment")
        if not job.record.cancelable:
            raise NotSupported(f"job {job_id} ({job.record.operation}) cannot be cancelled")
        if job.cancelled_by is None:
            job.cancelled_by = uid
            job.task.cancel()
        try:
            async with asyncio.timeout(self._config.cancel_wait_seconds):
                await job.finished.wait()
        except TimeoutError:
            raise Timeout(
                f"job {job_id} did not stop within {self._config.cancel_wait_seconds:g} s; "
                "it stops at its next safe point"
            ) from None
        return job

    # -- running -----------------------------------------------------------

    async def _run(self, job: Job, body: JobBody) -> None:
        fields: dict[str, Any]
        try:
            # One turn of the loop first: the answer to the call that made the
            # job (its reply is the next thing queued) goes out before the job's
            # first step, which can be a while of work before its first await.
            await asyncio.sleep(0)
            async with self._slots:
                self._update(job, state=JobState.RUNNING, started_at=now_us())
                self._store.save_record(job.record)
                outcome = await body(JobContext(self, job))
            fields = {
                "state": JobState.SUCCEEDED,
                "result": outcome.message,
                "output": outcome.output,
            }
            if job.record.progress_valid:
                fields["progress"] = 1.0
        except asyncio.CancelledError:
            # We own this task: finish it cleanly and record why it stopped.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if self._stopping and job.cancelled_by is None:
                result = "interrupted: the daemon stopped"
                fields = {"state": JobState.INTERRUPTED, "result": result}
            else:
                result = f"cancelled by uid {job.cancelled_by}"
                fields = {"state": JobState.CANCELLED, "result": result}
        except Exception as e:
            fields = self._failure(job, e)
        fields["finished_at"] = now_us()
        state, result = fields["state"], fields["result"]
        if state is not JobState.SUCCEEDED:
            self._add_line(
                job, result if result.startswith(state.value) else f"{state.value}: {result}"
            )
        self._update(job, **fields)
        for target in job.record.targets:
            if self._busy.get(target) is job:
                del self._busy[target]
        self._store.save_record(job.record)
        job.finished.set()
        for observer in self.observers:
            observer.job_finished(job)
        # A finished job is read rarely: its log lives on disk, not in memory.
        if len(job.lines) > FINISHED_LINES:
            drop = len(job.lines) - FINISHED_LINES
            del job.lines[:drop]
            job.first_line += drop
        self._wake_janitor.set()
        try:
            await asyncio.shield(self._audit_outcome(job, reserved=True))
        except OpdbusError as e:
            log.error("job %d outcome not durable yet: %s", job.id, e)

    @staticmethod
    def _failure(job: Job, error: Exception) -> dict[str, Any]:
        if isinstance(error, JobFailed):
            return {
                "state": JobState.FAILED,
                "result": error.message,
                "error_name": error.error.dbus_name,
                "output": error.output,
            }
        if isinstance(error, OpdbusError):
            return {
                "state": JobState.FAILED,
                "result": error.message,
                "error_name": error.dbus_name,
            }
        log.error("job %d (%s) crashed", job.id, job.record.operation, exc_info=error)
        return {
            "state": JobState.FAILED,
            "result": f"internal error ({type(error).__name__}); see the daemon log",
            "error_name": Failed.dbus_name,
        }

    async def _audit_outcome(self, job: Job, *, reserved: bool) -> None:
        record = job.record
        result = record.state.value
        if record.state is not JobState.SUCCEEDED and record.result:
            # Results of cancelled/interrupted jobs already start with their state.
            text = record.result
            result = text if text.startswith(result) else f"{result}: {text}"
        await self._audit.append(
            uid=record.started_by_uid,
            kind="job",
            method=record.operation,
            target=record.targets[0] if record.targets else "",
            job=job.path,
            result=result,
            reserved=reserved,
        )

    def _update(self, job: Job, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(job.record, name, value)
        for observer in self.observers:
            observer.job_changed(job, list(fields))

    def _add_line(self, job: Job, text: str) -> None:
        # One line per entry: embedded newlines would break the numbering.
        for part in text.splitlines() or [""]:
            line = LogLine(job.record.log_lines + 1, now_us(), part)
            job.record.log_lines = line.number
            job.lines.append(line)
            if len(job.lines) > MEMORY_LINES:
                drop = len(job.lines) - MEMORY_LINES // 2
                del job.lines[:drop]
                job.first_line += drop
            self._store.append_log(job.id, line)
            for observer in self.observers:
                observer.job_log(job, line)

    async def _drain(self) -> None:
        for observer in self.observers:
            await observer.drain()

    # -- retention ---------------------------------------------------------

    async def _expire_loop(self) -> None:
        retention_us = int(self._config.retention_seconds * 1_000_000)
        while True:
            self._wake_janitor.clear()
            now = now_us()
            next_due: int | None = None
            for job in list(self._jobs.values()):
                if not job.record.state.finished:
                    continue
                due = job.record.finished_at + retention_us
                if due <= now:
                    self._remove(job)
                elif next_due is None or due < next_due:
                    next_due = due
            timeout = None if next_due is None else (next_due - now) / 1_000_000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake_janitor.wait()

    def _remove(self, job: Job) -> None:
        del self._jobs[job.id]
        self._store.remove(job.id)
        for observer in self.observers:
            observer.job_removed(job)
