"""What the bus shows of a backend's objects: a dict kept current by events, with observers.

The services store what they read; observers (the bus exporters) hear which
fields changed. Waiters block until an object satisfies a condition, woken by
each change rather than by polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

InfoT = TypeVar("InfoT", bound=BaseModel)
InfoT_contra = TypeVar("InfoT_contra", bound=BaseModel, contravariant=True)


class Observer(Protocol[InfoT_contra]):
    def added(self, key: str, info: InfoT_contra) -> None: ...
    def changed(self, key: str, info: InfoT_contra, fields: set[str]) -> None: ...
    def removed(self, key: str) -> None: ...


class ObservedCache(Generic[InfoT]):
    def __init__(self) -> None:
        self.items: dict[str, InfoT] = {}
        self.observers: list[Observer[InfoT]] = []
        self._waiters: list[asyncio.Future[None]] = []

    def store(self, key: str, info: InfoT) -> None:
        old = self.items.get(key)
        if old is None:
            self.items[key] = info
            for observer in self.observers:
                observer.added(key, info)
        else:
            fields = {f for f in type(info).model_fields if getattr(old, f) != getattr(info, f)}
            if fields:
                self.items[key] = info
                for observer in self.observers:
                    observer.changed(key, info, fields)
            # else the old object stays: an entry is replaced only when it changed,
            # so what was computed from it (a Memo) stays valid.
        self._wake()

    def forget(self, key: str) -> None:
        if self.items.pop(key, None) is not None:
            for observer in self.observers:
                observer.removed(key)
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(
        self, key: str, done: Callable[[InfoT | None], bool], timeout: float
    ) -> bool:
        """Until the object under ``key`` satisfies ``done`` (None: it is gone), or False."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while not done(self.items.get(key)):
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            return False
        return True


class Notify(Generic[InfoT]):
    """An observer that calls back on any change but to the ``ignore``d fields (usage counters)."""

    def __init__(self, callback: Callable[[], None], ignore: frozenset[str] = frozenset()) -> None:
        self._callback = callback
        self._ignore = ignore

    def added(self, key: str, info: InfoT) -> None:
        self._callback()

    def changed(self, key: str, info: InfoT, fields: set[str]) -> None:
        if fields - self._ignore:
            self._callback()

    def removed(self, key: str) -> None:
        self._callback()


ValueT = TypeVar("ValueT")


class Memo(Generic[InfoT, ValueT]):
    """What was computed from a cache entry, computed again only when the entry is replaced.

    A provider's query turns every entry into its document form; with this, a
    query of 100 unchanged bridges builds nothing (the cache keeps an entry's
    object while it does not change).
    """

    def __init__(self, make: Callable[[InfoT], ValueT]) -> None:
        self._make = make
        self._done: dict[str, tuple[InfoT, ValueT]] = {}

    def get(self, key: str, info: InfoT) -> ValueT:
        hit = self._done.get(key)
        if hit is not None and hit[0] is info:
            return hit[1]
        value = self._make(info)
        self._done[key] = (info, value)
        return value

    def keep(self, keys: Collection[str]) -> None:
        """Forget entries no longer in the cache (call now and then)."""
        if len(self._done) > 2 * len(keys) + 64:
            self._done = {k: v for k, v in self._done.items() if k in keys}
