"""The shared resource-service base, and the registry of kinds built on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from pydantic import BaseModel

from opdbus import kinds
from opdbus.bus.base import load_docs
from opdbus.bus.manager import ManagerServices
from opdbus.config import Config, Mode
from opdbus.errors import BackendUnavailable, NotSupported, Timeout
from opdbus.models.health import Probe
from opdbus.services import resource
from opdbus.services.cache import Memo, ObservedCache
from opdbus.services.health import BackendHealth
from opdbus.services.resource import ResourceService


class Thing(BaseModel):
    name: str
    reads: int


class Flaky(ResourceService[Thing]):
    """Reads fail ``failures`` times (as an lxc-info that times out), then work."""

    kind = "things"

    def __init__(self, failures: int, resync_failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.resync_failures = resync_failures
        self.resyncs = 0
        self.reads: list[list[str]] = []

    async def _resync(self) -> None:
        self.resyncs += 1
        if self.resync_failures:
            self.resync_failures -= 1
            raise OSError("the listing failed")
        await self._refresh_some(["listed"])

    async def _refresh_some(self, keys: list[str]) -> None:
        self.reads.append(keys)
        if self.failures:
            self.failures -= 1
            raise Timeout("lxc-info did not answer within 10 s")
        for key in keys:
            old = self.cache.items.get(key)
            self.cache.store(key, Thing(name=key, reads=(old.reads if old else 0) + 1))


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "BACKOFF_MIN", 0.01)


async def test_a_failed_read_is_retried_and_later_changes_still_arrive() -> None:
    service = Flaky(failures=2)
    service._start_refresher()
    try:
        service.mark("a")
        assert await service.cache.wait_for("a", lambda t: t is not None, 5)
        # Failed twice: the key was kept for the next round each time.
        assert service.reads == [["a"], ["a"], ["a"]]
        service.resync()
        await asyncio.sleep(0.05)
        assert service.resyncs == 1
        service.mark("b")
        assert await service.cache.wait_for("b", lambda t: t is not None, 5)
    finally:
        await service.stop()
    assert not service._tasks


async def test_a_failed_resync_is_asked_for_again() -> None:
    service = Flaky(failures=0, resync_failures=2)
    service._start_refresher()
    try:
        service.resync()
        assert await service.cache.wait_for("listed", lambda t: t is not None, 5)
        assert service.resyncs == 3
    finally:
        await service.stop()


async def test_periodic_work_survives_its_failures() -> None:
    service = Flaky(failures=0)
    calls = 0
    done = asyncio.Event()

    async def work() -> None:
        nonlocal calls
        calls += 1
        if calls >= 3:
            done.set()
        raise OSError("statistics unreadable")

    service._every(0.001, work, "stats")
    try:
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        await service.stop()
    assert calls >= 3
    assert not service._tasks


def test_the_registry_names_each_kind_once_with_its_documented_interface() -> None:
    names = [kind.name for kind in kinds.KINDS]
    assert len(names) == len(set(names))
    docs = load_docs()
    for kind in kinds.KINDS:
        assert kind.interface.INTERFACE in docs, f"{kind.name}: no introspection XML"
        # The provider serves the section the registry says.
        provider = kind.provider.resolve() if isinstance(kind.provider, kinds.Lazy) else None
        assert getattr(provider, "name", None) == kind.section


@pytest.mark.parametrize("mode", list(Mode))
def test_health_probes_what_the_registry_says_each_mode_uses(mode: Mode) -> None:
    config = Config.model_validate({"mode": mode.value})

    async def polkit() -> Probe:
        return Probe(True, "")

    health = BackendHealth(config, bus_detail="", backends=kinds.backends(config, polkit))
    assert set(health.status) == {"dbus", "polkit", "systemd"} | {k.backend for k in kinds.KINDS}
    for kind in kinds.KINDS:
        assert health.enabled(kind.backend) == (mode in kind.modes)
    assert [k.name for k in kinds.enabled(config)] == [
        k.name for k in kinds.KINDS if mode in k.modes
    ]


def test_an_unchanged_entry_keeps_its_object_so_a_memo_makes_nothing_again() -> None:
    cache: ObservedCache[Thing] = ObservedCache()
    made: list[str] = []

    def make(info: Thing) -> str:
        made.append(info.name)
        return f"{info.name}:{info.reads}"

    memo: Memo[Thing, str] = Memo(make)
    cache.store("a", Thing(name="a", reads=1))
    first = cache.items["a"]
    assert memo.get("a", first) == "a:1"
    cache.store("a", Thing(name="a", reads=1))  # read again, equal
    assert cache.items["a"] is first
    assert memo.get("a", cache.items["a"]) == "a:1"
    cache.store("a", Thing(name="a", reads=2))  # changed: made again
    assert memo.get("a", cache.items["a"]) == "a:2"
    assert made == ["a", "a"]


def test_the_manager_says_off_in_this_mode_or_unavailable_here() -> None:
    services = ManagerServices.__new__(ManagerServices)  # only the kinds part is used
    services.mode = Mode.FULL
    services.kinds = {"network": Flaky(failures=0)}
    services.in_mode = frozenset({"network", "containers"})
    assert services.running("network", "bridges") is services.kinds["network"]
    with pytest.raises(BackendUnavailable, match="containers are unavailable on this host"):
        services.running("containers", "containers")
    services.in_mode = frozenset({"network"})
    with pytest.raises(NotSupported, match="containers are off in full mode"):
        services.running("containers", "containers")


def bare_wiring() -> resource.Wiring:
    wiring = resource.Wiring.__new__(resource.Wiring)  # start_all uses only .started
    wiring.started = {}
    return wiring


async def test_kinds_start_together_each_after_those_it_names() -> None:
    vms_began = asyncio.Event()
    saw: dict[str, list[str]] = {}

    def starter(name: str) -> Callable[[resource.Wiring], Awaitable[Flaky | None]]:
        async def start(wiring: resource.Wiring) -> Flaky | None:
            saw[name] = sorted(wiring.started)
            if name == "network":
                # Only when the VMs' start runs beside it (in turn, it would wait forever).
                await asyncio.wait_for(vms_began.wait(), 5)
            if name == "vms":
                vms_began.set()
            return Flaky(failures=0)

        return start

    wiring = bare_wiring()
    await kinds.start_all([replace(k, start=starter(k.name)) for k in kinds.KINDS], wiring)
    assert "units" in saw["network"] and "network" in saw["containers"]
    # The VMs were done before the network; the daemon still sees them in KINDS order.
    assert list(wiring.started) == [k.name for k in kinds.KINDS]


async def test_a_start_that_fails_is_raised_once_the_others_are_done() -> None:
    started: list[str] = []

    def starter(name: str) -> Callable[[resource.Wiring], Awaitable[Flaky | None]]:
        async def start(wiring: resource.Wiring) -> Flaky | None:
            started.append(name)
            if name == "network":
                raise BackendUnavailable("ovsdb-server went away")
            if name == "vms":
                await asyncio.sleep(0.05)  # still starting when the network fails
            return None if name == "units" else Flaky(failures=0)

        return start

    wiring = bare_wiring()
    with pytest.raises(BackendUnavailable, match="went away"):
        await kinds.start_all([replace(k, start=starter(k.name)) for k in kinds.KINDS], wiring)
    # The VMs' start ran to its end (the daemon stops what it finds here); units
    # could not run here (None); containers, after the network, never began.
    assert list(wiring.started) == ["vms"]
    assert "containers" not in started
