"""nix/module.nix evaluates, and the config.json it writes is one op-dbusd accepts.

There is no nixpkgs here: tests/nix/eval-module.nix stubs the few lib
functions the module uses; nix-instantiate (apt nix-bin) is real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opdbus.config import Mode, parse_config
from tests.support import REPO

NIX = shutil.which("nix-instantiate")
pytestmark = pytest.mark.skipif(
    NIX is None, reason="nix-instantiate is not installed (make deps installs nix-bin)"
)


def evaluate(options: dict[str, Any], *, enable: bool = True) -> dict[str, Any]:
    assert NIX is not None
    result = subprocess.run(
        [
            NIX,
            "--eval",
            "--strict",
            "--json",
            str(REPO / "tests" / "nix" / "eval-module.nix"),
            "--arg",
            "module",
            str(REPO / "nix" / "module.nix"),
            "--argstr",
            "settingsJSON",
            json.dumps(options),
            "--arg",
            "enable",
            "true" if enable else "false",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NIX_CONFIG": "build-users-group ="},
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_module_and_package_parse() -> None:
    assert NIX is not None
    for name in ("module.nix", "package.nix"):
        result = subprocess.run(
            [NIX, "--parse", str(REPO / "nix" / name)],
            capture_output=True,
            text=True,
            env={**os.environ, "NIX_CONFIG": "build-users-group ="},
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_defaults() -> None:
    defaults = evaluate(
        {"mode": "full", "adminGroup": "opdbus", "stateDir": "/var/lib/op-dbus", "settings": {}}
    )["defaults"]
    assert defaults == {
        "enable": False,
        "mode": "full",
        "adminGroup": "opdbus",
        "stateDir": "/var/lib/op-dbus",
        "settings": {},
    }


def test_enabled_module_runs_the_daemon_with_a_config_it_accepts(tmp_path: Path) -> None:
    out = evaluate(
        {
            "mode": "standalone",
            "adminGroup": "hvadmins",
            "stateDir": "/var/lib/op-dbus",
            "settings": {"jobs": {"retention_seconds": 60}, "auth": {"polkit": False}},
        }
    )["config"]
    assert out["_type"] == "if" and out["condition"] is True
    cfg = out["content"]
    text = cfg["environment"]["etc"]["op-dbus/config.json"]["text"]
    config = parse_config(json.loads(text), tmp_path / "config.json")  # what op-dbusd will load
    assert config.mode is Mode.STANDALONE
    assert config.auth.admin_group == "hvadmins" and config.auth.polkit is False
    assert config.jobs.retention_seconds == 60
    service = cfg["systemd"]["services"]["op-dbus"]
    assert (
        service["serviceConfig"]["Type"] == "dbus"
        and service["serviceConfig"]["BusName"] == "org.opdbus"
    )
    assert (
        service["serviceConfig"]["ExecStart"]
        == "/nix/store/0000-op-dbus/bin/op-dbusd --bus system --config /etc/op-dbus/config.json"
    )
    assert service["serviceConfig"]["StateDirectory"]["content"] == "op-dbus"
    assert "ovs-vswitchd.service" in service["after"] and "libvirtd.service" not in service["after"]
    assert cfg["users"]["groups"] == {"hvadmins": {}}
    (policy,) = cfg["services"]["dbus"]["packages"]
    assert """--replace 'group="opdbus"' 'group="hvadmins"'""" in policy["script"]
    virt = cfg["virtualisation"]
    assert (
        virt["vswitch"]["enable"]["condition"] is True
        and virt["lxc"]["enable"]["condition"] is False
    )


def test_disabled_module_adds_nothing() -> None:
    out = evaluate(
        {"mode": "full", "adminGroup": "opdbus", "stateDir": "/var/lib/op-dbus", "settings": {}},
        enable=False,
    )["config"]
    assert out["condition"] is False
