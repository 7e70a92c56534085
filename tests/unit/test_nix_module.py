"""nix/module.nix evaluates, and the config.json it writes is one op-dbusd accepts.

There is no nixpkgs here. With ../shared/vendor/nixpkgs-lib.tar.gz beside the
clone, the module is evaluated through the real nixpkgs lib (lib.evalModules:
option types, merging, documentation; tests/nix/eval-real.nix stubs only the
options of other NixOS modules), seed 002's own configuration.nix included,
and the module's build-time state check is run as the builder would. Without
it, tests/nix/eval-module.nix stubs the few lib functions the module uses.
nix-instantiate (apt nix-bin) is real either way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from opdbus.config import Mode, parse_config
from opdbus.models.state import parse_state
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
        "stateConfig": None,
        "enableBlockchain": True,  # mode != "agent"
        "enableCache": False,
        "menu": {"enable": False, "autostartTimeout": 10, "tty": "tty1"},
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
    # The policy package (its script is checked through the real lib, below).
    assert cfg["services"]["dbus"]["packages"] == ["/nix/store/0000-op-dbus-policy"]
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


# -- through the real nixpkgs lib (../shared/vendor), when it is beside this clone --------

SHARED = REPO.parent / "shared"
LIB_TARBALL = SHARED / "vendor" / "nixpkgs-lib.tar.gz"
SEEDS = SHARED / "seeds"
real_lib = pytest.mark.skipif(
    not LIB_TARBALL.exists(),
    reason="../shared/vendor/nixpkgs-lib.tar.gz is not beside this clone (the stub tests run)",
)
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group ="}


def evaluate_real(lib: Path, configuration: Path) -> subprocess.CompletedProcess[str]:
    assert NIX is not None
    return subprocess.run(
        [NIX, "--eval", "--strict", "--json", str(REPO / "tests" / "nix" / "eval-real.nix"),
         "--arg", "libPath", str(lib), "--arg", "configuration", str(configuration)],
        capture_output=True, text=True, timeout=120, check=False, env=NIX_ENV,
    )  # fmt: skip


def evaluated(lib: Path, configuration: Path) -> dict[str, Any]:
    done = evaluate_real(lib, configuration)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def configuration(tmp: Path, body: str) -> Path:
    path = tmp / "configuration.nix"
    path.write_text(
        f"{{ pkgs, ... }}: {{\n  imports = [ {REPO / 'nix' / 'module.nix'} ];\n{body}\n}}\n"
    )
    return path


def seed_configuration(tmp: Path) -> Path:
    """Seed 002's "complete configuration.nix for Full mode", as written there."""
    (seed,) = sorted(SEEDS.glob("002_*.txt"))
    text = seed.read_text()
    start = text.index("Here's a complete configuration.nix for Proxmox Full mode")
    block = text[start:].split("```nix\n", 1)[1].split("```", 1)[0]
    (tmp / "hardware-configuration.nix").write_text("{ ... }: { }\n")  # another host's file
    path = tmp / "configuration.nix"
    path.write_text(
        block.replace("/path/to/operation-dbus/nix/module.nix", str(REPO / "nix" / "module.nix"))
    )
    return path


def run_state_check(check: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """The module's build-time check, run as the builder would (op-dbusd on PATH)."""
    document, out = tmp / "op-dbus-state.json", tmp / "out"
    document.write_text(check["text"])
    return subprocess.run(
        ["sh", "-ec", check["script"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
             "document": str(document), "out": str(out)},
    )  # fmt: skip


@real_lib
def test_seed_002_evaluates_with_the_real_lib_and_its_state_passes_the_daemons_check(
    nixpkgs_lib: Path, tmp_path: Path
) -> None:
    out = evaluated(nixpkgs_lib, seed_configuration(tmp_path))
    assert out["enable"] is True and out["mode"] == "full"
    config = parse_config(json.loads(out["configJSON"]), tmp_path / "config.json")
    assert config.audit_enabled and config.cache.enabled  # enableBlockchain, enableCache
    assert str(config.state.file) == "/etc/op-dbus/state.json"
    assert str(config.paths.polkit_actions).startswith("/run/current-system/sw/share/polkit-1/")
    check = run_state_check(out["stateCheck"], tmp_path)
    assert check.returncode == 0, check.stderr
    assert "good: 1 unit, 2 bridges, 3 containers" in check.stdout
    assert (tmp_path / "out").read_text() == out["stateCheck"]["text"]
    doc = parse_state(out["stateCheck"]["text"])
    assert doc.systemd is not None and doc.systemd.units["openvswitch.service"].enabled is True
    assert doc.lxc is not None and [c.id for c in doc.lxc.containers] == [100, 101, 102]
    # The unit: what it needs started first, what it runs, how it is hardened.
    service = out["service"]
    assert service["requires"] == ["dbus.service"]
    for unit in ("polkit.service", "ovsdb.service", "ovs-vswitchd.service", "libvirtd.service"):
        assert unit in service["wants"] and unit in service["after"]
    assert set(service["path"]) >= {
        "lxc", "openvswitch", "nixos-rebuild", "nixos-install-tools", "nix", "iproute2",
    }  # fmt: skip
    hardening = service["serviceConfig"]
    assert hardening["ProtectHome"] == "tmpfs" and hardening["PrivateTmp"] is True
    assert hardening["SystemCallArchitectures"] == "native"
    # polkit actions reach the system profile, not only the bus's share/dbus-1.
    assert "op-dbus-policy" in out["systemPackages"]
    assert "/share/polkit-1/actions" in out["pathsToLink"]
    (script,) = out["dbusPackages"]
    assert "org.opdbus.policy $out/share/polkit-1/actions/" in script
    documented = {o["name"] for o in out["options"]}
    assert {
        f"services.op-dbus.{name}"
        for name in ("enable", "package", "mode", "stateConfig", "enableBlockchain",
                     "enableCache", "adminGroup", "stateDir", "settings")
    } <= documented  # fmt: skip


@real_lib
@pytest.mark.parametrize(
    ("body", "where", "what"),
    [
        ('stateConfig.lxc.containers = [ { id = 1; name = "a"; runing = true; } ];',
         "services.op-dbus.stateConfig.lxc.containers", "runing' does not exist"),
        ('stateConfig.systemd.units."x.service".active_state = "running";',
         'services.op-dbus.stateConfig.systemd.units."x.service".active_state', "is not of type"),
        ("stateConfig.net.interfaces = [ { name = \"br0\"; ipv4.address = [ { ip = \"10.0.0.1\"; "
         "prefix = 33; } ]; } ];", "prefix", "between 0 and 32"),
    ],
)  # fmt: skip
def test_a_wrong_field_fails_evaluation_naming_its_option(
    nixpkgs_lib: Path, tmp_path: Path, body: str, where: str, what: str
) -> None:
    path = configuration(tmp_path, f"  services.op-dbus.enable = true;\n  services.op-dbus.{body}")
    done = evaluate_real(nixpkgs_lib, path)
    assert done.returncode != 0
    assert where in done.stderr and what in done.stderr, done.stderr


@real_lib
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('mode = "agent"; stateConfig.net.interfaces = [ { name = "br0"; } ];',
         "net: off in agent mode"),
        ('stateConfig.net.interfaces = [ { name = "br0"; ipv4.address = [ { ip = "300.1.1.1"; '
         "prefix = 24; } ]; } ];", "net.interfaces[0].ipv4.address[0].ip"),
        ("stateConfig.lxc.containers = [ { id = 5; name = \"a\"; } { id = 5; name = \"b\"; } ];",
         "container id 5 is listed twice"),
    ],
)  # fmt: skip
def test_the_build_time_check_fails_what_the_daemon_would_refuse(
    nixpkgs_lib: Path, tmp_path: Path, body: str, message: str
) -> None:
    path = configuration(tmp_path, "  services.op-dbus = { enable = true; " + body + " };")
    check = run_state_check(evaluated(nixpkgs_lib, path)["stateCheck"], tmp_path)
    assert check.returncode == 2 and message in check.stderr, check.stderr
    assert not (tmp_path / "out").exists()  # the build fails: no state.json


@real_lib
def test_settings_are_deep_merged_and_agent_mode_needs_no_backends(
    nixpkgs_lib: Path, tmp_path: Path
) -> None:
    body = """  services.op-dbus = {
    enable = true;
    mode = "agent";
    adminGroup = "hv";
    settings = { jobs.retention_seconds = 60; auth.polkit = false; mode = "full"; };
    settings.auth.admin_uids = [ 1000 ];
  };"""
    out = evaluated(nixpkgs_lib, configuration(tmp_path, body))
    config = parse_config(json.loads(out["configJSON"]), tmp_path / "config.json")
    assert config.mode is Mode.AGENT  # the option wins over settings
    assert config.auth.polkit is False and config.auth.admin_uids == [1000]
    assert config.auth.admin_group == "hv" and config.jobs.retention_seconds == 60
    assert config.audit_enabled is False  # enableBlockchain defaults off in agent mode
    assert out["stateCheck"] is None  # no stateConfig: no state file
    service = out["service"]
    assert "ovsdb.service" not in service["wants"] and "lxc" not in service["path"]
    assert out["vswitch"] == {}


@real_lib
def test_the_package_lists_every_runtime_dependency_of_pyproject(nixpkgs_lib: Path) -> None:
    assert NIX is not None
    with (REPO / "pyproject.toml").open("rb") as f:
        wanted = [
            re.split(r"[<>=!~ ]", dep)[0] for dep in tomllib.load(f)["project"]["dependencies"]
        ]
    nixpkgs_names = {"libvirt-python": "libvirt"}  # nixpkgs' attribute where it differs
    attrs = sorted(nixpkgs_names.get(name, name) for name in wanted)
    expr = f"""
      let
        lib = import {nixpkgs_lib};
        ps = lib.genAttrs {json.dumps(attrs).replace(",", " ")} (name: {{ pname = name; }}) // {{
          buildPythonApplication = attrs: attrs;
          setuptools = {{ pname = "setuptools"; }};
        }};
        pkg = import {REPO / "nix" / "package.nix"} {{ inherit lib; python3Packages = ps; }};
      in map (d: d.pname) pkg.dependencies
    """
    done = subprocess.run([NIX, "--eval", "--strict", "--json", "-E", expr], capture_output=True,
                          text=True, timeout=60, check=False, env=NIX_ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)) == attrs


def test_the_console_menu_takes_its_terminal_from_getty(nixpkgs_lib: Path, tmp_path: Path) -> None:
    body = """
      services.op-dbus.enable = true;
      services.op-dbus.menu.enable = true;
      services.op-dbus.menu.autostartTimeout = 0;
      services.op-dbus.menu.tty = "tty2";
    """
    out = evaluated(nixpkgs_lib, configuration(tmp_path, body))
    config = parse_config(json.loads(out["configJSON"]), tmp_path / "config.json")
    assert config.menu.autostart_timeout_seconds == 0  # what the daemon will serve
    menu = out["menu"]
    assert menu["conflicts"] == ["getty@tty2.service"]
    assert "getty@tty2.service" in menu["after"] and "op-dbus.service" in menu["after"]
    service = menu["serviceConfig"]
    assert service["ExecStart"].endswith("/bin/op-dbus-menu --bus system")
    assert service["TTYPath"] == "/dev/tty2" and service["StandardInput"] == "tty"
    assert service["Restart"] == "always" and menu["environment"]["TERM"] == "linux"
    # Off by default; a terminal that is not a VT, or a countdown past an hour, is refused.
    assert (
        evaluated(nixpkgs_lib, configuration(tmp_path, "services.op-dbus.enable = true;"))["menu"]
        is None
    )
    for bad in (
        'services.op-dbus.menu.tty = "ttyS0; rm";',
        "services.op-dbus.menu.autostartTimeout = 4000;",
    ):
        done = evaluate_real(nixpkgs_lib, configuration(tmp_path, body + bad))
        assert done.returncode != 0 and "services.op-dbus.menu" in done.stderr, done.stderr[-400:]
