"""Bridges and ports on a real ovsdb-server + ovs-vswitchd (userspace datapath),
addresses through real netlink, packets through real namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant

from opctl.client import Client
from opdbus import errors, names
from opdbus.daemon import Daemon
from opdbus.models.job import JobState
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.support import assert_introspection_matches, next_event, running


def tag() -> str:
    return secrets.token_hex(2)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


async def vsctl(
    ovs: PrivateOvs, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(ovs.vsctl, *args, check=check)


def kernel_addresses(name: str) -> list[str]:
    out = json.loads(ip("-j", "-4", "addr", "show", "dev", name).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link["addr_info"]]


@contextlib.asynccontextmanager
async def net_daemon(
    tmp: Path, bus: PrivateBus, ovs: PrivateOvs, **extra: Any
) -> AsyncIterator[Daemon]:
    async with running(
        tmp, bus, ovsdb={"remote": ovs.remote, "datapath_type": "netdev"}, **extra
    ) as daemon:
        yield daemon


@contextlib.contextmanager
def veth_in_namespace(host_end: str, ns_end: str, ns: str, cidr: str) -> Iterator[None]:
    """A veth pair with one end in a new namespace, addressed and up."""
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", ns)
        ip("link", "set", host_end, "up")
        ip("-n", ns, "addr", "add", cidr, "dev", ns_end)
        ip("-n", ns, "link", "set", ns_end, "up")
        yield
    finally:
        ip("link", "del", host_end, check=False)
        ip("netns", "del", ns, check=False)


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_bridge_lifecycle_with_addresses_and_ports(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    name = f"tb{tag()}"
    path = names.bridge_path(name)
    async with net_daemon(tmp_path, private_bus, ovs), client.signals("") as queue:
        assert (await client.status()).backends["ovsdb"][0] is True
        created = await client.create_bridge(
            name, {"addresses": ["10.91.0.1/24"], "external_ids": {"role": "mesh"}}
        )
        assert created == path
        added = await next_event(
            queue, lambda e: e.member == "InterfacesAdded" and e.args[0] == path
        )
        assert added.path == names.ROOT_PATH  # from the ObjectManager
        bridge = await client.bridge(name)
        assert bridge.datapath_type == "netdev" and bridge.addresses == ["10.91.0.1/24"]
        assert bridge.external_ids == {"role": "mesh", "opdbus:addresses": "10.91.0.1/24"}
        assert kernel_addresses(name) == ["10.91.0.1/24"]
        assert [p.name for p in bridge.ports] == [name]
        assert (await vsctl(ovs, "br-get-external-id", name, "role")).stdout.strip() == "mesh"

        await client.add_port(name, "tp1", {"type": "internal", "tag": 10})
        changed = await next_event(
            queue,
            lambda e: (
                e.path == path
                and e.member == "PropertiesChanged"
                and "tp1" in [p[0] for p in e.args[1].get("Ports", [])]
            ),
        )
        ports = {p[0]: p for p in changed.args[1]["Ports"]}
        assert list(ports["tp1"][1:3]) == ["internal", 10]
        assert (await vsctl(ovs, "get", "port", "tp1", "tag")).stdout.strip() == "10"

        await client.set_addresses(name, ["10.91.0.2/24", "10.92.0.1/16"], {})
        assert sorted(kernel_addresses(name)) == ["10.91.0.2/24", "10.92.0.1/16"]
        await client.remove_port(name, "tp1")
        assert [p.name for p in (await client.bridge(name)).ports] == [name]
        await client.delete_bridge(name)
        removed = await next_event(
            queue, lambda e: e.member == "InterfacesRemoved" and e.args[0] == path
        )
        assert removed.args[1] == [names.BRIDGE_IFACE]
    assert (await vsctl(ovs, "br-exists", name, check=False)).returncode == 2
    assert ip("link", "show", name, check=False).returncode != 0


async def test_the_datapath_really_forwards(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    t = tag()
    bridge = f"tb{t}"
    ns1, ns2 = f"opdbus-{t}-1", f"opdbus-{t}-2"
    with (
        veth_in_namespace(f"va{t}", f"vb{t}", ns1, "10.93.0.1/24"),
        veth_in_namespace(f"vc{t}", f"vd{t}", ns2, "10.93.0.2/24"),
    ):
        async with net_daemon(tmp_path, private_bus, ovs):
            await client.create_bridge(bridge, {"addresses": ["10.93.0.254/24"]})
            await client.add_port(bridge, f"va{t}", {})
            await client.add_port(bridge, f"vc{t}", {})
            ports = {p.name: p for p in (await client.bridge(bridge)).ports}
            assert ports[f"va{t}"].type == "system" and (ports[f"va{t}"].ofport or 0) > 0
            between = await asyncio.to_thread(
                ip, "netns", "exec", ns1, "ping", "-c", "2", "-W", "2", "10.93.0.2", check=False
            )
            assert between.returncode == 0, between.stdout + between.stderr
            to_host = await asyncio.to_thread(
                ip, "netns", "exec", ns2, "ping", "-c", "1", "-W", "2", "10.93.0.254", check=False
            )
            assert to_host.returncode == 0, to_host.stdout + to_host.stderr
            await client.delete_bridge(bridge)


@contextlib.contextmanager
def dnsmasq(ns: str, iface: str, tmp: Path) -> Iterator[subprocess.Popen[str]]:
    """A real DHCP server (dnsmasq, no DNS) on ``iface`` inside namespace ``ns``;
    leases in tmp/dnsmasq.leases, its log in tmp/dnsmasq.log."""
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            f"--interface={iface}",
            "--except-interface=lo",
            "--dhcp-range=10.95.0.50,10.95.0.59,255.255.255.0,2m",
            "--dhcp-option=option:router,10.95.0.1",
            f"--dhcp-leasefile={tmp / 'dnsmasq.leases'}",
            "--pid-file=",
            "--user=root",
            f"--log-facility={tmp / 'dnsmasq.log'}",
            "--log-dhcp",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield server
    finally:
        server.terminate()
        server.communicate(timeout=10)


def leased(leases: Path) -> list[str]:
    """The addresses dnsmasq's lease file lists (expiry, MAC, IP, ...)."""
    text = leases.read_text() if leases.exists() else ""
    return [line.split()[2] for line in text.splitlines() if line.strip()]


async def test_dhcp_addresses_follow_a_real_dnsmasq(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    t = tag()
    bridge, ns, leases = f"tb{t}", f"opdbus-{t}-d", tmp_path / "dnsmasq.leases"
    path = names.bridge_path(bridge)

    def acks() -> int:
        return sum("DHCPACK(" in line for line in (tmp_path / "dnsmasq.log").open())

    with veth_in_namespace(f"ve{t}", f"vf{t}", ns, "10.95.0.1/24"), dnsmasq(ns, f"vf{t}", tmp_path):
        async with net_daemon(tmp_path, private_bus, ovs), client.signals("") as queue:
            await client.create_bridge(bridge, {"addresses": ["10.95.0.7/24"]})
            await client.add_port(bridge, f"ve{t}", {})
            await client.set_addresses(bridge, [], {"dhcp": True})
            # The static address goes at once; the lease comes from dnsmasq.
            event = await next_event(
                queue,
                lambda e: (
                    e.path == path
                    and e.args[1].get("Addresses") not in (None, [], ["10.95.0.7/24"])
                ),
                timeout=20,
            )
            (address,) = event.args[1]["Addresses"]
            assert address.startswith("10.95.0.5") and address.endswith("/24"), address

            async def gateway_set() -> bool:
                return (await client.bridge(bridge)).gateway == "10.95.0.1"

            await until(gateway_set)
            info = await client.bridge(bridge)
            assert info.dhcp is True and info.addresses == [address]
            assert info.external_ids == {"opdbus:dhcp": "true"}
            assert kernel_addresses(bridge) == [address]
            assert leased(leases) == [address.split("/")[0]]  # the server's view agrees
            assert acks() == 1

        # The daemon stopping keeps the host reachable: no release, address kept.
        assert kernel_addresses(bridge) == [address]
        assert leased(leases) == [address.split("/")[0]]

        async with net_daemon(tmp_path, private_bus, ovs):

            async def asked_again() -> bool:
                return acks() == 2

            await until(asked_again, timeout=20)  # the new daemon's client got its lease
            await until(gateway_set)
            assert (await client.bridge(bridge)).addresses == [address]

            # Back to static: the DHCP address goes and the lease is given back.
            await client.set_addresses(bridge, ["10.95.0.8/24"], {})
            assert kernel_addresses(bridge) == ["10.95.0.8/24"]

            async def released() -> bool:
                return leased(leases) == []

            await until(released)
            info = await client.bridge(bridge)
            assert (info.dhcp, info.gateway) == (False, "")
            await client.delete_bridge(bridge)


async def test_changes_made_by_hand_reach_the_bus(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    name = f"th{tag()}"
    path = names.bridge_path(name)
    async with net_daemon(tmp_path, private_bus, ovs), client.signals("") as queue:
        await vsctl(ovs, "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev")
        await next_event(queue, lambda e: e.member == "InterfacesAdded" and e.args[0] == path)
        await vsctl(ovs, "add-port", name, "hp1", "--", "set", "interface", "hp1", "type=internal")
        await next_event(
            queue,
            lambda e: (
                e.path == path
                and e.member == "PropertiesChanged"
                and "hp1" in [p[0] for p in e.args[1].get("Ports", [])]
            ),
        )
        await vsctl(ovs, "set", "bridge", name, "stp_enable=true")
        event = await next_event(queue, lambda e: e.path == path and "STP" in e.args[1])
        assert event.args[1]["STP"] is True
        await asyncio.to_thread(ip, "link", "set", name, "up")
        await asyncio.to_thread(ip, "addr", "add", "10.94.0.9/24", "dev", name)
        event = await next_event(queue, lambda e: e.path == path and "Addresses" in e.args[1])
        assert event.args[1]["Addresses"] == ["10.94.0.9/24"]
        await vsctl(ovs, "del-br", name)
        await next_event(queue, lambda e: e.member == "InterfacesRemoved" and e.args[0] == path)


async def test_reconnects_when_ovsdb_server_restarts(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    name = f"tr{tag()}"
    async with net_daemon(tmp_path, private_bus, ovs), client.signals("") as queue:
        await client.create_bridge(name, {})
        await asyncio.to_thread(ovs.kill_db)

        def backends_say(up: bool) -> Any:
            return lambda e: (
                e.path == names.ROOT_PATH
                and "Backends" in e.args[1]
                and e.args[1]["Backends"]["ovsdb"][0] is up
            )

        down = await next_event(queue, backends_say(False), timeout=5)
        assert "reconnecting" in down.args[1]["Backends"]["ovsdb"][1]
        with pytest.raises(errors.BackendUnavailable):
            await client.create_bridge(f"tx{tag()}", {})
        assert (await client.bridge(name)).name == name  # still there while OVSDB is away

        await asyncio.to_thread(ovs.start_db)
        await next_event(queue, backends_say(True), timeout=10)
        other = f"ts{tag()}"
        await vsctl(ovs, "add-br", other, "--", "set", "bridge", other, "datapath_type=netdev")
        await next_event(
            queue, lambda e: e.member == "InterfacesAdded" and e.args[0] == names.bridge_path(other)
        )
        await client.add_port(name, "rp1", {"type": "internal"})
        assert "rp1" in [p.name for p in (await client.bridge(name)).ports]


# What op-dbus writes, table by table (statistics and link states move on their own).
DUMPED = {
    "Bridge": [
        "_uuid",
        "name",
        "ports",
        "datapath_type",
        "fail_mode",
        "stp_enable",
        "external_ids",
    ],
    "Port": ["_uuid", "name", "interfaces", "tag", "trunks", "external_ids"],
    "Interface": ["_uuid", "name", "type", "options", "mtu_request"],
}


def ovsdb_dump(ovs: PrivateOvs) -> str:
    """ovsdb-client's own dump of the Bridge, Port and Interface rows."""
    return "".join(
        subprocess.run(
            ["ovsdb-client", "dump", ovs.remote, "Open_vSwitch", table, *columns],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for table, columns in DUMPED.items()
    )


async def table(ovs: PrivateOvs, name: str, columns: str) -> str:
    return (await vsctl(ovs, "--format=json", f"--columns={columns}", "list", name)).stdout


async def test_bad_input_gets_named_errors_and_changes_nothing(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    name = f"tv{tag()}"
    async with net_daemon(tmp_path, private_bus, ovs):
        await client.create_bridge(name, {})
        await client.add_port(name, "vp1", {"type": "internal"})
        before = await table(ovs, "bridge", "name,ports,external_ids") + await table(
            ovs, "port", "name,tag,trunks"
        )
        cases: list[tuple[Any, type[errors.OpdbusError], str]] = [
            (client.create_bridge("x" * 16, {}), errors.InvalidArgs, "longer than 15 bytes"),
            (client.create_bridge("a/b", {}), errors.InvalidArgs, "may not contain '/'"),
            (client.create_bridge("a b", {}), errors.InvalidArgs, "may not contain '/' or spaces"),
            (client.create_bridge("brü", {}), errors.InvalidArgs, "must be printable ASCII"),
            (client.create_bridge(name, {}), errors.AlreadyExists, f"bridge {name} already exists"),
            (client.create_bridge("vp1", {}), errors.AlreadyExists, "already a port or interface"),
            (
                client.create_bridge("tbad1", {"addresses": ["10.0.0.300/24"]}),
                errors.InvalidArgs,
                "is not an IPv4 address",
            ),
            (
                client.create_bridge("tbad2", {"addresses": ["10.0.0.1"]}),
                errors.InvalidArgs,
                "needs a prefix length",
            ),
            (
                client.create_bridge(
                    "tbad3", {"addresses": ["10.0.0.1/24"], "gateway": "10.9.9.1"}
                ),
                errors.InvalidArgs,
                "not in any of the bridge's subnets",
            ),
            (
                client.create_bridge("tbad4", {"external_ids": {"opdbus:x": "y"}}),
                errors.InvalidArgs,
                "op-dbus's own",
            ),
            (
                client.add_port(name, "vp2", {"type": "internal", "tag": 4096}),
                errors.InvalidArgs,
                "less than or equal to 4095",
            ),
            (
                client.add_port(name, "vp2", {"type": "internal", "trunks": [1, -1]}),
                errors.InvalidArgs,
                "greater than or equal to 0",
            ),
            (
                client.add_port(name, "vp2", {"type": "patch"}),
                errors.InvalidArgs,
                "a patch port needs 'peer'",
            ),
            (
                client.add_port(name, "vp1", {"type": "internal"}),
                errors.AlreadyExists,
                f"port vp1 already exists (on bridge {name})",
            ),
            (
                client.add_port(name, "nosuchdev0", {}),
                errors.NotFound,
                "there is no network interface nosuchdev0",
            ),
            (
                client.add_port("nobridge", "vp3", {"type": "internal"}),
                errors.NotFound,
                "no object at /org/opdbus/bridge/nobridge",
            ),
            (client.remove_port(name, "vp9"), errors.NotFound, f"bridge {name} has no port vp9"),
            (client.remove_port(name, name), errors.InvalidArgs, "the bridge's own port"),
            (
                client.set_addresses(name, ["300.1.1.1/8"], {}),
                errors.InvalidArgs,
                "is not an IPv4 address",
            ),
            (
                client.set_addresses(name, ["10.1.1.1/8"], {"dhcp": True}),
                errors.InvalidArgs,
                "static addresses or dhcp, not both",
            ),
        ]
        for call, kind, message in cases:
            with pytest.raises(kind) as info:
                await call
            assert message in info.value.message, (message, info.value.message)
        after = await table(ovs, "bridge", "name,ports,external_ids") + await table(
            ovs, "port", "name,tag,trunks"
        )
        assert after == before


async def test_apply_bridges_seed_document_idempotent(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    t = tag()
    uplink, mesh = f"ob{t}", f"mesh{t}"
    # The op-dbus seed's shape: ovsbr0 with the physical uplink and a static
    # address and gateway, mesh with no ports and 10.0.0.1/24 (here a veth
    # end plays the uplink, and the addresses avoid the host's own).
    seed = {
        "interfaces": [
            {
                "name": uplink,
                "type": "ovs-bridge",
                "ports": [f"ue{t}"],
                "ipv4": {
                    "enabled": True,
                    "dhcp": False,
                    "address": [{"ip": "10.95.1.10", "prefix": 24}],
                    "gateway": "10.95.1.1",
                },
            },
            {
                "name": mesh,
                "type": "ovs-bridge",
                "ports": [],
                "ipv4": {
                    "enabled": True,
                    "dhcp": False,
                    "address": [{"ip": "10.96.0.1", "prefix": 24}],
                },
            },
        ]
    }
    with veth_in_namespace(f"ue{t}", f"uf{t}", f"opdbus-{t}", "10.95.1.1/24"):
        async with net_daemon(tmp_path, private_bus, ovs):
            first = await client.run_job(lambda: client.apply_bridges(json.dumps(seed)))
            assert first.state is JobState.SUCCEEDED, first.result
            assert first.output["created"] == [uplink, mesh]
            assert kernel_addresses(uplink) == ["10.95.1.10/24"] and kernel_addresses(mesh) == [
                "10.96.0.1/24"
            ]
            bridge = await client.bridge(uplink)
            assert bridge.gateway == "10.95.1.1" and f"ue{t}" in [p.name for p in bridge.ports]
            snapshot = await asyncio.to_thread(ovsdb_dump, ovs)

            again = await client.run_job(lambda: client.apply_bridges(json.dumps(seed)))
            assert again.state is JobState.SUCCEEDED
            assert again.result == "nothing to change: 2 bridge(s) already as described"
            assert await asyncio.to_thread(ovsdb_dump, ovs) == snapshot

            native = {
                "bridges": [
                    {"name": mesh, "ports": [{"name": f"mp{t}", "type": "internal", "tag": 7}]}
                ]
            }
            third = await client.run_job(lambda: client.apply_bridges(json.dumps(native)))
            assert third.output["changes"] == [f"add port mp{t} (internal) to {mesh}"]
            assert kernel_addresses(mesh) == ["10.96.0.1/24"]  # not mentioned: not touched
            for name in (uplink, mesh):
                await client.delete_bridge(name)


async def test_a_failed_apply_leaves_ovsdb_as_it_was(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    t = tag()
    keep = f"tk{t}"
    async with net_daemon(tmp_path, private_bus, ovs):
        await client.create_bridge(keep, {})
        before = await asyncio.to_thread(ovsdb_dump, ovs)
        # Refused before any write: a system port with no interface.
        early = {"bridges": [{"name": f"tn{t}"}, {"name": keep, "ports": [{"name": "nosuchdev1"}]}]}
        with pytest.raises(errors.NotFound):
            record = await client.run_job(lambda: client.apply_bridges(json.dumps(early)))
            raise errors.from_dbus_name(record.error_name, record.result)
        assert await asyncio.to_thread(ovsdb_dump, ovs) == before
        # Refused by ovs-vswitchd after the commit (an internal port named like
        # an existing kernel device): everything is rolled back.
        late = {
            "bridges": [
                {"name": f"tn{t}", "ports": [{"name": f"np{t}", "type": "internal"}]},
                {"name": keep, "stp": True, "ports": [{"name": "lo", "type": "internal"}]},
            ]
        }
        record = await client.run_job(lambda: client.apply_bridges(json.dumps(late)))
        assert record.state is JobState.FAILED
        assert record.error_name == errors.BackendFailed.dbus_name
        assert "ovs-vswitchd could not set up lo" in record.result
        log = [line.text for line in await client.job_log(names.job_path(record.id))]
        assert "failed: rolling back" in log
        await until(lambda: _same(ovs, before))
        bad_json = await _apply_error(client, "{not json")
        assert "not JSON (line 1 column 2" in bad_json
        bad_tag = await _apply_error(
            client, json.dumps({"bridges": [{"name": keep, "ports": [{"name": "p", "tag": 9999}]}]})
        )
        assert (
            bad_tag
            == "ApplyBridges: bridges[0].ports[0].tag: Input should be less than or equal to 4095"
        )
        assert await asyncio.to_thread(ovsdb_dump, ovs) == before


async def _same(ovs: PrivateOvs, before: str) -> bool:
    return await asyncio.to_thread(ovsdb_dump, ovs) == before


async def _apply_error(client: Client, document: str) -> str:
    with pytest.raises(errors.InvalidArgs) as info:
        await client.apply_bridges(document)
    return info.value.message


async def test_bridge1_introspection_matches_the_committed_xml(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    name = f"ti{tag()}"
    async with net_daemon(tmp_path, private_bus, ovs):
        await client.create_bridge(name, {})
        (xml,) = await client.call(
            names.bridge_path(name), names.INTROSPECTABLE_IFACE, "Introspect"
        )
        (root,) = await client.call(names.ROOT_PATH, names.INTROSPECTABLE_IFACE, "Introspect")
    live = {
        i.attrib["name"]: i for doc in (xml, root) for i in ET.fromstring(doc).iter("interface")
    }
    assert_introspection_matches(live, [names.BRIDGE_IFACE, names.MANAGER_IFACE])


async def test_agent_mode_has_no_bridges(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, mode="agent"):
        with pytest.raises(errors.NotSupported, match="bridges are off in agent mode"):
            await client.create_bridge("tb1", {})
        with pytest.raises(errors.NotSupported):
            await client.call(
                names.ROOT_PATH, names.MANAGER_IFACE, "ApplyBridges", "s", ['{"bridges": []}']
            )
        assert (await client.status()).backends["ovsdb"] == (False, "off in agent mode")


def test_variants_of_cli_options_reach_the_bus() -> None:
    from opctl.convert import to_variants

    assert to_variants(
        {"tag": 5, "stp": True, "addresses": ["a"], "trunks": [1, 2], "ids": {"k": "v"}, "x": None}
    ) == {
        "tag": Variant("i", 5),
        "stp": Variant("b", True),
        "addresses": Variant("as", ["a"]),
        "trunks": Variant("ai", [1, 2]),
        "ids": Variant("a{ss}", {"k": "v"}),
    }
