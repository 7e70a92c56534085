"""systemd units op-dbus keeps: a cache of the watched ones, fed by systemd's signals.

systemd has hundreds of units; op-dbus watches only those a state document
names (``watch``), reads them in one ``ListUnitsByNames`` plus one
``ListUnitFilesByPatterns``, and reads a unit again when systemd says it
changed. Starting and stopping are systemd's jobs, awaited to their end; a
result other than ``done`` fails with systemd's word for it and the unit's
state. Enabling, disabling, masking change unit files and are followed by a
``Reload`` (what ``systemctl`` does).

The connection is kept: when systemd's bus goes away the backend is reported
down (Manager1.Backends) and the connection tried again with a growing pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from opdbus.backends.probes import why
from opdbus.backends.systemd1 import Systemd1, SystemdError, UnitStatus
from opdbus.config import SystemdConfig
from opdbus.errors import BackendFailed, BackendUnavailable, Failed, NotFound, Timeout
from opdbus.models.unit import UnitInfo
from opdbus.services.health import BackendHealth
from opdbus.services.jobs import JobContext
from opdbus.services.resource import BACKOFF_MAX, BACKOFF_MIN, ResourceService, Wiring

log = logging.getLogger(__name__)

BACKEND = "systemd"
CONNECT_TIMEOUT = 5.0


def _info(status: UnitStatus) -> UnitInfo:
    return UnitInfo(
        name=status.name,
        description=status.description,
        load_state=status.load_state,
        active_state=status.active_state,
        sub_state=status.sub_state,
        file_state=status.file_state,
    )


def _refused(error: SystemdError, what: str) -> Exception:
    """systemd's refusal as op-dbus's error, in systemd's own words."""
    if error.name == "org.freedesktop.systemd1.NoSuchUnit" or "not found" in error.text.lower():
        return NotFound(f"{what}: {error.text}")
    if not error.name:
        return BackendUnavailable(f"{what}: {error.text}")
    return BackendFailed(f"{what}: systemd said: {error.text}")


class UnitService(ResourceService[UnitInfo]):
    kind = "units"

    def __init__(self, config: SystemdConfig, health: BackendHealth) -> None:
        super().__init__()
        self.config = config
        self.health = health
        self.systemd = Systemd1(config.bus_address, self._heard)
        self.watched: set[str] = set()
        self.problem: str | None = "not connected yet"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.health.attach(BACKEND)
        await self._connect_once()
        self._start_refresher()
        self._spawn(self._keep_connected(), "systemd-connection")

    async def _connect_once(self) -> bool:
        try:
            version = await self.systemd.connect(CONNECT_TIMEOUT)
        except Exception as e:  # whatever it was, the backend is down and said why
            self.problem = f"systemd's bus {self.config.bus_address} is not reachable: {why(e)}"
            self.health.report(BACKEND, False, self.problem)
            return False
        self.problem = None
        self.health.report(BACKEND, True, f"systemd {version} on {self.config.bus_address}")
        self.resync()
        return True

    async def _keep_connected(self) -> None:
        delay = BACKOFF_MIN
        while True:
            if self.systemd.connected:
                await self.systemd.wait_closed()
                self.systemd.close()
                self.problem = f"the connection to systemd ({self.config.bus_address}) was lost"
                self.health.report(BACKEND, False, self.problem)
                log.warning("%s", self.problem)
                delay = BACKOFF_MIN
            await asyncio.sleep(delay)
            if await self._connect_once():
                log.info("connected to systemd again")
            else:
                delay = min(delay * 2, BACKOFF_MAX)

    async def stop(self) -> None:
        await super().stop()
        self.systemd.close()

    # -- the cache ------------------------------------------------------------------------------

    def _heard(self, name: str) -> None:
        if not name:
            self.mark(*self.watched)  # unit files changed, or a reload: read them all
        elif name in self.watched:
            self.mark(name)

    async def watch(self, names: Iterable[str]) -> None:
        """Keep these units current from now on; they are in the cache when this returns."""
        new = sorted(set(names) - self.watched)
        if not new:
            return
        self.watched.update(new)
        if self.systemd.connected:
            try:
                await self._refresh_some(new)
            except SystemdError as e:
                self.mark(*new)  # the refresh loop tries again
                raise BackendUnavailable(f"cannot read units from systemd: {e.text}") from None

    async def _resync(self) -> None:
        await self._refresh_some(sorted(self.watched))

    async def _refresh_some(self, keys: list[str]) -> None:
        wanted = [key for key in keys if key in self.watched]
        if not self.systemd.connected:
            return  # connecting again asks for a resync, which reads them all
        for status in await self.systemd.units(wanted):
            self.cache.store(status.name, _info(status))

    def get(self, name: str) -> UnitInfo:
        info = self.cache.items.get(name)
        if info is None:
            raise NotFound(f"unit {name} is not watched by op-dbus")
        return info

    def all(self) -> list[UnitInfo]:
        return [self.cache.items[name] for name in sorted(self.cache.items)]

    # -- changes (inside a job) ---------------------------------------------------------------

    async def _refreshed(self, name: str) -> UnitInfo:
        await self._refresh_some([name])
        return self.get(name)

    async def run(self, ctx: JobContext, name: str, start: bool) -> None:
        """Start or stop a unit and wait for systemd's job to end."""
        verb = "start" if start else "stop"
        try:
            job = await (self.systemd.start(name) if start else self.systemd.stop(name))
            result = await self.systemd.run_job(job, self.config.job_timeout_seconds)
        except SystemdError as e:
            raise _refused(e, f"cannot {verb} {name}") from None
        except TimeoutError:
            raise Timeout(
                f"systemd did not finish the {verb} of {name} within "
                f"{self.config.job_timeout_seconds:g} s (systemd.job_timeout_seconds)"
            ) from None
        info = await self._refreshed(name)
        ctx.log(f"    {name}: {result} ({info.active_state}/{info.sub_state})")
        if result != "done":
            raise Failed(
                f"systemd's {verb} job for {name} ended '{result}' (unit is {info.active_state}/"
                f"{info.sub_state}; see journalctl -u {name})"
            )

    async def set_files(self, ctx: JobContext, name: str, change: str) -> None:
        """``enable``, ``disable``, ``mask`` or ``unmask`` a unit file, then reload systemd."""
        calls = {
            "enable": self.systemd.enable,
            "disable": self.systemd.disable,
            "mask": self.systemd.mask,
            "unmask": self.systemd.unmask,
        }
        try:
            done = await calls[change]([name])
            await self.systemd.reload()
        except SystemdError as e:
            raise _refused(e, f"cannot {change} {name}") from None
        for kind, path, target in done:
            ctx.log(f"    {kind} {path}{' -> ' + target if target else ''}")
        await self._refreshed(name)


async def start(w: Wiring) -> UnitService:
    """The units kind, started (kinds.py): always, reporting itself down when systemd is not."""
    units = UnitService(w.config.systemd, w.health)
    await units.start()
    if units.problem:
        log.warning("systemd units: %s (tried again in the background)", units.problem)
    return units
