"""nixos-rebuild as a process: every line it prints handed on as it comes, all of it kept on disk.

It runs in a process group of its own (backends.process), so a cancel ends
nix's builders with it: SIGTERM, then SIGKILL after the grace period. The
output goes to a log file in batches written from a thread; only the last
lines stay in memory (for the error message), however long the build talks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from opdbus.backends import process
from opdbus.errors import Failed

KEEP_LAST = 20  # lines kept in memory, for the result message
FLUSH_LINES = 256  # log lines written per batch
LOGS_KEPT = 20  # rebuild logs kept in the log directory (older ones are pruned)


@dataclass(frozen=True)
class Outcome:
    status: int
    lines: int
    last: list[str]  # the last few lines, oldest first


async def run(
    argv: list[str],
    *,
    log_file: Path,
    on_line: Callable[[str], None],
    grace: float,
) -> Outcome:
    """Run ``argv`` to its end; each output line goes to ``on_line`` and to ``log_file``."""
    log = await asyncio.to_thread(_open_log, log_file, argv)
    try:
        try:
            child = await process.spawn(argv, stderr=asyncio.subprocess.STDOUT)
        except OSError as e:
            raise Failed(f"cannot run {argv[0]}: {e.strerror}") from None
        last: collections.deque[str] = collections.deque(maxlen=KEEP_LAST)
        pending: list[bytes] = []
        count = 0
        try:
            assert child.stdout is not None
            while raw := await child.stdout.readline():
                line = raw.decode(errors="replace").rstrip("\n")
                last.append(line)
                count += 1
                on_line(line)
                pending.append(line.encode() + b"\n")
                if len(pending) >= FLUSH_LINES:
                    batch, pending = pending, []
                    await asyncio.to_thread(log.writelines, batch)
            status = await child.wait()
            process.forget(child)
        except BaseException:
            await asyncio.shield(process.end(child, grace=grace))
            raise
        finally:
            if pending:
                await asyncio.shield(asyncio.to_thread(log.writelines, pending))
        return Outcome(status, count, list(last))
    finally:
        await asyncio.shield(asyncio.to_thread(log.close))


def _open_log(path: Path, argv: list[str]) -> BinaryIO:
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    _prune(path.parent, keep=LOGS_KEPT - 1)
    log = path.open("wb")
    log.write(("$ " + " ".join(argv) + "\n").encode())
    return log


def _prune(directory: Path, *, keep: int) -> None:
    """Only the newest ``keep`` rebuild logs stay (they are never needed for long)."""
    logs = sorted(directory.glob("job-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[keep:]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
