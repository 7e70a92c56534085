"""The declarative state on real Open vSwitch (userspace datapath), LXC and libvirt.

What the daemon says is checked against the native tools -- ovs-vsctl, ip,
lxc-info, virsh -- not only through the daemon itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opdbus import errors, names
from opdbus.daemon import Daemon
from opdbus.models.job import JobRecord, JobState
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.support import running

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("lxc-start") is None, reason="LXC is not installed"),
]

# Seed 002's stateConfig, as the NixOS module writes it (ids as strings, as there).
SEED = {
    "net": {
        "interfaces": [
            {
                "name": "ovsbr0",
                "type": "ovs-bridge",
                "ports": ["eth0"],
                "ipv4": {
                    "enabled": True,
                    "dhcp": False,
                    "address": [{"ip": "192.168.1.10", "prefix": 24}],
                    "gateway": "192.168.1.1",
                },
            },
            {
                "name": "mesh",
                "type": "ovs-bridge",
                "ports": [],
                "ipv4": {
                    "enabled": True,
                    "dhcp": False,
                    "address": [{"ip": "10.0.0.1", "prefix": 24}],
                },
            },
        ]
    },
    "lxc": {
        "containers": [
            {"id": "100", "name": "gateway", "veth": "vi100", "bridge": "mesh", "running": True},
            {"id": "101", "name": "warp", "veth": "vi101", "bridge": "mesh", "running": True},
            {
                "id": "102",
                "name": "xray-client",
                "veth": "vi102",
                "bridge": "mesh",
                "running": True,
            },
        ]
    },
}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


@contextlib.contextmanager
def stand_in_eth0() -> Iterator[None]:
    """The seed's physical port, eth0: one end of a veth pair, in the test's own network
    namespace (this kernel has no dummy links)."""
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
    try:
        yield
    finally:
        sh("ip", "link", "del", "eth0", check=False)


@pytest.fixture
def lxcpath(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "lxc"
    path.mkdir()
    yield path
    for config in path.glob("*/config"):
        sh("lxc-stop", "-P", str(path), "-n", config.parent.name, "-k", check=False)
        sh("lxc-destroy", "-P", str(path), "-n", config.parent.name, check=False)


@contextlib.asynccontextmanager
async def state_daemon(
    tmp: Path, bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, **extra: Any
) -> AsyncIterator[Daemon]:
    async with running(
        tmp,
        bus,
        ovsdb={"remote": ovs.remote, "datapath_type": "netdev"},
        lxc={"path": str(lxcpath), "stop_timeout_seconds": 2},
        **extra,
    ) as daemon:
        yield daemon


async def apply(client: Client, document: object, **options: Any) -> JobRecord:
    text = document if isinstance(document, str) else json.dumps(document)
    return await client.run_job(lambda: client.state_apply(text, **options))


# The native tools, run in a thread (the test's loop must not block).


async def vsctl(ovs: PrivateOvs, *args: str) -> str:
    return (await asyncio.to_thread(ovs.vsctl, *args)).stdout.strip()


async def addresses(name: str) -> list[str]:
    shown = await asyncio.to_thread(sh, "ip", "-j", "-4", "addr", "show", "dev", name)
    out = json.loads(shown.stdout)
    return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link["addr_info"]]


async def routes() -> str:
    return (await asyncio.to_thread(sh, "ip", "route")).stdout


async def lxc_state(lxcpath: Path, name: str) -> str:
    argv = ("lxc-info", "-P", str(lxcpath), "-n", name, "-sH")
    return (await asyncio.to_thread(sh, *argv, check=False)).stdout.strip()


async def host_snapshot(ovs: PrivateOvs, lxcpath: Path) -> dict[str, Any]:
    """The host as the native tools see it (to compare before and after)."""
    bridges = (await vsctl(ovs, "list-br")).split()
    configs = await asyncio.to_thread(lambda: sorted(lxcpath.glob("*/config")))
    return {
        "bridges": {b: sorted((await vsctl(ovs, "list-ports", b)).split()) for b in bridges},
        "containers": {c.parent.name: await lxc_state(lxcpath, c.parent.name) for c in configs},
    }


async def mtimes(lxcpath: Path) -> dict[Path, int]:
    def read() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in lxcpath.glob("*/config")}

    return await asyncio.to_thread(read)


async def text(path: Path) -> str:
    return await asyncio.to_thread(path.read_text)


async def test_seed_002_from_empty_then_again_with_no_writes(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    with stand_in_eth0():
        async with state_daemon(tmp_path, private_bus, ovs, lxcpath):
            done = await apply(client, {"version": 1, "plugins": SEED})
            assert done.state is JobState.SUCCEEDED, done.result
            # What the native tools say.
            assert sorted((await vsctl(ovs, "list-br")).split()) == ["mesh", "ovsbr0"]
            assert (await vsctl(ovs, "list-ports", "ovsbr0")).split() == ["eth0"]
            assert sorted((await vsctl(ovs, "list-ports", "mesh")).split()) == [
                "vi100",
                "vi101",
                "vi102",
            ]
            assert await vsctl(ovs, "br-get-external-id", "mesh", "opdbus:owner") == "state"
            assert await addresses("ovsbr0") == ["192.168.1.10/24"]
            assert await addresses("mesh") == ["10.0.0.1/24"]
            assert "default via 192.168.1.1 dev ovsbr0" in await routes()
            for name in ("gateway", "warp", "xray-client"):
                assert await lxc_state(lxcpath, name) == "RUNNING"
            config = await text(lxcpath / "warp" / "config")
            assert "lxc.net.0.link = mesh" in config and "lxc.start.order = 101" in config

            state = await client.state()
            assert state["InSync"] is True and len(state["Digest"]) == 64

            # Again: nothing to do, and nothing is written on the host.
            next_cfg = await vsctl(ovs, "get", "Open_vSwitch", ".", "next_cfg")
            before = await mtimes(lxcpath)
            again = await apply(client, SEED)
            assert again.state is JobState.SUCCEEDED
            assert again.result == "nothing to change: the host is as the document says"
            assert again.output["plan"] == []
            assert await vsctl(ovs, "get", "Open_vSwitch", ".", "next_cfg") == next_cfg
            assert await mtimes(lxcpath) == before

            # Query gives the document back; applying it changes nothing either.
            queried = await client.state_query(["net", "lxc"])
            assert await client.state_diff(json.dumps(queried)) == []
            mesh = next(i for i in queried["net"]["interfaces"] if i["name"] == "mesh")
            assert mesh["ipv4"]["address"] == [{"ip": "10.0.0.1", "prefix": 24}]
            warp = next(c for c in queried["lxc"]["containers"] if c["name"] == "warp")
            assert (warp["id"], warp["bridge"], warp["veth"], warp["running"]) == (
                101,
                "mesh",
                "vi101",
                True,
            )
