"""Addresses, routes and link state through netlink (pyroute2), never by running `ip`.

pyroute2's AsyncIPRoute speaks rtnetlink on the event loop itself, so
nothing here blocks. A second socket joined to the link, IPv4-address and
IPv4-route groups reports every change, whoever made it, by interface name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK

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


async def _all(result: Awaitable[Any]) -> list[Any]:
    """pyroute2 answers dumps with an async iterator; collect it."""
    value = await result
    if hasattr(value, "__aiter__"):
        return [item async for item in value]
    return list(value) if isinstance(value, list | tuple) else [value]


class Netlink:
    def __init__(self) -> None:
        self._ipr: AsyncIPRoute | None = None
        self._monitor: AsyncIPRoute | None = None
        self._watch: asyncio.Task[None] | None = None
        self._names: dict[int, str] = {}
        self.on_change: list[Callable[[str], None]] = []

    async def start(self) -> None:
        self._ipr = AsyncIPRoute()
        self._monitor = AsyncIPRoute()
        await self._monitor.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE)
        for link in await _all(self._ipr.link("dump")):
            self._names[link["index"]] = link.get("ifname")
        self._watch = asyncio.create_task(self._watch_events(), name="netlink-monitor")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for ipr in (self._monitor, self._ipr):
            if ipr is not None:
                ipr.close()
        self._ipr = self._monitor = None

    async def _watch_events(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                async for message in self._monitor.get():
                    self._dispatch(message)
            except NetlinkError as e:
                log.warning("netlink monitor: %s", e)
                await asyncio.sleep(0.1)

    def _dispatch(self, message: Any) -> None:
        event = message.get("event", "")
        index = message.get("index") if "LINK" in event or "ADDR" in event else message.get("oif")
        if "LINK" in event:
            name = message.get("ifname")
            if event == "RTM_DELLINK":
                name = self._names.pop(index, name)
            elif name:
                self._names[index] = name
        else:
            name = self._names.get(index)
        if name:
            for callback in self.on_change:
                callback(name)

    def _ready(self) -> AsyncIPRoute:
        if self._ipr is None:
            raise BackendUnavailable("netlink is not open")
        return self._ipr

    async def index(self, name: str) -> int | None:
        found = await self._ready().link_lookup(ifname=name)
        return found[0] if found else None

    async def state(self, name: str) -> LinkState | None:
        ipr = self._ready()
        index = await self.index(name)
        if index is None:
            return None
        try:
            (link,) = await _all(ipr.link("get", index=index))
            addresses = await _all(ipr.addr("dump", index=index, family=socket.AF_INET))
            routes = await _all(ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE))
        except NetlinkError as e:
            if e.code == 19:  # ENODEV: gone meanwhile
                return None
            raise BackendFailed(f"netlink: reading {name}: {e}") from None
        gateway = next(
            (
                route.get("gateway") or ""
                for route in routes
                if route["dst_len"] == 0 and route.get("oif") == index and route.get("gateway")
            ),
            "",
        )
        return LinkState(
            name=name,
            index=index,
            up=bool(link["flags"] & IFF_UP),
            operstate=link.get("operstate") or "UNKNOWN",
            mtu=link.get("mtu") or 0,
            addresses=tuple(f"{a.get('address')}/{a['prefixlen']}" for a in addresses),
            gateway=gateway,
        )

    async def wait_for(self, name: str, timeout: float) -> LinkState:
        """The link's state once it exists (ovs-vswitchd creates a bridge's a moment later)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            state = await self.state(name)
            if state is not None:
                return state
            if asyncio.get_running_loop().time() > deadline:
                raise BackendUnavailable(f"interface {name} did not appear within {timeout:g} s")
            await asyncio.sleep(0.02)

    async def configure(
        self,
        name: str,
        *,
        addresses: list[str],
        gateway: str | None,
        manage_gateway: bool,
    ) -> LinkState:
        """Make the link up with exactly ``addresses``; set (or, if managed, clear) its gateway."""
        ipr = self._ready()
        state = await self.state(name)
        if state is None:
            raise BackendUnavailable(f"there is no interface {name}")
        wanted = {str(ipaddress.IPv4Interface(a)) for a in addresses}
        have = set(state.addresses)
        try:
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
                await ipr.route(
                    "del", dst="0.0.0.0/0", gateway=state.gateway, oif=state.index, table=MAIN_TABLE
                )
        except NetlinkError as e:
            raise BackendFailed(f"netlink: configuring {name}: {e}") from None
        final = await self.state(name)
        if final is None:
            raise BackendUnavailable(f"interface {name} vanished while being configured")
        return final
