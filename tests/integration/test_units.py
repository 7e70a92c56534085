"""systemd units as declarative state, against a real systemd (PID 1 of its own namespace).

What the daemon does is checked with ``systemctl`` inside that namespace, not
only through the daemon itself. The daemon runs in agent mode, the mode
made for this: D-Bus and systemd only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opdbus import errors, names
from opdbus.daemon import Daemon
from opdbus.models.job import JobState
from opdbus.sandbox import PrivateBus
from tests.integration.test_state import apply, next_state_event
from tests.support import assert_introspection_matches, running, until
from tests.systemd_ns import PrivateSystemd, have_systemd, service

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have_systemd(), reason="systemd is not installed"),
]

UNITS = {
    "web.service": service("a web server"),
    "cache.service": service("a cache"),
    "broken.service": service("fails at once", exec_start="/bin/false", kind="oneshot"),
    "fixed.service": service("no [Install] section", install=False),
}


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[PrivateSystemd]:
    sd = PrivateSystemd(tmp_path / "systemd", dict(UNITS))
    sd.start()
    try:
        yield sd
    finally:
        sd.stop()


def agent(tmp: Path, bus: PrivateBus, sd: PrivateSystemd, **extra: Any) -> Any:
    return running(tmp, bus, mode="agent", systemd={"bus_address": sd.address}, **extra)


def units(**wanted: dict[str, Any]) -> dict[str, Any]:
    return {"systemd": {"units": {f"{name}.service": spec for name, spec in wanted.items()}}}


async def ctl(sd: PrivateSystemd, *args: str) -> str:
    return await asyncio.to_thread(sd.systemctl, *args)


async def test_units_are_enabled_started_and_shown_as_systemd_says(
    tmp_path: Path, private_bus: PrivateBus, systemd: PrivateSystemd, client: Client
) -> None:
    async with agent(tmp_path, private_bus, systemd):
        status = await client.status()
        assert status.backends["systemd"][0] is True, status.backends["systemd"]
        assert "systemd 252" in status.backends["systemd"][1]
        doc = units(web={"enabled": True, "active_state": "active"}, cache={"enabled": False})
        plan = await client.state_diff(json.dumps(doc))
        assert {(c["id"], c["field"], c["from"], c["to"]) for c in plan} == {
            ("web.service", "enabled", False, True),
            ("web.service", "active_state", "inactive", "active"),
        }
        done = await apply(client, doc)
        assert done.state is JobState.SUCCEEDED, done.result
        assert await ctl(systemd, "is-enabled", "web.service") == "enabled"
        assert await ctl(systemd, "is-active", "web.service") == "active"
        assert await ctl(systemd, "is-enabled", "cache.service") == "disabled"
        log = "\n".join(line.text for line in await client.job_log(names.job_path(done.id)))
        assert "multi-user.target.wants/web.service" in log  # systemd's own symlink, logged
        # The unit as an object, in systemd's own words.
        props = await client.get_all(names.unit_path("web.service"), names.UNIT_IFACE)
        assert props["ActiveState"] == "active" and props["SubState"] == "running"
        assert props["UnitFileState"] == "enabled" and props["Enabled"] is True
        assert props["Description"] == "a web server" and props["Masked"] is False
        (xml,) = await client.call(
            names.unit_path("web.service"), names.INTROSPECTABLE_IFACE, "Introspect"
        )
        live = {i.attrib["name"]: i for i in ET.fromstring(xml).iter("interface")}
        assert_introspection_matches(live, [names.UNIT_IFACE])
        query = await client.state_query(["systemd"])
        assert query["systemd"]["units"]["web.service"] == {
            "enabled": True,
            "active_state": "active",
            "masked": False,
        }
        # Applied again: nothing to do, and systemd is asked for nothing new.
        again = await apply(client, doc)
        assert "nothing to change" in again.result


async def test_a_stop_by_hand_is_drift_heard_from_systemd(
    tmp_path: Path, private_bus: PrivateBus, systemd: PrivateSystemd, client: Client
) -> None:
    async with (
        agent(tmp_path, private_bus, systemd),
        client.signals(f"path='{names.STATE_PATH}'") as queue,
    ):
        doc = units(web={"enabled": True, "active_state": "active"})
        assert (await apply(client, doc)).state is JobState.SUCCEEDED
        await ctl(systemd, "stop", "web.service")  # behind the daemon's back
        event = await next_state_event(queue, "Drifted")
        assert event.args[:2] == ["systemd", "web.service"]
        assert "active_state: inactive (wanted active)" in event.args[2]
        await ctl(systemd, "disable", "web.service")
        event = await next_state_event(queue, "Drifted")
        assert "enabled: False (wanted True)" in event.args[2]
        state = await client.state()
        assert state["InSync"] is False
        assert sorted(what.split(":")[0] for _, _, what in state["Drift"]) == [
            "active_state",
            "enabled",
        ]
        props = await client.get_all(names.unit_path("web.service"), names.UNIT_IFACE)
        assert props["ActiveState"] == "inactive" and props["UnitFileState"] == "disabled"


async def test_rollback_restores_enablement_and_active_state(
    tmp_path: Path, private_bus: PrivateBus, systemd: PrivateSystemd, client: Client
) -> None:
    await ctl(systemd, "enable", "--now", "cache.service")
    async with agent(tmp_path, private_bus, systemd):
        trial = units(
            web={"enabled": True, "active_state": "active"},
            cache={"enabled": False, "active_state": "inactive"},
        )
        done = await apply(client, trial, confirm_timeout=60)
        assert done.state is JobState.SUCCEEDED, done.result
        assert await ctl(systemd, "is-active", "web.service") == "active"
        assert await ctl(systemd, "is-active", "cache.service") == "inactive"
        await client.state_call("Rollback")
        assert await ctl(systemd, "is-enabled", "web.service") == "disabled"
        assert await ctl(systemd, "is-active", "web.service") == "inactive"
        assert await ctl(systemd, "is-enabled", "cache.service") == "enabled"
        assert await ctl(systemd, "is-active", "cache.service") == "active"


async def test_a_unit_that_fails_to_start_fails_the_apply_and_undoes_the_rest(
    tmp_path: Path, private_bus: PrivateBus, systemd: PrivateSystemd, client: Client
) -> None:
    async with agent(tmp_path, private_bus, systemd):
        doc = units(web={"active_state": "active"}, broken={"active_state": "active"})
        done = await apply(client, doc)
        assert done.state is JobState.FAILED
        assert "broken.service" in done.result and "'failed'" in done.result, done.result
        assert "journalctl -u broken.service" in done.result
        assert await ctl(systemd, "is-active", "web.service") == "inactive"  # put back


async def test_units_systemd_cannot_change_are_named_errors(
    tmp_path: Path, private_bus: PrivateBus, systemd: PrivateSystemd, client: Client
) -> None:
    async with agent(tmp_path, private_bus, systemd):
        missing = await apply(client, units(nosuch={"active_state": "active"}))
        assert missing.state is JobState.FAILED
        assert "nosuch.service is not installed" in missing.result
        static = await apply(client, units(fixed={"enabled": True}))
        assert static.state is JobState.FAILED
        assert "no [Install] section" in static.result
        with pytest.raises(errors.InvalidArgs, match="not a unit name"):
            await client.state_diff(json.dumps({"systemd": {"units": {"../x": {}}}}))


async def test_mask_stops_then_masks_and_unmask_brings_it_back(
    tmp_path: Path, private_bus: PrivateBus, systemd: PrivateSystemd, client: Client
) -> None:
    await ctl(systemd, "start", "cache.service")
    async with agent(tmp_path, private_bus, systemd):
        done = await apply(client, units(cache={"masked": True, "active_state": "inactive"}))
        assert done.state is JobState.SUCCEEDED, done.result
        assert await ctl(systemd, "is-enabled", "cache.service") == "masked"
        assert await ctl(systemd, "is-active", "cache.service") == "inactive"
        back = await apply(client, units(cache={"masked": False, "active_state": "active"}))
        assert back.state is JobState.SUCCEEDED, back.result
        assert await ctl(systemd, "is-active", "cache.service") == "active"


async def test_losing_systemd_reports_it_down_and_units_unavailable(
    tmp_path: Path, private_bus: PrivateBus, systemd: PrivateSystemd, client: Client
) -> None:
    async with agent(tmp_path, private_bus, systemd):
        assert (await client.status()).backends["systemd"][0] is True
        systemd.stop()

        async def down() -> bool:
            return (await client.status()).backends["systemd"][0] is False

        await until(down, 10)
        with pytest.raises(errors.BackendUnavailable, match="systemd"):
            await client.state_apply(json.dumps(units(web={"active_state": "active"})))


@pytest.fixture
async def no_systemd(tmp_path: Path, private_bus: PrivateBus) -> AsyncIterator[Daemon]:
    async with running(tmp_path, private_bus, mode="agent") as daemon:
        yield daemon


async def test_without_systemd_the_provider_says_why_and_nothing_crashes(
    no_systemd: Daemon, client: Client
) -> None:
    up, detail = (await client.status()).backends["systemd"]
    assert up is False and "no-systemd-bus" in detail and "not reachable" in detail
    with pytest.raises(errors.BackendUnavailable, match=r"systemd's bus .* is not reachable"):
        await client.state_diff(json.dumps(units(web={"enabled": True})))


SECTIONS = {
    "systemd": {"units": {}},
    "net": {"interfaces": []},
    "lxc": {"containers": []},
    "vms": {"domains": []},
}
BACKEND = {"systemd": "systemd", "net": "ovsdb", "lxc": "lxc", "vms": "libvirt"}


@pytest.mark.parametrize(
    ("mode", "served"),
    [
        ("agent", {"systemd"}),
        ("standalone", {"systemd", "net"}),
        ("full", {"systemd", "net", "lxc", "vms"}),
    ],
)
async def test_each_mode_serves_the_seeds_providers_and_names_itself_for_the_rest(
    mode: str, served: set[str], tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    # A listening OVSDB socket: in agent mode nothing may even connect to it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ovsdb:
        ovsdb.bind(str(tmp_path / "ovsdb.sock"))
        ovsdb.listen(8)
        ovsdb.setblocking(False)
        config: dict[str, Any] = {"mode": mode}
        if mode == "agent":
            config["ovsdb"] = {"remote": f"unix:{tmp_path / 'ovsdb.sock'}"}
        async with running(tmp_path, private_bus, **config):
            backends = (await client.status()).backends
            for section, doc in SECTIONS.items():
                text = json.dumps({section: doc})
                if section in served:
                    # Served here: a plan (LXC works here), or its backend is not on
                    # this host (no systemd, OVS or libvirt at the configured paths).
                    with contextlib.suppress(errors.BackendUnavailable):
                        assert await client.state_diff(text) == []
                    assert backends[BACKEND[section]][1] != f"off in {mode} mode"
                else:
                    with pytest.raises(errors.NotSupported, match=f"off in {mode} mode"):
                        await client.state_diff(text)
                    assert backends[BACKEND[section]] == (False, f"off in {mode} mode")
        if mode == "agent":
            with pytest.raises(BlockingIOError):
                ovsdb.accept()  # no one ever connected
            assert not (tmp_path / "lxc").exists()


def ovs_units(run: str) -> dict[str, str]:
    """Open vSwitch as systemd units (what NixOS's vswitch module runs), in the namespace."""
    ovs = f"{run}/ovs"
    env = f"Environment=OVS_RUNDIR={ovs} OVS_LOGDIR={ovs} OVS_DBDIR={ovs}\n"
    schema = "/usr/share/openvswitch/vswitch.ovsschema"
    return {
        "ovsdb.service": (
            "[Unit]\nDescription=OVS database\n\n[Service]\n" + env
            + f"ExecStartPre=/bin/mkdir -p {ovs}\n"
            + f"ExecStartPre=/bin/sh -c 'test -e {ovs}/conf.db || ovsdb-tool create {ovs}/conf.db {schema}'\n"
            + f"ExecStart=/usr/sbin/ovsdb-server {ovs}/conf.db --remote=punix:{ovs}/db.sock "
            f"--pidfile={ovs}/ovsdb-server.pid --unixctl={ovs}/ovsdb-server.ctl\n"
            # ovsdb-server makes its socket a moment after it is forked.
            + f"ExecStartPost=/bin/sh -c 'for i in $(seq 200); do test -S {ovs}/db.sock && break; "
            f"sleep 0.05; done; ovs-vsctl --db=unix:{ovs}/db.sock --timeout=20 --no-wait init'\n"
        ),
        "ovs-vswitchd.service": (
            "[Unit]\nDescription=OVS switch\nRequires=ovsdb.service\nAfter=ovsdb.service\n\n"
            "[Service]\n" + env
            + f"ExecStart=/usr/sbin/ovs-vswitchd unix:{ovs}/db.sock "
            f"--pidfile={ovs}/ovs-vswitchd.pid --unixctl={ovs}/ovs-vswitchd.ctl\n"
        ),
        "openvswitch.service": (
            "[Unit]\nDescription=Open vSwitch\nRequires=ovsdb.service ovs-vswitchd.service\n"
            "After=ovsdb.service ovs-vswitchd.service\n\n[Service]\nType=oneshot\n"
            "RemainAfterExit=yes\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n"
        ),
    }  # fmt: skip


@pytest.mark.skipif(shutil.which("ovs-vswitchd") is None, reason="Open vSwitch is not installed")
async def test_one_document_brings_up_openvswitch_then_its_bridges(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    """Seed 002's order: openvswitch.service first, then the bridges on it, in one Apply."""
    sd = PrivateSystemd(tmp_path / "systemd", ovs_units("/run/test-units"))
    await asyncio.to_thread(sd.start)
    db = f"unix:/proc/{sd.pid}/root/run/test-units/ovs/db.sock"
    try:
        config = {
            "mode": "standalone",
            "systemd": {"bus_address": sd.address},
            "ovsdb": {"remote": db, "datapath_type": "netdev"},
            "state": {"backend_wait_seconds": 30},
        }
        async with running(tmp_path, private_bus, **config):
            assert (await client.status()).backends["ovsdb"][0] is False  # OVS is not up
            doc = {
                "systemd": {"units": {"openvswitch.service": {"active_state": "active"}}},
                "net": {"interfaces": [{"name": "ovsup0", "ports": []}]},
            }
            done = await client.run_job(lambda: client.state_apply(json.dumps(doc)))
            assert done.state is JobState.SUCCEEDED, done.result
            log = [line.text for line in await client.job_log(names.job_path(done.id))]
            started = next(i for i, t in enumerate(log) if "start openvswitch.service" in t)
            made = next(i for i, t in enumerate(log) if "net/ovsup0" in t and "+" in t)
            assert started < made, log  # the unit first, then the bridge
            assert any("waiting for net" in text for text in log), log
            shown = await asyncio.to_thread(
                subprocess.run, ["ovs-vsctl", f"--db={db}", "list-br"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            assert shown.stdout.split() == ["ovsup0"]
            assert (await client.state())["InSync"] is True
    finally:
        await asyncio.to_thread(
            subprocess.run, ["ovs-vsctl", f"--db={db}", "--if-exists", "del-br", "ovsup0"],
            capture_output=True, check=False, timeout=30,
        )  # fmt: skip
        await asyncio.to_thread(sd.stop)
