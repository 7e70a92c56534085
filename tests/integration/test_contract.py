"""The bus contract against a real dbus-daemon carrying the project's policy."""

from __future__ import annotations

import asyncio
import json
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from opctl.client import Client
from opctl.wire import SignalEvent
from opdbus import errors, names
from opdbus.backends.host import read_machine_id
from opdbus.daemon import Daemon
from opdbus.models.job import JobState
from opdbus.sandbox import PrivateBus
from tests.support import (
    CALM,
    REPO,
    assert_introspection_matches,
    busctl,
    opctl,
    running,
    silent_socket,
    until,
)


async def drain(queue: asyncio.Queue[SignalEvent]) -> list[SignalEvent]:
    await asyncio.sleep(0.2)  # let the last signals arrive
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def test_manager_properties(inproc: Daemon, client: Client) -> None:
    status = await client.status()
    assert status.mode == "full" and status.version
    assert set(status.backends) == {"dbus", "polkit", "systemd", "ovsdb", "libvirt", "lxc"}
    assert status.backends["dbus"][0] is True
    assert status.backends["ovsdb"] == (False, status.backends["ovsdb"][1])
    assert "not reachable" in status.backends["ovsdb"][1]


async def test_validate_job_end_to_end(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **CALM), client.signals("") as queue:
        progress: list[float] = []
        lines: list[int] = []
        record = await client.run_job(
            lambda: client.validate(quick=True),
            on_update=lambda r: progress.append(r.progress) if r.progress_valid else None,
            on_log=lambda line: lines.append(line.number),
        )
        events = await drain(queue)

    assert record.state is JobState.SUCCEEDED, record.result
    assert record.operation == "Validate" and record.targets == [names.ROOT_PATH]
    assert record.started_by_uid == 0
    checks = record.output["checks"]
    assert [c["name"] for c in checks] == [
        "state-dir",
        "config",
        "disk-space",
        "memory",
        "cpu-virtualization",
        "kvm-device",
    ]
    assert [c["status"] for c in checks] == ["pass", "pass", "pass", "pass", "skip", "skip"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert lines == list(range(1, len(checks) + 2))  # a header line, then one per check

    job = names.job_path(record.id)
    mine = [(e.path, e.interface, e.member, e.args) for e in events]
    kinds = [(path, member) for path, _, member, _ in mine]
    added = next(e for e in mine if e[2] == "InterfacesAdded")
    assert added[0] == names.ROOT_PATH and added[3][0] == job  # ObjectManager style: from the root
    assert (names.ROOT_PATH, "JobNew") in kinds
    final_state = max(
        i
        for i, e in enumerate(mine)
        if e[2] == "PropertiesChanged" and e[0] == job and "State" in e[3][1]
    )
    completed = kinds.index((job, "Completed"))
    removed = kinds.index((names.ROOT_PATH, "JobRemoved"))
    assert final_state < completed < removed
    assert mine[completed][3] == [True, record.result]
    assert mine[removed][3] == [job, "succeeded"]
    log_signals = [e[3][0] for e in mine if e[0] == job and e[2] == "Log"]
    assert log_signals == lines


async def test_job_objects_and_logs_stay_readable(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **CALM):
        record = await client.run_job(lambda: client.validate(quick=True))
        path = names.job_path(record.id)
        assert await client.call(names.ROOT_PATH, names.MANAGER_IFACE, "ListJobs") == [[path]]
        assert await client.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "GetJob", "u", [record.id]
        ) == [path]
        jobs = await client.jobs()
        assert [job.id for job in jobs] == [record.id] and jobs[0].state is JobState.SUCCEEDED
        log = await client.job_log(path)
        assert log[0].text.startswith("validating this host (quick")
        assert any(line.text.startswith("[pass] state-dir") for line in log)
        assert [line.number for line in await client.job_log(path, 2, 2)] == [2, 3]
        with pytest.raises(errors.Conflict, match="already succeeded"):
            await client.cancel(path)


async def test_audit_records_calls_and_outcomes(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **CALM):
        record = await client.run_job(lambda: client.validate(quick=True))
        await asyncio.sleep(0.1)
        entries = await client.audit(1, 10)
        assert [(e.kind, e.method, e.result) for e in entries] == [
            ("call", "org.opdbus.Manager1.Validate", "ok"),
            ("job", "Validate", "succeeded"),
        ]
        assert all(e.job == names.job_path(record.id) and e.uid == 0 for e in entries)
        assert entries[1].prev_hash == entries[0].hash
        verdict = await client.verify_audit()
        assert verdict.ok and verdict.first_bad_seq == 0
        assert (await client.status()).audit_seq == 2


async def test_cancel_mid_way_and_busy(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    slow = tmp_path / "silent-ovsdb.sock"
    with silent_socket(slow):
        async with (
            running(
                tmp_path,
                private_bus,
                ovsdb={"remote": f"unix:{slow}"},
                health={"timeout_seconds": 60},
            ),
            client.signals(f"path_namespace='{names.JOB_PATH_PREFIX}'") as queue,
        ):
            path = await client.validate()
            # Wait until it is stuck probing the silent "ovsdb-server".
            for _ in range(100):
                log = await client.job_log(path)
                if any("backend-polkit" in line.text for line in log):
                    break
                await asyncio.sleep(0.05)
            record = await client.job(path)
            assert record.state is JobState.RUNNING and 0 < record.progress < 1
            with pytest.raises(errors.Busy, match=f"is busy with job {record.id}"):
                await client.validate(quick=True)
            started = asyncio.get_running_loop().time()
            await client.cancel(path)
            took = asyncio.get_running_loop().time() - started
            record = await client.job(path)
            events = await drain(queue)
    assert record.state is JobState.CANCELLED and record.result == "cancelled by uid 0"
    assert took < 30  # the probe's 60 s timeout did not have to run out
    assert [e.args for e in events if e.member == "Completed"] == [[False, "cancelled by uid 0"]]
    assert record.finished_at >= record.started_at


async def test_fix_creates_a_missing_directory(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    source = tmp_path / "hypervisor" / "src"
    async with running(tmp_path, private_bus, **CALM):
        assert not source.exists()
        record = await client.run_job(lambda: client.validate(fix=False))
        check = next(c for c in record.output["checks"] if c["name"] == "source-dir")
        assert check["status"] == "warn" and not source.exists()
        record = await client.run_job(lambda: client.validate(fix=True))
        check = next(c for c in record.output["checks"] if c["name"] == "source-dir")
        assert check["status"] == "pass"
        assert check["fixed"] == [f"created {source} with mode 0755"]
        assert stat.S_IMODE(source.stat().st_mode) == 0o755
        log = [line.text for line in await client.job_log(names.job_path(record.id))]
        assert f"  fixed: created {source} with mode 0755" in log


async def test_fix_repairs_dev_kvm(tmp_path: Path, private_bus: PrivateBus, client: Client) -> None:
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        pytest.skip("this machine has no /dev/kvm")
    before = kvm.stat()
    import grp
    import os

    kvm_gid = grp.getgrnam("kvm").gr_gid
    os.chown(kvm, -1, 0)
    os.chmod(kvm, 0o600)
    try:
        async with running(tmp_path, private_bus):
            record = await client.run_job(lambda: client.validate(quick=True, fix=True))
        check = next(c for c in record.output["checks"] if c["name"] == "kvm-device")
        assert check["status"] == "pass", check
        assert "-> group kvm, mode 0660" in check["fixed"][0]
        after = kvm.stat()
        assert after.st_gid == kvm_gid and stat.S_IMODE(after.st_mode) == 0o660
    finally:
        # Leave it usable for QEMU (the state REAL-COMPONENTS asks for), whatever happened.
        os.chown(kvm, -1, kvm_gid)
        os.chmod(kvm, stat.S_IMODE(before.st_mode) | 0o660)


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (
            ("/org/opdbus/job/999", names.JOB_IFACE, "GetLog", "uu", [1, 1]),
            errors.NotFound,
            "no object at /org/opdbus/job/999",
        ),
        (
            (names.ROOT_PATH, names.MANAGER_IFACE, "GetJob", "u", [999]),
            errors.NotFound,
            "no job 999",
        ),
        (
            (
                names.ROOT_PATH,
                names.MANAGER_IFACE,
                "Validate",
                "a{sv}",
                [{"quick": Variant("s", "yes")}],
            ),
            errors.InvalidArgs,
            "must be a boolean (b)",
        ),
        (
            (
                names.ROOT_PATH,
                names.MANAGER_IFACE,
                "Validate",
                "a{sv}",
                [{"deep": Variant("b", True)}],
            ),
            errors.InvalidArgs,
            "unknown option 'deep'",
        ),
        (
            (names.ROOT_PATH, names.MANAGER_IFACE, "Validate", "s", ["quick"]),
            errors.InvalidArgs,
            "takes (a{sv}), not (s)",
        ),
        (
            (names.ROOT_PATH, names.MANAGER_IFACE, "Frobnicate", "", []),
            errors.NotSupported,
            "has no method Frobnicate",
        ),
        (
            (names.ROOT_PATH, "org.opdbus.Nothing1", "Frobnicate", "", []),
            errors.NotSupported,
            "no interface org.opdbus.Nothing1",
        ),
        (
            (names.ROOT_PATH, names.PROPERTIES_IFACE, "Get", "ss", [names.MANAGER_IFACE, "Nope"]),
            errors.InvalidArgs,
            "org.opdbus.Manager1 has no property Nope",
        ),
        (
            (names.ROOT_PATH, names.PROPERTIES_IFACE, "Get", "ss", [names.JOB_IFACE, "State"]),
            errors.NotSupported,
            "/org/opdbus does not implement org.opdbus.Job1",
        ),
        (
            (
                names.ROOT_PATH,
                names.PROPERTIES_IFACE,
                "Set",
                "ssv",
                [names.MANAGER_IFACE, "Mode", Variant("s", "agent")],
            ),
            errors.NotSupported,
            "org.opdbus.Manager1.Mode is read-only",
        ),
        (
            ("/org/opdbus/job/5", names.PROPERTIES_IFACE, "GetAll", "s", [names.JOB_IFACE]),
            errors.NotFound,
            "no object at /org/opdbus/job/5",
        ),
    ],
)
async def test_bad_input_gets_named_errors(
    inproc: Daemon,
    client: Client,
    call: tuple[Any, ...],
    kind: type[errors.OpdbusError],
    message: str,
) -> None:
    with pytest.raises(kind) as info:
        await client.call(*call)
    assert message in info.value.message
    # Nothing was started by a refused call.
    assert await client.jobs() == []


async def test_committed_introspection_matches_the_running_daemon(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **CALM):
        record = await client.run_job(lambda: client.validate(quick=True))
        live: dict[str, ET.Element] = {}
        for path in (names.ROOT_PATH, names.job_path(record.id), names.STATE_PATH):
            (xml,) = await client.call(path, names.INTROSPECTABLE_IFACE, "Introspect")
            for interface in ET.fromstring(xml).iter("interface"):
                live[interface.attrib["name"]] = interface
    files = {f.name for f in (REPO / "daemon" / "opdbus" / "introspection").glob("*.xml")}
    # Bridge1 is compared in tests/integration/test_network.py, where OVS runs;
    # VM1 in tests/integration/test_vms.py, where libvirtd runs; Container1 in
    # tests/integration/test_containers.py, where LXC runs; Unit1 in
    # tests/integration/test_units.py, where systemd runs.
    assert files == {
        "org.opdbus.Job1.xml",
        "org.opdbus.Manager1.xml",
        "org.opdbus.Bridge1.xml",
        "org.opdbus.VM1.xml",
        "org.opdbus.Container1.xml",
        "org.opdbus.Unit1.xml",
        "org.opdbus.State1.xml",
        "org.opdbus.StateManager.xml",
    }
    assert_introspection_matches(
        live,
        [names.MANAGER_IFACE, names.JOB_IFACE, names.STATE_IFACE, names.STATE_MANAGER_IFACE],
    )
    assert "org.freedesktop.DBus.ObjectManager" in live


@pytest.mark.parametrize(
    ("config", "kept"),
    [
        ({"mode": "full"}, True),  # on by default
        ({"mode": "agent"}, False),  # off by default in agent mode, as in the original op-dbus
        ({**CALM, "audit": {"enabled": False}}, False),  # NixOS: enableBlockchain = false
    ],
)
async def test_the_audit_log_is_kept_as_configured_and_off_says_so(
    config: dict[str, Any], kept: bool, tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **config):
        await client.state_apply("{}")  # a mutating call: audited when the log is kept
        props = await client.get_all(names.ROOT_PATH, names.MANAGER_IFACE)
        assert props["AuditEnabled"] is kept
        shown = await asyncio.to_thread(opctl, private_bus.address, "status")
        assert shown.returncode == 0, shown.stderr
        if kept:

            async def recorded() -> bool:
                status = await client.get_all(names.ROOT_PATH, names.MANAGER_IFACE)
                return int(status["AuditSeq"]) >= 1

            await until(recorded)
            assert (await client.call(names.ROOT_PATH, names.MANAGER_IFACE, "VerifyAudit"))[0]
            assert "audit log: off" not in shown.stdout
        else:
            assert props["AuditSeq"] == 0
            assert "audit log: off (audit.enabled is false)" in shown.stdout
            for member, sig, args in (("VerifyAudit", "", []), ("GetAudit", "tu", [1, 10])):
                with pytest.raises(errors.NotSupported, match="the audit log is off"):
                    await client.call(names.ROOT_PATH, names.MANAGER_IFACE, member, sig, args)
    assert (tmp_path / "state" / "audit" / "audit.jsonl").exists() is kept


async def test_count_jobs_is_what_status_shows_without_the_object_tree(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **CALM):
        assert await client.count_jobs() == {}
        for _ in range(2):
            await client.run_job(lambda: client.validate(quick=True))
        assert await client.count_jobs() == {"succeeded": 2}
        shown = await asyncio.to_thread(opctl, private_bus.address, "--json", "status")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["jobs"] == {"succeeded": 2}
        human = await asyncio.to_thread(opctl, private_bus.address, "status")
        assert "jobs: 0 active, 2 remembered" in human.stdout


async def test_get_objects_lists_one_kind_as_the_object_tree_has_it(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with running(tmp_path, private_bus, **CALM):
        path = await client.validate(quick=True)
        # Read while the job runs and as it ends: a running job's values are never kept.
        readings = []
        while True:
            (objects,) = await client.call(
                names.ROOT_PATH, names.MANAGER_IFACE, "GetObjects", "s", [names.JOB_IFACE]
            )
            readings.append(objects[path]["State"].value)
            if readings[-1] == "succeeded":
                break
            await asyncio.sleep(0.01)
        (tree,) = await client.call(
            names.ROOT_PATH, names.OBJECT_MANAGER_IFACE, "GetManagedObjects"
        )
        listed = {p: {k: v.value for k, v in props.items()} for p, props in objects.items()}
        whole = {
            p: {k: v.value for k, v in ifaces[names.JOB_IFACE].items()}
            for p, ifaces in tree.items()
            if names.JOB_IFACE in ifaces
        }
        assert listed == whole and list(listed) == [path]
        # What a finished job shows is its record's final word, every time it is read.
        props = await client.get_all(path, names.JOB_IFACE)
        assert listed[path] == props and props["LogLines"] > 1 and props["FinishedAt"] > 0
        assert json.loads(props["Output"])["checks"]
        with pytest.raises(errors.InvalidArgs, match="not an interface of listed objects"):
            await client.call(
                names.ROOT_PATH, names.MANAGER_IFACE, "GetObjects", "s", [names.MANAGER_IFACE]
            )


@pytest.mark.parametrize(
    ("path", "interface", "member", "signature", "body", "name", "text"),
    [
        ("/org/opdbus/nope", "org.freedesktop.DBus.Properties", "GetAll", "s",
         ["org.opdbus.Manager1"], "UnknownObject", "no object at /org/opdbus/nope"),
        ("/org/opdbus", "org.opdbus.Nothing1", "Frob", "", [], "UnknownInterface",
         "op-dbus has no interface org.opdbus.Nothing1"),
        ("/org/opdbus", "org.opdbus.Job1", "Cancel", "", [], "UnknownInterface",
         "/org/opdbus does not implement org.opdbus.Job1"),
        ("/org/opdbus", "org.opdbus.Manager1", "Frobnicate", "", [], "UnknownMethod",
         "org.opdbus.Manager1 has no method Frobnicate"),
        ("/org/opdbus", "org.freedesktop.DBus.Properties", "Get", "ss",
         ["org.opdbus.Manager1", "Nope"], "UnknownProperty", "has no property Nope"),
        ("/org/opdbus", "org.freedesktop.DBus.Properties", "Set", "ssv",
         ["org.opdbus.Manager1", "Mode", Variant("s", "agent")], "PropertyReadOnly",
         "org.opdbus.Manager1.Mode is read-only"),
        ("/org/opdbus/state", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", "", [],
         "UnknownInterface", "/org/opdbus/state is not an object manager; /org/opdbus is"),
    ],
)  # fmt: skip
async def test_generic_clients_get_the_standard_error_names(
    inproc: Daemon,
    private_bus: PrivateBus,
    path: str,
    interface: str,
    member: str,
    signature: str,
    body: list[Any],
    name: str,
    text: str,
) -> None:
    bus = await MessageBus(bus_address=private_bus.address).connect()
    try:
        reply = await bus.call(
            Message(destination=names.BUS_NAME, path=path, interface=interface, member=member,
                    signature=signature, body=body)
        )  # fmt: skip
    finally:
        bus.disconnect()
    assert reply is not None and reply.message_type is MessageType.ERROR
    assert reply.error_name == f"org.freedesktop.DBus.Error.{name}"
    assert text in reply.body[0]


async def test_peer_is_answered_by_the_daemon_itself(
    inproc: Daemon, private_bus: PrivateBus
) -> None:
    machine_id = await asyncio.to_thread(read_machine_id)
    for path in ("/org/opdbus", "/org/opdbus/state"):
        shown = await asyncio.to_thread(
            busctl, private_bus.address, "call", names.BUS_NAME, path,
            names.PEER_IFACE, "GetMachineId",
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == f's "{machine_id}"'
        ping = await asyncio.to_thread(
            busctl, private_bus.address, "call", names.BUS_NAME, path, names.PEER_IFACE, "Ping"
        )
        assert ping.returncode == 0, ping.stderr
