"""The snapshot cache (config ``cache.*``; NixOS ``enableCache``): keep, list, prune.

What changes the host asks here first: a state apply keeps its checkpoint,
a sync keeps the source tree it is about to overwrite. Keeping never fails
the change it guards -- a snapshot that cannot be made is logged in the
job and the change goes on (the checkpoint itself is still written to the
state directory, as without the cache). After each snapshot the cache is
pruned: older than ``max_age_days`` goes, then the oldest until the whole
is under ``max_bytes``; the newest of each kind always stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from opdbus.backends import snapshots
from opdbus.backends.snapshots import Snapshot
from opdbus.config import CacheConfig
from opdbus.errors import InvalidArgs, NotSupported

log = logging.getLogger(__name__)

KINDS = snapshots.KINDS
OFF = "the snapshot cache is off (cache.enabled is false; NixOS: services.op-dbus.enableCache)"


class SnapshotCache:
    def __init__(self, config: CacheConfig, state_dir: Path) -> None:
        self.config = config
        self.root = state_dir / "@cache"
        self._lock = asyncio.Lock()  # one snapshot or prune at a time
        self._btrfs: bool | None = None
        self._known: dict[Path, Snapshot] = {}  # looked at already (never change)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def require(self) -> None:
        if not self.enabled:
            raise NotSupported(OFF)

    async def start(self) -> None:
        if not self.enabled:
            return
        await asyncio.to_thread(self.root.mkdir, 0o700, True, True)
        self._btrfs = await asyncio.to_thread(snapshots.can_btrfs, self.root)
        for path in await asyncio.to_thread(snapshots.remove_partial, self.root):
            log.info("cache: removed %s, left by a snapshot that was interrupted", path)
        how = "btrfs read-only subvolumes" if self._btrfs else "hard-linked trees"
        log.info("cache: snapshots in %s as %s", self.root, how)

    async def keep_checkpoint(self, data: dict[str, Any]) -> Snapshot | None:
        if not self.enabled:
            return None
        async with self._lock:
            path = await asyncio.to_thread(
                snapshots.new_path, self.root, "checkpoints", str(data["id"]), ".json"
            )
            await asyncio.to_thread(snapshots.keep_file, data, path)
            await self._prune()
        return await self._entry(path)

    async def keep_tree(self, src: Path, label: str) -> Snapshot | None:
        """Keep ``src`` as it is now; None when the cache is off or there is nothing yet."""
        if not self.enabled or not await asyncio.to_thread(src.is_dir):
            return None
        async with self._lock:
            path = await asyncio.to_thread(snapshots.new_path, self.root, "source", label)
            await asyncio.to_thread(snapshots.keep_tree, src, path, btrfs=bool(self._btrfs))
            await self._prune()
        return await self._entry(path)

    async def _entry(self, path: Path) -> Snapshot | None:
        return self._known.get(path)  # _prune, just before, listed it

    async def _entries(self) -> list[Snapshot]:
        # One listing at a time (the caller holds _lock): it updates _known.
        return await asyncio.to_thread(snapshots.entries, self.root, self._known)

    async def list(self, kind: str | None = None) -> list[Snapshot]:
        self.require()
        if kind is not None and kind not in KINDS:
            raise InvalidArgs(f"kind: {kind!r} is not one of {', '.join(KINDS)} (or empty: all)")
        async with self._lock:
            found = await self._entries()
        return [s for s in found if kind is None or s.kind == kind]

    async def _prune(self) -> None:
        found = await self._entries()
        newest = {s.kind: s for s in found}  # sorted oldest first: the last of each wins
        keep = set(newest.values())
        cutoff = time.time_ns() // 1000 - int(self.config.max_age_days * 86400e6)
        gone = [s for s in found if s.created_us < cutoff and s not in keep]
        left = [s for s in found if s not in gone]
        total = sum(s.bytes for s in left)
        for snap in left:
            if total <= self.config.max_bytes:
                break
            if snap in keep:
                continue
            gone.append(snap)
            total -= snap.bytes
        for snap in gone:
            await asyncio.to_thread(snapshots.remove, snap.path)
            self._known.pop(snap.path, None)
            log.info("cache: pruned %s/%s (%d bytes)", snap.kind, snap.path.name, snap.bytes)
