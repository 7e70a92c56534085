"""LXC containers on real LXC (busybox template, offline), under a private lxcpath."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opctl.convert import to_variants
from opctl.wire import SignalEvent
from opdbus import names
from opdbus.errors import AlreadyExists, Conflict, InvalidArgs, NotFound
from opdbus.models.job import JobState
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.support import assert_introspection_matches, base_config, next_event, running

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("lxc-start") is None, reason="LXC is not installed"),
]


@pytest.fixture
def lxcpath(tmp_path: Path) -> Iterator[Path]:
    """A private lxcpath; whatever a test leaves running in it is killed and removed."""
    path = tmp_path / "lxc"
    path.mkdir()
    yield path
    for config in path.glob("*/config"):
        name = config.parent.name
        lxc(path, "lxc-stop", name, "-k")
        lxc(path, "lxc-destroy", name)


def ct_config(lxcpath: Path, **more: Any) -> dict[str, Any]:
    return {"mode": "full", "lxc": {"path": str(lxcpath), "stop_timeout_seconds": 2}, **more}


def lxc(lxcpath: Path, tool: str, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [tool, "-P", str(lxcpath), "-n", name, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def state_is(name: str, state: str) -> Any:
    """PropertiesChanged to ``state``, or the container appearing in it."""
    path = names.container_path(name)

    def match(e: SignalEvent) -> bool:
        if e.member == "InterfacesAdded" and e.args[0] == path:
            return bool(e.args[1][names.CONTAINER_IFACE]["State"] == state)
        return (
            e.path == path and e.member == "PropertiesChanged" and e.args[1].get("State") == state
        )

    return match


async def create(client: Client, name: str, **options: Any) -> Any:
    record = await client.run_job(lambda: client.create_container(name, options))
    assert record.state is JobState.SUCCEEDED, record.result
    return record


async def props(client: Client, name: str) -> dict[str, Any]:
    return await client.get_all(names.container_path(name), names.CONTAINER_IFACE)


async def call(client: Client, name: str, member: str, sig: str = "", *body: Any) -> list[Any]:
    return await client.container_call(name, member, sig, list(body))


async def job(client: Client, name: str, member: str, sig: str = "", *body: Any) -> Any:
    async def start() -> str:
        return str((await call(client, name, member, sig, *body))[0])

    return await client.run_job(start)


async def test_freeze_and_unfreeze_in_a_row_leave_the_state_they_made(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    """The state a verb made is the state read right after it, every time: a refresh
    that asked LXC before the change never stores its older answer over it."""
    async with running(tmp_path, private_bus, **ct_config(lxcpath)):
        await create(client, "ct3", id=203, start=True)
        for _ in range(15):
            await call(client, "ct3", "Freeze")
            assert (await props(client, "ct3"))["State"] == "frozen"
            await call(client, "ct3", "Unfreeze")
            assert (await props(client, "ct3"))["State"] == "running"
        assert (
            await job(client, "ct3", "Delete", "a{sv}", to_variants({"force": True}))
        ).state is JobState.SUCCEEDED


async def test_a_container_from_create_to_delete(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    async with (
        running(tmp_path, private_bus, **ct_config(lxcpath)),
        client.signals("") as queue,
    ):
        record = await create(client, "ct1", id=200, memory_mb=64, cpus=1, start=True)
        assert record.output == {"name": "ct1", "id": 200, "path": names.container_path("ct1")}
        p = await props(client, "ct1")
        assert p["State"] == "running" and p["Id"] == 200 and p["Template"] == "busybox"
        assert p["PID"] > 0 and p["MemoryLimit"] == 64 * 1024 * 1024 and p["CPUs"] == 1
        assert "RUNNING" in lxc(lxcpath, "lxc-info", "ct1", "-s").stdout

        assert await call(client, "ct1", "Exec", "asa{sv}", ["echo", "hi there"], {}) == [
            0,
            "hi there\n",
            "",
        ]
        # argv is never a shell line: the metacharacters reach echo as text.
        (status, out, _) = await call(
            client, "ct1", "Exec", "asa{sv}", ["echo", "a;b", "$HOME"], {}
        )
        assert (status, out) == (0, "a;b $HOME\n")
        status, _, _ = await call(client, "ct1", "Exec", "asa{sv}", ["sh", "-c", "exit 3"], {})
        assert status == 3

        await call(client, "ct1", "Freeze")
        assert (await props(client, "ct1"))["State"] == "frozen"
        assert "FROZEN" in lxc(lxcpath, "lxc-info", "ct1", "-s").stdout
        await call(client, "ct1", "Unfreeze")
        assert (await props(client, "ct1"))["State"] == "running"

        two = await asyncio.gather(
            job(client, "ct1", "Stop", "a{sv}", to_variants({"force": True})),
            job(client, "ct1", "Restart"),
            return_exceptions=True,
        )
        assert two[0].state is JobState.SUCCEEDED  # type: ignore[union-attr]
        assert type(two[1]).__name__ == "Busy"
        assert (await props(client, "ct1"))["PID"] == 0
        with pytest.raises(Conflict, match="Exec needs it running"):
            await call(client, "ct1", "Exec", "asa{sv}", ["true"], {})
        refused = await job(client, "ct1", "Stop", "a{sv}", {})
        assert refused.error_name == Conflict.dbus_name

        await call(client, "ct1", "SetAutostart", "b", True)
        assert (await props(client, "ct1"))["Autostart"] is True
        assert "lxc.start.auto = 1" in (lxcpath / "ct1" / "config").read_text()

        # A clean stop: busybox's init ignores the halt signal, LXC kills it after the timeout.
        assert (await job(client, "ct1", "Start")).state is JobState.SUCCEEDED
        # The job ends when LXC has been read, not only when the state was reported.
        assert (await props(client, "ct1"))["PID"] > 0
        clean = await job(client, "ct1", "Stop", "a{sv}", to_variants({"timeout": 1.0}))
        assert clean.state is JobState.SUCCEEDED, clean.result

        assert (await job(client, "ct1", "Delete", "a{sv}", {})).state is JobState.SUCCEEDED
        await next_event(
            queue, lambda e: e.member == "InterfacesRemoved" and e.args[0].endswith("/ct1")
        )
        assert not (lxcpath / "ct1").exists()
        with pytest.raises(NotFound):
            await call(client, "ct1", "Start")


async def test_changes_made_by_hand_arrive_within_a_second(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    async with (
        running(tmp_path, private_bus, **ct_config(lxcpath)),
        client.signals("") as queue,
    ):
        await create(client, "byhand", start=True)
        assert lxc(lxcpath, "lxc-stop", "byhand", "-k").returncode == 0
        await next_event(queue, state_is("byhand", "stopped"))
        assert lxc(lxcpath, "lxc-start", "byhand", "-d").returncode == 0
        await next_event(queue, state_is("byhand", "running"))
        # A container made by hand appears too.
        made = lxc(lxcpath, "lxc-create", "foreign", "-t", "busybox")
        assert made.returncode == 0, made.stderr
        # Debian's default config links to lxcbr0, which this host does not have.
        config = lxcpath / "foreign" / "config"
        lines = [line for line in config.read_text().splitlines() if "lxc.net.0" not in line]
        config.write_text("\n".join([*lines, "lxc.net.0.type = empty", ""]))
        started = lxc(lxcpath, "lxc-start", "foreign", "-d")
        assert started.returncode == 0, started.stderr
        await next_event(queue, state_is("foreign", "running"), timeout=5)
        p = await props(client, "foreign")
        assert p["Template"] == "" and p["PID"] > 0


async def test_containers_outlive_a_daemon_restart(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    async with running(tmp_path, private_bus, **ct_config(lxcpath)):
        await create(client, "keeper", id=150, start=True)
        pid = (await props(client, "keeper"))["PID"]
    # The daemon is gone; the container is not.
    assert "RUNNING" in lxc(lxcpath, "lxc-info", "keeper", "-s").stdout
    async with running(tmp_path, private_bus, **ct_config(lxcpath)):
        p = await props(client, "keeper")
        assert (p["State"], p["PID"], p["Id"]) == ("running", pid, 150)


async def test_autostart_once_per_boot_in_id_order(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    async with running(tmp_path, private_bus, **ct_config(lxcpath)):
        await create(client, "late", id=110, autostart=True)
        await create(client, "early", id=105, autostart=True)
        await create(client, "manual", id=107)
    # A new boot, as far as op-dbusd can tell.
    (tmp_path / "state" / "autostart.boot").unlink()
    async with running(tmp_path, private_bus, **ct_config(lxcpath)), client.signals("") as queue:
        await next_event(queue, state_is("late", "running"), timeout=20)
        starts = [r for r in await client.jobs() if r.operation.endswith("(autostart)")]
        assert [r.operation for r in sorted(starts, key=lambda r: r.id)] == [
            "Start early (autostart)",
            "Start late (autostart)",
        ]
        for r in starts:
            assert (await client.wait_job(names.job_path(r.id))).state is JobState.SUCCEEDED
        assert (await props(client, "manual"))["State"] == "stopped"
        last = (await job(client, "early", "Stop", "a{sv}", to_variants({"force": True}))).id
    # The same boot: a daemon restart starts nothing a user stopped.
    async with running(tmp_path, private_bus, **ct_config(lxcpath)):
        await asyncio.sleep(0.5)
        assert (await props(client, "early"))["State"] == "stopped"
        assert [r.id for r in await client.jobs() if r.id > last] == []


BAD_NAMES = ["a/b", "..", "has space", "x" * 64, "dot.ted", ""]


async def test_bad_requests_get_named_errors_and_leave_nothing(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    async def create_call(name: str, **options: Any) -> Any:
        return await client.create_container(name, options)

    async with running(tmp_path, private_bus, **ct_config(lxcpath)):
        await create(client, "good", id=300)
        for name in BAD_NAMES:
            with pytest.raises(InvalidArgs, match="name"):
                await create_call(name)
        with pytest.raises(AlreadyExists, match="already exists"):
            await create_call("good")
        with pytest.raises(AlreadyExists, match="id 300 is taken by good"):
            await create_call("other", id=300)
        with pytest.raises(InvalidArgs, match="template"):
            await create_call("other", template="alpine-from-nowhere")
        with pytest.raises(InvalidArgs, match="mirror"):
            await create_call("other", template="download")
        with pytest.raises(NotFound, match="no bridge nosuchbr0 on this host"):
            await create_call("other", bridge="nosuchbr0")
        # The host-side veth's name is taken (the README's old Try-it made port vi100).
        for argv in (["ip", "link", "add", "ctbr9", "type", "bridge"],
                     ["ip", "link", "add", "vi301", "type", "veth", "peer", "name", "vi301p"]):  # fmt: skip
            subprocess.run(argv, check=True)
        try:
            with pytest.raises(AlreadyExists, match="interface vi301 already exists"):
                await create_call("other", id=301, bridge="ctbr9")
            with pytest.raises(AlreadyExists, match="interface vi301 already exists"):
                await create_call("other", bridge="ctbr9", veth="vi301")
        finally:
            for name in ("vi301", "ctbr9"):
                subprocess.run(["ip", "link", "del", name], check=False)
        with pytest.raises(InvalidArgs, match="need a bridge"):
            await create_call("other", ipv4=["10.0.0.2/24"])
        with pytest.raises(InvalidArgs, match="gateway"):
            await create_call("other", bridge="lo", ipv4=["10.0.0.2/24"], gateway="10.9.0.1")
        with pytest.raises(Conflict, match="Exec needs it running"):
            await call(client, "good", "Exec", "asa{sv}", ["true"], {})
        with pytest.raises(InvalidArgs, match="bogus"):
            await create_call("other", bogus=1)
        assert await client.jobs() != []
        assert sorted(p.name for p in lxcpath.iterdir()) == ["good"]


async def test_two_containers_on_an_ovs_bridge_ping_each_other(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, ovs: PrivateOvs, client: Client
) -> None:
    config = ct_config(lxcpath, ovsdb={"remote": ovs.remote, "datapath_type": "netdev"})
    async with running(tmp_path, private_bus, **config), client.signals("") as queue:
        await client.create_bridge("mesh", {})
        await create(
            client, "gw", id=100, bridge="mesh", ipv4=["10.77.0.1/24"], gateway="10.77.0.254",
            start=True,
        )  # fmt: skip
        await create(
            client, "peer", id=101, bridge="mesh", ipv4=["10.77.0.2/24"],
            hwaddr="52:54:00:77:00:02", start=True,
        )  # fmt: skip

        def ports(count: int) -> Any:
            def match(e: SignalEvent) -> bool:
                if e.path != names.bridge_path("mesh") or e.member != "PropertiesChanged":
                    return False
                return "Ports" in e.args[1] and len(e.args[1]["Ports"]) == count

            return match

        bridge = await client.bridge("mesh")
        if len(bridge.ports) != 3:
            await next_event(queue, ports(3), timeout=5)
            bridge = await client.bridge("mesh")
        assert sorted(p.name for p in bridge.ports) == ["mesh", "vi100", "vi101"]
        p = await props(client, "gw")
        assert (p["Bridge"], p["Veth"], p["IPv4"]) == ("mesh", "vi100", ["10.77.0.1"])
        shown = await call(
            client, "gw", "Exec", "asa{sv}", ["ip", "-4", "addr", "show", "eth0"], {}
        )
        assert "inet 10.77.0.1/24 brd 10.77.0.255" in shown[1]
        routes = await call(client, "gw", "Exec", "asa{sv}", ["ip", "route"], {})
        assert "default via 10.77.0.254 dev eth0" in routes[1]
        mac = await call(
            client, "peer", "Exec", "asa{sv}", ["cat", "/sys/class/net/eth0/address"], {}
        )
        assert mac[1] == "52:54:00:77:00:02\n"

        status, out, err = await call(
            client, "gw", "Exec", "asa{sv}", ["ping", "-c", "2", "-W", "2", "10.77.0.2"], {}
        )
        assert status == 0, out + err
        assert "2 packets received" in out

        assert (await job(client, "peer", "Stop", "a{sv}", to_variants({"force": True}))).state
        await next_event(queue, ports(2), timeout=5)
        assert [p.name for p in (await client.bridge("mesh")).ports] == ["mesh", "vi100"]
        listed = (await asyncio.to_thread(ovs.vsctl, "list-ports", "mesh")).stdout.split()
        assert listed == ["vi100"]


async def test_a_linux_bridge_and_a_create_that_fails_midway(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    subprocess.run(["ip", "link", "add", "ctbr0", "type", "bridge"], check=True)
    try:
        async with running(tmp_path, private_bus, **ct_config(lxcpath)):
            await create(client, "onlinux", id=130, bridge="ctbr0", start=True)
            assert Path("/sys/class/net/ctbr0/brif/vi130").exists()
            # lxc-start fails (the kernel refuses an interface called "all", a name
            # no interface has, so the create's own checks pass): nothing is left.
            record = await client.run_job(
                lambda: client.create_container(
                    "broken", {"bridge": "ctbr0", "veth": "all", "start": True}
                )
            )
            assert record.state is JobState.FAILED and record.error_name.endswith("BackendFailed")
            assert "starting broken" in record.result
            assert sorted(p.name for p in lxcpath.iterdir()) == ["onlinux"]
            with pytest.raises(NotFound):
                await props(client, "broken")
    finally:
        subprocess.run(["ip", "link", "del", "ctbr0"], check=False)


async def test_committed_container1_introspection_matches(
    tmp_path: Path, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    async with running(tmp_path, private_bus, **ct_config(lxcpath)):
        await create(client, "intro")
        path = names.container_path("intro")
        (xml,) = await client.call(path, names.INTROSPECTABLE_IFACE, "Introspect")
        live = {i.attrib["name"]: i for i in ET.fromstring(xml).iter("interface")}
        assert_introspection_matches(live, [names.CONTAINER_IFACE])


async def test_a_create_cut_short_by_sigkill_leaves_nothing_after_a_restart(
    tmp_path: Path, make_daemon: Any, private_bus: PrivateBus, lxcpath: Path, client: Client
) -> None:
    """kill -9 while lxc-create runs: the next start removes the half-made container,
    and creating it again works (it used to be AlreadyExists for good)."""
    daemon = make_daemon(private_bus, {**base_config(tmp_path), **ct_config(lxcpath)})
    path = await client.create_container("cut", {})
    deadline = asyncio.get_running_loop().time() + 20
    while not (lxcpath / "cut").exists():  # lxc-create has begun making it
        assert asyncio.get_running_loop().time() < deadline, "lxc-create never started"
        await asyncio.sleep(0.01)
    daemon.signal(signal.SIGKILL)
    await asyncio.to_thread(daemon.wait)
    assert path == "/org/opdbus/job/1"
    assert (lxcpath / "cut").exists()  # what the crash left
    await asyncio.to_thread(daemon.start)
    assert not (lxcpath / "cut").exists()
    with pytest.raises(NotFound):
        await props(client, "cut")
    await create(client, "cut")
    assert (await props(client, "cut"))["State"] == "stopped"
