"""`op-dbusd --sandbox DIR`: the README's first command, as a newcomer runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.support import PYTHON, opctl, run


def wait_for_file(path: Path, process: subprocess.Popen[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text().strip()
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def test_sandbox_runs_serves_and_cleans_up(tmp_path: Path) -> None:
    box = tmp_path / "sandbox"
    daemon = subprocess.Popen(
        [PYTHON, "-m", "opdbus", "--sandbox", str(box)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = wait_for_file(box / "bus-address", daemon)
        assert address.startswith(f"unix:path={box}/bus/bus.sock")
        status = json.loads(opctl(address, "--json", "status").stdout)
        assert status["mode"] == "full"
        assert "libvirt test driver" in status["backends"]["libvirt"]["detail"]
        # Its own Open vSwitch, on the userspace datapath.
        assert status["backends"]["ovsdb"] == {
            "available": True,
            "detail": f"ovsdb-server at unix:{box}/ovs/db.sock",
        }
        made = opctl(address, "net", "bridge", "create", "sbx0")
        assert made.returncode == 0, made.stderr
        assert (
            json.loads(opctl(address, "--json", "net", "bridge", "show", "sbx0").stdout)[
                "datapath_type"
            ]
            == "netdev"
        )
        # The invoking user is the sandbox's admin: mutating calls work, state stays inside.
        result = opctl(address, "--json", "validate", "--quick")
        assert json.loads(result.stdout)["operation"] == "Validate"
        assert (box / "state" / "audit" / "audit.jsonl").stat().st_size > 0
        assert (box / "state" / "jobs" / "1.json").exists()
        # A second sandbox in the same place refuses instead of stealing the bus.
        second = run([PYTHON, "-m", "opdbus", "--sandbox", str(box)])
        assert second.returncode == 1 and f"a sandbox is already running in {box}" in second.stderr
        assert json.loads(opctl(address, "--json", "status").stdout)["mode"] == "full"
    finally:
        daemon.send_signal(signal.SIGINT)
        out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert out.startswith(f"op-dbusd sandbox ready in {box}\n  bus address: {address}")
    assert f"opctl --bus '{address}' status" in out and "busctl --address=" in out
    assert not (box / "bus-address").exists()
    assert "stopped" in err
    # The sandbox leaves no bridge behind on the host.
    assert run(["ip", "link", "show", "sbx0"]).returncode != 0
