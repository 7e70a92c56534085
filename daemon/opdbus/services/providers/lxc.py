"""The ``lxc`` provider: containers by name, with id, network, addresses, limits, state.

``running`` and ``autostart`` left out are not managed. A container's template
is chosen when it is made and never compared after. Settings that live in its
LXC config (bridge, veth, addresses, limits, id) are rewritten with the
container stopped, and it is started again if it ran. Containers the state
creates carry ``owner: state`` in op-dbus's note beside their config; prune
deletes only those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from opdbus.models.container import (
    ContainerInfo,
    ContainerState,
    CreateContainerOptions,
    Template,
)
from opdbus.models.state import Change, LxcContainer, LxcSection
from opdbus.names import container_path
from opdbus.services.cache import Memo, Notify
from opdbus.services.containers import ContainerService
from opdbus.services.jobs import JobContext
from opdbus.services.providers.base import Difference, Provider, follow_running

OWNER = "state"
MIB = 1024 * 1024
RUNNING = (ContainerState.RUNNING, ContainerState.FROZEN)
# Fields kept in the LXC config: changing one rewrites it (container stopped).
CONFIG_FIELDS = ("id", "bridge", "veth", "ipv4", "gateway", "memory", "cpus")
# Fields that change all the time and say nothing about the desired state.
NOISE = frozenset({"memory_used", "cpu_time_ns", "pid", "ipv4"})


def _veth(item: LxcContainer) -> str | None:
    return item.veth or (f"vi{item.id}" if item.bridge else None)


def _values(item: LxcContainer) -> dict[str, Any]:
    return {
        "id": item.id,
        "bridge": item.bridge,
        "veth": _veth(item),
        "ipv4": sorted(item.ipv4),
        "gateway": item.gateway,
        "memory": item.memory,
        "cpus": item.cpus,
    }


class LxcProvider(Provider):
    name = "lxc"

    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self._memo: Memo[ContainerInfo, LxcContainer] = Memo(self._container)

    def available(self) -> str | None:
        return None

    def query(self) -> LxcSection:
        # Containers made elsewhere with no id (no lxc.start.order) cannot be named
        # in a document; they are left out, so nothing is done to them.
        self._memo.keep(self.containers.cache.items.keys())
        return LxcSection(
            containers=[self._memo.get(i.name, i) for i in self.containers.all() if i.id]
        )

    @staticmethod
    def _container(info: ContainerInfo) -> LxcContainer:
        template = Template(info.template) if info.template in Template._value2member_map_ else None
        return LxcContainer(
            id=info.id,
            name=info.name,
            veth=info.veth or None,
            bridge=info.bridge or None,
            running=info.state in RUNNING,
            template=template or Template.BUSYBOX,
            ipv4=list(info.ipv4_config),
            gateway=info.gateway or None,
            memory=info.memory_limit // MIB or None,
            cpus=info.cpus or None,
            autostart=info.autostart,
        )

    def resources(self, section: BaseModel) -> Mapping[str, BaseModel]:
        assert isinstance(section, LxcSection)
        return {item.name: item for item in section.containers}

    def section(self, resources: Mapping[str, BaseModel]) -> LxcSection:
        return LxcSection(containers=[r for r in resources.values() if isinstance(r, LxcContainer)])

    def compare(self, want: BaseModel, have: BaseModel, *, exact: bool = False) -> list[Difference]:
        assert isinstance(want, LxcContainer) and isinstance(have, LxcContainer)
        out: list[Difference] = []
        wanted, current = _values(want), _values(have)
        for field in CONFIG_FIELDS:
            if wanted[field] != current[field]:
                out.append((field, current[field], wanted[field]))
        for field in ("running", "autostart"):
            value = getattr(want, field)
            if value is not None and value != getattr(have, field):
                out.append((field, getattr(have, field), value))
        return out

    def owned(self) -> set[str]:
        return {info.name for info in self.containers.all() if info.owner == OWNER}

    def targets(self, ids: set[str]) -> list[str]:
        return [container_path(name) for name in sorted(ids)]

    async def apply(self, desired: BaseModel, changes: list[Change], ctx: JobContext) -> None:
        want = self.resources(desired)
        by_id: dict[str, list[Change]] = {}
        for change in changes:
            by_id.setdefault(change.id, []).append(change)
        for name, mine in by_id.items():
            ops = {change.op for change in mine}
            if "delete" in ops:
                ctx.log(f"  delete container {name}")
                await self.containers.delete_job(name, force=True)(ctx)
                continue
            item = want[name]
            assert isinstance(item, LxcContainer)
            if "create" in ops:
                await self._create(ctx, item)
            else:
                await self._modify(ctx, item, {change.field for change in mine})

    def _options(self, item: LxcContainer, autostart: bool) -> CreateContainerOptions:
        return CreateContainerOptions(
            id=item.id,
            template=item.template,
            bridge=item.bridge,
            veth=item.veth,
            ipv4=list(item.ipv4),
            gateway=item.gateway,
            memory_mb=item.memory,
            cpus=item.cpus,
            autostart=autostart,
            start=bool(item.running),
        )

    async def _create(self, ctx: JobContext, item: LxcContainer) -> None:
        ctx.log(f"  create container {item.name} (id {item.id})")
        opts = self._options(item, bool(item.autostart))
        cid = await self.containers.prepare_create(item.name, opts, job=True)
        await self.containers.create_job(item.name, cid, opts, owner=OWNER)(ctx)

    async def _modify(self, ctx: JobContext, item: LxcContainer, fields: set[str]) -> None:
        name = item.name
        info = self.containers.get(name)
        autostart = item.autostart if item.autostart is not None else info.autostart
        if fields & set(CONFIG_FIELDS):
            ctx.log(f"  reconfigure container {name}: {', '.join(sorted(fields))}")
            await self.containers.reconfigure(ctx, name, item.id, self._options(item, autostart))
        elif "autostart" in fields:
            ctx.log(f"  container {name}: autostart {'on' if autostart else 'off'}")
            await self.containers.set_autostart(name, autostart, job=True)
        if "running" in fields or item.running is not None:
            await follow_running(
                ctx,
                f"container {name}",
                item.running,
                self.containers.get(name).state in RUNNING,
                lambda: self.containers.start_job(name),
                ("stop", lambda: self.containers.stop_job(name, timeout=None, force=False)),
            )

    def subscribe(self, callback: Callable[[], None]) -> None:
        self.containers.cache.observers.append(Notify(callback, NOISE))
