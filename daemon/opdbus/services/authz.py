"""Who may call a mutating method: the daemon's own check behind the bus policy.

Allowed: root; a uid listed in ``auth.admin_uids``; a member of
``auth.admin_group``; otherwise, when polkitd is on the bus, whoever polkit
authorizes for the method's action id. Everyone else gets NotAuthorized.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from opdbus.config import AuthConfig
from opdbus.errors import NotAuthorized

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Caller:
    """A bus peer as the bus daemon vouches for it."""

    sender: str
    uid: int
    pid: int
    gids: frozenset[int] | None  # None: the bus did not say


@dataclass(frozen=True, slots=True)
class PolkitAnswer:
    authorized: bool
    challenge: bool  # polkit would allow it after interactive authentication


class PolkitAuthority(Protocol):
    async def available(self) -> bool: ...

    async def check(
        self, sender: str, action_id: str, details: Mapping[str, str]
    ) -> PolkitAnswer: ...


class Authorizer:
    def __init__(self, config: AuthConfig, polkit: PolkitAuthority | None) -> None:
        self._config = config
        self._polkit = polkit if config.polkit else None
        self._admin_gid: int | None = None
        self._admin_gid_at = float("-inf")

    async def is_admin(self, caller: Caller) -> bool:
        """Root, an admin uid or the admin group (no polkit): may see what only admins may."""
        if caller.uid == 0 or caller.uid in self._config.admin_uids:
            return True
        gid = await self._group_gid()
        return gid is not None and gid in await self._groups_of(caller)

    async def authorize(
        self, caller: Caller, action_id: str, *, what: str, details: Mapping[str, str]
    ) -> str:
        """Return on what grounds the caller is allowed, or raise NotAuthorized."""
        if caller.uid == 0:
            return "root"
        if caller.uid in self._config.admin_uids:
            return "admin uid"
        gid = await self._group_gid()
        if gid is not None and gid in await self._groups_of(caller):
            return f"group {self._config.admin_group}"
        if self._polkit is not None and await self._polkit.available():
            answer = await self._polkit.check(caller.sender, action_id, details)
            if answer.authorized:
                return "polkit"
            if answer.challenge:
                log.warning(
                    "uid %d denied %s: polkit wants interactive authentication", caller.uid, what
                )
                raise NotAuthorized(
                    f"{what} needs authentication for {action_id}, which this daemon cannot ask "
                    "for; ask an administrator to grant it in a polkit rule"
                )
        log.warning("uid %d (pid %d) denied %s", caller.uid, caller.pid, what)
        raise NotAuthorized(
            f"uid {caller.uid} may not call {what}: it needs root, membership in group "
            f"'{self._config.admin_group}', or a polkit grant for {action_id}"
        )

    async def _group_gid(self) -> int | None:
        # /etc/group is read in a thread and cached: it can change while we run.
        if time.monotonic() - self._admin_gid_at > GROUP_CACHE_SECONDS:
            self._admin_gid = await asyncio.to_thread(_lookup_gid, self._config.admin_group)
            self._admin_gid_at = time.monotonic()
        return self._admin_gid

    @staticmethod
    async def _groups_of(caller: Caller) -> frozenset[int]:
        if caller.gids is not None:
            return caller.gids
        return await asyncio.to_thread(_groups_of_uid, caller.uid)


def _lookup_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _groups_of_uid(uid: int) -> frozenset[int]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return frozenset()
    return frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
