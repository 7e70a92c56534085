"""Mirror an ObservedCache onto the bus: one object per entry, PropertiesChanged per change."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic

from opdbus.bus.base import BusContext, OpdbusInterface
from opdbus.services.cache import InfoT, ObservedCache

TRIM_AFTER = 256  # objects exported or dropped in a row before the heap is trimmed


class CacheExporter(Generic[InfoT]):
    """The cache's observer: exports ``make(key)`` at ``path(key)`` while the entry exists.

    ``fields`` maps model fields to property names; a changed field not in it
    (nothing the bus shows) sends nothing. ``too_big`` names properties that,
    when their predicate holds for the new value, are only said to have
    changed (invalidated) rather than sent: marshalling a bridge's thousand
    ports on every change would make adding the Nth port cost O(N).
    """

    def __init__(
        self,
        ctx: BusContext,
        cache: ObservedCache[InfoT],
        *,
        make: Callable[[str], OpdbusInterface],
        path: Callable[[str], str],
        fields: Mapping[str, str],
        too_big: Mapping[str, Callable[[InfoT], bool]] | None = None,
    ) -> None:
        self._ctx = ctx
        self._cache = cache
        self._make = make
        self._path = path
        self._fields = fields
        self._too_big = too_big or {}
        self._objects: dict[str, OpdbusInterface] = {}
        self._churn = 0  # objects exported or dropped since the last trim was asked for

    def attach(self) -> None:
        for key, info in sorted(self._cache.items.items()):
            self.added(key, info)
        self._cache.observers.append(self)

    def added(self, key: str, info: InfoT) -> None:
        if key in self._objects:
            return
        obj = self._make(key)
        self._objects[key] = obj
        self._ctx.bus.export(self._path(key), obj)
        self._churned()

    def changed(self, key: str, info: InfoT, fields: set[str]) -> None:
        obj = self._objects.get(key)
        if obj is None:
            self.added(key, info)
            return
        names = sorted(self._fields[f] for f in fields if f in self._fields)
        invalidated = [n for n in names if n in self._too_big and self._too_big[n](info)]
        sent = [n for n in names if n not in invalidated]
        if sent or invalidated:
            obj.emit_properties_changed({name: getattr(obj, name) for name in sent}, invalidated)

    def removed(self, key: str) -> None:
        if self._objects.pop(key, None) is not None:
            self._ctx.bus.unexport(self._path(key))
            self._churned()

    def _churned(self) -> None:
        # Loading thousands of objects (the first read of 5000 domains: their
        # XML, the parse) leaves the heap far bigger than what stays; glibc
        # keeps it. Ask for a trim once things are quiet (BusContext.on_large_call).
        self._churn += 1
        if self._churn >= TRIM_AFTER:
            self._churn = 0
            self._ctx.on_large_call()


@dataclass(frozen=True)
class Exported:
    """One kind of resource as the server sees it (the daemon builds these from opdbus.kinds)."""

    interface: type[OpdbusInterface]
    exporter: Callable[[BusContext], CacheExporter[Any]] | None  # None: not running here
