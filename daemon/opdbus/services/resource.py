"""What every kind of resource service shares: a cache fed by events, and its upkeep.

A service keeps what the bus shows in an ObservedCache. Its backend's events
``mark`` objects dirty (or ask for a ``resync`` after a reconnection); one
owned task re-reads them. A read that fails is logged and tried again after
a growing pause -- it never stops the loop for good (one lxc-info timeout
once stopped container updates until a restart). Periodic work (usage
statistics) runs as further owned tasks; ``stop`` cancels and awaits them all.

The kinds themselves are listed once, in ``opdbus.kinds``: that list is what
the daemon, the bus server, health and the manager iterate.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic

from opdbus.config import Config
from opdbus.services.cache import InfoT, ObservedCache
from opdbus.services.health import BackendHealth
from opdbus.services.jobs import JobManager
from opdbus.services.workers import Workers

log = logging.getLogger(__name__)

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


@dataclass
class Wiring:
    """What a kind's service is started with (kinds.start_all hands it to each)."""

    config: Config
    jobs: JobManager
    checks: Workers
    health: BackendHealth
    started: dict[str, Any] = field(default_factory=dict)  # kind name -> its service

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir


class ResourceService(ABC, Generic[InfoT]):
    """A cache of one kind of resource, kept current by events; owns its tasks."""

    kind: str = "resource"  # for log lines

    def __init__(self) -> None:
        self.cache: ObservedCache[InfoT] = ObservedCache()
        self._dirty: set[str] = set()
        self._resync_wanted = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what a kind says how to do ----------------------------------------------------

    @abstractmethod
    async def _resync(self) -> None:
        """Read everything again (after a reconnection; what happened meanwhile was missed)."""

    @abstractmethod
    async def _refresh_some(self, keys: list[str]) -> None:
        """Read these objects again (store or forget each in the cache)."""

    # -- upkeep ------------------------------------------------------------------------------

    def mark(self, *keys: str) -> None:
        """Objects changed: read them again soon."""
        self._dirty.update(keys)
        self._wake.set()

    def resync(self) -> None:
        self._resync_wanted = True
        self._wake.set()

    def _start_refresher(self) -> None:
        self._spawn(self._refresh_loop(), f"{self.kind}-refresh")

    async def _refresh_loop(self) -> None:
        delay = BACKOFF_MIN
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._refresh_round()
            except Exception as e:
                # What failed is tried again after a pause that grows.
                log.warning("refreshing %s failed (again in %g s): %s", self.kind, delay, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                self._wake.set()
            else:
                delay = BACKOFF_MIN

    async def _refresh_round(self) -> None:
        if self._resync_wanted:
            self._resync_wanted = False
            self._dirty.clear()  # a resync reads everything
            try:
                await self._resync()
            except BaseException:
                self._resync_wanted = True
                raise
        dirty, self._dirty = self._dirty, set()
        if dirty:
            try:
                await self._refresh_some(sorted(dirty))
            except BaseException:
                self._dirty |= dirty
                raise

    def _every(self, seconds: float, work: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``work`` every ``seconds``; a failure is logged, never the end of it."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await work()
                except Exception as e:
                    log.debug("%s: %s", name, e)

        self._spawn(loop(), name)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
