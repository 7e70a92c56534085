"""opctl vm, as a user runs it, against op-dbusd on libvirt's test driver.

The test driver is libvirt's own in-process hypervisor (what --sandbox uses):
the real libvirt API with simulated guests. Real QEMU runs in
tests/integration/test_vms.py; here the subject is the command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from opdbus import errors
from opdbus.models.vm import profile_schema
from opdbus.sandbox import PrivateBus
from tests.support import base_config, opctl

EXAMPLES = Path(__file__).resolve().parents[2] / "daemon" / "opdbus" / "vm-profiles"


@pytest.fixture
def vmbus(make_daemon: Any, private_bus: PrivateBus, tmp_path: Path) -> str:
    isos = tmp_path / "isos"
    isos.mkdir()
    config = base_config(
        tmp_path,
        libvirt={
            "uri": "test:///default",
            "pool_dir": str(tmp_path / "images"),
            "iso_dirs": [str(isos)],
            "shutdown_timeout_seconds": 2,
        },
    )
    make_daemon(private_bus, config)
    return private_bus.address


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def rows(table: str) -> dict[str, list[str]]:
    """A table's rows keyed by their first cell (the header row under its first header)."""
    return {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}


def test_a_vm_from_create_to_delete(vmbus: str, tmp_path: Path) -> None:
    made = ok(opctl(vmbus, "vm", "create", str(EXAMPLES / "tiny.json"), "--start"))
    assert "defined tiny" in made and "job 1 succeeded: tiny created and started" in made
    listing = rows(ok(opctl(vmbus, "vm", "list")))
    assert listing["NAME"][:5] == ["NAME", "STATE", "CPUS", "MEMORY", "USED"]
    assert listing["tiny"][1:4] == ["running", "1", "64"]
    assert listing["test"][1] == "running"  # the test driver's own domain: made elsewhere
    show = ok(opctl(vmbus, "vm", "show", "tiny"))
    assert "state: running" in show and "made by: op-dbus" in show
    data = json.loads(ok(opctl(vmbus, "--json", "vm", "show", "tiny")))
    assert data["managed"] is True and json.loads(data["profile"])["name"] == "tiny"
    # The same VM by its UUID.
    assert json.loads(ok(opctl(vmbus, "vm", "show", data["uuid"], "--json")))["name"] == "tiny"

    assert ok(opctl(vmbus, "vm", "suspend", "tiny")).strip() == "tiny suspended"
    resumed = json.loads(ok(opctl(vmbus, "vm", "resume", "tiny", "--json")))
    assert resumed["job"] is None and resumed["object"]["state"] == "running"
    assert ok(opctl(vmbus, "vm", "autostart", "tiny", "on")).strip() == "tiny autostart on"
    assert rows(ok(opctl(vmbus, "vm", "list")))["tiny"][-2] == "yes"

    taken = ok(opctl(vmbus, "vm", "snapshot", "create", "tiny", "s1", "--description", "clean"))
    assert "snapshot s1 of tiny taken" in taken
    snaps = rows(ok(opctl(vmbus, "vm", "snapshot", "list", "tiny")))
    assert snaps["s1"][-2:] == ["*", "clean"]
    (snap,) = json.loads(ok(opctl(vmbus, "--json", "vm", "snapshot", "list", "tiny")))
    assert snap["name"] == "s1" and snap["description"] == "clean"
    # Times are ISO 8601 UTC (the bus carried µs since the epoch).
    taken_at = datetime.fromisoformat(snap["created"])
    assert snap["created"].endswith("Z") and abs(time.time() - taken_at.timestamp()) < 600
    assert "succeeded" in ok(opctl(vmbus, "vm", "snapshot", "revert", "tiny", "s1"))
    assert "succeeded" in ok(opctl(vmbus, "vm", "snapshot", "delete", "tiny", "s1"))
    assert "tiny has no snapshots" in ok(opctl(vmbus, "vm", "snapshot", "list", "tiny"))

    stopped = opctl(vmbus, "--json", "vm", "stop", "tiny")
    assert json.loads(ok(stopped))["job"]["state"] == "succeeded"
    root = ET.fromstring(ok(opctl(vmbus, "vm", "xml", "tiny")))
    assert root.findtext("name") == "tiny" and root.findtext("memory") == str(64 * 1024)

    bigger = tmp_path / "tiny-128.json"
    bigger.write_text(json.dumps({"name": "tiny", "memory_mb": 128}))
    assert ok(opctl(vmbus, "vm", "update", "tiny", str(bigger))).strip() == "tiny profile updated"
    assert rows(ok(opctl(vmbus, "vm", "list")))["tiny"][3] == "128"

    # --no-wait hands back the job; opctl jobs wait follows it to its end.
    job = ok(opctl(vmbus, "vm", "delete", "tiny", "--no-wait")).strip()
    assert job.startswith("/org/opdbus/job/")
    assert "tiny deleted" in ok(opctl(vmbus, "jobs", "wait", job))
    assert "tiny" not in rows(ok(opctl(vmbus, "vm", "list")))


def leaves(value: Any) -> list[Any]:
    """Every scalar in a JSON value."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def test_addresses_and_console_checks(vmbus: str) -> None:
    # libvirt's test driver answers domifaddr for its running "test" VM.
    table = ok(opctl(vmbus, "vm", "addresses", "test")).splitlines()
    assert [line.split() for line in table] == [
        ["INTERFACE", "MAC", "ADDRESS"],
        ["testnet0", "aa:bb:cc:dd:ee:ff", "192.168.122.3/24"],
    ]
    assert ok(opctl(vmbus, "vm", "domifaddr", "test", "--source", "arp")).splitlines() == table
    assert json.loads(ok(opctl(vmbus, "--json", "vm", "addresses", "test"))) == [
        {"interface": "testnet0", "mac": "aa:bb:cc:dd:ee:ff", "addresses": ["192.168.122.3/24"]}
    ]
    ok(opctl(vmbus, "vm", "create", str(EXAMPLES / "tiny.json")))
    stopped = opctl(vmbus, "vm", "addresses", "tiny")
    assert stopped.returncode == errors.Conflict.exit_code
    assert "tiny is shutoff: only a running VM has addresses" in stopped.stderr
    console = opctl(vmbus, "vm", "console", "tiny")
    assert console.returncode == errors.Conflict.exit_code
    assert "tiny is shutoff: start it first (opctl vm start)" in console.stderr


def test_disks_and_remove_storage(vmbus: str, tmp_path: Path) -> None:
    made = ok(opctl(vmbus, "vm", "create", str(EXAMPLES / "web-server.json")))
    volume = str(tmp_path / "images" / "web-01-disk0.qcow2")
    assert f"created volume {volume} (20 GB qcow2)" in made
    show = ok(opctl(vmbus, "vm", "show", "web-01"))
    assert rows(show)["vda"] == ["vda", "disk", "qcow2", volume]
    assert rows(show)["ovs"] == ["ovs", "virtio", "52:54:00:0a:00:01", "mesh"]
    # --json: named keys, bytes, null for absent (the README's contract).
    shown = json.loads(ok(opctl(vmbus, "--json", "vm", "show", "web-01")))
    assert shown["disks"] == [
        {"target": "vda", "source": volume, "device": "disk", "format": "qcow2"}
    ]
    assert shown["interfaces"] == [
        {"kind": "ovs", "source": "mesh", "mac": "52:54:00:0a:00:01", "model": "virtio"}
    ]
    assert shown["memory"] == 2048 * 1024 * 1024 and shown["state"] == "shutoff"
    assert "" not in leaves(shown)  # absent is null, never ""
    done = json.loads(ok(opctl(vmbus, "--json", "vm", "delete", "web-01", "--remove-storage")))
    assert done["job"]["output"]["removed_volumes"] == [volume] and done["object"] is None


def test_profile_check_and_schema(vmbus: str, tmp_path: Path) -> None:
    checked = ok(opctl(vmbus, "vm", "profile", "check", str(EXAMPLES / "web-server.json")))
    assert checked.strip() == "profile web-01 is valid (1 warning)"
    xml = ok(opctl(vmbus, "vm", "profile", "check", str(EXAMPLES / "tiny.json"), "--print-xml"))
    assert ET.fromstring(xml).findtext("name") == "tiny"
    report = json.loads(
        ok(opctl(vmbus, "--json", "vm", "profile", "check", str(EXAMPLES / "web-server.json")))
    )
    assert report["valid"] is True and "i686" in report["warnings"][0]
    # Checking defines nothing.
    assert set(rows(ok(opctl(vmbus, "vm", "list")))) == {"NAME", "test"}
    # The schema needs no daemon at all.
    offline = ok(opctl("unix:path=/nonexistent/bus", "vm", "profile", "schema"))
    assert json.loads(offline) == profile_schema()


def test_mistakes_get_named_errors_and_their_exit_codes(vmbus: str, tmp_path: Path) -> None:
    def fails(code: int, *args: str) -> str:
        result = opctl(vmbus, *args)
        assert result.returncode == code, (result.stdout, result.stderr)
        return result.stderr

    assert "NotFound: no VM named 'nope'" in fails(errors.NotFound.exit_code, "vm", "start", "nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "a<b"}')
    assert "InvalidArgs: profile: name" in fails(
        errors.InvalidArgs.exit_code, "vm", "create", str(bad)
    )
    outside = tmp_path / "outside.iso"
    outside.write_bytes(b"\0" * 2048)
    bad.write_text(json.dumps({"name": "cd", "iso_path": str(outside)}))
    assert "outside the allowed image directories" in fails(
        errors.InvalidArgs.exit_code, "vm", "profile", "check", str(bad)
    )
    # The copy under the allowed directory is fine.
    shutil.copy(outside, tmp_path / "isos" / "in.iso")
    bad.write_text(json.dumps({"name": "cd", "iso_path": str(tmp_path / "isos" / "in.iso")}))
    ok(opctl(vmbus, "vm", "profile", "check", str(bad)))
    assert "cannot read" in fails(errors.InvalidArgs.exit_code, "vm", "create", "/nonexistent.json")
    assert "say on or off" in fails(errors.InvalidArgs.exit_code, "vm", "autostart", "test", "yes")
    # A job that fails: the test domain already runs (Conflict), and the exit code says so.
    assert "already running" in fails(errors.Conflict.exit_code, "vm", "start", "test")
    ok(opctl(vmbus, "vm", "create", str(EXAMPLES / "tiny.json")))
    assert "already exists" in fails(
        errors.AlreadyExists.exit_code, "vm", "create", str(EXAMPLES / "tiny.json")
    )
    assert "not running" in fails(errors.Conflict.exit_code, "vm", "shutdown", "tiny")
