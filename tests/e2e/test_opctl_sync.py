"""opctl sync, rebuild and update as a user runs them (stand-ins: tests/githost_server.py
for the Git host, tests/fake_nixos_rebuild.py for nixos-rebuild)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opdbus import errors
from opdbus.sandbox import PrivateBus
from tests.githost_server import FakeGitHub, ThreadedServer
from tests.integration.test_sync import repository, sync_config
from tests.support import CALM, base_config, opctl

FAKE = Path(__file__).resolve().parent.parent / "fake_nixos_rebuild.py"


@pytest.fixture
def host(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> Iterator[tuple[str, FakeGitHub]]:
    fake = FakeGitHub()
    fake.commit(repository(300))
    with ThreadedServer(fake) as server:
        config = base_config(
            tmp_path, **CALM, **sync_config(server.url), rebuild={"command": str(FAKE)}
        )
        make_daemon(private_bus, config)
        yield private_bus.address, fake


def test_sync_rebuild_update_from_the_command_line(
    host: tuple[str, FakeGitHub], tmp_path: Path
) -> None:
    address, fake = host
    checked = opctl(address, "sync", "--check-only")
    assert checked.returncode == 0, checked.stderr
    assert "to download" in checked.stdout and "would update 306 files" in checked.stdout
    synced = opctl(address, "--json", "sync")
    record = json.loads(synced.stdout)["job"]
    assert record["state"] == "succeeded" and len(record["output"]["changed"]) == 306
    assert (tmp_path / "hypervisor" / "src" / "flake.nix").is_file()
    again = opctl(address, "sync")
    assert "up to date at" in again.stdout

    built = opctl(address, "rebuild", "build", "--host", "hyper", "--show-trace")
    assert built.returncode == 0, built.stderr
    out = built.stdout.splitlines()
    assert out[0].startswith(f"$ {FAKE} build --flake ") and "#hyper --show-trace" in out[0]
    assert "building the system configuration..." in out
    assert out[-1].startswith("job ") and "nixos-rebuild build succeeded" in out[-1]

    updated = opctl(address, "update", "--skip-rebuild")
    assert updated.returncode == 0 and "== 2/3 smart sync" in updated.stdout
    assert "rebuild skipped" in updated.stdout

    fake.rate_limited = True
    limited = opctl(address, "sync")
    assert limited.returncode == errors.BackendUnavailable.exit_code
    assert "rate limit is used up" in limited.stderr
    bad = opctl(address, "rebuild", "explode")
    assert bad.returncode == errors.InvalidArgs.exit_code
