"""The console menu driven by Textual's headless Pilot, against op-dbusd on a private
bus with libvirt's test driver (test:///default: one running VM, "test").

Changes "outside the menu" are made by another bus client, as `opctl` or
`virsh` through the daemon would. Only the countdown's clock is faster here
(tick); everything else is real time.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opctl.menu import Countdown, MenuApp
from opctl.menu_screens import JobLog, MoreOptions, Table
from opctl.wire import SignalEvent
from opdbus import names
from opdbus.models.job import JobState
from opdbus.sandbox import PrivateBus
from tests.integration.test_rebuild import FAKE
from tests.libvirtd import TEST_PREFIX, PrivateLibvirtd
from tests.support import running

pytestmark = pytest.mark.timeout(90)
TEST_DRIVER = {"mode": "full", "libvirt": {"uri": "test:///default"}}


def notes(app: MenuApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


def status(app: MenuApp, widget: str = "#status") -> str:
    from textual.widgets import Static

    return str(app.query_one(widget, Static).content)


async def settle(pilot: Any, check: Any, timeout: float = 5.0) -> None:
    """Let the app run until ``check()`` holds (real time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the menu did not get there"
        await pilot.pause(0.05)


def row(app: MenuApp, name: str) -> list[str]:
    from textual.widgets import DataTable

    table = app.query_one("#vms", DataTable)
    path = next(p for p, v in app.vms.items() if v.get("Name") == name)
    return [str(cell) for cell in table.get_row(path)]


async def choose(pilot: Any, app: MenuApp, key: str) -> None:
    """Pick a More Options entry as a user does: highlight it, press enter."""
    from textual.widgets import OptionList

    await settle(pilot, lambda: isinstance(app.screen, MoreOptions))
    options = app.screen.query_one("#options", OptionList)
    options.focus()
    options.highlighted = [k for k, _ in MoreOptions.ENTRIES].index(key)
    await pilot.press("enter")


async def vm_path(client: Client, name: str) -> str:
    return next(p for p, v in (await client.vms()).items() if v["Name"] == name)


async def vm_job(client: Client, name: str, member: str) -> None:
    path = await vm_path(client, name)
    done = await client.run_job(lambda: client.vm_job(path, member))
    assert done.state is JobState.SUCCEEDED, done.result


async def test_the_list_follows_changes_made_elsewhere_and_actions_run_jobs(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **TEST_DRIVER):
        app = MenuApp(private_bus.address)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, app.ready.is_set)
            assert row(app, "test") == ["test", "running", "2", "8192 MiB", "no"]
            assert "mode full" in status(app) and "libvirt ok" in status(app)

            # Stopped by another client: the row changes, nobody polled.
            await vm_job(client, "test", "Stop")
            await settle(pilot, lambda: row(app, "test")[1] == "shutoff", timeout=1.0)

            # Started from the menu: a job with a progress line, the row follows.
            await pilot.press("s")
            await settle(pilot, lambda: "succeeded" in status(app, "#job"))
            assert "test started" in status(app, "#job")
            await settle(pilot, lambda: row(app, "test")[1] == "running", timeout=1.0)
            props = await client.get_all(names.ROOT_PATH, names.MANAGER_IFACE)
            assert props["LastRunVM"] == "test"  # kept by the daemon, not by us

            # The daemon's named error, as one line.
            await pilot.press("s")
            await settle(pilot, lambda: any("is already running" in n for n in notes(app)))
            assert "Conflict: test is already running" in status(app, "#job") or any(
                "test is already running" in n for n in notes(app)
            )

            # `l`: the last job's log; back with escape.
            await pilot.press("l")
            await settle(pilot, lambda: isinstance(app.screen, JobLog))
            await pilot.press("escape")

            # A VM made elsewhere appears; deleted, it goes.
            xml = await client.call(await vm_path(client, "test"), names.VM_IFACE, "GetXML")
            assert "<domain" in xml[0]


async def test_countdown_starts_the_last_run_vm_unless_a_key_is_pressed(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **TEST_DRIVER, menu={"autostart_timeout_seconds": 3}):
        await vm_job(client, "test", "Stop")
        await vm_job(client, "test", "Start")  # now the last-run VM
        await vm_job(client, "test", "Stop")

        # A key during the countdown: the menu, and the VM stays off.
        app = MenuApp(private_bus.address, tick=0.6)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, lambda: isinstance(app.screen, Countdown))
            shown = str(app.screen.query_one("#countdown").content)  # type: ignore[attr-defined]
            assert re.search(r"Starting test in [123] s\.", shown), shown
            await pilot.press("x")
            await settle(pilot, lambda: not isinstance(app.screen, Countdown))
            await pilot.pause(2.1)  # longer than the countdown would have run
            assert row(app, "test")[1] == "shutoff"

        # Left alone, it counts down and starts the VM.
        app = MenuApp(private_bus.address, tick=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, app.ready.is_set)
            await settle(pilot, lambda: row(app, "test")[1] == "running")
            assert not isinstance(app.screen, Countdown)


async def test_more_options_run_jobs_and_show_lists(
    tmp_path: Path, private_bus: PrivateBus, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_REBUILD_LINES", "3")
    config = {**TEST_DRIVER, "rebuild": {"command": str(FAKE)}, "audit": {"enabled": True}}
    async with running(tmp_path, private_bus, **config):
        app = MenuApp(private_bus.address)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, app.ready.is_set)
            await pilot.press("o")

            # Rebuild: the action chooser, then the output streaming into the log.
            await choose(pilot, app, "rebuild")
            await pilot.pause(0.2)
            await pilot.press("down", "enter")  # "test"
            await settle(pilot, lambda: isinstance(app.screen, JobLog))
            log = app.screen.query_one("#log")
            await settle(pilot, lambda: "succeeded" in str(app.screen.query_one("#title").content))  # type: ignore[attr-defined]
            text = "\n".join(str(line.text) for line in log.lines)  # type: ignore[attr-defined]
            assert "building the system configuration..." in text
            assert "activating the configuration..." in text
            await pilot.press("escape")

            # Jobs: the rebuild is listed; bridges: Open vSwitch is not reachable here.
            await choose(pilot, app, "jobs")
            await settle(pilot, lambda: isinstance(app.screen, Table))
            from textual.widgets import DataTable

            table = app.screen.query_one("#rows", DataTable)
            await settle(pilot, lambda: table.row_count >= 1)
            assert "Rebuild test" in [str(c) for c in table.get_row_at(0)]
            await pilot.press("escape")
            await choose(pilot, app, "bridges")
            await settle(pilot, lambda: isinstance(app.screen, Table))
            title = app.screen.query_one("#title")
            await settle(pilot, lambda: "cannot be listed: ovsdb" in str(title.content))  # type: ignore[attr-defined]
            await pilot.press("escape")

            # Audit: the Rebuild call is there; `v` verifies the chain.
            await choose(pilot, app, "audit")
            await settle(pilot, lambda: isinstance(app.screen, Table))
            table = app.screen.query_one("#rows", DataTable)
            await settle(pilot, lambda: table.row_count >= 1)
            methods = [str(table.get_row_at(i)[3]) for i in range(table.row_count)]
            assert any("Rebuild" in m for m in methods), methods
            await pilot.press("v")
            await settle(pilot, lambda: any("chain intact" in n for n in notes(app)))


async def test_the_menu_waits_for_a_daemon_that_went_away_and_comes_back(
    tmp_path: Path, private_bus: PrivateBus
) -> None:
    app = MenuApp(private_bus.address)
    async with app.run_test(size=(80, 24)) as pilot:
        async with running(tmp_path, private_bus, **TEST_DRIVER):
            await settle(pilot, app.ready.is_set)
            assert row(app, "test")[1] == "running"
        await settle(pilot, lambda: "reconnecting" in status(app), timeout=5)
        app.ready.clear()
        async with running(tmp_path, private_bus, **TEST_DRIVER):
            await settle(pilot, lambda: app.ready.is_set() and "mode full" in status(app), 10)
            assert row(app, "test")[1] == "running"


async def test_a_vm_made_and_started_with_virsh_by_hand_shows_within_a_second(
    tmp_path: Path, private_bus: PrivateBus, libvirtd: PrivateLibvirtd
) -> None:
    """Against a real libvirtd + QEMU: virsh changes, the menu's rows follow."""
    if not libvirtd.socket.exists():
        libvirtd.restart()
    libvirtd.cleanup()
    name = TEST_PREFIX + "menu"
    kind = "kvm" if Path("/dev/kvm").exists() else "qemu"
    xml = tmp_path / "menu.xml"
    xml.write_text(
        f"<domain type='{kind}'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    config = {"mode": "full", "libvirt": {"uri": libvirtd.uri, "pool": f"{TEST_PREFIX}pool",
                                          "pool_dir": str(libvirtd.pool_dir)}}  # fmt: skip
    try:
        async with running(tmp_path, private_bus, **config):
            app = MenuApp(private_bus.address)
            async with app.run_test(size=(80, 24)) as pilot:
                await settle(pilot, app.ready.is_set)
                libvirtd.virsh("define", str(xml))
                await settle(pilot, lambda: name in [v.get("Name") for v in app.vms.values()], 1)
                assert row(app, name)[1] == "shutoff"
                libvirtd.virsh("start", name)
                await settle(pilot, lambda: row(app, name)[1] == "running", timeout=1.0)
                libvirtd.virsh("destroy", name)
                await settle(pilot, lambda: row(app, name)[1] == "shutoff", timeout=1.0)
                libvirtd.virsh("undefine", name)
                await settle(
                    pilot, lambda: name not in [v.get("Name") for v in app.vms.values()], 1
                )
    finally:
        libvirtd.cleanup()


async def test_a_signal_that_comes_while_the_menu_closes_is_dropped(
    tmp_path: Path, private_bus: PrivateBus
) -> None:
    async with running(tmp_path, private_bus, **TEST_DRIVER):
        app = MenuApp(private_bus.address)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, app.ready.is_set)
            path = next(iter(app.vms))
        # The widgets are gone; the session worker may still be holding a
        # signal (a running VM's CPUTime comes every few seconds).
        changed = SignalEvent(
            path=path,
            interface="org.freedesktop.DBus.Properties",
            member="PropertiesChanged",
            args=[names.VM_IFACE, {"CPUTime": 1}, []],
        )
        app.dispatch(changed)
        app.status()
        app.job_line("job 1 Start: running")
        assert app.vms[path]["Name"] == "test"  # the list as it was, nothing raised
