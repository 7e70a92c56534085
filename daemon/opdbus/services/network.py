"""Bridges and ports on Open vSwitch, and layer 3 on a bridge's own interface.

OVSDB (through the IDL cache) is the truth for bridges and ports; the kernel
(through netlink) for addresses, gateway and link state. A bridge's wanted
addressing is kept with the bridge, in its ``external_ids`` (``opdbus:*``
keys) and ``mtu_request``, so it survives daemon restarts and is applied
again whenever the bridge's interface (re)appears -- for instance after
ovs-vswitchd restarts and recreates it.

Every change, whoever made it, ends in one refresh of the bridges it
touched; observers (the bus adapter) hear only about fields that changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

from opdbus.backends.netlink import LinkState, Netlink
from opdbus.backends.ovsdb import commands
from opdbus.backends.ovsdb.client import Changes, OvsdbClient
from opdbus.backends.ovsdb.rows import PortRow, RowId, row_uuid
from opdbus.backends.ovsdb.txn import Txn
from opdbus.errors import BackendFailed, InvalidArgs, NotFound, OpdbusError
from opdbus.models.network import (
    Addressing,
    BridgeInfo,
    BridgeOptions,
    PortInfo,
    PortSpec,
    PortType,
)
from opdbus.names import bridge_path
from opdbus.services.resource import ResourceService, Wiring

if TYPE_CHECKING:
    # Imported at run time where used: opdbus.kinds loads it, off the event
    # loop, with the network kind (never in agent mode).
    from opdbus.backends.dhcp import DhcpClient, DhcpLease

log = logging.getLogger(__name__)

KEY_ADDRESSES = "opdbus:addresses"
KEY_GATEWAY = "opdbus:gateway"
KEY_DHCP = "opdbus:dhcp"
ADDRESSING_KEYS = frozenset({KEY_ADDRESSES, KEY_GATEWAY, KEY_DHCP})
# Who made the bridge: "state" for the declarative state (only those are pruned).
KEY_OWNER = "opdbus:owner"
RESERVED_PREFIX = "opdbus:"
LINK_TIMEOUT = 5.0
OVSDB_SYNC_WAIT = 2.0  # at start: how long the bridges may take to be read
BY_NAME = operator.attrgetter("name")


def wanted_addressing(external_ids: dict[str, str], mtu: int | None) -> Addressing:
    addresses = [a for a in external_ids.get(KEY_ADDRESSES, "").split(",") if a]
    return Addressing(
        addresses=addresses,
        gateway=external_ids.get(KEY_GATEWAY) or None,
        dhcp=external_ids.get(KEY_DHCP) == "true",
        mtu=mtu,
    )


def addressing_ids(addressing: Addressing) -> dict[str, str]:
    """The opdbus:* external_ids that record what a bridge's addressing should be."""
    ids = {}
    if addressing.addresses:
        ids[KEY_ADDRESSES] = ",".join(addressing.addresses)
    if addressing.gateway:
        ids[KEY_GATEWAY] = addressing.gateway
    if addressing.dhcp:
        ids[KEY_DHCP] = "true"
    return ids


def user_ids(external_ids: dict[str, str]) -> dict[str, str]:
    if any(key.startswith(RESERVED_PREFIX) for key in external_ids):
        raise InvalidArgs(f"external_ids keys starting with {RESERVED_PREFIX!r} are op-dbus's own")
    return dict(external_ids)


def port_spec(port: PortInfo) -> PortSpec:
    """What an existing port is, as the PortSpec that would make it again."""
    kind = {"internal": PortType.INTERNAL, "patch": PortType.PATCH}.get(port.type, PortType.SYSTEM)
    return PortSpec(
        name=port.name,
        type=kind,
        tag=port.tag,
        trunks=list(port.trunks),
        peer=port.peer if kind is PortType.PATCH else None,
    )


def _recreate(tx: Txn, info: BridgeInfo) -> None:
    """Make a deleted bridge again, with its ports (the undo of a late deletion)."""
    commands.add_bridge(
        tx,
        info.name,
        datapath_type=info.datapath_type,
        fail_mode=info.fail_mode or None,
        stp=info.stp,
        external_ids=dict(info.external_ids),
        mtu=None,
    )
    for port in info.ports:
        if port.name != info.name:
            commands.add_port(tx, info.name, port_spec(port))


class NetworkService(ResourceService[BridgeInfo]):
    kind = "bridges"

    def __init__(
        self,
        ovsdb: OvsdbClient,
        netlink: Netlink,
        *,
        default_datapath: str,
        on_status: Callable[[bool, str], None],
        busy: Callable[[str, str], None] = lambda target, what: None,
    ) -> None:
        super().__init__()  # the cache is keyed by bridge name
        self.ovsdb = ovsdb
        # Raises Busy when a job (an apply of the desired state) holds the bridge.
        self._busy = busy
        self.netlink = netlink
        self.default_datapath = default_datapath
        self.bridges = self.cache.items
        self._on_status = on_status
        self._link_index: dict[str, int] = {}  # bridge -> ifindex when last configured
        # One configuration of a bridge's interface at a time (a caller's and
        # the reconciler's would otherwise race to add the same address).
        self._locks: dict[str, asyncio.Lock] = {}
        self._ports_memo: dict[RowId, tuple[int, PortInfo]] = {}
        self._refreshing: set[str] = set()  # taken by the refresher, not done yet
        self._dhcp: dict[str, DhcpClient] = {}  # bridge -> its running client
        # The DHCP client's module is imported (in a thread) when a bridge first wants one:
        # importing it on the loop while a thread still runs it would wait on the import lock.
        self._dhcp_loading = asyncio.Lock()
        self._dhcp_loaded = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.ovsdb.on_status.append(self._status)
        self.ovsdb.on_change.append(self._ovs_changed)
        self.netlink.on_change.append(self._link_changed)
        await self.netlink.start()
        await self.ovsdb.start()
        self._start_refresher()

    async def stop(self) -> None:
        await super().stop()
        clients, self._dhcp = list(self._dhcp.values()), {}
        for client in clients:
            await client.stop(release=False)
        await self.ovsdb.stop()
        await self.netlink.stop()

    def _status(self, connected: bool, detail: str) -> None:
        self._on_status(connected, detail)

    def _ovs_changed(self, changes: Changes) -> None:
        self.mark(*(changes.added | changes.changed | changes.removed))

    def _link_changed(self, name: str) -> None:
        if name in self.bridges or self.ovsdb.cache.bridge(name) is not None:
            self.mark(name)

    async def _refresh_some(self, keys: list[str]) -> None:
        self._refreshing.update(keys)
        for name in keys:
            try:
                await self.refresh(name)
            except OpdbusError as e:  # one bridge's trouble does not hold up the others
                log.warning("bridge %s: %s", name, e)
            finally:
                self._refreshing.discard(name)

    async def _resync(self) -> None:
        await self.refresh_all()

    async def refresh_all(self) -> None:
        for name in sorted(set(self.ovsdb.cache.bridge_names()) | set(self.bridges)):
            await self.refresh(name)

    async def refresh(self, name: str) -> BridgeInfo | None:
        """Recompute one bridge from OVSDB and the kernel; tell observers what changed."""
        # Computed from the current cache, this satisfies any pending mark: the
        # refresher need not do it again (a change's caller refreshes at once).
        self._dirty.discard(name)
        info = self._info(name)
        if info is None:
            if name in self.bridges:
                self.cache.forget(name)
                self._link_index.pop(name, None)
            await self._follow_dhcp(name, wanted=False, release=False)
            return None
        self.cache.store(name, info)
        await self._reconcile(info)
        return info

    def _port_info(self, port: PortRow) -> PortInfo:
        """PortInfo of a port, made again only when its rows changed.

        Without this, every change to a bridge with N ports rebuilt N models.
        """
        version = self.ovsdb.cache.port_version.get(port.uuid, -1)
        memo = self._ports_memo.get(port.uuid)
        if memo is not None and memo[0] == version:
            return memo[1]
        ifaces = self.ovsdb.cache.interfaces_of(port)
        first = ifaces[0] if ifaces else None
        info = PortInfo.model_construct(  # the rows are OVSDB's: nothing to validate
            name=port.name,
            type=(first.type or "system") if first else "",
            tag=port.tag,
            trunks=list(port.trunks),
            ofport=first.ofport if first else None,
            interfaces=[i.name for i in ifaces],
            peer=first.options.get("peer") if first else None,
        )
        self._ports_memo[port.uuid] = (version, info)
        return info

    def _info(self, name: str) -> BridgeInfo | None:
        cache = self.ovsdb.cache
        row = cache.bridge(name)
        if row is None:
            return None
        own_error = ""
        own_admin = own_link = "unknown"
        mtu_request: int | None = None
        # Unchanged ports come straight from the memo (this loop runs for every
        # change to the bridge: keep it free of calls per port).
        memo, versions, rows = self._ports_memo, cache.port_version, cache.ports
        ports = []
        for port_id in row.ports:
            known = memo.get(port_id)
            if known is not None and known[0] == versions.get(port_id, -1):
                ports.append(known[1])
            elif (port := rows.get(port_id)) is not None:
                ports.append(self._port_info(port))
        own = cache.bridge_port(row)
        for iface in cache.interfaces_of(own)[:1] if own is not None else []:
            own_error, mtu_request = iface.error, iface.mtu_request
            own_admin = iface.admin_state or "unknown"
            own_link = iface.link_state or "unknown"
        if len(self._ports_memo) > 2 * len(cache.ports) + 64:  # ports deleted meanwhile
            self._ports_memo = {k: v for k, v in self._ports_memo.items() if k in cache.ports}
        ports.sort(key=BY_NAME)
        link = self.netlink.state(name)
        wanted = wanted_addressing(dict(row.external_ids), mtu_request)
        # Not validated again: the values come from OVSDB and the kernel, and
        # validating a list of 1000 ports on each change was its main cost.
        return BridgeInfo.model_construct(
            name=name,
            uuid=row_uuid(row.uuid),
            datapath_type=row.datapath_type or "system",
            fail_mode=row.fail_mode,
            stp=row.stp_enable,
            ports=ports,
            external_ids=dict(row.external_ids),
            addresses=list(link.addresses) if link else [],
            gateway=link.gateway if link else "",
            mtu=link.mtu if link else 0,
            link_state=own_link if link else "down",
            admin_state=own_admin,
            dhcp=wanted.dhcp,
            error=own_error,
        )

    async def _reconcile(self, info: BridgeInfo) -> None:
        """Apply the wanted addressing when the bridge's interface is new (or recreated)."""
        wanted = wanted_addressing(info.external_ids, None)
        await self._follow_dhcp(info.name, wanted=wanted.dhcp, release=True)
        if not (wanted.addresses or wanted.gateway):
            return
        link = self.netlink.state(info.name)
        if link is None or self._link_index.get(info.name) == link.index:
            return
        self._link_index[info.name] = link.index  # once per interface, even if it fails
        log.info(
            "bridge %s: interface appeared; applying %s", info.name, ", ".join(wanted.addresses)
        )
        await self.configure(info.name, wanted)

    async def _follow_dhcp(self, name: str, *, wanted: bool, release: bool) -> None:
        """Run a DHCP client on the bridge's interface exactly while the bridge wants one.

        The decision and the bookkeeping happen before any await, so two
        refreshes of one bridge cannot start two clients. The DHCP client's
        module (pyroute2's, ~170 ms to import) loads first, in a thread, the
        first time a bridge wants one.
        """
        if wanted and not self._dhcp_loaded:
            async with self._dhcp_loading:  # one import; the others wait for it here
                if not self._dhcp_loaded:
                    await asyncio.to_thread(importlib.import_module, "opdbus.backends.dhcp")
                    self._dhcp_loaded = True
        link = self.netlink.state(name)
        client = self._dhcp.get(name)
        keep = wanted and link is not None and client is not None and client.ifindex == link.index
        stale = None if keep else self._dhcp.pop(name, None)
        new = None
        if wanted and link is not None and not keep:
            from opdbus.backends.dhcp import DhcpClient  # loaded above

            new = self._dhcp[name] = DhcpClient(
                name, link.index, lambda lease: self._leased(new, lease)
            )
        if stale is not None:
            # A RELEASE can only go out through the interface the lease is on.
            same = link is not None and link.index == stale.ifindex
            await stale.stop(release=release and same)
        if new is not None:
            try:
                # Up, addresses untouched: after a restart the old lease's
                # address keeps the host reachable until the new lease.
                async with self._locks.setdefault(name, asyncio.Lock()):
                    await self.netlink.configure(
                        name, addresses=None, gateway=None, manage_gateway=False
                    )
            except OpdbusError as e:
                log.warning("bridge %s: cannot bring the interface up for DHCP: %s", name, e)
            log.info("bridge %s: starting DHCP", name)
            new.start()

    async def _leased(self, client: DhcpClient | None, lease: DhcpLease | None) -> None:
        """A lease came or went: make the interface's addresses and gateway follow it."""
        if client is None or self._dhcp.get(client.interface) is not client:
            return  # stopped or replaced meanwhile: its news is stale
        dhcp = Addressing.model_construct(addresses=[], gateway=None, dhcp=True, mtu=None)
        try:
            await self.configure(client.interface, dhcp, manage_gateway=True)
        except OpdbusError as e:
            address = lease.address if lease else "no address"
            log.warning("bridge %s: cannot apply DHCP lease (%s): %s", client.interface, address, e)

    # -- queries ---------------------------------------------------------------

    def get(self, name: str) -> BridgeInfo:
        info = self.bridges.get(name)
        if info is None:
            raise NotFound(f"no bridge {name}")
        return info

    def all(self) -> list[BridgeInfo]:
        return [self.bridges[name] for name in sorted(self.bridges)]

    # -- changes -----------------------------------------------------------------

    async def create_bridge(self, name: str, options: BridgeOptions) -> BridgeInfo:
        self._busy(bridge_path(name), f"bridge {name}")
        ids = {**user_ids(options.external_ids), **addressing_ids(options)}

        def build(tx: Txn) -> None:
            commands.add_bridge(
                tx,
                name,
                datapath_type=options.datapath_type or self.default_datapath,
                fail_mode=options.fail_mode,
                stp=options.stp,
                external_ids=ids,
                mtu=options.mtu,
            )

        await self.ovsdb.transact(
            build,
            undo=lambda tx: commands.delete_bridge(tx, name),
            what=f"creating bridge {name}",
        )
        try:
            await self.check_interface_error(name, name)
            if options.addresses or options.gateway or options.dhcp:
                await self.netlink.wait_for(name, LINK_TIMEOUT)
                await self.configure(name, options)
        except BaseException:
            # No half-made bridge: take it out again, then report why.
            await asyncio.shield(self._undo(lambda tx: commands.delete_bridge(tx, name)))
            raise
        return await self._fresh(name)

    async def delete_bridge(self, name: str, *, job: bool = False) -> None:
        """``job``: called by the job that holds the bridge (not an imperative call)."""
        if not job:
            self._busy(bridge_path(name), f"bridge {name}")
        info = self.get(name)
        await self.ovsdb.transact(
            lambda tx: commands.delete_bridge(tx, name),
            undo=lambda tx: _recreate(tx, info),
            what=f"deleting bridge {name}",
        )
        await self.refresh(name)

    async def add_port(self, bridge: str, spec: PortSpec) -> BridgeInfo:
        self._busy(bridge_path(bridge), f"bridge {bridge}")
        self.get(bridge)
        if spec.type is PortType.SYSTEM and self.netlink.index(spec.name) is None:
            raise NotFound(f"there is no network interface {spec.name} to add (create it first)")
        await self.ovsdb.transact(
            lambda tx: commands.add_port(tx, bridge, spec),
            undo=lambda tx: commands.delete_port(tx, bridge, spec.name),
            what=f"adding port {spec.name} to {bridge}",
        )
        try:
            await self.check_interface_error(bridge, spec.name)
        except BaseException:
            await asyncio.shield(self._undo(lambda tx: commands.delete_port(tx, bridge, spec.name)))
            raise
        return await self._fresh(bridge)

    async def remove_port(self, bridge: str, name: str, *, job: bool = False) -> BridgeInfo:
        if not job:
            self._busy(bridge_path(bridge), f"bridge {bridge}")
        port = next((p for p in self.get(bridge).ports if p.name == name), None)
        await self.ovsdb.transact(
            lambda tx: commands.delete_port(tx, bridge, name),
            undo=None
            if port is None
            else lambda tx: commands.add_port(tx, bridge, port_spec(port)),
            what=f"removing port {name} from {bridge}",
        )
        return await self._fresh(bridge)

    async def set_addresses(self, bridge: str, addressing: Addressing) -> BridgeInfo:
        self._busy(bridge_path(bridge), f"bridge {bridge}")
        info = self.get(bridge)
        kept = {k: v for k, v in info.external_ids.items() if k not in ADDRESSING_KEYS}
        ids = {**kept, **addressing_ids(addressing)}
        before = wanted_addressing(info.external_ids, None)
        await self.ovsdb.transact(
            lambda tx: commands.update_bridge(tx, bridge, external_ids=ids, mtu=addressing.mtu),
            undo=lambda tx: commands.update_bridge(
                tx, bridge, external_ids=info.external_ids, mtu=info.mtu or None
            ),
            what=f"setting the addresses of {bridge}",
        )
        try:
            await self.netlink.wait_for(bridge, LINK_TIMEOUT)
            await self.configure(bridge, addressing, manage_gateway=True)
        except BaseException:
            await asyncio.shield(
                self._undo(
                    lambda tx: commands.update_bridge(tx, bridge, external_ids=info.external_ids)
                )
            )
            with contextlib.suppress(OpdbusError):
                await self.configure(bridge, before, manage_gateway=True)
            raise
        return await self._fresh(bridge)

    async def configure(
        self, name: str, addressing: Addressing, *, manage_gateway: bool = False
    ) -> LinkState:
        addresses, gateway = list(addressing.addresses), addressing.gateway
        if addressing.dhcp:  # whatever the current lease says; none yet: no address
            client = self._dhcp.get(name)
            lease = client.lease if client is not None else None
            addresses, gateway = ([lease.address], lease.gateway) if lease else ([], None)
        async with self._locks.setdefault(name, asyncio.Lock()):
            link = await self.netlink.configure(
                name, addresses=addresses, gateway=gateway, manage_gateway=manage_gateway
            )
            self._link_index[name] = link.index
            return link

    async def check_interface_error(self, bridge: str, iface: str) -> None:
        """ovs-vswitchd records why it could not open an interface: treat that as failure.

        Not for patch ports: a missing peer is the normal state between adding
        one end and the other, and shows in the bridge's Ports meanwhile.
        """
        cache = self.ovsdb.cache
        row = cache.bridge(bridge)
        for port in cache.ports_of(row) if row else []:
            for interface in cache.interfaces_of(port):
                if interface.name == iface and interface.error and interface.type != "patch":
                    raise BackendFailed(f"ovs-vswitchd could not set up {iface}: {interface.error}")

    async def _undo(self, build: Callable[[Txn], None]) -> None:
        try:
            await self.ovsdb.transact(build)
        except OpdbusError as e:
            log.error("could not undo a failed change: %s", e)

    async def _fresh(self, name: str) -> BridgeInfo:
        """The bridge as it is now that a change of ours is in the cache.

        The change's events were folded in (and the bridge marked) before the
        transaction returned; if the refresher has already recomputed it,
        that result is current and is not made a second time.
        """
        info = self.bridges.get(name)
        if info is None or name in self._dirty or name in self._refreshing:
            info = await self.refresh(name)
        if info is None:
            raise NotFound(f"bridge {name} vanished meanwhile")
        return info


async def start(w: Wiring) -> NetworkService:
    """The bridges kind, started (kinds.py): connected to OVSDB and netlink."""
    config = w.config.ovsdb
    w.health.attach("ovsdb")
    ovsdb = OvsdbClient(
        config.remote,
        apply_timeout=config.apply_timeout_seconds,
        request_timeout=config.request_timeout_seconds,
    )
    network = NetworkService(
        ovsdb,
        Netlink(),
        default_datapath=config.datapath_type,
        on_status=lambda ok, detail: w.health.report("ovsdb", ok, detail),
        busy=w.jobs.check_idle,
    )
    await network.start()
    # Bounded: with ovsdb-server up, the bridges are on the bus at READY;
    # without it, we serve anyway and they appear when it comes.
    if await ovsdb.wait_settled(OVSDB_SYNC_WAIT):
        await network.refresh_all()
    return network
