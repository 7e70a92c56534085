from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from blockbuster import BlockingError

from opdbus.backends.files import atomic_write
from opdbus.backends.job_store import JobStore
from opdbus.config import JobsConfig
from opdbus.errors import BackendFailed, Busy, Conflict, NotFound, NotSupported
from opdbus.models.job import JobRecord, JobState, LogLine
from opdbus.services import jobs as jobs_module
from opdbus.services.audit import AuditLog
from opdbus.services.jobs import Job, JobContext, JobManager, JobOutcome


class Recorder:
    """A JobObserver that remembers what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, object]] = []

    def job_added(self, job: Job) -> None:
        self.events.append(("added", job.id, None))

    def job_changed(self, job: Job, fields: Sequence[str]) -> None:
        self.events.append(("changed", job.id, tuple(fields)))

    def job_log(self, job: Job, line: LogLine) -> None:
        self.events.append(("log", job.id, line.text))

    def job_finished(self, job: Job) -> None:
        self.events.append(("finished", job.id, job.record.state))

    def job_removed(self, job: Job) -> None:
        self.events.append(("removed", job.id, None))

    async def drain(self) -> None:
        return None


def state(job: Job) -> JobState:
    """A job's state now (a function: mypy would keep the narrowing of an earlier assert)."""
    return job.record.state


async def manager(tmp_path: Path, **config: float) -> tuple[JobManager, AuditLog, Recorder]:
    audit = AuditLog(tmp_path / "audit")
    await audit.open()
    jm = JobManager(JobStore(tmp_path / "jobs"), JobsConfig(**config), audit)  # type: ignore[arg-type]
    await jm.start()
    recorder = Recorder()
    jm.observers.append(recorder)
    return jm, audit, recorder


async def close(jm: JobManager, audit: AuditLog) -> None:
    await jm.shutdown()
    await audit.close()


def body(steps: int = 3, *, gate: asyncio.Event | None = None, fail: Exception | None = None):  # type: ignore[no-untyped-def]
    async def run(ctx: JobContext) -> JobOutcome:
        for i in range(steps):
            ctx.log(f"step {i + 1}")
            ctx.step(i + 1, steps)
            if gate is not None:
                await gate.wait()
        if fail is not None:
            raise fail
        return JobOutcome(f"{steps} steps", {"steps": steps})

    return run


async def test_a_job_runs_logs_and_is_audited(tmp_path: Path) -> None:
    jm, audit, recorder = await manager(tmp_path)
    job = await jm.submit("Demo", body(3), targets=["/t"], uid=42)
    await job.finished.wait()
    record = job.record
    assert record.state is JobState.SUCCEEDED and record.result == "3 steps"
    assert record.progress == 1.0 and record.progress_valid and record.output == {"steps": 3}
    assert record.started_at >= record.created_at > 0 and record.finished_at >= record.started_at
    assert [line.text for line in await jm.get_log(job.id, 1, 0)] == ["step 1", "step 2", "step 3"]
    assert [line.number for line in await jm.get_log(job.id, 2, 1)] == [2]
    kinds = [event[0] for event in recorder.events]
    assert kinds.index("log") < kinds.index("finished")
    await asyncio.sleep(0.05)
    entries = await audit.read(1, 10)
    assert [(e.kind, e.method, e.uid, e.job, e.result) for e in entries] == [
        ("job", "Demo", 42, job.path, "succeeded")
    ]
    await close(jm, audit)


async def test_failures_keep_their_error_kind(tmp_path: Path) -> None:
    jm, audit, _ = await manager(tmp_path)
    failed = await jm.submit(
        "Demo", body(1, fail=BackendFailed("libvirtd said no")), targets=[], uid=0
    )
    crashed = await jm.submit("Demo", body(1, fail=ZeroDivisionError()), targets=[], uid=0)
    await failed.finished.wait()
    await crashed.finished.wait()
    assert failed.record.state is JobState.FAILED
    assert failed.record.error_name == "org.opdbus.Error.BackendFailed"
    assert failed.record.result == "libvirtd said no"
    assert crashed.record.error_name == "org.opdbus.Error.Failed"
    assert "internal error (ZeroDivisionError)" in crashed.record.result
    await close(jm, audit)


async def test_second_job_on_a_target_is_busy_until_the_first_ends(tmp_path: Path) -> None:
    jm, audit, _ = await manager(tmp_path)
    gate = asyncio.Event()
    first = await jm.submit("Demo", body(1, gate=gate), targets=["/a", "/b"], uid=0)
    with pytest.raises(Busy, match="/b is busy with job 1"):
        await jm.submit("Demo", body(1), targets=["/b"], uid=0)
    other = await jm.submit("Demo", body(1), targets=["/c"], uid=0)
    await other.finished.wait()
    gate.set()
    await first.finished.wait()
    again = await jm.submit("Demo", body(1), targets=["/b"], uid=0)
    await again.finished.wait()
    assert again.record.state is JobState.SUCCEEDED
    await close(jm, audit)


async def test_cancel_waits_until_the_job_stopped(tmp_path: Path) -> None:
    jm, audit, _ = await manager(tmp_path)
    gate = asyncio.Event()
    job = await jm.submit("Demo", body(5, gate=gate), targets=["/t"], uid=0)
    await asyncio.sleep(0.01)
    assert job.record.state is JobState.RUNNING
    await jm.cancel(job.id, uid=7)
    assert state(job) is JobState.CANCELLED and job.record.result == "cancelled by uid 7"
    assert jm.active_on("/t") is None
    with pytest.raises(Conflict, match="already cancelled"):
        await jm.cancel(job.id, uid=7)
    fixed = await jm.submit("Demo", body(1, gate=gate), targets=[], uid=0, cancelable=False)
    with pytest.raises(NotSupported, match="cannot be cancelled"):
        await jm.cancel(fixed.id, uid=0)
    with pytest.raises(NotFound):
        await jm.cancel(999, uid=0)
    gate.set()
    await fixed.finished.wait()
    assert fixed.record.state is JobState.SUCCEEDED
    await close(jm, audit)


async def test_concurrency_limit_queues_jobs(tmp_path: Path) -> None:
    jm, audit, _ = await manager(tmp_path, max_concurrent=1)
    gate = asyncio.Event()
    first = await jm.submit("Demo", body(1, gate=gate), targets=[], uid=0)
    second = await jm.submit("Demo", body(1), targets=[], uid=0)
    await asyncio.sleep(0.01)
    assert first.record.state is JobState.RUNNING and second.record.state is JobState.QUEUED
    await jm.cancel(second.id, uid=0)  # a queued job can be cancelled too
    assert state(second) is JobState.CANCELLED and second.record.started_at == 0
    gate.set()
    await first.finished.wait()
    await close(jm, audit)


async def test_restart_reports_interrupted_jobs(tmp_path: Path) -> None:
    jm, audit, _ = await manager(tmp_path)
    gate = asyncio.Event()
    done = await jm.submit("Demo", body(1), targets=[], uid=0)
    await done.finished.wait()
    running = await jm.submit("Demo", body(2, gate=gate), targets=["/t"], uid=5)
    await asyncio.sleep(0.01)
    await jm._store.flush()
    # Simulate a crash: nothing is shut down, a new manager reads the state dir.
    running.task.cancel()  # type: ignore[union-attr]
    jm._stopping = True
    await asyncio.gather(running.task, return_exceptions=True)  # type: ignore[arg-type]
    assert running.record.state is JobState.INTERRUPTED
    await close(jm, audit)

    # Rewrite the record as the crash left it: still running.
    record = running.record.model_copy(
        update={"state": JobState.RUNNING, "finished_at": 0, "result": ""}
    )
    await asyncio.to_thread(
        atomic_write, tmp_path / "jobs" / f"{running.id}.json", record.model_dump_json().encode()
    )
    jm2, audit2, _ = await manager(tmp_path)
    restored = jm2.get(running.id)
    assert restored.record.state is JobState.INTERRUPTED
    assert "while the job was running" in restored.record.result
    assert jm2.get(done.id).record.state is JobState.SUCCEEDED
    assert [line.text for line in await jm2.get_log(running.id, 1, 0)][:1] == ["step 1"]
    fresh = await jm2.submit("Demo", body(1), targets=["/t"], uid=0)  # the lock died with the crash
    assert fresh.id == running.id + 1
    await fresh.finished.wait()
    assert (await audit2.verify()).ok
    await close(jm2, audit2)


async def test_a_new_record_is_synced_in_new_jsonl_first_and_survives_a_crash_there(
    tmp_path: Path,
) -> None:
    """create() waits for one data sync of new.jsonl; the next write gives the record its
    .json and marks new.jsonl used up. A crash in between leaves the line: the job comes
    back (interrupted), and a line whose id has its .json is not read."""
    store = JobStore(tmp_path / "jobs")
    await store.load()
    made = JobRecord(id=1, operation="Demo", targets=["/t"], started_by_uid=0, created_at=1)
    await store.create(made)
    # Durable in new.jsonl only (no file made, renamed, or directory synced for it yet).
    assert not (tmp_path / "jobs" / "1.json").exists()
    assert (
        (tmp_path / "jobs" / "new.jsonl").read_bytes().startswith(made.model_dump_json().encode())
    )
    store.save_record(made.model_copy(update={"state": JobState.RUNNING}))
    await store.flush()
    assert (tmp_path / "jobs" / "1.json").exists()
    claimed = (tmp_path / "jobs" / "new.jsonl").read_bytes()
    assert claimed.startswith(b"\n") and len(claimed) == 64 * 1024  # used up; room kept
    await store.close()

    jm, audit, _ = await manager(tmp_path)
    job = await jm.submit("Demo", body(1), targets=["/t"], uid=0)
    await job.finished.wait()
    await close(jm, audit)

    # The crash: job 5's line written and synced, its .json never made; and a stale
    # line for job 1, whose .json (newer: succeeded) must win.
    lost = JobRecord(id=5, operation="Lost", targets=["/u"], started_by_uid=0, created_at=1)
    stale = job.record.model_copy(update={"state": JobState.QUEUED, "result": ""})
    (tmp_path / "jobs" / "new.jsonl").write_text(
        stale.model_dump_json() + "\n" + lost.model_dump_json() + "\n" + '{"id": 6, "oper'
    )
    jm2, audit2, _ = await manager(tmp_path)
    assert jm2.get(job.id).record.state is JobState.SUCCEEDED
    back = jm2.get(5)
    assert back.record.state is JobState.INTERRUPTED and back.record.operation == "Lost"
    with pytest.raises(NotFound):
        jm2.get(6)  # cut off mid-line: never acknowledged
    fresh = await jm2.submit("Demo", body(1), targets=["/t"], uid=0)
    assert fresh.id == 6  # ids are never handed out twice
    await fresh.finished.wait()
    await close(jm2, audit2)


async def test_finished_jobs_are_forgotten_after_retention(tmp_path: Path) -> None:
    jm, audit, recorder = await manager(tmp_path, retention_seconds=0.2)
    job = await jm.submit("Demo", body(1), targets=[], uid=0)
    await job.finished.wait()
    assert jm.get(job.id) is job
    await asyncio.sleep(0.5)
    with pytest.raises(NotFound):
        jm.get(job.id)
    assert ("removed", job.id, None) in recorder.events
    await jm._store.flush()
    assert not (tmp_path / "jobs" / f"{job.id}.json").exists()
    await close(jm, audit)


async def test_long_logs_page_from_memory_and_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "MEMORY_LINES", 100)
    jm, audit, _ = await manager(tmp_path)

    async def chatty(ctx: JobContext) -> JobOutcome:
        for i in range(1, 351):
            ctx.log(f"line {i}")
        return JobOutcome("done")

    job = await jm.submit("Chatty", chatty, targets=[], uid=0)
    await job.finished.wait()
    assert job.first_line > 1  # the oldest lines left memory
    lines = await jm.get_log(job.id, 1, 0)
    assert [line.number for line in lines] == list(range(1, 351))
    assert [line.text for line in await jm.get_log(job.id, 340, 5)] == [
        f"line {i}" for i in range(340, 345)
    ]
    assert [line.number for line in await jm.get_log(job.id, 10, 3)] == [10, 11, 12]
    await close(jm, audit)


async def test_a_finished_job_keeps_its_log_on_disk_not_in_memory(tmp_path: Path) -> None:
    jm, audit, _ = await manager(tmp_path)

    async def chatty(ctx: JobContext) -> JobOutcome:
        for i in range(1, 5001):
            ctx.log(f"line {i}")
        return JobOutcome("done")

    job = await jm.submit("Chatty", chatty, targets=[], uid=0)
    await job.finished.wait()
    assert len(job.lines) <= jobs_module.FINISHED_LINES
    lines = await jm.get_log(job.id, 1, 0)
    assert [line.number for line in lines] == list(range(1, 5001))
    assert lines[-1].text == "line 5000"
    await close(jm, audit)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("started_by_uid", 2**32),  # does not fit Job1.StartedByUID (u)
        ("targets", ["not a path"]),  # does not fit Job1.Targets (ao)
        ("id", 2**32),
        ("created_at", -1),
    ],
)
async def test_a_record_that_does_not_fit_the_bus_is_skipped_on_load(
    tmp_path: Path, field: str, value: object
) -> None:
    jm, audit, _ = await manager(tmp_path)
    good = await jm.submit("Demo", body(1), targets=["/t"], uid=0)
    await good.finished.wait()
    await close(jm, audit)
    bad = {**good.record.model_dump(mode="json"), "id": 7, field: value}
    (tmp_path / "jobs" / "7.json").write_text(json.dumps(bad))
    jm2, audit2, _ = await manager(tmp_path)
    assert [job.id for job in jm2.all()] == [good.id]
    await close(jm2, audit2)


async def test_blocking_calls_from_daemon_code_fail_async_tests(tmp_path: Path) -> None:
    """The loop guard is real: a blocking call from opdbus inside the loop is caught."""
    with pytest.raises(BlockingError):
        atomic_write(tmp_path / "x", b"data")


async def test_ids_are_never_handed_out_twice_even_when_every_record_expires(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path)
    await store.load()
    for job_id in (1, 2, 3):
        store.save_next_id(job_id + 1)
        store.save_record(JobRecord(id=job_id, operation="x", started_by_uid=0))
    await store.flush()
    # A restart, then retention removes every record before any new job is made.
    again = JobStore(tmp_path)
    records, next_id = await again.load()
    assert [r.id for r in records] == [1, 2, 3] and next_id == 4
    for job_id in (1, 2, 3):
        again.remove(job_id)
    await again.close()
    assert await JobStore(tmp_path).load() == ([], 4)
