"""What a plain user cannot do to op-dbusd, and what a full disk cannot do to its audit log.

Real users through busctl (a venv under /root is not theirs to read), a real
dbus-daemon with the project's policy, libvirt's test driver, a tmpfs for the
full disk.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opdbus.sandbox import PrivateBus
from tests.support import PLAIN_USER, base_config, busctl

pytestmark = pytest.mark.timeout(180)


def manager(
    address: str, member: str, *args: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    return busctl(
        address, "--json=short", "call", "org.opdbus", "/org/opdbus", "org.opdbus.Manager1",
        member, *args, user=user,
    )  # fmt: skip


def vm_path(address: str) -> str:
    tree = busctl(address, "--list", "tree", "org.opdbus").stdout.split()
    return next(path for path in tree if path.startswith("/org/opdbus/vm/"))


@pytest.fixture
def vm_daemon(make_daemon: Any, auth_bus: PrivateBus, shared_dir: Path) -> Any:
    config = base_config(shared_dir / "d", libvirt={"uri": "test:///default"})
    return make_daemon(auth_bus, config)


def test_check_vm_profile_is_no_file_oracle(
    vm_daemon: Any, auth_bus: PrivateBus, test_users: dict[str, str]
) -> None:
    """A plain user learned that /root/.bashrc exists; now only an admin may learn that."""
    Path("/root/.opdbus-oracle-probe").write_text("x")
    try:
        answers = {}
        for path in ("/root/.opdbus-oracle-probe", "/root/.opdbus-no-such-file"):
            profile = json.dumps({"name": "o", "disks": [{"path": path}]})
            plain = manager(auth_bus.address, "CheckVMProfile", "s", profile, user=PLAIN_USER)
            assert plain.returncode == 0, plain.stderr
            warnings = json.loads(plain.stdout)["data"][1]
            assert any("not checked" in w for w in warnings), warnings
            answers[path] = warnings
            root = manager(auth_bus.address, "CheckVMProfile", "s", profile)
            if "no-such" in path:
                assert root.returncode != 0 and "no such file" in root.stderr  # an admin is told
            else:
                assert root.returncode == 0, root.stderr
        # The plain user's two answers differ only in the path they name.
        first, second = answers.values()
        assert [w.replace(".opdbus-oracle-probe", "P") for w in first] == [
            w.replace(".opdbus-no-such-file", "P") for w in second
        ]
    finally:
        os.unlink("/root/.opdbus-oracle-probe")


def test_control_characters_are_named_and_never_reach_xml(
    vm_daemon: Any, auth_bus: PrivateBus
) -> None:
    profile = json.dumps({"name": "c", "description": "bad\x01text"})
    checked = manager(auth_bus.address, "CheckVMProfile", "s", profile)
    assert checked.returncode != 0
    assert "description" in checked.stderr and "U+0001" in checked.stderr
    snap = busctl(
        auth_bus.address, "call", "org.opdbus", vm_path(auth_bus.address), "org.opdbus.VM1",
        "CreateSnapshot", "sa{sv}", "s1", "1", "description", "s", "a\x01b",
    )  # fmt: skip
    assert snap.returncode != 0 and "U+0001" in snap.stderr


def test_a_plain_users_flood_of_reads_does_not_stop_an_admin(
    vm_daemon: Any, auth_bus: PrivateBus, test_users: dict[str, str]
) -> None:
    """40 VerifyAudit and 40 big CheckVMProfile calls at once, from a plain user, while
    root changes a VM: everyone gets an answer, the admin's change goes through."""
    vm = vm_path(auth_bus.address)
    for _ in range(20):  # something in the log to verify
        busctl(
            auth_bus.address,
            "call",
            "org.opdbus",
            vm,
            "org.opdbus.VM1",
            "SetAutostart",
            "b",
            "true",
        )
    big = json.dumps(
        {
            "name": "big",
            "cpus": 1024,
            "cpu_pinning": [{"vcpu": i, "cpuset": "0"} for i in range(1024)],
        }
    )

    def flood(i: int) -> subprocess.CompletedProcess[str]:
        if i % 2:
            return manager(auth_bus.address, "VerifyAudit", user=PLAIN_USER)
        return manager(auth_bus.address, "CheckVMProfile", "s", big, user=PLAIN_USER)

    with concurrent.futures.ThreadPoolExecutor(80) as pool:
        floods = [pool.submit(flood, i) for i in range(80)]
        admin = busctl(
            auth_bus.address, "call", "org.opdbus", vm, "org.opdbus.VM1", "SetAutostart", "b",
            "false",
        )  # fmt: skip
        results = [f.result() for f in floods]
    assert admin.returncode == 0, admin.stderr
    for result in results:
        if result.returncode != 0:  # refused at once: this user has enough in progress
            assert "expensive requests in progress" in result.stderr, result
    verified = [json.loads(r.stdout)["data"] for r in results[1::2] if r.returncode == 0]
    assert verified and all(v[0] is True for v in verified)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_full_state_dir_refuses_calls_and_leaves_none_unaudited(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(fs)], check=True)
    try:
        config = base_config(tmp_path, libvirt={"uri": "test:///default"})
        config["state_dir"] = str(fs / "state")
        daemon = make_daemon(private_bus, config)
        vm = vm_path(private_bus.address)
        fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
        os.close(fd)
        accepted, refusals, last = 0, [], "false"
        for i in range(2000):
            on = "true" if i % 2 == 0 else "false"
            result = busctl(
                private_bus.address, "call", "org.opdbus", vm, "org.opdbus.VM1",
                "SetAutostart", "b", on,
            )  # fmt: skip
            if result.returncode == 0:
                accepted, last = accepted + 1, on
                continue
            refusals.append(result.stderr)
            autostart = busctl(
                private_bus.address, "get-property", "org.opdbus", vm, "org.opdbus.VM1",
                "Autostart",
            ).stdout.strip()  # fmt: skip
            # Refused before it acted: the VM keeps what the last accepted call set.
            assert autostart == f"b {last}"
            if len(refusals) >= 5:
                break
        assert refusals and all("has no room" in r for r in refusals), refusals
        audit = (fs / "state" / "audit" / "audit.jsonl").read_text().splitlines()
        audited = [line for line in audit if "SetAutostart" in line]
        assert len(audited) == accepted  # every call that acted is on record
        (fs / "filler").unlink()
        again = busctl(
            private_bus.address,
            "call",
            "org.opdbus",
            vm,
            "org.opdbus.VM1",
            "SetAutostart",
            "b",
            "true",
        )
        assert again.returncode == 0, again.stderr
        verdict = manager(private_bus.address, "VerifyAudit")
        assert json.loads(verdict.stdout)["data"][0] is True, verdict.stdout
        daemon.stop()
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)
