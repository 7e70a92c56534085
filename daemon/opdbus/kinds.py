"""Every kind of resource op-dbus manages, listed once.

The daemon starts, exports and stops what this list names, the health check
probes its backends, the bus guard learns its interfaces and the declarative
state gets its providers from it. Adding a kind is its backend module, its
service module (a ResourceService with an ``async def start(w: Wiring)``), its
model, its bus module and introspection XML, its provider -- and one line in
KINDS. Nothing else iterates resources by hand.

This module is the composition: it may import every layer, and no layer
imports it but the daemon.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from opdbus.backends import probes
from opdbus.bus import bridge, container, unit, vm
from opdbus.bus.base import BusContext, OpdbusInterface
from opdbus.bus.exporter import CacheExporter, Exported
from opdbus.config import Config, Mode
from opdbus.models.health import Probe
from opdbus.services.health import EVERY_MODE, Backend
from opdbus.services.providers.base import Provider
from opdbus.services.resource import ResourceService, Wiring


class Lazy:
    """``module.name``, imported when needed: a kind's service and provider (and their
    libraries: libvirt, pyroute2) load only in a mode that runs the kind.

    ``load()`` imports in a thread: an import reads files and runs module code
    (pyroute2's takes 170 ms), which the event loop must not wait for. ``also``
    names modules the kind's calls import later (they come in the same thread).
    """

    def __init__(self, module: str, name: str, also: tuple[str, ...] = ()) -> None:
        self.module, self.name, self.also = module, name, also

    def resolve(self) -> Any:
        for extra in self.also:
            importlib.import_module(extra)
        return getattr(importlib.import_module(self.module), self.name)

    async def load(self) -> Any:
        return await asyncio.to_thread(self.resolve)


STANDALONE_UP = frozenset({Mode.STANDALONE, Mode.FULL})
FULL_ONLY = frozenset({Mode.FULL})


@dataclass(frozen=True)
class Kind:
    name: str  # the started service's key (Wiring.started, ManagerServices)
    section: str  # its provider's section of the state document
    backend: str  # its entry in Manager1.Backends
    modes: frozenset[Mode]  # the modes that run it
    probe: Callable[[Config], Awaitable[Probe]]
    # The service, started; None when it cannot run here (told in the log).
    start: Lazy | Callable[[Wiring], Awaitable[ResourceService[Any] | None]]
    interface: type[OpdbusInterface]  # the objects' bus interface (the call guard learns it)
    export: Callable[[BusContext, Any], CacheExporter[Any]]
    provider: Lazy | Callable[[Any], Provider]  # its section of the declarative state
    # Kinds whose start this one waits for (when the mode runs them); the rest
    # start at the same time as it.
    after: tuple[str, ...] = ()


def _systemd(config: Config) -> Awaitable[Probe]:
    return probes.probe_systemd(config.systemd.bus_address)


def _ovsdb(config: Config) -> Awaitable[Probe]:
    return probes.probe_ovsdb(config.ovsdb.remote, config.health.timeout_seconds)


def _libvirt(config: Config) -> Awaitable[Probe]:
    return probes.probe_libvirt(config.libvirt.uri, config.health.timeout_seconds)


def _lxc(config: Config) -> Awaitable[Probe]:
    return probes.probe_lxc(config.lxc.path)


# Units before the network (openvswitch.service may be one of them), the network
# before containers (they join bridges); VMs alongside (start_all).
KINDS: tuple[Kind, ...] = (
    Kind(
        name="units",
        section="systemd",
        backend="systemd",
        modes=EVERY_MODE,
        probe=_systemd,
        start=Lazy("opdbus.services.units", "start"),
        interface=unit.Unit1,
        export=unit.exporter,
        provider=Lazy("opdbus.services.providers.systemd", "SystemdProvider"),
    ),
    Kind(
        name="network",
        section="net",
        backend="ovsdb",
        modes=STANDALONE_UP,
        probe=_ovsdb,
        # pyroute2 (DHCP, link changes) loads on first use: opdbus.backends.netlink.
        start=Lazy("opdbus.services.network", "start", also=("opdbus.services.network_apply",)),
        interface=bridge.Bridge1,
        export=bridge.exporter,
        provider=Lazy("opdbus.services.providers.net", "NetProvider"),
        after=("units",),
    ),
    Kind(
        name="vms",
        section="vms",
        backend="libvirt",
        modes=FULL_ONLY,
        probe=_libvirt,
        start=Lazy("opdbus.services.vms", "start"),
        interface=vm.VM1,
        export=vm.exporter,
        provider=Lazy("opdbus.services.providers.vms", "VmsProvider"),
    ),
    Kind(
        name="containers",
        section="lxc",
        backend="lxc",
        modes=FULL_ONLY,
        probe=_lxc,
        start=Lazy("opdbus.services.containers", "start"),
        interface=container.Container1,
        export=container.exporter,
        provider=Lazy("opdbus.services.providers.lxc", "LxcProvider"),
        after=("network",),
    ),
)


def backends(config: Config, polkit: Callable[[], Awaitable[Probe]]) -> Sequence[Backend]:
    """What the health check probes: the bus's own services, then each kind's backend."""
    return (
        Backend("polkit", EVERY_MODE, polkit),
        *(Backend(kind.backend, kind.modes, partial(kind.probe, config)) for kind in KINDS),
    )


def enabled(config: Config) -> list[Kind]:
    return [kind for kind in KINDS if config.mode in kind.modes]


def exported(started: Mapping[str, Any]) -> list[Exported]:
    """Every kind's interface, with what exports its objects where the kind runs."""

    def exporter(kind: Kind, service: Any) -> Callable[[BusContext], CacheExporter[Any]]:
        return lambda ctx: kind.export(ctx, service)

    return [
        Exported(
            kind.interface,
            exporter(kind, started[kind.name]) if kind.name in started else None,
        )
        for kind in KINDS
    ]


async def start(kind: Kind, wiring: Wiring) -> ResourceService[Any] | None:
    """Start a kind's service, its modules imported off the event loop."""
    run = await kind.start.load() if isinstance(kind.start, Lazy) else kind.start
    service: ResourceService[Any] | None = await run(wiring)
    return service


async def start_all(kinds: Sequence[Kind], wiring: Wiring) -> None:
    """Start ``kinds`` into ``wiring.started`` (in KINDS order), each after its ``after``.

    The others start at the same time: one kind's libraries load and its
    backend answers while another's do (libvirt beside OVSDB: ~30 ms of a
    daemon's start). Every start is waited for before a failure is raised, so
    whatever did start is in ``wiring.started`` for the daemon to stop.
    """
    tasks: dict[str, asyncio.Task[None]] = {}

    async def one(kind: Kind) -> None:
        for name in kind.after:
            if name in tasks:
                await tasks[name]  # its failure is this start's too
        service = await start(kind, wiring)
        if service is not None:
            wiring.started[kind.name] = service  # what a later kind may look up

    for kind in kinds:
        tasks[kind.name] = asyncio.create_task(one(kind), name=f"start-{kind.name}")
    outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
    # In KINDS order again, whatever order they finished in: the daemon stops
    # them in reverse (containers before the network they are attached to).
    have = wiring.started
    ordered = {kind.name: have[kind.name] for kind in KINDS if kind.name in have}
    have.clear()
    have.update(ordered)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def providers(started: Mapping[str, Any]) -> list[Provider]:
    out: list[Provider] = []
    for kind in KINDS:
        if kind.name in started:
            make = await kind.provider.load() if isinstance(kind.provider, Lazy) else kind.provider
            out.append(make(started[kind.name]))
    return out


def provider_modes() -> dict[str, frozenset[Mode]]:
    """The modes each section of the state document is served in."""
    return {kind.section: kind.modes for kind in KINDS}
