"""Threads for expensive work that anyone may ask for, so no caller can starve another.

A plain user may call the read-only methods as often as they like; checking a
big profile or document takes real CPU. Such work runs here: a few threads of
its own (never the default pool, which audit writes and job records use),
and a bound on how much may wait -- past it, callers get Busy at once instead
of queueing without end. The event loop stays free throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from opdbus.errors import Busy

T = TypeVar("T")


class Workers:
    def __init__(self, name: str, *, threads: int = 2, waiting: int = 32) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._limit = threads + waiting
        self._in = 0
        self._name = name

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._in >= self._limit:
            raise Busy(f"too many {self._name} requests in progress; try again in a moment")
        self._in += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._in -= 1

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
