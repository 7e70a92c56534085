"""Addresses, routes and link state through netlink, never by running `ip`.

A monitor socket (rtnl.py) joined to the link, IPv4-address and IPv4-route
groups keeps an in-memory view of every link, its IPv4 addresses and the
main table's default routes, whoever changes them: reading a link's state
costs no syscall (pyroute2's name lookup dumps every link, which made a
refresh of N bridges cost O(N^2)). The initial dump and the re-reads after
a change are rtnl.py's own requests, in a thread. Changes go through
pyroute2's AsyncIPRoute, which speaks rtnetlink on the event loop itself;
it is imported on the first change, so a daemon that only watches links
never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on the first change (Netlink._writer), in a thread
    from pyroute2 import AsyncIPRoute

from opdbus.backends import rtnl
from opdbus.backends.rtnl import RtnlMonitor
from opdbus.errors import BackendFailed, BackendUnavailable

log = logging.getLogger(__name__)

MAIN_TABLE = 254
IFF_UP = 0x1


@dataclass(frozen=True)
class LinkState:
    name: str
    index: int
    up: bool  # administratively
    operstate: str  # UP, DOWN, UNKNOWN... as the kernel says
    mtu: int
    addresses: tuple[str, ...]  # IPv4 CIDRs
    gateway: str  # the main table's default route through this link, or ""


@dataclass
class _Link:
    name: str
    flags: int = 0
    operstate: str = "UNKNOWN"
    mtu: int = 0
    addresses: set[str] = field(default_factory=set)
    gateway: str = ""


def _is_default_route(message: Any) -> bool:
    table = message.get("table") or message.get("RTA_TABLE")
    return bool(
        message.get("family") == socket.AF_INET
        and message.get("dst_len") == 0
        and table == MAIN_TABLE
        and message.get("gateway")
    )


class Netlink:
    def __init__(self) -> None:
        self._ipr: AsyncIPRoute | None = None  # for changes; made on the first one
        self._open = False
        self._monitor = RtnlMonitor(self._on_message, self._on_overrun)
        self._resync: asyncio.Task[None] | None = None
        self._rechecks: dict[int, asyncio.Task[None]] = {}
        self._links: dict[int, _Link] = {}
        self._by_name: dict[str, int] = {}
        self.on_change: list[Callable[[str], None]] = []

    async def start(self) -> None:
        # Join the groups first, then dump: an event during the dump waits in
        # the monitor's socket and is applied after the dump, in order.
        self._monitor.open()
        self._open = True
        await self._dump()
        self._monitor.start()

    async def stop(self) -> None:
        self._monitor.close()
        for task in [self._resync, *self._rechecks.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._open = False
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def _ask(self, *requests: bytes) -> list[dict[str, Any]]:
        """Read the kernel's view (opdbus.backends.rtnl; pyroute2 is for changes)."""
        if not self._open:
            raise BackendUnavailable("netlink is not open")
        return await asyncio.to_thread(rtnl.ask, *requests)

    async def _dump(self) -> None:
        answers = await self._ask(rtnl.links(), rtnl.addresses(), rtnl.routes())
        self._links.clear()
        self._by_name.clear()
        for message in answers:
            self._apply(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        name = self._apply(message)
        if name:
            self._tell(name)
        if message.get("event") == "RTM_DELADDR":
            # The kernel drops routes through a deleted address's subnet
            # without an RTM_DELROUTE: read the link's gateway again.
            index = int(message.get("index") or 0)
            link = self._links.get(index)
            if link is not None and link.gateway and index not in self._rechecks:
                self._rechecks[index] = asyncio.create_task(
                    self._recheck(index), name=f"netlink-recheck-{index}"
                )

    async def _recheck(self, index: int) -> None:
        try:
            await self._query(index)
        except OSError as e:
            log.debug("re-reading link %d: %s", index, e)
        finally:
            self._rechecks.pop(index, None)

    def _tell(self, name: str) -> None:
        for callback in self.on_change:
            callback(name)

    def _on_overrun(self) -> None:
        if self._resync is None or self._resync.done():
            self._resync = asyncio.create_task(self._dump_and_tell(), name="netlink-resync")

    async def _dump_and_tell(self) -> None:
        await self._dump()
        for name in list(self._by_name):
            self._tell(name)

    def _apply(self, message: Any) -> str | None:
        """Fold one rtnetlink message into the view; the name of the link it concerns."""
        event = message.get("event", "")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            index, name = message["index"], message.get("ifname")
            if event == "RTM_DELLINK":
                gone = self._links.pop(index, None)
                if gone is not None and self._by_name.get(gone.name) == index:
                    del self._by_name[gone.name]
                return gone.name if gone else name
            link = self._links.get(index)
            if link is None:
                link = self._links[index] = _Link(name)
            elif link.name != name and self._by_name.get(link.name) == index:
                del self._by_name[link.name]  # renamed
            link.name = name
            link.flags = message["flags"]
            link.operstate = message.get("operstate") or "UNKNOWN"
            link.mtu = message.get("mtu") or 0
            self._by_name[name] = index
            return str(name)
        if event in ("RTM_NEWADDR", "RTM_DELADDR") and message.get("family") == socket.AF_INET:
            link = self._links.get(message["index"])
            if link is None:
                return None
            cidr = f"{message.get('address')}/{message['prefixlen']}"
            (link.addresses.add if event == "RTM_NEWADDR" else link.addresses.discard)(cidr)
            return link.name
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE") and _is_default_route(message):
            link = self._links.get(message.get("oif"))
            if link is None:
                return None
            gateway = message.get("gateway")
            if event == "RTM_NEWROUTE":
                link.gateway = gateway
            elif link.gateway == gateway:
                link.gateway = ""
            return link.name
        return None

    async def _writer(self) -> AsyncIPRoute:
        """pyroute2, for changing links: imported (in a thread) on the first change, so a
        daemon that only watches links never loads it (~10 MiB, 170 ms of import)."""
        if not self._open:
            raise BackendUnavailable("netlink is not open")
        if self._ipr is None:
            module = await asyncio.to_thread(importlib.import_module, "pyroute2")
            if self._ipr is None:  # another change may have made it meanwhile
                self._ipr = module.AsyncIPRoute()
        return self._ipr

    def index(self, name: str) -> int | None:
        return self._by_name.get(name)

    def state(self, name: str) -> LinkState | None:
        """What the kernel last told us about the link (no syscall)."""
        index = self._by_name.get(name)
        link = None if index is None else self._links.get(index)
        if index is None or link is None:
            return None
        return LinkState(
            name=name,
            index=index,
            up=bool(link.flags & IFF_UP),
            operstate=link.operstate,
            mtu=link.mtu,
            addresses=tuple(sorted(link.addresses)),
            gateway=link.gateway,
        )

    async def wait_for(self, name: str, timeout: float) -> LinkState:
        """The link's state once it exists (ovs-vswitchd creates a bridge's a moment later)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            state = self.state(name)
            if state is not None:
                return state
            if asyncio.get_running_loop().time() > deadline:
                raise BackendUnavailable(f"interface {name} did not appear within {timeout:g} s")
            await asyncio.sleep(0.02)

    async def _query(self, index: int) -> None:
        """Read one link from the kernel (after changing it, the view must not lag);
        observers hear of it if the view was wrong."""
        before = self._links.get(index)
        seen = (before.addresses.copy(), before.gateway) if before is not None else None
        answers = await self._ask(rtnl.links(index), rtnl.addresses(), rtnl.routes())
        for message in answers:
            if message["event"] == "RTM_NEWLINK":
                self._apply(message)
        link = self._links.get(index)
        if link is None:
            return
        link.addresses = {
            f"{a.get('address')}/{a['prefixlen']}"
            for a in answers
            if a["event"] == "RTM_NEWADDR" and a["index"] == index and a.get("address")
        }
        link.gateway = next(
            (
                str(r["gateway"])
                for r in answers
                if r["event"] == "RTM_NEWROUTE" and _is_default_route(r) and r.get("oif") == index
            ),
            "",
        )
        if seen is not None and seen != (link.addresses, link.gateway):
            self._tell(link.name)

    async def configure(
        self,
        name: str,
        *,
        addresses: list[str] | None,
        gateway: str | None,
        manage_gateway: bool,
    ) -> LinkState:
        """Make the link up with exactly ``addresses`` (None: leave them); set (or, if
        managed, clear) its gateway."""
        ipr = await self._writer()
        from pyroute2.netlink.exceptions import NetlinkError  # loaded by _writer

        state = self.state(name)
        if state is None:
            raise BackendUnavailable(f"there is no interface {name}")
        try:
            await self._query(state.index)
            state = self.state(name)
            if state is None:
                raise BackendUnavailable(f"interface {name} vanished")
            have = set(state.addresses)
            wanted = (
                have if addresses is None else {str(ipaddress.IPv4Interface(a)) for a in addresses}
            )
            for cidr in sorted(have - wanted):
                ip, prefix = cidr.split("/")
                await ipr.addr("del", index=state.index, address=ip, prefixlen=int(prefix))
            for cidr in sorted(wanted - have):
                ip, prefix = cidr.split("/")
                await ipr.addr("add", index=state.index, address=ip, prefixlen=int(prefix))
            if not state.up:
                await ipr.link("set", index=state.index, state="up")
            if gateway and gateway != state.gateway:
                await ipr.route(
                    "replace", dst="0.0.0.0/0", gateway=gateway, oif=state.index, table=MAIN_TABLE
                )
            elif manage_gateway and not gateway and state.gateway:
                try:
                    await ipr.route(
                        "del",
                        dst="0.0.0.0/0",
                        gateway=state.gateway,
                        oif=state.index,
                        table=MAIN_TABLE,
                    )
                except NetlinkError as e:
                    # Deleting the address the gateway was reached through
                    # took the route with it: gone is what we wanted.
                    if e.code != errno.ESRCH:
                        raise
            await self._query(state.index)
        except (NetlinkError, OSError) as e:
            raise BackendFailed(f"netlink: configuring {name}: {e}") from None
        final = self.state(name)
        if final is None:
            raise BackendUnavailable(f"interface {name} vanished while being configured")
        return final
