"""Backend health: the Manager's Backends property, kept current by probing.

Which backends matter depends on the mode (the op-dbus seed's dependency
matrix): agent = D-Bus + systemd (+ polkit), standalone adds Open vSwitch,
full adds LXC and libvirt. A backend the mode does not use is reported off.
The list of backends and their probes is not kept here: the daemon hands it
over from ``opdbus.kinds`` (each kind of resource names its backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from opdbus.config import Config, Mode
from opdbus.errors import BackendUnavailable, NotSupported
from opdbus.models.health import Probe

log = logging.getLogger(__name__)

EVERY_MODE = frozenset(Mode)


@dataclass(frozen=True)
class Backend:
    name: str
    modes: frozenset[Mode]  # the modes that use it
    probe: Callable[[], Awaitable[Probe]]


class BackendHealth:
    def __init__(self, config: Config, *, bus_detail: str, backends: Sequence[Backend]) -> None:
        self._config = config
        self._backends = {b.name: b for b in backends}
        self.status: dict[str, Probe] = {"dbus": Probe(True, bus_detail)}
        for name in self._backends:
            self.status[name] = Probe(False, "not probed yet")
        self.on_change: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        # Backends with a live connection report their own state (report());
        # probing them too would only race with what they know.
        self._live: set[str] = set()

    def enabled(self, name: str) -> bool:
        backend = self._backends.get(name)
        return name == "dbus" or (backend is not None and self._config.mode in backend.modes)

    def require(self, name: str) -> None:
        """Raise the right error when a method's backend cannot serve it."""
        if not self.enabled(name):
            raise NotSupported(f"{name} is off in {self._config.mode.value} mode")
        probe = self.status[name]
        if not probe.available:
            raise BackendUnavailable(probe.detail)

    def attach(self, name: str) -> None:
        """From now on ``name`` reports its own state through report()."""
        self._live.add(name)

    def report(self, name: str, available: bool, detail: str) -> None:
        self._record(name, Probe(available, detail))

    async def probe(self, name: str) -> Probe:
        """Probe one backend now; record the answer unless the backend reports its own."""
        if not self.enabled(name):
            result = Probe(False, f"off in {self._config.mode.value} mode")
        else:
            result = await self._run_probe(name)
        if name not in self._live:
            self._record(name, result)
        return result

    async def _run_probe(self, name: str) -> Probe:
        backend = self._backends.get(name)
        return await backend.probe() if backend is not None else self.status[name]

    def _record(self, name: str, result: Probe) -> None:
        old = self.status.get(name)
        if old == result:
            return
        self.status[name] = result
        if old is not None and old.available != result.available:
            level = logging.INFO if result.available else logging.WARNING
            log.log(
                level,
                "backend %s %s: %s",
                name,
                "up" if result.available else "down",
                result.detail,
            )
        for callback in self.on_change:
            callback()

    async def refresh(self) -> None:
        names = [name for name in self._backends if name not in self._live]
        results = await asyncio.gather(
            *(self.probe(name) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("probing %s failed: %s", name, result)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="backend-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._config.health.interval_seconds)
