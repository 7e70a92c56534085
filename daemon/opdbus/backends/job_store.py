"""Job records and logs in the state dir, written by one owned task.

Layout: ``jobs/<id>.json`` (the record, replaced atomically), ``jobs/<id>.log``
(JSON lines ``[n, timestamp_us, text]``, appended), ``jobs/next-id``, and
``jobs/new.jsonl``: the records of jobs just made, written first at the start
of that preallocated file and synced -- one data sync, no file created or
renamed, no directory synced, which is what a caller of a method that starts
a job waits for. Its lines end at the first empty line. The next write
gives them their ``<id>.json`` and then marks the file used up (an empty
first line); at load a line there counts only for an id without its
``.json`` (the daemon died in between).
Writes are queued without blocking the loop and coalesced: only the newest
record of a job is written, log lines go out in batches. ``flush()`` waits
until everything queued so far is on disk; ``create()`` until a new record is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from opdbus.backends.files import atomic_write, fsync_dir
from opdbus.errors import BackendUnavailable
from opdbus.models.job import JobRecord, LogLine

log = logging.getLogger(__name__)


NEW_RECORDS = "new.jsonl"
NEW_RECORDS_ROOM = 64 * 1024  # claimed once: overwriting claimed blocks needs no metadata


@dataclass
class _Batch:
    records: dict[int, bytes] = field(default_factory=dict)
    lines: dict[int, list[LogLine]] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    next_id: int = 0  # with removals: the id to hand out next, saved first
    # Records of new jobs (also in ``records``) and who waits for them to be durable.
    created: set[int] = field(default_factory=set)
    waiting: list[asyncio.Future[None]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.records or self.lines or self.removed)


def _settle(waiting: list[asyncio.Future[None]], error: OSError | None) -> None:
    for durable in waiting:
        if durable.done():
            continue
        if error is None:
            durable.set_result(None)
        else:
            durable.set_exception(error)


class JobStore:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._batch = _Batch()
        self._writer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._error = ""  # the last write's failure, until a write succeeds
        self._next_id = 0
        # New records whose only copy is in new.jsonl (the writing thread's own).
        self._deferred: dict[int, bytes] = {}

    async def load(self) -> tuple[list[JobRecord], int]:
        """Every readable record and the next job id to hand out."""
        records, next_id = await asyncio.to_thread(self._load_sync)
        self._next_id = next_id  # what a removal writes before any new job is made
        return records, next_id

    def _load_sync(self) -> tuple[list[JobRecord], int]:
        self._dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        records: list[JobRecord] = []
        for path in self._dir.glob("*.json"):
            try:
                records.append(JobRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as e:
                log.warning("ignoring unreadable job record %s: %s", path, e)
        records.extend(self._new_records_sync({record.id for record in records}))
        next_id = 1
        with contextlib.suppress(FileNotFoundError, ValueError):
            next_id = int((self._dir / "next-id").read_text().strip())
        next_id = max([next_id, *(record.id + 1 for record in records)])
        records.sort(key=lambda record: record.id)
        return records, next_id

    def _new_records_sync(self, known: set[int]) -> list[JobRecord]:
        """Records in new.jsonl that never got their .json (the daemon died in between)."""
        found: dict[int, JobRecord] = {}
        try:
            raw = (self._dir / NEW_RECORDS).read_bytes()
        except FileNotFoundError:
            return []
        for line in raw.split(b"\n"):
            if not line.strip(b"\0"):
                break  # the end of the last write (what follows is older)
            try:
                record = JobRecord.model_validate_json(line)
            except ValidationError:
                continue  # a line cut off by a crash
            if record.id not in known:
                found[record.id] = record
        return list(found.values())

    def save_record(self, record: JobRecord) -> None:
        self._batch.records[record.id] = record.model_dump_json().encode()
        self._kick()

    async def create(self, record: JobRecord) -> None:
        """Queue a new job's record; return once it is on disk (BackendUnavailable if not)."""
        durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.records[record.id] = record.model_dump_json().encode()
        self._batch.created.add(record.id)
        self._batch.waiting.append(durable)
        self._kick()
        try:
            await asyncio.shield(durable)  # a cancelled caller leaves the write to finish
        except OSError as e:
            raise BackendUnavailable(
                f"cannot write job records in {self._dir} ({e.strerror or e}); "
                "no job is started until they can be"
            ) from None

    def append_log(self, job_id: int, line: LogLine) -> None:
        self._batch.lines.setdefault(job_id, []).append(line)
        self._kick()

    def save_next_id(self, next_id: int) -> None:
        """The id to hand out next. Written only before records are removed: while a
        record is there, load() finds its id (one file fewer synced per new job)."""
        self._next_id = next_id

    def remove(self, job_id: int) -> None:
        self._batch.removed.add(job_id)
        self._batch.next_id = self._next_id
        self._batch.records.pop(job_id, None)
        self._batch.lines.pop(job_id, None)
        self._kick()

    async def _settled(self) -> None:
        while not self._idle.is_set():
            await self._idle.wait()

    async def flush(self) -> None:
        """Wait until everything queued so far is on disk; BackendUnavailable if it is not."""
        await self._settled()
        if self._error:
            raise BackendUnavailable(
                f"cannot write job records in {self._dir} ({self._error}); "
                "no job is started until they can be"
            )

    async def close(self) -> None:
        await self._settled()
        if self._writer is not None:
            await self._writer

    def _kick(self) -> None:
        self._idle.clear()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="job-store")

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._batch.empty():
            batch, self._batch = self._batch, _Batch()

            # Called from the writing thread once new.jsonl is synced.
            created = functools.partial(loop.call_soon_threadsafe, _settle, batch.waiting, None)
            try:
                await asyncio.to_thread(self._write_sync, batch, created)
            except OSError as e:
                # A running job goes on; only its record on disk is stale.
                log.error("could not write job records in %s: %s", self._dir, e)
                self._error = e.strerror or str(e)
                _settle(batch.waiting, e)  # those not told yet: their job does not start
            else:
                self._error = ""
        self._idle.set()

    def _write_new(self, data: bytes, *, sync: bool = True) -> None:
        """Write ``data`` at the start of new.jsonl (made and claimed once)."""
        fd = os.open(self._dir / NEW_RECORDS, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            if os.fstat(fd).st_size < NEW_RECORDS_ROOM:
                os.posix_fallocate(fd, 0, NEW_RECORDS_ROOM)
                os.fsync(fd)  # its size and blocks, and its name, once
                fsync_dir(self._dir)
            os.pwrite(fd, data, 0)
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def _write_sync(self, batch: _Batch, created: Callable[[], object]) -> None:
        # New records go only to new.jsonl now; their .json waits for the next
        # write (which follows at once: the job starts running). Its renames and
        # directory sync would otherwise stand in the way of the audit entry the
        # caller is waiting for next, on the same disk.
        for job_id in batch.removed:
            self._deferred.pop(job_id, None)
        carried = {i: data for i, data in self._deferred.items() if i not in batch.records}
        new = {i: batch.records[i] for i in sorted(batch.created) if i in batch.records}
        if new:
            # Everything without its .json yet, so none is ever in neither place.
            self._write_new(b"".join(d + b"\n" for d in [*carried.values(), *new.values()]) + b"\n")
            self._deferred = {**carried, **new}  # until their .json files are written
        created()
        for job_id, lines in batch.lines.items():
            data = "".join(json.dumps(list(line)) + "\n" for line in lines).encode()
            fd = os.open(self._dir / f"{job_id}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        files = {**carried, **{i: d for i, d in batch.records.items() if i not in new}}
        for job_id, data in files.items():
            atomic_write(self._dir / f"{job_id}.json", data, sync_dir=False)
        if batch.removed:
            # Before a record goes: ids are never handed out twice.
            atomic_write(self._dir / "next-id", f"{batch.next_id}\n".encode(), sync_dir=False)
        if files or batch.removed:
            fsync_dir(self._dir)  # once for every file the batch replaced
        had = bool(self._deferred)
        self._deferred = new
        if new:
            # What is left without a .json: the new ones (the carried have theirs).
            self._write_new(b"".join(d + b"\n" for d in new.values()) + b"\n", sync=False)
        elif had or batch.removed:
            # Used up. Durable before any record is removed: a line there must
            # never bring back a job that retention removed.
            self._write_new(b"\n", sync=bool(batch.removed))
        for job_id in batch.removed:
            for suffix in (".json", ".log"):
                with contextlib.suppress(FileNotFoundError):
                    (self._dir / f"{job_id}{suffix}").unlink()

    async def read_log(self, job_id: int, start: int, limit: int) -> list[LogLine]:
        await self._settled()
        return await asyncio.to_thread(self._read_log_sync, job_id, start, limit)

    def _read_log_sync(self, job_id: int, start: int, limit: int) -> list[LogLine]:
        out: list[LogLine] = []
        try:
            with (self._dir / f"{job_id}.log").open("rb") as f:
                for raw in f:
                    try:
                        number, stamp, text = json.loads(raw)
                    except ValueError:
                        continue  # a line cut off by a crash
                    if number >= start:
                        out.append(LogLine(int(number), int(stamp), str(text)))
                        if len(out) >= limit:
                            break
        except FileNotFoundError:
            pass
        return out

    async def count_log_lines(self, job_id: int) -> int:
        return await asyncio.to_thread(self._count_sync, job_id)

    def _count_sync(self, job_id: int) -> int:
        try:
            with (self._dir / f"{job_id}.log").open("rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0
