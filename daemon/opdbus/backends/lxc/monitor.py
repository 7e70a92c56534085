"""``lxc-monitor``: every state change of every container in one lxcpath, as it happens.

It reports changes whoever causes them (this daemon, ``lxc-start`` by hand, a
container's init dying), so the cache never polls. The monitor process is
restarted if it ends; after each (re)start the caller re-reads everything,
since changes in between were not seen.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path

from opdbus.backends import process

log = logging.getLogger(__name__)

# 'c1' changed state to [RUNNING]   /   'c1' exited with status [0]
_EVENT = re.compile(
    r"'(?P<name>[^']+)' (?:changed state to|exited with status) \[(?P<what>[^\]]*)\]"
)
RESTART_DELAY = 1.0
CONNECT_DELAY = 0.2


class Monitor:
    def __init__(
        self,
        path: Path,
        *,
        on_change: Callable[[str, str], None],
        on_connected: Callable[[], None],
    ) -> None:
        self.path = path
        self._on_change = on_change
        self._on_connected = on_connected
        self._process: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        """Until cancelled: keep one lxc-monitor running and pass its events on."""
        try:
            while True:
                await self._watch_once()
                await asyncio.sleep(RESTART_DELAY)
        finally:
            await self._end()

    async def _watch_once(self) -> None:
        await asyncio.to_thread(self.path.mkdir, parents=True, exist_ok=True)
        self._process = await process.spawn(
            ["lxc-monitor", "-P", str(self.path), "-n", ".*"], stderr=asyncio.subprocess.DEVNULL
        )
        assert self._process.stdout is not None
        # lxc-monitor says nothing when it has reached lxc-monitord: give it a
        # moment, then the caller reads everything (finding what came before).
        asyncio.get_running_loop().call_later(CONNECT_DELAY, self._on_connected)
        while line := await self._process.stdout.readline():
            match = _EVENT.search(line.decode(errors="replace"))
            if match:
                self._on_change(match["name"], match["what"])
        status = await self._process.wait()
        process.forget(self._process)
        log.warning("lxc-monitor for %s ended (status %s); restarting it", self.path, status)
        self._process = None

    async def _end(self) -> None:
        running, self._process = self._process, None
        if running is not None:
            await asyncio.shield(process.end(running, grace=5))
