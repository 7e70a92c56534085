"""A DHCP client for a bridge's interface: pyroute2's asyncio client, no `dhclient`.

It runs as a task owned by the network service; each lease it gets (bound,
renewed, rebound) or loses (unbound, expired) is handed to ``on_lease`` as
an address and gateway, which the service applies through netlink like any
other addressing. Leases are kept in memory only: after a restart the
client simply asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
from pyroute2.dhcp.hooks import Hook, Trigger
from pyroute2.dhcp.leases import Lease

log = logging.getLogger(__name__)

# Called after each change of DhcpClient.lease (None: the lease is gone).
OnLease = Callable[["DhcpLease | None"], Awaitable[None]]
# A hook that outlives this is cancelled by pyroute2; netlink answers in
# milliseconds, this only bounds a wait for the bridge's configuration lock.
HOOK_TIMEOUT = 10.0


@dataclass(frozen=True)
class DhcpLease:
    address: str  # CIDR
    gateway: str | None


@dataclass
class _MemoryLease(Lease):  # type: ignore[misc]
    """pyroute2 writes leases to files in the working directory by default."""

    def dump(self) -> None:
        return None

    @classmethod
    def load(cls, interface: str) -> None:
        return None


class DhcpClient:
    """One interface's DHCP client; ``ifindex`` tells a recreated interface apart."""

    def __init__(self, interface: str, ifindex: int, on_lease: OnLease) -> None:
        self.interface = interface
        self.ifindex = ifindex
        self.lease: DhcpLease | None = None
        self._on_lease = on_lease
        self._task: asyncio.Task[None] | None = None
        self._config: ClientConfig | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name=f"dhcp-{self.interface}")

    async def stop(self, *, release: bool) -> None:
        """Stop; with ``release``, give the lease back to the server first.

        The daemon stopping does not release: the host keeps its address
        (and its connectivity) until the daemon asks again after a restart.
        """
        if self._config is not None:
            self._config.release = release
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as e:  # pyroute2 failing to say goodbye must not stop us
                log.warning("%s: DHCP client ended with %r", self.interface, e)
            self._task = None

    async def _run(self) -> None:
        async def got(lease: Lease) -> None:
            cidr = f"{lease.ip}/{lease.prefixlen}"
            try:
                gateway = lease.default_gateway
            except LookupError:  # the server offered no router
                gateway = None
            log.info("%s: DHCP lease %s (gateway %s)", self.interface, cidr, gateway or "none")
            self.lease = DhcpLease(cidr, gateway)
            await self._on_lease(self.lease)

        async def lost(lease: Lease) -> None:
            log.info("%s: DHCP lease gone", self.interface)
            self.lease = None
            await self._on_lease(None)

        self._config = config = ClientConfig(
            interface=self.interface,
            lease_type=_MemoryLease,
            hooks=(
                Hook(got, {Trigger.BOUND, Trigger.RENEWED, Trigger.REBOUND}),
                Hook(lost, {Trigger.UNBOUND, Trigger.EXPIRED}),
            ),
            handle_signals=False,  # the daemon owns its signals
            write_pidfile=False,
            release=True,
            hook_timeout=HOOK_TIMEOUT,
        )
        try:
            async with AsyncDHCPClient(config) as client:
                await client.bootstrap()
                await asyncio.Event().wait()  # until stop() cancels us
        except OSError as e:
            log.warning("%s: DHCP client stopped: %s", self.interface, e)
