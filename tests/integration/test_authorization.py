"""Who may call what: both layers, against a real dbus-daemon, real users and a real polkitd.

Calls are made by busctl/dbus-send run as other users with setpriv (a venv
under /root would not be readable by them); group membership comes from
--init-groups, so the bus sees the user's real supplementary groups.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opdbus import errors
from opdbus.sandbox import PrivateBus
from tests.support import PYTHON, REPO, base_config, busctl, manager_call, opctl, run

POLKIT_ACTIONS = Path("/usr/share/polkit-1/actions/org.opdbus.policy")
POLKIT_RULES = Path("/etc/polkit-1/rules.d/49-opdbus-tests.rules")
POLKITD = Path("/usr/lib/polkit-1/polkitd")


@pytest.fixture
def opdbusd(make_daemon: Any, auth_bus: PrivateBus, tmp_path: Path) -> Any:
    return make_daemon(
        auth_bus,
        base_config(
            tmp_path,
            mode="agent",
            validate={"disk_fail_gib": 0, "disk_warn_gib": 0},
            audit={"enabled": True},  # off by default in agent mode; these tests read it
        ),
    )


@contextlib.contextmanager
def installed(path: Path, text: str) -> Iterator[None]:
    """Put a file at a fixed system path for the test; restore what was there."""
    backup = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    try:
        yield
    finally:
        if backup is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(backup)


@pytest.fixture
def polkitd(auth_bus: PrivateBus, test_users: dict[str, str]) -> Iterator[None]:
    """polkitd on the test bus, with op-dbus's actions and a rule for the policy user."""
    if not POLKITD.exists():
        pytest.skip("polkitd is not installed")
    rules = f"""
polkit.addRule(function(action, subject) {{
    if (subject.user == "{test_users["policy"]}") {{
        if (action.id == "org.opdbus.host.validate") return polkit.Result.YES;
        if (action.id == "org.opdbus.job.cancel") return polkit.Result.AUTH_ADMIN;
    }}
}});
"""
    with (
        installed(POLKIT_ACTIONS, (REPO / "dbus-policy" / "org.opdbus.policy").read_text()),
        installed(POLKIT_RULES, rules),
    ):
        process = subprocess.Popen(
            [str(POLKITD), "--no-debug"],
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": auth_bus.address},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                names = busctl(auth_bus.address, "--json=short", "list")
                if "org.freedesktop.PolicyKit1" in names.stdout:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("polkitd did not take its name")
            yield
        finally:
            process.terminate()
            process.wait(timeout=10)


def dbus_send(
    address: str, path: str, method: str, *args: str, user: str
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            "dbus-send",
            f"--bus={address}",
            "--print-reply",
            "--dest=org.opdbus",
            path,
            method,
            *args,
        ],
        user=user,
    )


# dbus-send cannot write a{sv}; the bus policy refuses before the signature matters.
VALIDATE = ("/org/opdbus", "org.opdbus.Manager1.Validate", "dict:string:string:")


def validate_as(address: str, user: str) -> subprocess.CompletedProcess[str]:
    return busctl(
        address,
        "call",
        "org.opdbus",
        "/org/opdbus",
        "org.opdbus.Manager1",
        "Validate",
        "a{sv}",
        "1",
        "quick",
        "b",
        "true",
        user=user,
    )


def error_name(result: subprocess.CompletedProcess[str]) -> str:
    """dbus-send prints 'Error org.x.Y: text'."""
    line = result.stderr.strip().splitlines()[0] if result.stderr.strip() else ""
    return line.split()[1].rstrip(":") if line.startswith("Error ") else ""


def job_count(address: str) -> int:
    return len(manager_call(address, "ListJobs")[0])


def audit_uids(address: str) -> list[int]:
    return [
        entry["uid"]["data"] for entry in manager_call(address, "GetAudit", "tu", "1", "100")[0]
    ]


def test_policy_denies_mutating_methods_to_other_users(
    opdbusd: Any, auth_bus: PrivateBus, test_users: dict[str, str]
) -> None:
    # A job exists, so Cancel has an object to be refused on.
    assert validate_as(auth_bus.address, "root").returncode == 0
    for path, method, *args in (VALIDATE, ("/org/opdbus/job/1", "org.opdbus.Job1.Cancel")):
        result = dbus_send(auth_bus.address, path, method, *args, user=test_users["plain"])
        assert result.returncode != 0
        assert error_name(result) == "org.freedesktop.DBus.Error.AccessDenied", result.stderr
    assert job_count(auth_bus.address) == 1


def test_everyone_may_read(opdbusd: Any, auth_bus: PrivateBus, test_users: dict[str, str]) -> None:
    assert validate_as(auth_bus.address, "root").returncode == 0
    user = test_users["plain"]
    reads = [
        ("get-property", "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", "Version"),
        (
            "call",
            "org.opdbus",
            "/org/opdbus",
            "org.freedesktop.DBus.Properties",
            "GetAll",
            "s",
            "org.opdbus.Manager1",
        ),
        (
            "call",
            "org.opdbus",
            "/org/opdbus",
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ),
        ("call", "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", "ListJobs"),
        ("call", "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", "GetJob", "u", "1"),
        ("call", "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", "VerifyAudit"),
        ("call", "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", "GetAudit", "tu", "1", "10"),
        ("call", "org.opdbus", "/org/opdbus/job/1", "org.opdbus.Job1", "GetLog", "uu", "1", "5"),
        ("introspect", "org.opdbus", "/org/opdbus"),
    ]
    for args in reads:
        result = busctl(auth_bus.address, *args, user=user)
        assert result.returncode == 0, (args, result.stderr)


def test_admin_group_members_may_change_things(
    opdbusd: Any, auth_bus: PrivateBus, test_users: dict[str, str]
) -> None:
    admin = test_users["admin"]
    result = validate_as(auth_bus.address, admin)
    assert result.returncode == 0, result.stderr
    uid = pwd.getpwnam(admin).pw_uid
    started = busctl(
        auth_bus.address,
        "get-property",
        "org.opdbus",
        "/org/opdbus/job/1",
        "org.opdbus.Job1",
        "StartedByUID",
    )
    assert started.stdout.strip() == f"u {uid}"
    time.sleep(0.3)
    assert audit_uids(auth_bus.address) == [uid, uid]  # the call, then the job's outcome


def test_the_daemon_checks_again_behind_the_policy(
    opdbusd: Any, auth_bus: PrivateBus, test_users: dict[str, str]
) -> None:
    user = test_users["policy"]
    uid = pwd.getpwnam(user).pw_uid
    result = validate_as(auth_bus.address, user)
    assert result.returncode != 0
    assert f"uid {uid} may not call org.opdbus.Manager1.Validate" in result.stderr
    assert "group 'opdbus'" in result.stderr and "org.opdbus.host.validate" in result.stderr
    assert job_count(auth_bus.address) == 0
    assert validate_as(auth_bus.address, "root").returncode == 0
    result = dbus_send(auth_bus.address, "/org/opdbus/job/1", "org.opdbus.Job1.Cancel", user=user)
    assert error_name(result) == "org.opdbus.Error.NotAuthorized", result.stderr
    assert f"uid {uid} may not call org.opdbus.Job1.Cancel" in result.stderr
    time.sleep(0.3)
    assert uid not in audit_uids(auth_bus.address)  # refused calls do not enter the audit log


def test_polkit_grants_what_its_rules_allow(
    polkitd: None, opdbusd: Any, auth_bus: PrivateBus, test_users: dict[str, str]
) -> None:
    user = test_users["policy"]
    uid = pwd.getpwnam(user).pw_uid
    result = validate_as(auth_bus.address, user)
    assert result.returncode == 0, result.stderr
    assert job_count(auth_bus.address) == 1
    # The rule asks for admin authentication to cancel: the daemon cannot, so it refuses.
    result = dbus_send(auth_bus.address, "/org/opdbus/job/1", "org.opdbus.Job1.Cancel", user=user)
    assert error_name(result) == "org.opdbus.Error.NotAuthorized", result.stderr
    assert "needs authentication for org.opdbus.job.cancel" in result.stderr
    time.sleep(0.3)
    assert audit_uids(auth_bus.address)[:1] == [uid]


def test_opctl_exits_with_the_not_authorized_code(
    opdbusd: Any, auth_bus: PrivateBus, test_users: dict[str, str]
) -> None:
    probe = run([PYTHON, "-c", "import opctl"], user=test_users["plain"])
    if probe.returncode != 0:
        pytest.skip(f"the venv is not readable by other users here: {probe.stderr.strip()[:200]}")
    result = opctl(auth_bus.address, "validate", user=test_users["plain"])
    assert result.returncode == 3
    uid = pwd.getpwnam(test_users["plain"]).pw_uid
    assert result.stderr == (
        "opctl: NotAuthorized: org.opdbus.Manager1.Validate is refused by the bus policy "
        f"(you are uid {uid}): only root and members of op-dbusd's admin group "
        "(auth.admin_group, default opdbus) may change things; ask an administrator to add you\n"
    )
    result = opctl(auth_bus.address, "validate", user=test_users["policy"])
    assert result.returncode == 3
    assert "may not call org.opdbus.Manager1.Validate" in result.stderr
    status = opctl(auth_bus.address, "--json", "status", user=test_users["plain"])
    assert status.returncode == 0 and json.loads(status.stdout)["mode"] == "agent"


def test_only_root_may_own_the_name(
    auth_bus: PrivateBus, test_users: dict[str, str], shared_dir: Path
) -> None:
    probe = run([PYTHON, "-c", "import opdbus"], user=test_users["admin"])
    if probe.returncode != 0:
        pytest.skip("the venv is not readable by other users here")
    home = shared_dir / "admin"
    home.mkdir()
    shutil.chown(home, user=test_users["admin"])
    config = home / "c.json"
    config.write_text(json.dumps(base_config(home)))
    shutil.chown(config, user=test_users["admin"])
    result = run(
        [PYTHON, "-m", "opdbus", "--bus", auth_bus.address, "--config", str(config)],
        user=test_users["admin"],
    )
    assert result.returncode == 1
    assert "not allowed to own org.opdbus" in result.stderr
    assert "lets only root own it" in result.stderr


def test_only_admins_change_bridges(
    make_daemon: Any, auth_bus: PrivateBus, ovs: Any, test_users: dict[str, str], tmp_path: Path
) -> None:
    config = base_config(tmp_path, ovsdb={"remote": ovs.remote, "datapath_type": "netdev"})
    make_daemon(auth_bus, config)
    address = auth_bus.address

    def create(name: str, user: str) -> subprocess.CompletedProcess[str]:
        return busctl(
            address,
            "call",
            "org.opdbus",
            "/org/opdbus",
            "org.opdbus.Manager1",
            "CreateBridge",
            "sa{sv}",
            name,
            "0",
            user=user,
        )

    assert create("ta0", "root").returncode == 0
    for user in (test_users["plain"], test_users["policy"]):
        assert create("ta1", user).returncode != 0
        result = dbus_send(
            address, "/org/opdbus/bridge/ta0", "org.opdbus.Bridge1.Delete", user=user
        )
        expected = (
            "org.freedesktop.DBus.Error.AccessDenied"
            if user == test_users["plain"]
            else "org.opdbus.Error.NotAuthorized"
        )
        assert error_name(result) == expected, result.stderr
    # Anyone may read the bridge's properties.
    ports = busctl(
        address,
        "get-property",
        "org.opdbus",
        "/org/opdbus/bridge/ta0",
        "org.opdbus.Bridge1",
        "Ports",
        user=test_users["plain"],
    )
    assert ports.returncode == 0 and '"ta0" "internal"' in ports.stdout
    assert create("ta2", test_users["admin"]).returncode == 0
    assert ovs.vsctl("list-br").stdout.split() == ["ta0", "ta2"]
    for name in ("ta0", "ta2"):
        assert (
            dbus_send(
                address, f"/org/opdbus/bridge/{name}", "org.opdbus.Bridge1.Delete", user="root"
            ).returncode
            == 0
        )


def test_only_admins_drive_vms(
    make_daemon: Any, auth_bus: PrivateBus, test_users: dict[str, str], tmp_path: Path
) -> None:
    """libvirt's test driver is enough: the subject is who may call, not QEMU."""
    make_daemon(auth_bus, base_config(tmp_path, libvirt={"uri": "test:///default"}))
    address = auth_bus.address
    vm = json.loads(opctl(address, "--json", "vm", "show", "test").stdout)
    path = vm["path"]
    assert vm["state"] == "running"

    def vm_call(user: str, member: str, signature: str = "", *args: str) -> Any:
        return busctl(
            address,
            "call",
            "org.opdbus",
            path,
            "org.opdbus.VM1",
            member,
            signature,
            *args,
            user=user,
        )

    profile = json.dumps({"name": "ta-vm", "memory_mb": 64})
    for user in (test_users["plain"], test_users["policy"]):
        # busctl prints only the message: the bus's refusal, or the daemon's.
        expected = "Access denied" if user == test_users["plain"] else "may not call org.opdbus"
        refused = [
            vm_call(user, "Stop"),
            vm_call(user, "Start"),
            vm_call(user, "Shutdown", "a{sv}", "0"),
            vm_call(user, "Delete", "a{sv}", "1", "force", "b", "true"),
            vm_call(user, "Suspend"),
            vm_call(user, "SetAutostart", "b", "true"),
            vm_call(user, "CreateSnapshot", "sa{sv}", "s1", "0"),
            busctl(
                address,
                "call",
                "org.opdbus",
                "/org/opdbus",
                "org.opdbus.Manager1",
                "CreateVM",
                "sa{sv}",
                profile,
                "0",
                user=user,
            ),
        ]
        for result in refused:
            assert result.returncode != 0 and expected in result.stderr, result.stderr
        named = dbus_send(address, path, "org.opdbus.VM1.Stop", user=user)
        assert error_name(named) == (
            "org.freedesktop.DBus.Error.AccessDenied"
            if user == test_users["plain"]
            else "org.opdbus.Error.NotAuthorized"
        )
        # Reading is open to anyone on the bus.
        state = busctl(
            address, "get-property", "org.opdbus", path, "org.opdbus.VM1", "State", user=user
        )
        assert state.returncode == 0 and state.stdout.strip() == 's "running"', state.stderr
        assert vm_call(user, "GetXML").returncode == 0
        assert vm_call(user, "ListSnapshots").returncode == 0
    # opctl as the plain user: the bus's refusal maps to its exit code, and nothing changed.
    denied = opctl(address, "vm", "stop", "test", user=test_users["plain"])
    assert denied.returncode == errors.NotAuthorized.exit_code
    assert "NotAuthorized: org.opdbus.VM1.Stop is refused by the bus policy" in denied.stderr
    assert json.loads(opctl(address, "--json", "vm", "list").stdout)[0]["state"] == "running"
    assert job_count(address) == 0
    # An admin may.
    stopped = opctl(address, "--json", "vm", "stop", "test", user=test_users["admin"])
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["job"]["state"] == "succeeded"
    assert json.loads(opctl(address, "--json", "vm", "show", "test").stdout)["state"] == "shutoff"


@pytest.mark.skipif(shutil.which("lxc-start") is None, reason="LXC is not installed")
def test_only_admins_create_stop_delete_or_exec_in_containers(
    make_daemon: Any, auth_bus: PrivateBus, test_users: dict[str, str], tmp_path: Path
) -> None:
    lxcpath = tmp_path / "lxc"
    make_daemon(auth_bus, base_config(tmp_path, lxc={"path": str(lxcpath)}))
    address = auth_bus.address
    made = opctl(address, "ct", "create", "ta-ct", "--start")
    assert made.returncode == 0, made.stderr
    path = "/org/opdbus/container/ta_2dct"
    try:

        def ct_call(user: str, member: str, signature: str = "", *args: str) -> Any:
            return busctl(
                address, "call", "org.opdbus", path, "org.opdbus.Container1", member, signature,
                *args, user=user,
            )  # fmt: skip

        for user in (test_users["plain"], test_users["policy"]):
            expected = "Access denied" if user == test_users["plain"] else "may not call"
            refused = [
                busctl(
                    address,
                    "call",
                    "org.opdbus",
                    "/org/opdbus",
                    "org.opdbus.Manager1",
                    "CreateContainer",
                    "sa{sv}",
                    "ta-other",
                    "0",
                    user=user,
                ),
                ct_call(user, "Stop", "a{sv}", "1", "force", "b", "true"),
                ct_call(user, "Delete", "a{sv}", "0"),
                ct_call(user, "Exec", "asa{sv}", "1", "id", "0"),
                ct_call(user, "Freeze"),
            ]
            for result in refused:
                assert result.returncode != 0 and expected in result.stderr, result.stderr
            state = busctl(
                address, "get-property", "org.opdbus", path, "org.opdbus.Container1", "State",
                user=user,
            )  # fmt: skip
            assert state.stdout.strip() == 's "running"', state.stderr
        assert not (lxcpath / "ta-other").exists()
        # An admin may.
        ran = opctl(address, "ct", "exec", "ta-ct", "--", "id", "-u", user=test_users["admin"])
        assert (ran.returncode, ran.stdout) == (0, "0\n"), ran.stderr
        stopped = opctl(address, "ct", "stop", "ta-ct", "--force", user=test_users["admin"])
        assert stopped.returncode == 0, stopped.stderr
    finally:
        subprocess.run(["lxc-stop", "-P", str(lxcpath), "-n", "ta-ct", "-k"], check=False)
        subprocess.run(["lxc-destroy", "-P", str(lxcpath), "-n", "ta-ct"], check=False)


def test_only_admins_sync_rebuild_update_install_or_migrate(
    make_daemon: Any, auth_bus: PrivateBus, test_users: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    fake = tmp_path / "nixos-rebuild"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    config = base_config(
        tmp_path,
        mode="agent",
        audit={"enabled": True},
        rebuild={"command": str(fake)},
        sync={"api_url": "http://127.0.0.1:9", "retries": 0},
    )
    make_daemon(auth_bus, config)
    address = auth_bus.address

    def manager(user: str, member: str, signature: str, *args: str) -> Any:
        return busctl(
            address, "call", "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", member,
            signature, *args, user=user,
        )  # fmt: skip

    for user in (test_users["plain"], test_users["policy"]):
        expected = "Access denied" if user == test_users["plain"] else "may not call"
        for result in (
            manager(user, "Sync", "a{sv}", "0"),
            manager(user, "Rebuild", "sa{sv}", "switch", "0"),
            manager(user, "Update", "a{sv}", "0"),
            manager(user, "MigrateHostSettings", "a{sv}", "0"),
            manager(user, "Install", "a{sv}", "1", "source", "s", str(tmp_path)),
        ):
            assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert job_count(address) == 0 and not marker.exists()
    # An admin may (the stand-in nixos-rebuild leaves its mark).
    ran = opctl(address, "rebuild", "build", user=test_users["admin"])
    assert ran.returncode == 0, ran.stderr
    assert marker.exists()
