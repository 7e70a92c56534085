"""opctl host migrate and opctl install as an admin runs them, under sudo's SUDO_UID
(stand-ins: tests/fake_nixos_rebuild.py for nixos-rebuild, a script for
nixos-generate-config; the accounts are real, made by useradd in a private root)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opdbus import errors
from opdbus.sandbox import PrivateBus
from tests.integration.test_install import (
    NIX,
    install_config,
    make_root,
    make_source,
    people,
    uid,
)
from tests.support import base_config, opctl

pytestmark = pytest.mark.skipif(NIX is None, reason="nix-instantiate is not installed (make deps)")


def test_migrate_and_install_from_the_command_line(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = people(make_root(tmp_path))
    make_daemon(private_bus, base_config(tmp_path, **install_config(tmp_path)))
    address = private_bus.address
    monkeypatch.setenv("SUDO_UID", str(uid(root, "eve")))  # as if eve ran `sudo opctl ...`

    dry = opctl(address, "host", "migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout.splitlines()
    header = next(line for line in out if line.startswith("USER"))
    assert header.split() == ["USER", "MORE", "GROUPS", "PASSWORD"]
    rows = {line.split()[0]: line.split() for line in out[out.index(header) + 1 :][:3]}
    assert rows["alice"][1:] == ["audio", "hash", "kept"] and rows["bob"][1:] == ["-", "locked"]
    assert rows["eve"][1] == "*" and "* the invoking user" in out
    assert "every user gains input, kvm, libvirtd, video, wheel" in out
    assert "time zone: Europe/Berlin (from etc/localtime)" in out, dry.stdout
    assert "not found: console font, resume device" in out
    assert any("users-local.nix: would be written (" in line for line in out)
    assert not (tmp_path / "hypervisor" / "configuration").exists()

    bad = opctl(address, "install", "--source", str(tmp_path), "--hostname", "two words")
    assert bad.returncode == errors.InvalidArgs.exit_code
    assert "not a host name" in bad.stderr and "Traceback" not in bad.stderr
    missing = opctl(address, "host", "migrate", "--users", "alice,zed")
    assert missing.returncode == errors.InvalidArgs.exit_code and "zed" in missing.stderr

    source = make_source(tmp_path)
    installed = opctl(
        address, "--json", "install", "--source", str(source), "--action", "build",
        "--skip-update-check", "--users", "alice,eve",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    record = json.loads(installed.stdout)["job"]
    assert record["state"] == "succeeded"
    assert record["output"]["migration"]["users"] == ["alice", "eve"]
    assert [r["action"] for r in record["output"]["rebuild"]] == ["build"]
    assert (
        "# the user who ran the installer\n"
        in (tmp_path / "hypervisor" / "configuration" / "users-local.nix")
        .read_text()
        .split('"eve"')[1]
    )
