"""Backend health: the Manager's Backends property, kept current by probing.

Which backends matter depends on the mode (the op-dbus seed's dependency
matrix): agent = D-Bus + systemd (+ polkit), standalone adds Open vSwitch,
full adds LXC and libvirt. A backend the mode does not use is reported off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from opdbus.backends.probes import Probe, probe_libvirt, probe_lxc, probe_ovsdb, probe_systemd
from opdbus.config import Config, Mode
from opdbus.errors import BackendUnavailable, NotSupported

log = logging.getLogger(__name__)

ALL_BACKENDS = ("dbus", "polkit", "systemd", "ovsdb", "libvirt", "lxc")
_MODE_BACKENDS: dict[Mode, frozenset[str]] = {
    Mode.AGENT: frozenset({"dbus", "polkit", "systemd"}),
    Mode.STANDALONE: frozenset({"dbus", "polkit", "systemd", "ovsdb"}),
    Mode.FULL: frozenset(ALL_BACKENDS),
}


def backend_enabled(mode: Mode, name: str) -> bool:
    return name in _MODE_BACKENDS[mode]


class BackendHealth:
    def __init__(
        self,
        config: Config,
        *,
        bus_detail: str,
        polkit_probe: Callable[[], Awaitable[Probe]],
    ) -> None:
        self._config = config
        self._polkit_probe = polkit_probe
        self.status: dict[str, Probe] = {
            name: Probe(False, "not probed yet") for name in ALL_BACKENDS
        }
        self.status["dbus"] = Probe(True, bus_detail)
        self.on_change: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        # Backends with a live connection report their own state (report());
        # probing them too would only race with what they know.
        self._live: set[str] = set()

    def enabled(self, name: str) -> bool:
        return backend_enabled(self._config.mode, name)

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
        timeout = self._config.health.timeout_seconds
        if name == "polkit":
            return await self._polkit_probe()
        if name == "systemd":
            return await probe_systemd()
        if name == "ovsdb":
            return await probe_ovsdb(self._config.ovsdb.remote, timeout)
        if name == "libvirt":
            return await probe_libvirt(self._config.libvirt.uri, timeout)
        if name == "lxc":
            return await probe_lxc(self._config.lxc.path)
        return self.status[name]

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
        names = [name for name in ALL_BACKENDS if name != "dbus" and name not in self._live]
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
