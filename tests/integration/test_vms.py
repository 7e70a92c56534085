"""Virtual machines on a real libvirtd + QEMU (tiny 64 MiB domains, no OS)."""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opctl.convert import to_variants
from opctl.wire import SignalEvent
from opdbus import names
from opdbus.errors import (
    AlreadyExists,
    BackendUnavailable,
    Busy,
    Conflict,
    InvalidArgs,
    NotFound,
    Timeout,
)
from opdbus.models.job import JobState
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests import support
from tests.libvirtd import TEST_PREFIX, PrivateLibvirtd
from tests.support import assert_introspection_matches, running

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def clean_libvirtd(libvirtd: PrivateLibvirtd) -> Iterator[None]:
    """Each test starts and ends without test domains, pools or volumes."""
    if not libvirtd.socket.exists():  # a test that killed it failed before restarting it
        libvirtd.restart()
    libvirtd.cleanup()
    yield
    libvirtd.cleanup()


def vm_config(libvirtd: PrivateLibvirtd) -> dict[str, Any]:
    return {
        "mode": "full",
        "libvirt": {
            "uri": libvirtd.uri,
            "pool": f"{TEST_PREFIX}pool",
            "pool_dir": str(libvirtd.pool_dir),
            "iso_dirs": [str(libvirtd.iso_dir)],
            "shutdown_timeout_seconds": 2,
        },
    }


def profile(name: str, **fields: Any) -> str:
    return json.dumps({"name": TEST_PREFIX + name, "memory_mb": 64, **fields})


async def next_event(
    queue: asyncio.Queue[SignalEvent], match: Any, timeout: float = 5.0
) -> SignalEvent:
    """Like tests.support.next_event, with room for QEMU starting and libvirtd coming back."""
    return await support.next_event(queue, match, timeout)


def state_changed(path: str, state: str) -> Any:
    return lambda e: (
        e.path == path and e.member == "PropertiesChanged" and e.args[1].get("State") == state
    )


async def job_ok(client: Client, start: Any) -> Any:
    record = await client.run_job(start)
    assert record.state is JobState.SUCCEEDED, record.result
    return record


async def test_lifecycle_snapshots_and_delete(
    tmp_path: Path, private_bus: PrivateBus, libvirtd: PrivateLibvirtd, client: Client
) -> None:
    name = TEST_PREFIX + "life"
    async with (
        running(tmp_path, private_bus, **vm_config(libvirtd)),
        client.signals("") as queue,
    ):
        record = await job_ok(
            client, lambda: client.create_vm(profile("life", disks=[{"size_gb": 0.05}]), start=True)
        )
        path = record.output["path"]
        (volume,) = record.output["volumes"]
        assert Path(volume).parent == libvirtd.pool_dir and Path(volume).is_file()
        vms = await client.vms()
        props = vms[path]
        assert props["Name"] == name and props["State"] == "running" and props["Managed"]
        assert props["MemoryMiB"] == 64 and props["Arch"] == "x86_64"
        assert json.loads(props["Profile"])["name"] == name
        assert libvirtd.virsh("domstate", name).stdout.strip() == "running"

        await client.vm_call(path, "Suspend")
        await next_event(queue, state_changed(path, "paused"))
        assert libvirtd.virsh("domstate", name).stdout.strip() == "paused"
        # GetManagedObjects keeps VM1 values between reads; a change drops them.
        assert (await client.vms())[path]["State"] == "paused"
        await client.vm_call(path, "Resume")
        await next_event(queue, state_changed(path, "running"))

        # Two jobs on one VM at once: the second is refused.
        (stop_job,) = await client.vm_call(path, "Stop")
        with pytest.raises(Busy):
            await client.vm_call(path, "Start")
        assert (await client.wait_job(stop_job)).state is JobState.SUCCEEDED
        assert (await client.vms())[path]["State"] == "shutoff"
        refused = await client.run_job(lambda: client.vm_job(path, "Stop"))
        assert refused.error_name == Conflict.dbus_name and "not running" in refused.result

        await job_ok(
            client,
            lambda: client.vm_job(path, "CreateSnapshot", "sa{sv}", ["before", {}]),
        )
        snaps = (await client.vm_call(path, "ListSnapshots"))[0]
        assert [s[0] for s in snaps] == ["before"] and snaps[0][3] is True
        # One time unit on the bus: µs since the epoch (libvirt itself says seconds).
        assert abs(snaps[0][1] - time.time() * 1_000_000) < 600 * 1_000_000
        assert (await client.vms())[path]["Snapshots"] == 1
        assert "before" in libvirtd.virsh("snapshot-list", name, "--name").stdout
        await job_ok(client, lambda: client.vm_job(path, "RevertSnapshot", "s", ["before"]))
        await job_ok(client, lambda: client.vm_job(path, "DeleteSnapshot", "s", ["before"]))
        assert (await client.vms())[path]["Snapshots"] == 0

        (xml,) = await client.vm_call(path, "GetXML")
        assert ET.fromstring(xml).findtext("name") == name

        await job_ok(
            client,
            lambda: client.vm_job(path, "Delete", "a{sv}", [to_variants({"remove_storage": True})]),
        )
        await next_event(queue, lambda e: e.member == "InterfacesRemoved" and e.args[0] == path)
        assert not Path(volume).exists()
        assert name not in libvirtd.domains()
        with pytest.raises(NotFound):
            await client.vm_call(path, "Start")


async def test_shutdown_autostart_update_and_forced_delete(
    tmp_path: Path, private_bus: PrivateBus, libvirtd: PrivateLibvirtd, client: Client
) -> None:
    """A guest with no OS ignores ACPI: Shutdown times out, or with force pulls the plug."""
    name = TEST_PREFIX + "acpi"
    async with running(tmp_path, private_bus, **vm_config(libvirtd)):
        record = await job_ok(client, lambda: client.create_vm(profile("acpi"), start=True))
        path = record.output["path"]

        await client.vm_call(path, "SetAutostart", "b", [True])
        assert (await client.vms())[path]["Autostart"] is True
        assert "enable" in libvirtd.virsh("dominfo", name).stdout.split("Autostart:")[1]
        with pytest.raises(Busy, match="changes only when it is off"):
            await client.vm_call(path, "UpdateProfile", "s", [profile("acpi", memory_mb=128)])
        await client.vm_call(path, "Reboot")  # sent to the guest; QEMU accepts it

        patient = await client.run_job(
            lambda: client.vm_job(path, "Shutdown", "a{sv}", [to_variants({"timeout": 1.0})])
        )
        assert patient.state is JobState.FAILED and patient.error_name == Timeout.dbus_name
        assert "did not shut down within 1 s" in patient.result
        assert libvirtd.virsh("domstate", name).stdout.strip() == "running"
        forced = await job_ok(
            client,
            lambda: client.vm_job(
                path, "Shutdown", "a{sv}", [to_variants({"timeout": 1.0, "force": True})]
            ),
        )
        assert "stopped after 1 s" in forced.result
        assert libvirtd.virsh("domstate", name).stdout.strip() == "shut off"

        await client.vm_call(path, "UpdateProfile", "s", [profile("acpi", memory_mb=128)])
        props = (await client.vms())[path]
        assert props["MemoryMiB"] == 128 and json.loads(props["Profile"])["memory_mb"] == 128
        root = ET.fromstring(libvirtd.virsh("dumpxml", name).stdout)
        assert root.findtext("memory") == str(128 * 1024)

        await job_ok(client, lambda: client.vm_job(path, "Start"))
        refused = await client.run_job(lambda: client.vm_job(path, "Delete", "a{sv}", [{}]))
        assert refused.error_name == Conflict.dbus_name and "stop it first" in refused.result
        await job_ok(
            client,
            lambda: client.vm_job(path, "Delete", "a{sv}", [to_variants({"force": True})]),
        )
        assert libvirtd.domains() == []


async def test_changes_made_with_virsh_arrive_as_signals(
    tmp_path: Path, private_bus: PrivateBus, libvirtd: PrivateLibvirtd, client: Client
) -> None:
    name = TEST_PREFIX + "byhand"
    async with (
        running(tmp_path, private_bus, **vm_config(libvirtd)),
        client.signals("") as queue,
    ):
        # A domain op-dbus did not make appears, and can be managed.
        xml = tmp_path / "byhand.xml"
        xml.write_text(
            f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>"
            if Path("/dev/kvm").exists()
            else f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>"
        )
        libvirtd.virsh("define", str(xml))
        added = await next_event(queue, lambda e: e.member == "InterfacesAdded")
        path = added.args[0]
        assert added.args[1][names.VM_IFACE]["Name"] == name
        assert added.args[1][names.VM_IFACE]["Managed"] is False

        libvirtd.virsh("start", name)
        await next_event(queue, state_changed(path, "running"))
        libvirtd.virsh("destroy", name)
        await next_event(queue, state_changed(path, "shutoff"))

        # libvirtd dies and comes back: the daemon reconnects, events resume.
        libvirtd.kill()
        await next_event(
            queue,
            lambda e: (
                e.member == "PropertiesChanged"
                and "Backends" in e.args[1]
                and not e.args[1]["Backends"]["libvirt"][0]
            ),
            timeout=15,
        )
        gone = await client.run_job(lambda: client.vm_job(path, "Start"))
        assert gone.error_name == BackendUnavailable.dbus_name, gone.result
        libvirtd.restart()
        await next_event(
            queue,
            lambda e: (
                e.member == "PropertiesChanged"
                and "Backends" in e.args[1]
                and e.args[1]["Backends"]["libvirt"][0]
            ),
            timeout=15,
        )
        libvirtd.virsh("start", name)
        await next_event(queue, state_changed(path, "running"))
        await job_ok(client, lambda: client.vm_job(path, "Stop"))
        await job_ok(client, lambda: client.vm_job(path, "Delete", "a{sv}", [{}]))
        assert name not in libvirtd.domains()


BAD_PROFILES = [
    ({"name": "a<b"}, "name"),
    ({"name": "a&b"}, "name"),
    ({"name": "a'b\""}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": ".."}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"memory_mb": 0}, "memory_mb"),
    ({"memory_mb": 10**12}, "memory_mb"),
    ({"arch": "sparc"}, "arch"),
    ({"iso_path": "/etc/passwd"}, "outside the allowed image directories"),
    ({"hostdevs": ["0000:zz:00.0"]}, "PCI address"),
    ({"disks": [{"size_gb": 1, "path": "/x"}]}, "exactly one"),
    ({"colour": "blue"}, "unknown field"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_PROFILES)
async def test_bad_profiles_are_refused_and_leave_nothing(
    tmp_path: Path,
    private_bus: PrivateBus,
    libvirtd: PrivateLibvirtd,
    client: Client,
    fields: dict[str, Any],
    message: str,
) -> None:
    async with running(tmp_path, private_bus, **vm_config(libvirtd)):
        text = json.dumps(
            {"name": TEST_PREFIX + "bad", "memory_mb": 64, "disks": [{"size_gb": 0.01}], **fields}
        )
        with pytest.raises(InvalidArgs, match=message):
            await client.create_vm(text)
        with pytest.raises(InvalidArgs):
            await client.check_vm_profile(text)
        assert await client.jobs() == []
    assert libvirtd.domains() == []
    assert list(libvirtd.pool_dir.iterdir()) == []


async def test_a_create_that_fails_midway_is_undone(
    tmp_path: Path, private_bus: PrivateBus, libvirtd: PrivateLibvirtd, client: Client
) -> None:
    async with running(tmp_path, private_bus, **vm_config(libvirtd)):
        # Defining works; starting fails (no such bridge): volume and domain go again.
        text = profile(
            "undo",
            disks=[{"size_gb": 0.01}],
            interfaces=[{"bridge": "nosuchbr0", "kind": "bridge"}],
        )
        record = await client.run_job(lambda: client.create_vm(text, start=True))
        assert record.state is JobState.FAILED
        assert "failed: removing what was made" in [
            line.text for line in await client.job_log(names.job_path(record.id))
        ]
        assert await client.vms() == {}
        # The name is free again, and a duplicate is refused.
        await job_ok(client, lambda: client.create_vm(profile("undo")))
        with pytest.raises(AlreadyExists):
            await client.create_vm(profile("undo"))
    assert libvirtd.domains() == [TEST_PREFIX + "undo"]
    assert list(libvirtd.pool_dir.iterdir()) == []


async def test_committed_vm1_introspection_matches(
    tmp_path: Path, private_bus: PrivateBus, libvirtd: PrivateLibvirtd, client: Client
) -> None:
    async with running(tmp_path, private_bus, **vm_config(libvirtd)):
        await job_ok(client, lambda: client.create_vm(profile("intro")))
        (path,) = (await client.vms()).keys()
        (xml,) = await client.call(path, names.INTROSPECTABLE_IFACE, "Introspect")
        live = {i.attrib["name"]: i for i in ET.fromstring(xml).iter("interface")}
        assert_introspection_matches(live, [names.VM_IFACE])


async def test_a_vm_on_an_ovs_bridge_the_daemon_made(
    tmp_path: Path,
    private_bus: PrivateBus,
    libvirtd: PrivateLibvirtd,
    ovs: PrivateOvs,
    client: Client,
) -> None:
    """libvirt plugs the guest's tap into the bridge; the bridge's Ports say so, live."""
    name = TEST_PREFIX + "ovs"
    mac = "52:54:00:7e:57:01"
    config = vm_config(libvirtd) | {"ovsdb": {"remote": ovs.remote, "datapath_type": "netdev"}}
    with libvirtd.environment(OVS_RUNDIR=str(ovs.directory)):
        async with running(tmp_path, private_bus, **config), client.signals("") as queue:
            await client.create_bridge("vmbr0", {})
            nic = {"kind": "ovs", "bridge": "vmbr0", "mac": mac}
            record = await job_ok(
                client, lambda: client.create_vm(profile("ovs", interfaces=[nic]), start=True)
            )
            path, uuid = record.output["path"], record.output["uuid"]
            assert (await client.vms())[path]["Interfaces"] == [("ovs", "vmbr0", mac, "virtio")]
            assert libvirtd.virsh("domstate", name).stdout.strip() == "running"

            def tap_ports(event: SignalEvent) -> bool:
                if event.path != names.bridge_path("vmbr0") or event.member != "PropertiesChanged":
                    return False
                return len(event.args[1].get("Ports", [])) == 2

            await next_event(queue, tap_ports)
            bridge = await client.bridge("vmbr0")
            (tap,) = [p.name for p in bridge.ports if p.name != "vmbr0"]
            assert (await asyncio.to_thread(ovs.vsctl, "port-to-br", tap)).stdout.strip() == "vmbr0"
            ids = (
                await asyncio.to_thread(ovs.vsctl, "get", "Interface", tap, "external_ids")
            ).stdout
            assert f'vm-id="{uuid}"' in ids and f'attached-mac="{mac}"' in ids

            await job_ok(client, lambda: client.vm_job(path, "Stop"))
            await next_event(
                queue,
                lambda e: (
                    e.path == names.bridge_path("vmbr0")
                    and e.member == "PropertiesChanged"
                    and len(e.args[1].get("Ports", [None, None])) == 1
                ),
            )
            assert [p.name for p in (await client.bridge("vmbr0")).ports] == ["vmbr0"]
            assert (await asyncio.to_thread(ovs.vsctl, "list-ports", "vmbr0")).stdout.strip() == ""
