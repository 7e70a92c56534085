"""The declarative state on real Open vSwitch (userspace datapath), LXC and libvirt.

What the daemon says is checked against the native tools -- ovs-vsctl, ip,
lxc-info, virsh -- not only through the daemon itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant

from opctl.client import Client
from opdbus import errors, names
from opdbus.daemon import Daemon
from opdbus.models.job import JobRecord, JobState
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.integration.test_vms import vm_config
from tests.libvirtd import TEST_PREFIX, PrivateLibvirtd
from tests.support import base_config, running

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


def bridge(name: str, *ports: object, cidr: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "type": "ovs-bridge", "ports": list(ports)}
    if cidr is not None:
        ip, prefix = cidr.split("/")
        item["ipv4"] = {"address": [{"ip": ip, "prefix": int(prefix)}]}
    return item


async def test_a_failure_midway_puts_everything_back(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    """Two new bridges, then a container that cannot be made: the bridges go again."""
    async with state_daemon(tmp_path, private_bus, ovs, lxcpath):
        await apply(client, {"net": {"interfaces": [bridge("keep0", cidr="10.9.0.1/24")]}})
        before = await host_snapshot(ovs, lxcpath)
        doc = {
            "net": {
                "interfaces": [
                    bridge("keep0", {"name": "k0p", "type": "internal", "tag": 5}),
                    bridge("mid0", cidr="10.8.0.1/24"),
                    bridge("mid1"),
                ]
            },
            "lxc": {"containers": [{"id": 150, "name": "bad", "bridge": "mid0",
                                    "template": "download"}]},
        }  # fmt: skip
        failed = await apply(client, doc)
        assert failed.state is JobState.FAILED
        assert failed.error_name == errors.InvalidArgs.dbus_name
        assert failed.result.endswith("; the host is back where it was"), failed.result
        assert "download template needs a mirror" in failed.result
        assert await host_snapshot(ovs, lxcpath) == before  # the native tools agree
        assert await addresses("keep0") == ["10.9.0.1/24"]
        log = [line.text for line in await client.job_log(names.job_path(failed.id))]
        assert "restoring the checkpoint" in log and "the checkpoint is restored" in log
        state = await client.state()
        assert state["PendingCheckpoint"] == ""


async def test_confirm_or_it_is_rolled_back(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    async with state_daemon(tmp_path, private_bus, ovs, lxcpath):
        base = {"net": {"interfaces": [bridge("cfbase")]}}
        await apply(client, base)
        digest = (await client.state())["Digest"]
        # Not confirmed: rolled back by itself when the time runs out.
        trial = {"net": {"interfaces": [bridge("cfbase", cidr="10.7.0.1/24"), bridge("cf0")]}}
        done = await apply(client, trial, confirm_timeout=2)
        assert done.state is JobState.SUCCEEDED and "confirm within 2 s" in done.result
        state = await client.state()
        assert state["PendingCheckpoint"] and state["CheckpointExpires"] > 0
        assert "cf0" in (await vsctl(ovs, "list-br")).split()
        with pytest.raises(errors.Busy, match="awaits Confirm"):
            await client.state_apply(json.dumps(base))

        async def rolled_back() -> bool:
            return bool((await client.state())["PendingCheckpoint"] == "")

        await until(rolled_back, 10)
        assert (await vsctl(ovs, "list-br")).split() == ["cfbase"]
        assert await addresses("cfbase") == []
        assert (await client.state())["Digest"] == digest  # the old document still stands
        # Confirmed in time: kept.
        await apply(client, trial, confirm_timeout=30)
        await client.state_call("Confirm")
        state = await client.state()
        assert state["PendingCheckpoint"] == "" and state["Digest"] != digest
        assert sorted((await vsctl(ovs, "list-br")).split()) == ["cf0", "cfbase"]
        with pytest.raises(errors.Conflict, match="nothing to confirm"):
            await client.state_call("Confirm")
        # Rolled back on request.
        await apply(client, {"net": {"interfaces": [bridge("cfbase"), bridge("cf0"), bridge("cf1")]}},
                    confirm_timeout=30)  # fmt: skip
        await client.state_call("Rollback")
        assert sorted((await vsctl(ovs, "list-br")).split()) == ["cf0", "cfbase"]


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_prune_deletes_only_what_the_state_made(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    await vsctl(ovs, "add-br", "hand0", "--", "set", "bridge", "hand0", "datapath_type=netdev")
    argv = ("lxc-create", "-P", str(lxcpath), "-n", "handct", "-t", "busybox")
    await asyncio.to_thread(sh, *argv)
    async with state_daemon(tmp_path, private_bus, ovs, lxcpath):
        made = {
            "net": {"interfaces": [bridge("st0"), bridge("hand0", {"name": "hp0", "type": "internal"})]},
            "lxc": {"containers": [{"id": 160, "name": "stct"}]},
        }  # fmt: skip
        assert (await apply(client, made)).state is JobState.SUCCEEDED
        # Naming nothing, with prune: only what the state made goes.
        pruned = await apply(client, {"net": {"interfaces": []}, "lxc": {"containers": []}},
                             prune=True)  # fmt: skip
        assert pruned.state is JobState.SUCCEEDED, pruned.result
        assert sorted(c["id"] for c in pruned.output["plan"]) == ["st0", "stct"]
        assert (await vsctl(ovs, "list-br")).split() == ["hand0"]
        assert (await vsctl(ovs, "list-ports", "hand0")).split() == ["hp0"]  # listed once: stays
        assert await asyncio.to_thread((lxcpath / "handct" / "config").exists)
        assert not await asyncio.to_thread((lxcpath / "stct").exists)


DRIFTING = {
    "net": {"interfaces": [bridge("dr0", {"name": "drp", "type": "internal"})]},
    "lxc": {"containers": [{"id": 170, "name": "drct", "running": True}]},
}


async def test_changes_by_hand_are_signalled_as_drift(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    async with (
        state_daemon(tmp_path, private_bus, ovs, lxcpath),
        client.signals(f"path='{names.STATE_PATH}'") as queue,
    ):
        assert (await apply(client, DRIFTING)).state is JobState.SUCCEEDED
        assert (await client.state())["InSync"] is True
        await vsctl(ovs, "del-port", "dr0", "drp")  # by hand, behind the daemon's back
        event = await next_state_event(queue, "Drifted")
        assert event.args[:2] == ["net", "dr0"] and "ports[drp]" in event.args[2]
        await asyncio.to_thread(sh, "lxc-stop", "-P", str(lxcpath), "-n", "drct", "-k")
        event = await next_state_event(queue, "Drifted")
        assert event.args[:2] == ["lxc", "drct"] and "running" in event.args[2]
        state = await client.state()
        assert state["InSync"] is False and state["DriftPolicy"] == "report"
        assert sorted((p, i) for p, i, _ in state["Drift"]) == [("lxc", "drct"), ("net", "dr0")]
        assert (await vsctl(ovs, "list-ports", "dr0")).split() == []  # reported, not repaired


async def test_enforce_repairs_drift(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    policy = {"file": str(tmp_path / "none.json"), "drift_policy": "enforce",
              "enforce_delay_seconds": 0.2}  # fmt: skip
    async with state_daemon(tmp_path, private_bus, ovs, lxcpath, state=policy):
        assert (await apply(client, DRIFTING)).state is JobState.SUCCEEDED
        await vsctl(ovs, "del-port", "dr0", "drp")
        await asyncio.to_thread(sh, "lxc-stop", "-P", str(lxcpath), "-n", "drct", "-k")

        async def repaired() -> bool:
            ports = (await vsctl(ovs, "list-ports", "dr0")).split()
            running = await lxc_state(lxcpath, "drct") == "RUNNING"
            return ports == ["drp"] and running and bool((await client.state())["InSync"])

        await until(repaired, 30)
        jobs = [r.operation for r in await client.jobs()]
        assert jobs.count("Apply state") >= 2  # the first, and the repair (audited as a job)


async def next_state_event(queue: asyncio.Queue[Any], member: str, timeout: float = 5.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if event.member == member:
                return event


async def test_a_pending_checkpoint_survives_a_crash_and_is_restored_at_its_deadline(
    tmp_path: Path, make_daemon: Any, private_bus: PrivateBus, ovs: PrivateOvs, client: Client
) -> None:
    """kill -9 with a checkpoint pending: after the restart it is still pending (its
    deadline kept), and restored when the deadline passes -- the admin who cut off their
    own SSH gets the host back even though the daemon died meanwhile."""
    config = base_config(tmp_path, ovsdb={"remote": ovs.remote, "datapath_type": "netdev"})
    config["mode"] = "standalone"
    daemon = make_daemon(private_bus, config)
    await apply(client, {"net": {"interfaces": [bridge("kp0")]}}, confirm_timeout=4)
    assert sorted((await vsctl(ovs, "list-br")).split()) == ["kp0"]
    pending = (await client.state())["PendingCheckpoint"]
    daemon.signal(signal.SIGKILL)
    await asyncio.to_thread(daemon.wait)
    await asyncio.to_thread(daemon.start)
    assert (await client.state())["PendingCheckpoint"] == pending  # still pending...

    async def restored() -> bool:
        gone = (await vsctl(ovs, "list-br")).split() == []
        return gone and (await client.state())["PendingCheckpoint"] == ""

    await until(restored, 15)  # ...and restored at its deadline


async def test_bad_documents_are_named_and_change_nothing(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    async with state_daemon(tmp_path, private_bus, ovs, lxcpath):
        before = await host_snapshot(ovs, lxcpath)
        cases = {
            "{not json": "not JSON",
            json.dumps({"net": {"interfaces": [{"name": 5}]}}): "net.interfaces[0].name",
            json.dumps({"lxc": {"containers": [{"id": 1, "name": "a", "bridge": 7}]}}): (
                "lxc.containers[0].bridge"
            ),
            json.dumps({"dns": {}}): "dns: unknown provider",
            json.dumps({"version": 2, "plugins": {}}): "only version 1",
            json.dumps({"net": {"interfaces": [], "extra": 1}}): "net.extra: unknown field",
            "[" * 10_000 + "]" * 10_000: "nested 10000 levels deep",
            json.dumps({"net": {"x": "y" * 10_000_000}}): "at most",
        }
        for document, message in cases.items():
            with pytest.raises(errors.InvalidArgs, match=re.escape(message)):
                await client.state_apply(document)
            with pytest.raises(errors.InvalidArgs, match=re.escape(message)):
                await client.state_diff(document)
        with pytest.raises(errors.InvalidArgs, match="option 'prune' of Apply must be a boolean"):
            await client.call(
                names.STATE_PATH, names.STATE_IFACE, "Apply", "sa{sv}",
                ["{}", {"prune": Variant("s", "yes")}],
            )  # fmt: skip
        # A provider whose backend is not here (no systemd on this host's bus path).
        units = json.dumps({"systemd": {"units": {}}, "net": {"interfaces": []}})
        with pytest.raises(errors.BackendUnavailable, match=r"systemd's bus .*no-systemd-bus"):
            await client.state_apply(units)
        assert await host_snapshot(ovs, lxcpath) == before


async def test_one_apply_at_a_time_and_jobs_on_its_resources_wait(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    async with state_daemon(tmp_path, private_bus, ovs, lxcpath):
        doc = {"lxc": {"containers": [{"id": 180, "name": "busy1", "running": True}]}}
        first = await client.state_apply(json.dumps(doc))
        with pytest.raises(errors.Busy, match="busy with job"):
            await client.state_apply(json.dumps({"net": {"interfaces": []}}))
        with pytest.raises(errors.Busy):
            await client.create_container("busy1", {})
        record = await client.wait_job(first)
        assert record.state is JobState.SUCCEEDED, record.result


async def test_the_state_manager_interface_of_the_original_op_dbus(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    async with state_daemon(tmp_path, private_bus, ovs, lxcpath):
        doc = {"version": 1, "plugins": {"net": {"interfaces": [bridge("sm0")]}}}
        (summary,) = await client.call(
            names.STATE_PATH, names.STATE_MANAGER_IFACE, "ApplyState", "s", [json.dumps(doc)]
        )
        assert summary == "succeeded: applied 1 change(s)"
        (net,) = await client.call(
            names.STATE_PATH, names.STATE_MANAGER_IFACE, "QueryState", "s", ["net"]
        )
        assert [i["name"] for i in json.loads(net)["interfaces"]] == ["sm0"]


async def test_the_state_file_is_applied_at_start_and_on_reload(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs, lxcpath: Path, client: Client
) -> None:
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps({"net": {"interfaces": [bridge("sf0")]}}))
    async with state_daemon(tmp_path, private_bus, ovs, lxcpath) as daemon:

        async def made(names_: list[str]) -> bool:
            return sorted((await vsctl(ovs, "list-br")).split()) == names_

        async def committed() -> bool:  # the apply at start has finished
            return bool((await client.state())["Digest"])

        await until(committed, 10)
        assert await made(["sf0"])
        await asyncio.to_thread(
            state_file.write_text,
            json.dumps({"net": {"interfaces": [bridge("sf0"), bridge("sf1")]}}),
        )
        (job,) = await client.state_call("Reload")
        assert (await client.wait_job(job)).state is JobState.SUCCEEDED
        assert await made(["sf0", "sf1"])
        assert daemon.state is not None and daemon.state.digest == (await client.state())["Digest"]


async def test_vms_as_state_on_real_qemu(
    tmp_path: Path, private_bus: PrivateBus, libvirtd: PrivateLibvirtd, client: Client
) -> None:
    """Create, start, change (only while off), drift by virsh, prune -- through libvirtd."""
    libvirtd.cleanup()
    name = TEST_PREFIX + "st1"
    config = vm_config(libvirtd)
    try:
        async with (
            running(tmp_path, private_bus, **config),
            client.signals(f"path='{names.STATE_PATH}'") as queue,
        ):
            doc = {"vms": {"domains": [{"profile": {"name": name, "memory_mb": 64},
                                        "running": True}]}}  # fmt: skip
            made = await apply(client, doc)
            assert made.state is JobState.SUCCEEDED, made.result
            assert await virsh_state(libvirtd, name) == "running"
            xml = (await asyncio.to_thread(libvirtd.virsh, "dumpxml", name)).stdout
            assert "<opdbus:owner>state</opdbus:owner>" in xml
            # A profile change while it runs is refused, and nothing changes.
            bigger = {"profile": {"name": name, "memory_mb": 64, "cpus": 2}, "running": True}
            refused = await apply(client, {"vms": {"domains": [bigger]}})
            assert refused.state is JobState.FAILED and "is running" in refused.result
            assert await virsh_state(libvirtd, name) == "running"
            # Off, changed, on again.
            off = {**bigger, "running": False}
            assert (await apply(client, {"vms": {"domains": [off]}})).state is JobState.SUCCEEDED
            vcpus = (await asyncio.to_thread(libvirtd.virsh, "vcpucount", name, "--maximum",
                                             "--config")).stdout.strip()  # fmt: skip
            assert vcpus == "2"
            assert (await apply(client, {"vms": {"domains": [bigger]}})).state is JobState.SUCCEEDED
            assert await virsh_state(libvirtd, name) == "running"
            assert await client.state_diff(json.dumps({"vms": {"domains": [bigger]}})) == []
            # virsh destroy by hand: drift.
            await asyncio.to_thread(libvirtd.virsh, "destroy", name)
            event = await next_state_event(queue, "Drifted", 10)
            assert event.args[:2] == ["vms", name] and "running" in event.args[2]
            # Prune: gone, since the state made it.
            pruned = await apply(client, {"vms": {"domains": []}}, prune=True)
            assert pruned.state is JobState.SUCCEEDED, pruned.result
            listed = (await asyncio.to_thread(libvirtd.virsh, "list", "--all", "--name")).stdout
            assert name not in listed.split()
    finally:
        libvirtd.cleanup()


async def virsh_state(libvirtd: PrivateLibvirtd, name: str) -> str:
    return (await asyncio.to_thread(libvirtd.virsh, "domstate", name)).stdout.strip()
