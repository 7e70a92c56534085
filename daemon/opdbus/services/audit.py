"""The append-only, hash-chained audit log.

Each entry's hash is sha256(prev_hash || canonical JSON of the entry), so an
edited, deleted or reordered entry breaks the chain at a nameable seq. A chain
alone cannot show a cut-off tail, so the last durable (seq, hash) is also kept
in ``head.json`` and in memory: a log shorter than its head was truncated.

The daemon never "heals" a damaged log: after a restart it keeps chaining from
the furthest point it knows of, so the gap stays visible to every later verify.

Writes are group-committed by one owned flusher task: appends queue entries,
the flusher writes and fsyncs them in a thread, and each append returns only
once its entry is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from opdbus.errors import Failed
from opdbus.models.audit import GENESIS_HASH, AuditEntry, AuditKind, AuditVerdict
from opdbus.services.fsutil import atomic_write, fsync_dir

log = logging.getLogger(__name__)

LOG_NAME = "audit.jsonl"
HEAD_NAME = "head.json"
MAX_READ = 1000


@dataclass
class PendingCall:
    """An accepted mutating call whose audit entry is not written yet.

    The bus layer sets it (in PENDING_CALL) before running the method; whoever
    records it first wins: the job manager records it before a job it starts
    can record its outcome, so a call always precedes its job in the log.
    """

    uid: int
    method: str
    target: str
    args_digest: str
    recorded: bool = False


PENDING_CALL: ContextVar[PendingCall | None] = ContextVar("opdbus_pending_call", default=None)


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str
    size: int  # bytes of the log file that hold entries 1..seq


def _read_tail_line(path: Path) -> tuple[str | None, int]:
    """The last line of a file (None if empty or not newline-terminated) and the file size."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None, 0
            chunk = 4096
            pos = size
            data = b""
            while pos > 0:
                step = min(chunk, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                if data.count(b"\n") >= 2 or pos == 0:
                    break
    except FileNotFoundError:
        return None, 0
    if not data.endswith(b"\n"):
        return None, size
    lines = data[:-1].split(b"\n")
    return lines[-1].decode("utf-8", "replace"), size


class AuditLog:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._log_path = directory / LOG_NAME
        self._head_path = directory / HEAD_NAME
        # Chained (maybe not yet durable) and durable heads.
        self._seq = 0
        self._hash = GENESIS_HASH
        self._durable = _Head(0, GENESIS_HASH, 0)
        self._pending: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._offsets: list[int] | None = None  # byte offset of entry seq at index seq-1
        self._problem = ""  # set at open when the files disagree
        self.on_append: list[Callable[[], None]] = []  # called once per durable batch

    @property
    def head_seq(self) -> int:
        return self._durable.seq

    @property
    def problem(self) -> str:
        """Non-empty when open() found the log damaged (verify names the entry)."""
        return self._problem

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)
        if self._problem:
            log.error("audit log %s: %s", self._log_path, self._problem)

    def _open_sync(self) -> None:
        self._dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        head: _Head | None = None
        try:
            raw = json.loads(self._head_path.read_text())
            head = _Head(int(raw["seq"]), str(raw["hash"]), int(raw.get("size", 0)))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError):
            self._problem = "head record is unreadable"
        line, size = _read_tail_line(self._log_path)
        tail: _Head | None = None
        if line is not None:
            try:
                entry = AuditEntry.model_validate_json(line)
                tail = _Head(entry.seq, entry.hash, size)
            except ValidationError:
                self._problem = "last entry is unreadable"
        elif size:
            self._problem = "log does not end with a complete entry"
        # Chain from whichever is further along; a head ahead of the log means
        # entries were cut off, and chaining past them keeps that evident.
        if tail is not None and (head is None or tail.seq >= head.seq):
            start = tail
        elif head is not None:
            start = _Head(head.seq, head.hash, size)
            if head.seq and not self._problem:
                self._problem = f"log ends before entry {head.seq} of its head record"
        else:
            start = _Head(0, GENESIS_HASH, size)
        self._seq, self._hash, self._durable = start.seq, start.hash, start
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        fsync_dir(self._dir)

    async def close(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await self._flusher
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await asyncio.to_thread(os.close, fd)

    async def append(
        self,
        *,
        uid: int,
        kind: AuditKind,
        method: str,
        target: str,
        args_digest: str = "",
        job: str = "",
        result: str,
    ) -> AuditEntry:
        """Chain one entry and return once it is on disk (fsync'd)."""
        if self._fd is None:
            raise Failed("audit log is not open")
        body: dict[str, object] = {
            "seq": self._seq + 1,
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "uid": uid,
            "kind": kind,
            "method": method,
            "object": target,
            "args_digest": args_digest,
            "job": job,
            "result": result,
            "prev_hash": self._hash,
        }
        entry = AuditEntry.model_validate(
            {**body, "hash": AuditEntry.compute_hash(self._hash, body)}
        )
        self._seq, self._hash = entry.seq, entry.hash
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="audit-flush")
        # Shielded: a cancelled caller must not stop its entry from being written.
        await asyncio.shield(done)
        return entry

    async def record_call(self, call: PendingCall, result: str, job: str = "") -> AuditEntry:
        call.recorded = True
        return await self.append(
            uid=call.uid,
            kind="call",
            method=call.method,
            target=call.target,
            args_digest=call.args_digest,
            job=job,
            result=result,
        )

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            entries = [entry for entry, _ in batch]
            try:
                size = await asyncio.to_thread(self._write_sync, entries)
            except OSError as e:
                # Nothing after the last durable entry may stay chained in memory.
                failed = batch + self._pending
                self._pending = []
                self._seq, self._hash = self._durable.seq, self._durable.hash
                log.error("audit log write failed: %s", e)
                for _, fut in failed:
                    if not fut.done():
                        fut.set_exception(Failed(f"audit log write failed: {e.strerror or e}"))
                continue
            if self._offsets is not None:
                offset = self._durable.size
                for entry in entries:
                    self._offsets.append(offset)
                    offset += len(entry.model_dump_json()) + 1
            last = entries[-1]
            self._durable = _Head(last.seq, last.hash, size)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            for callback in self.on_append:
                callback()

    def _write_sync(self, entries: list[AuditEntry]) -> int:
        assert self._fd is not None
        data = "".join(entry.model_dump_json() + "\n" for entry in entries).encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        size = self._durable.size + len(data)
        last = entries[-1]
        atomic_write(
            self._head_path,
            json.dumps({"seq": last.seq, "hash": last.hash, "size": size}).encode(),
            mode=0o640,
        )
        return size

    async def verify(self) -> AuditVerdict:
        """Recompute the whole chain (in a thread) and compare it with the head."""
        return await asyncio.to_thread(self._verify_sync, self._durable)

    def _verify_sync(self, head: _Head) -> AuditVerdict:
        expected = 1
        prev = GENESIS_HASH
        hash_at_head = ""
        try:
            f = self._log_path.open("rb")
        except FileNotFoundError:
            f = None
        if f is not None:
            with f:
                remaining = head.size if head.size else None
                for raw in f:
                    if remaining is not None and remaining <= 0:
                        break
                    if remaining is not None:
                        remaining -= len(raw)
                    bad = self._check_line(raw, expected, prev)
                    if isinstance(bad, AuditVerdict):
                        return bad
                    prev = bad.hash
                    if bad.seq == head.seq:
                        hash_at_head = bad.hash
                    expected += 1
        last = expected - 1
        if head.seq > last:
            return AuditVerdict(
                ok=False,
                first_bad_seq=last + 1,
                reason=f"log ends at entry {last} but entry {head.seq} was written: truncated",
                entries=last,
            )
        if head.seq and hash_at_head != head.hash:
            return AuditVerdict(
                ok=False,
                first_bad_seq=head.seq,
                reason=f"entry {head.seq} differs from the one the daemon wrote",
                entries=last,
            )
        return AuditVerdict(ok=True, entries=last)

    @staticmethod
    def _check_line(raw: bytes, expected: int, prev: str) -> AuditEntry | AuditVerdict:
        def bad(reason: str) -> AuditVerdict:
            return AuditVerdict(
                ok=False, first_bad_seq=expected, reason=reason, entries=expected - 1
            )

        if not raw.endswith(b"\n"):
            return bad(f"entry {expected} is cut off")
        try:
            entry = AuditEntry.model_validate_json(raw)
        except ValidationError:
            return bad(f"entry {expected} is not a valid entry")
        if entry.seq != expected:
            return bad(f"expected entry {expected}, found entry {entry.seq}: deleted or reordered")
        if entry.prev_hash != prev:
            return bad(f"entry {expected} does not chain to entry {expected - 1}")
        if AuditEntry.compute_hash(prev, entry.body()) != entry.hash:
            return bad(f"entry {expected} was altered: its hash does not match its content")
        return entry

    async def read(self, start: int, limit: int) -> list[AuditEntry]:
        """Entries from seq ``start`` (1-based), at most ``limit`` (capped at MAX_READ)."""
        start = max(start, 1)
        limit = min(limit or MAX_READ, MAX_READ)
        if start > self._durable.seq:
            return []
        if self._offsets is None:
            # Index in a thread, then catch up with what the flusher wrote
            # meanwhile; the last check and the assignment share one loop step.
            offsets, end = await asyncio.to_thread(self._index_sync, 0, self._durable.size)
            while end < self._durable.size:
                more, end = await asyncio.to_thread(self._index_sync, end, self._durable.size)
                offsets.extend(more)
            self._offsets = offsets
        if start > len(self._offsets):
            return []
        return await asyncio.to_thread(
            self._read_sync, self._offsets[start - 1], start, limit, self._durable.seq
        )

    def _read_sync(self, offset: int, start: int, limit: int, last_seq: int) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        with self._log_path.open("rb") as f:
            f.seek(offset)
            for raw in f:
                if len(out) >= limit or start + len(out) > last_seq:
                    break
                try:
                    out.append(AuditEntry.model_validate_json(raw))
                except ValidationError:
                    break  # damaged from here on: verify names it
        return out

    def _index_sync(self, start: int, end: int) -> tuple[list[int], int]:
        """Offsets of the lines that begin in [start, end), and where the scan stopped."""
        offsets: list[int] = []
        pos = start
        with self._log_path.open("rb") as f:
            f.seek(start)
            for raw in f:
                if pos >= end:
                    break
                offsets.append(pos)
                pos += len(raw)
        return offsets, pos
