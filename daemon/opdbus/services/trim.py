"""Giving memory back after a big request.

A 10 MB argument (refused or not) grows the heap by tens of MB, and glibc
keeps freed heap for reuse: the daemon's RSS would stay at its high-water mark
for good. After a big call, once things are quiet for a moment, the freed
heap is handed back (malloc_trim, in a thread: it walks the heap).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

QUIET = 0.5  # seconds without another big call before trimming


class Trimmer:
    def __init__(self, trim: Callable[[], None]) -> None:
        self._trim = trim
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def note(self) -> None:
        """A big call was served: trim soon (once, however many come in a row)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name="memory-trim")

    async def _run(self) -> None:
        while True:
            self._again = False
            await asyncio.sleep(QUIET)
            if not self._again:
                break
        await asyncio.to_thread(self._trim)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
