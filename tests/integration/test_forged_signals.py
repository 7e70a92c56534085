"""A plain user cannot make opctl believe a forged signal.

Any local user may send a unicast signal to any connection (Debian's
system.conf and our bus both allow send_type="signal"). The attacker here does
what the adversarial run did: for every connection on the bus, a forged
PropertiesChanged saying the job succeeded, and a forged Log line.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from opdbus.sandbox import PrivateBus
from tests.support import PLAIN_USER, PYTHON, base_config, busctl

pytestmark = pytest.mark.timeout(90)

FAKE = Path(__file__).resolve().parent.parent / "fake_nixos_rebuild.py"


async def forge(address: str, job: str, rounds: int) -> int:
    """As the plain user: forged Job1 signals to every connection on the bus; how many sent."""
    sent = 0
    for _ in range(rounds):
        listed = await asyncio.to_thread(
            busctl, address, "--json=short", "call", "org.freedesktop.DBus",
            "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames",
        )  # fmt: skip
        for name in json.loads(listed.stdout)["data"][0]:
            if not name.startswith(":"):
                continue
            state = await asyncio.to_thread(
                busctl, address, f"--destination={name}", "emit", job,
                "org.freedesktop.DBus.Properties", "PropertiesChanged", "sa{sv}as",
                "org.opdbus.Job1", "3", "State", "s", "succeeded", "Result", "s", "FORGED",
                "Progress", "d", "1.0", "0", user=PLAIN_USER,
            )  # fmt: skip
            line = await asyncio.to_thread(
                busctl, address, f"--destination={name}", "emit", job, "org.opdbus.Job1",
                "Log", "uts", "1", "0", "FORGED line", user=PLAIN_USER,
            )  # fmt: skip
            sent += state.returncode == 0 and line.returncode == 0
        await asyncio.sleep(0.2)
    return sent


async def test_opctl_believes_only_the_daemon(
    make_daemon: Any,
    auth_bus: PrivateBus,
    shared_dir: Path,
    test_users: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = base_config(shared_dir / "d")
    config["rebuild"] = {"command": str(FAKE)}
    # The rebuild talks for ~4 s: long enough for the forger to strike first.
    monkeypatch.setenv("FAKE_REBUILD_DELAY", "0.15")
    monkeypatch.setenv("FAKE_REBUILD_LINES", "20")
    daemon = make_daemon(auth_bus, config)
    watch = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "opctl", "--bus", auth_bus.address, "--json", "watch",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    rebuild = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "opctl", "--bus", auth_bus.address, "--no-progress", "rebuild", "build",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        sent = await forge(auth_bus.address, "/org/opdbus/job/1", rounds=6)
        assert sent > 0, "the forger could not send anything: the test proves nothing"
        out, err = await asyncio.wait_for(rebuild.communicate(), 60)
    finally:
        watch.terminate()
        watched, _ = await watch.communicate()
    assert rebuild.returncode == 0, err
    text = out.decode()
    assert "FORGED" not in text
    assert "job 1 succeeded: nixos-rebuild build succeeded" in text
    assert "reloading" not in text and "building '/nix/store/" in text  # the real output
    events = [json.loads(line) for line in watched.decode().splitlines() if line.strip()]
    assert events, "watch saw nothing at all"
    assert not any("FORGED" in json.dumps(event) for event in events)
    assert any(e["member"] == "Completed" for e in events)
    assert daemon.log().count("Traceback") == 0
