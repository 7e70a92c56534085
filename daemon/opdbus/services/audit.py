"""The append-only, hash-chained, optionally sealed audit log.

Fail closed: a mutating call first ``reserve()``s room for its entry -- the
space is claimed on disk then (backends.audit_store) -- and is refused with
BackendUnavailable when there is none, *before* it acts. The entry written
after it acted therefore cannot fail for lack of space. Should a write fail
anyway (an I/O error), the file is cut back to the last durable entry, the
batch is kept in order and retried, nothing new is accepted meanwhile, and
no sequence number is ever handed out twice: an accident never looks like
tampering.

Writes are group-committed by one owned flusher task on a thread of their
own; each append returns once its entry is durable. Verification runs on
another thread, one at a time however many ask (they share the answer), and
from where the last one stopped when the log's prefix is byte-for-byte what
it checked then.

With sealing on (``init_sealing``), a seal entry closes every epoch: see
opdbus.models.audit for what that protects and what it does not.

Off (config ``audit.enabled: false``, NixOS ``enableBlockchain = false``;
the default in agent mode, as in the original op-dbus) there is no log at
all: nothing is reserved or written, and reading or verifying it says so
with NotSupported rather than showing an empty, "intact" log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from opdbus.backends import audit_walk
from opdbus.backends.audit_store import AuditFiles, Head, SealFile
from opdbus.errors import BackendFailed, BackendUnavailable, Conflict, Failed, NotSupported
from opdbus.models.audit import (
    ENTRY_MAX_BYTES,
    GENESIS_HASH,
    NOTICE_METHOD,
    SEAL_INIT_METHOD,
    SEAL_METHOD,
    AuditEntry,
    AuditKind,
    AuditVerdict,
    ChainState,
    SealKey,
    evolve,
    key_id,
    make_entry,
    seal_mac,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

OFF = (
    "the audit log is off on this host (audit.enabled is false; NixOS: "
    "services.op-dbus.enableBlockchain): there is no log to read or verify"
)

MAX_READ = 1000
ROOM_CHUNK = 256 * ENTRY_MAX_BYTES  # claimed at a time: 512 KiB, 256 entries at most
DURABLE_WAIT = 30.0  # an append whose write keeps failing answers after this long
RETRY_MIN, RETRY_MAX = 0.5, 10.0
SEAL_EPOCH_DEFAULT = 900  # 15 minutes, as journald's FSS


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


@dataclass
class _Verified:
    """The last verification's walk, to go on from when the prefix is unchanged."""

    state: ChainState
    digest: Any  # hashlib's sha256 over the bytes walked (copied before each use)


class AuditLog:
    def __init__(self, directory: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._files = AuditFiles(directory)
        self._dir = directory
        self._seq = 0  # chained, maybe not durable yet
        self._hash = GENESIS_HASH
        self._durable = Head(0, GENESIS_HASH, 0)
        self._pending: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._reserved = 0  # entries promised room and not appended yet
        self._flusher: asyncio.Task[None] | None = None
        self._write_error = ""  # non-empty while writes fail: new calls are refused
        self._open = False
        self._offsets: list[int] | None = None  # byte offset of entry seq at index seq-1
        self._problems: list[str] = []  # found at open, noted in the log, reported by verify
        self._verified: _Verified | None = None
        self._verifying: asyncio.Future[AuditVerdict] | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="audit-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="audit-read")
        self._seal: SealFile | None = None
        self._sealer: asyncio.Task[None] | None = None
        self._seal_wake = asyncio.Event()
        self.on_append: list[Callable[[], None]] = []  # called once per durable batch

    # -- the two threads -------------------------------------------------------------

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    # -- state -----------------------------------------------------------------------

    @property
    def head_seq(self) -> int:
        return self._durable.seq

    @property
    def problem(self) -> str:
        """Non-empty when open() found the log damaged (verify names the entry)."""
        return "; ".join(self._problems)

    @property
    def sealing(self) -> SealFile | None:
        return self._seal

    def _require(self) -> None:
        if not self.enabled:
            raise NotSupported(OFF)

    async def open(self) -> None:
        if not self.enabled:
            self._open = True
            log.info("the audit log is off (audit.enabled is false)")
            return
        await self._open_log()

    async def _open_log(self) -> None:
        opened = await self._write(self._files.open)
        head, tail = opened.head, opened.tail
        if opened.head_problem:
            self._problems.append(f"{opened.head_problem}: a cut-off tail cannot be ruled out")
        elif head is None and opened.size:
            self._problems.append("the head record is missing: a cut-off tail cannot be ruled out")
        size = opened.size
        if opened.tail_end < size:
            # A line never finished. Past the last acknowledged byte it is a write
            # the daemon died in the middle of: no caller was answered for it.
            if head is not None and head.size <= opened.tail_end:
                log.warning("audit log: removing an unfinished write at byte %d", opened.tail_end)
                await self._write(self._files.cut, opened.tail_end)
                size = opened.tail_end
            else:
                self._problems.append("the log does not end with a complete entry")
        if tail is None and opened.tail_end and opened.tail_end == size:
            self._problems.append("the last entry is unreadable")
        # Chain from whichever is further along; a head ahead of the log means
        # entries were cut off, and chaining past them keeps that evident.
        if tail is not None and (head is None or tail.seq >= head.seq):
            start = Head(tail.seq, tail.hash, size)
        elif head is not None:
            start = Head(head.seq, head.hash, size)
            if head.seq:
                self._problems.append(
                    f"the log ends before entry {head.seq} of its head record: entries were cut off"
                )
        else:
            start = Head(0, GENESIS_HASH, size)
        self._seq, self._hash, self._durable = start.seq, start.hash, start
        self._seal = await self._write(self._files.read_key)
        self._open = True
        for problem in self._problems:
            log.error("audit log %s: %s", self._files.log_path, problem)
            # Written into the log itself: later verifies keep reporting it
            # even after the head record has been rewritten.
            self._enqueue(
                kind="daemon", method=NOTICE_METHOD, object="", result=f"found at start: {problem}"
            )
        if self._seal is not None:
            await self._catch_up_seals()
            self._sealer = asyncio.create_task(self._seal_loop(), name="audit-seal")

    async def close(self) -> None:
        if self._sealer is not None:
            self._sealer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sealer
            self._sealer = None
        if self._flusher is not None and not self._flusher.done():
            try:
                async with asyncio.timeout(DURABLE_WAIT / 3):
                    await asyncio.shield(self._flusher)
            except TimeoutError:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
                for entry, _ in self._pending:
                    # The log in the daemon's journal is all that is left of them.
                    log.error("audit entry never written: %s", entry.model_dump_json())
        if self._open:
            self._open = False
            await self._write(self._files.close)
        await asyncio.to_thread(self._writer.shutdown, wait=True)
        await asyncio.to_thread(self._reader.shutdown, wait=True)

    # -- room, before acting ---------------------------------------------------------------

    async def reserve(self, entries: int = 1) -> None:
        """Claim room for ``entries`` entries before acting, or refuse (BackendUnavailable).

        Every reservation is used by one append(..., reserved=True) or given
        back with release().
        """
        if not self._open:
            raise Failed("the audit log is not open")
        if not self.enabled:
            return
        if self._write_error:
            raise BackendUnavailable(
                f"the audit log cannot be written ({self._write_error}); changes are refused "
                "until it can"
            )
        self._reserved += entries
        need = (self._reserved + len(self._pending)) * ENTRY_MAX_BYTES
        size = self._durable.size
        if self._files.has_room(size, need):
            return  # the common case: claimed earlier, no trip to the disk thread
        try:
            await self._write(self._files.ensure_room, size, max(need, ROOM_CHUNK))
        except OSError as first:
            try:  # all of a chunk may be too much on a nearly full disk; try the bare need
                await self._write(self._files.ensure_room, size, need)
            except OSError as e:
                self._reserved -= entries
                free = await self._write(self._files.free_bytes)
                raise BackendUnavailable(
                    f"the audit log in {self._dir} has no room ({e.strerror or first}; "
                    f"{free} bytes free): nothing was changed; free some space and try again"
                ) from None

    def release(self, entries: int = 1) -> None:
        self._reserved = max(self._reserved - entries, 0)

    # -- appending ---------------------------------------------------------------------

    async def append(
        self,
        *,
        uid: int = 0,
        kind: AuditKind,
        method: str,
        target: str,
        args_digest: str = "",
        job: str = "",
        result: str,
        reserved: bool = True,
    ) -> AuditEntry | None:
        """Chain one entry and return once it is on disk (None: the log is off).

        ``reserved``: the caller reserve()d room for it before acting.
        """
        if not self._open:
            raise Failed("the audit log is not open")
        if reserved:
            self.release()
        if not self.enabled:
            return None
        entry, done = self._enqueue(
            uid=uid,
            kind=kind,
            method=method,
            object=target,
            args_digest=args_digest,
            job=job,
            result=result,
        )
        try:
            # Shielded: a cancelled caller must not stop its entry from being written.
            async with asyncio.timeout(DURABLE_WAIT):
                await asyncio.shield(done)
        except TimeoutError:
            raise BackendFailed(
                f"audit entry {entry.seq} is not on disk yet ({self._write_error or 'slow disk'}); "
                "it is kept and written as soon as the disk allows"
            ) from None
        return entry

    def _enqueue(self, **fields: Any) -> tuple[AuditEntry, asyncio.Future[None]]:
        """Chain an entry and queue it for the flusher (which is started if idle)."""
        entry = make_entry(self._seq + 1, self._hash, **fields)
        self._seq, self._hash = entry.seq, entry.hash
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="audit-flush")
        return entry, done

    async def record_call(self, call: PendingCall, result: str, job: str = "") -> AuditEntry | None:
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
        delay = RETRY_MIN
        while self._pending:
            batch = list(self._pending)
            lines = [entry.model_dump_json().encode() + b"\n" for entry, _ in batch]
            last = batch[-1][0]
            try:
                # The head record (the cut-off detector) is written right after
                # the entries, unsynced, in the same trip: a head behind the log
                # is what a crash between the two leaves, and open() reads that
                # as normal.
                head, head_error = await self._write(
                    self._files.append_marked, b"".join(lines), self._durable.size,
                    last.seq, last.hash,
                )  # fmt: skip
            except OSError as e:
                # Cut back to the last durable entry (the store did); the same
                # entries are written again, with the same numbers, later.
                if not self._write_error:
                    log.error("audit log write failed, retrying: %s", e)
                self._write_error = e.strerror or str(e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._write_error:
                log.warning("audit log writable again (%d entries written)", len(batch))
            self._write_error, delay = "", RETRY_MIN
            if head_error:
                # The entries are durable; only the cut-off detector is behind.
                log.error("audit head record not updated: %s", head_error)
            del self._pending[: len(batch)]
            if self._offsets is not None:
                offset = self._durable.size
                for line in lines:
                    self._offsets.append(offset)
                    offset += len(line)
            self._durable = head
            # The entries are on disk: their callers are answered now.
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            for callback in self.on_append:
                callback()

    # -- verifying ---------------------------------------------------------------------

    async def verify(self) -> AuditVerdict:
        """Recompute the chain; concurrent callers share one computation."""
        self._require()
        if self._verifying is None or self._verifying.done():
            self._verifying = asyncio.ensure_future(self._verify_once())
        return await asyncio.shield(self._verifying)

    async def _verify_once(self) -> AuditVerdict:
        head = self._durable
        start, digest = await self._read(self._resume_point, head)
        if head.size - start.offset <= audit_walk.IN_PROCESS_MAX:
            state = await self._read(self._files.walk, start, head.size, digest)
        else:
            # A long stretch: checked in a process of its own (the GIL stays
            # the loop's), hashed here meanwhile for the next call's resume.
            hashed = asyncio.ensure_future(
                self._read(self._files.feed, digest, start.offset, head.size)
            )
            try:
                state = await audit_walk.walk_apart(self._files.log_path, start, head.size)
            finally:
                await hashed
        if not state.broken:
            self._verified = _Verified(state, digest)
        return self._verdict(state, head)

    def _resume_point(self, head: Head) -> tuple[ChainState, Any]:
        """(In the read thread.) Where to walk from: the last walk's end, if the log up to
        it is byte for byte what that walk checked; else the start. Returns the
        walk's state there and sha256 over the bytes before it.

        The whole prefix is hashed again (an edit anywhere must be seen), but
        only what was appended since is parsed and checked entry by entry.
        """
        cached = self._verified
        if cached is not None and cached.state.offset <= head.size:
            digest = self._files.digest(cached.state.offset)
            if digest.digest() == cached.digest.digest():
                state = replace(
                    cached.state,
                    seals=list(cached.state.seals),
                    notices=list(cached.state.notices),
                )
                return state, digest
        return ChainState(), hashlib.sha256()

    def _verdict(self, state: ChainState, head: Head) -> AuditVerdict:
        problems: list[str] = []
        first_bad = state.first_bad
        if state.broken:
            problems.append(state.reason)
        elif head.seq > state.seq:
            first_bad = state.seq + 1
            problems.append(
                f"log ends at entry {state.seq} but entry {head.seq} was written: truncated"
            )
        elif head.seq and state.seq == head.seq and state.hash != head.hash:
            first_bad = head.seq
            problems.append(f"entry {head.seq} differs from the one the daemon wrote")
        problems.extend(self._problems)
        problems.extend(
            f"noted by the daemon at {notice.time[:19]}: {notice.result}"
            for notice in state.notices
            if not any(notice.result.endswith(p) for p in self._problems)
        )
        sealed_through = state.seals[-1].seq - 1 if state.seals else 0
        return AuditVerdict(
            ok=not problems,
            first_bad_seq=first_bad,
            reason="; ".join(problems),
            entries=state.seq,
            problems=problems,
            sealed_through=sealed_through,
        )

    # -- reading -----------------------------------------------------------------------

    async def read(self, start: int, limit: int) -> list[AuditEntry]:
        """Entries from seq ``start`` (1-based), at most ``limit`` (capped at MAX_READ)."""
        self._require()
        start = max(start, 1)
        limit = min(limit or MAX_READ, MAX_READ)
        if start > self._durable.seq:
            return []
        if self._offsets is None:
            # Index in a thread, then catch up with what the flusher wrote
            # meanwhile; the last check and the assignment share one loop step.
            offsets, end = await self._read(self._files.index, 0, self._durable.size)
            while end < self._durable.size:
                more, end = await self._read(self._files.index, end, self._durable.size)
                offsets.extend(more)
            self._offsets = offsets
        if len(self._offsets) != self._durable.seq:
            # Lines and numbers disagree (a damaged log): find them by number.
            return await self._read(self._files.read_by_seq, start, limit, self._durable.size)
        return await self._read(
            self._files.read, self._offsets[start - 1], start, limit, self._durable.seq
        )

    # -- sealing -----------------------------------------------------------------------

    async def init_sealing(self, epoch_seconds: int, *, force: bool, uid: int) -> str:
        """Start sealing; the verification key, which is never stored or shown again."""
        self._require()
        if self._seal is not None and not force:
            raise Conflict(
                "sealing is already on (its key was shown when it started); "
                "use force to start over with a new key"
            )
        first = SealKey(os.urandom(32), 0, int(time.time()), epoch_seconds)
        seal = SealFile(first.key, 0, first.start, first.length, key_id(first.key))
        await self.reserve(1)
        try:
            await self._write(self._files.write_key, seal)
        except OSError as e:
            self.release()
            raise BackendFailed(f"cannot store the sealing key: {e.strerror or e}") from None
        self._seal = seal
        await self.append(
            uid=uid,
            kind="daemon",
            method=SEAL_INIT_METHOD,
            target="epoch:0",
            args_digest=seal.id,
            result=f"sealing started: epochs of {epoch_seconds} s",
        )
        if self._sealer is None:
            self._sealer = asyncio.create_task(self._seal_loop(), name="audit-seal")
        else:
            self._seal_wake.set()
        return first.verification_text()

    async def _seal_loop(self) -> None:
        while True:
            seal = self._seal
            if seal is None:
                return
            wait = seal.start + (seal.epoch + 1) * seal.length - time.time()
            self._seal_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0)):
                    await self._seal_wake.wait()
            try:
                await self._catch_up_seals()
            except (OSError, Failed, BackendUnavailable, BackendFailed) as e:
                log.error("audit sealing: %s; trying again in a minute", e)
                await asyncio.sleep(60)

    async def _catch_up_seals(self) -> None:
        """Seal every epoch that has ended (the daemon may have been down for some)."""
        while (seal := self._seal) is not None:
            if seal.start + (seal.epoch + 1) * seal.length > time.time():
                return
            seq = self._seq + 1
            mac = seal_mac(seal.key, seal.epoch, seq, self._hash)
            await self.append(
                kind="seal",
                method=SEAL_METHOD,
                target=f"epoch:{seal.epoch}",
                args_digest=mac,
                result=f"sealed entries 1-{seq - 1}",
                reserved=False,
            )
            log.info("audit seal: epoch %d closed at entry %d, head %s", seal.epoch, seq, mac)
            following = SealFile(evolve(seal.key), seal.epoch + 1, seal.start, seal.length, seal.id)
            await self._write(self._files.write_key, following)  # the old key is gone now
            self._seal = following
