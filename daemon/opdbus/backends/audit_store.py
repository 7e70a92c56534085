"""The audit log's files; every method blocks (the audit service calls them from its threads).

``audit.jsonl``  one entry per line, appended, fdatasync'd per batch.
``head``         the last durable (seq, hash, size), in two fixed 256-byte
                 slots written in turn and checksummed: a torn write leaves
                 the other slot good, and no write ever needs a new block.
``seal.key``     the current sealing key (0600), overwritten in place.

Space is claimed before it is needed: ``ensure_room`` preallocates past the
end of the log (fallocate KEEP_SIZE), so an entry for an action that already
happened never fails for lack of space. A failed append is cut back to the
last durable byte: no half line, no entry that was never acknowledged.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from opdbus.backends.audit_walk import read_lines
from opdbus.models.audit import GENESIS_HASH, AuditEntry, ChainState, walk

log = logging.getLogger(__name__)

LOG_NAME = "audit.jsonl"
HEAD_NAME = "head"
LEGACY_HEAD_NAME = "head.json"
KEY_NAME = "seal.key"
SLOT = 256
KEY_SIZE = 512
FALLOC_FL_KEEP_SIZE = 1
READ_CHUNK = 1 << 20

_SEQ = re.compile(rb'\{"seq":(\d+),')

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    size: int  # bytes of the log that hold entries 1..seq
    gen: int = 0  # which write of the head this is (the newer good slot wins)


@dataclass(frozen=True)
class Opened:
    """What the files said when opened."""

    head: Head | None  # None: no head record at all
    head_problem: str  # non-empty: the head record exists but is unreadable
    tail: AuditEntry | None  # the last complete entry
    tail_end: int  # where that entry ends
    size: int  # the log's size


@dataclass(frozen=True)
class SealFile:
    key: bytes
    epoch: int
    start: int
    length: int
    id: str


def _slot_bytes(head: Head) -> bytes:
    body = {"seq": head.seq, "hash": head.hash, "size": head.size, "gen": head.gen}
    text = json.dumps(body, sort_keys=True)
    check = hashlib.sha256(text.encode()).hexdigest()[:16]
    record = json.dumps({**body, "check": check}, sort_keys=True).encode()
    return record.ljust(SLOT - 1) + b"\n"


def _parse_slot(raw: bytes) -> Head | None:
    try:
        data = json.loads(raw)
        body = {key: data[key] for key in ("seq", "hash", "size", "gen")}
        if (
            hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
            != data["check"]
        ):
            return None
        return Head(int(body["seq"]), str(body["hash"]), int(body["size"]), int(body["gen"]))
    except (ValueError, KeyError, TypeError):
        return None


class AuditFiles:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.log_path = directory / LOG_NAME
        self._log_fd: int | None = None
        self._head_fd: int | None = None
        self._gen = 0
        self._allocated = 0  # the log's bytes known to be allocated (size + preallocation)
        self._fallocate = True  # False where the file system cannot preallocate

    # -- opening ---------------------------------------------------------------------

    def open(self) -> Opened:
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        head, head_problem = self._read_head()
        self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._head_fd = os.open(self.dir / HEAD_NAME, os.O_RDWR | os.O_CREAT, 0o640)
        if os.fstat(self._head_fd).st_size < 2 * SLOT:
            # Two slots' worth, written once: later head writes reuse these blocks.
            os.pwrite(self._head_fd, b" " * (2 * SLOT - 1) + b"\n", 0)
            os.fsync(self._head_fd)
        _fsync_dir(self.dir)
        tail, tail_end, size = self._read_tail()
        self._allocated = size
        self._gen = head.gen if head else 0
        return Opened(head, head_problem, tail, tail_end, size)

    def _read_head(self) -> tuple[Head | None, str]:
        try:
            raw = (self.dir / HEAD_NAME).read_bytes()
        except FileNotFoundError:
            return self._read_legacy_head()
        slots = [_parse_slot(raw[i : i + SLOT]) for i in (0, SLOT)]
        good = [slot for slot in slots if slot is not None]
        if good:
            return max(good, key=lambda h: h.gen), ""
        if raw.strip():
            return None, "the head record is unreadable (both slots damaged)"
        return self._read_legacy_head()

    def _read_legacy_head(self) -> tuple[Head | None, str]:
        """head.json, as daemons before the two-slot record kept it."""
        try:
            data = json.loads((self.dir / LEGACY_HEAD_NAME).read_text())
            return Head(int(data["seq"]), str(data["hash"]), int(data.get("size", 0))), ""
        except FileNotFoundError:
            return None, ""
        except (ValueError, KeyError, TypeError):
            return None, "the head record (head.json) is unreadable"

    def _read_tail(self) -> tuple[AuditEntry | None, int, int]:
        """The last complete entry, where it ends, and the file's size."""
        with self.log_path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            pos, data = size, b""
            while pos > 0:
                step = min(4096, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                if data.count(b"\n") >= 2 or pos == 0:
                    break
        if not data:
            return None, 0, size
        # Complete lines end with "\n"; anything after the last one is a cut-off write.
        end = pos + data.rfind(b"\n") + 1
        complete = data[: data.rfind(b"\n") + 1] if b"\n" in data else b""
        lines = complete.splitlines(keepends=True)
        if not lines:
            return None, 0, size
        try:
            return AuditEntry.model_validate_json(lines[-1]), end, size
        except ValidationError:
            return None, end, size

    # -- writing ---------------------------------------------------------------------

    def append(self, data: bytes, durable: int) -> int:
        """Write ``data`` after byte ``durable`` and make it durable; the new size.

        On any failure the file is cut back to ``durable`` and the error raised.
        """
        assert self._log_fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._log_fd, view) :]
            os.fdatasync(self._log_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._log_fd, durable)
                os.fdatasync(self._log_fd)
            self._allocated = durable  # truncating drops the preallocation too
            raise
        size = durable + len(data)
        self._allocated = max(self._allocated, size)
        return size

    def append_marked(self, data: bytes, durable: int, seq: int, hash_: str) -> tuple[Head, str]:
        """``append``, then the head record of what it made durable, in one trip to the
        writer thread (the next entry need not wait for a second one).

        Returns the head and "" -- or, when only the head could not be written,
        the head unrecorded and why: the entries are durable all the same.
        """
        size = self.append(data, durable)
        try:
            return self.write_head(Head(seq, hash_, size)), ""
        except OSError as e:
            return Head(seq, hash_, size), e.strerror or str(e)

    def cut(self, size: int) -> None:
        """Remove a cut-off last line that was never acknowledged (found at open)."""
        assert self._log_fd is not None
        os.ftruncate(self._log_fd, size)
        os.fdatasync(self._log_fd)
        self._allocated = size

    def write_head(self, head: Head) -> Head:
        """Record the durable head in the older slot; returns it with its generation.

        Not synced: the log is, and a head behind the log after a crash is
        harmless (the tail is further along and wins); only a log shorter than
        its head means entries were lost, and that cannot come from here.
        """
        assert self._head_fd is not None
        self._gen += 1
        head = Head(head.seq, head.hash, head.size, self._gen)
        os.pwrite(self._head_fd, _slot_bytes(head), SLOT * (self._gen % 2))
        return head

    def has_room(self, size: int, needed: int) -> bool:
        """Whether ``needed`` bytes past ``size`` are known to be claimed (no I/O: any thread)."""
        return size + needed <= self._allocated

    def ensure_room(self, size: int, needed: int) -> None:
        """Make sure ``needed`` bytes past byte ``size`` can be written without new space.

        Raises OSError(ENOSPC) when the file system cannot give them.
        """
        assert self._log_fd is not None
        end = size + needed
        if end <= self._allocated:
            return
        if self._fallocate:
            if _libc.fallocate(self._log_fd, FALLOC_FL_KEEP_SIZE, size, needed) == 0:
                self._allocated = end
                return
            code = ctypes.get_errno()
            if code not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(code, os.strerror(code))
            self._fallocate = False
        # No preallocation here: the best that can be said is that the space is free now.
        stat = os.statvfs(self.dir)
        if stat.f_bavail * stat.f_frsize < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def free_bytes(self) -> int:
        stat = os.statvfs(self.dir)
        return int(stat.f_bavail * stat.f_frsize)

    def close(self) -> None:
        for fd in (self._log_fd, self._head_fd):
            if fd is not None:
                os.close(fd)
        self._log_fd = self._head_fd = None

    # -- reading ---------------------------------------------------------------------

    def lines(self, start: int, end: int) -> Iterator[bytes]:
        """The log's lines from byte ``start`` up to byte ``end``."""
        return read_lines(self.log_path, start, end)

    def walk(self, state: ChainState, end: int, digest: Any) -> ChainState:
        """Check the entries after ``state`` up to byte ``end``, feeding ``digest`` as it goes."""

        def fed() -> Iterator[bytes]:
            for raw in self.lines(state.offset, end):
                digest.update(raw)
                yield raw

        return walk(fed(), state)

    def digest(self, size: int) -> Any:
        """sha256 over the log's first ``size`` bytes, to be fed further."""
        return self.feed(hashlib.sha256(), 0, size)

    def feed(self, digest: Any, start: int, end: int) -> Any:
        """Feed the log's bytes [start, end) to ``digest`` (hashlib lets go of the GIL)."""
        with self.log_path.open("rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
        return digest

    def index(self, start: int, end: int) -> tuple[list[int], int]:
        """Offsets of the lines that begin in [start, end), and where the scan stopped."""
        offsets: list[int] = []
        pos = start
        with self.log_path.open("rb") as f:
            f.seek(start)
            for raw in f:
                if pos >= end:
                    break
                offsets.append(pos)
                pos += len(raw)
        return offsets, pos

    def read(self, offset: int, start: int, limit: int, last_seq: int) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        with self.log_path.open("rb") as f:
            f.seek(offset)
            for raw in f:
                if len(out) >= limit or start + len(out) > last_seq:
                    break
                try:
                    out.append(AuditEntry.model_validate_json(raw))
                except ValidationError:
                    break  # damaged from here on: verify names it
        return out

    def read_by_seq(self, start: int, limit: int, end: int) -> list[AuditEntry]:
        """Entries numbered ``start`` on, found by a scan (for a log whose lines have gaps)."""
        out: list[AuditEntry] = []
        for raw in self.lines(0, end):
            match = _SEQ.match(raw)
            if match is None or int(match[1]) < start:
                continue
            try:
                out.append(AuditEntry.model_validate_json(raw))
            except ValidationError:
                continue
            if len(out) >= limit:
                break
        return out

    # -- the sealing key ------------------------------------------------------------------

    def read_key(self) -> SealFile | None:
        try:
            data = json.loads((self.dir / KEY_NAME).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            log.error("the sealing key %s is unreadable: sealing stops", self.dir / KEY_NAME)
            return None
        return SealFile(
            bytes.fromhex(data["key"]),
            int(data["epoch"]),
            int(data["start"]),
            int(data["length"]),
            str(data["id"]),
        )

    def write_key(self, seal: SealFile) -> None:
        """Overwrite the key in place: the previous epoch's key is gone once this returns."""
        record = json.dumps(
            {
                "key": seal.key.hex(),
                "epoch": seal.epoch,
                "start": seal.start,
                "length": seal.length,
                "id": seal.id,
            }
        ).encode()
        fd = os.open(self.dir / KEY_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.pwrite(fd, record.ljust(KEY_SIZE - 1) + b"\n", 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove_legacy_head(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / LEGACY_HEAD_NAME).unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["GENESIS_HASH", "AuditFiles", "Head", "Opened", "SealFile"]
