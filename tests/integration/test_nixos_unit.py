"""The NixOS module's op-dbus unit, hardening and all, run by a real systemd.

The module is evaluated through the real nixpkgs lib; its
``systemd.services.op-dbus`` is written out as the unit file NixOS would
write (tests/systemd_ns.py) and started by a real systemd, PID 1 of its own
namespace, with the project's bus policy on that namespace's system bus.
The daemon then does what the unit is for: owns org.opdbus (Type=dbus) and
applies the stateConfig it was given, through systemd's own API. Agent
mode: this host has no NixOS to run nixos-rebuild activations, and LXC and
libvirt under this unit are not tried here (see the module's comment on
what the hardening leaves out for them).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opdbus import names
from tests.support import REPO, until
from tests.systemd_ns import PrivateSystemd, have_systemd, render_unit, service
from tests.unit.test_nix_module import configuration, evaluated, real_lib

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have_systemd(), reason="systemd is not installed"),
    real_lib,
]

STORE = "/nix/store/00000000000000000000000000000000-"
HERE = "/run/test-units"  # where the private systemd sees the test's files


def nixos_unit(lib: Path, tmp: Path) -> tuple[str, dict[str, Any]]:
    body = f"""  services.op-dbus = {{
    enable = true;
    mode = "agent";
    stateDir = "{HERE}/state";
    stateConfig.systemd.units."web.service" = {{ enabled = true; active_state = "active"; }};
  }};"""
    out = evaluated(lib, configuration(tmp, body))
    config = json.loads(out["configJSON"])
    config["state"]["file"] = f"{HERE}/state.json"  # /etc/op-dbus is the host's
    unit = render_unit(
        out["service"],
        paths={
            f"{STORE}op-dbus/bin/op-dbusd": f"{sys.executable} -m opdbus",
            "/etc/op-dbus/config.json": f"{HERE}/config.json",
            f"{STORE}coreutils/bin/kill": "/bin/kill",
        },
    )
    unit = unit.replace("[Service]\n", f"[Service]\nStandardOutput=append:{HERE}/op-dbus.log\n"
                        f"StandardError=append:{HERE}/op-dbus.log\n")  # fmt: skip
    files = {
        "config.json": json.dumps(config),
        "state.json": out["stateCheck"]["text"],
        "op-dbus.service": unit,
    }
    return unit, files


async def test_the_hardened_unit_runs_the_daemon_and_applies_its_state_config(
    nixpkgs_lib: Path, tmp_path: Path
) -> None:
    unit, files = nixos_unit(nixpkgs_lib, tmp_path)
    for option in ("ProtectHome=tmpfs", "PrivateTmp=yes", "ProtectKernelModules=yes",
                   "ProtectClock=yes", "LockPersonality=yes", "SystemCallArchitectures=native",
                   "RestrictAddressFamilies=AF_UNIX AF_NETLINK", "ProtectKernelTunables=yes",
                   "ProtectControlGroups=yes", "Type=dbus"):  # fmt: skip
        assert option in unit, unit
    sd = PrivateSystemd(
        tmp_path / "systemd",
        {"web.service": service("what the state config keeps running")},
        files=files,
        bus_policy=[REPO / "dbus-policy" / "org.opdbus.conf"],
    )
    await asyncio.to_thread(sd.start)
    try:
        started = await asyncio.to_thread(sd.systemctl, "start", "op-dbus.service")
        log = Path(f"/proc/{sd.pid}/root{HERE}/op-dbus.log")
        state = await asyncio.to_thread(sd.systemctl, "is-active", "op-dbus.service")
        assert state == "active", (started, await asyncio.to_thread(log.read_text))
        client = await Client.connect(sd.address)
        try:
            status = await client.status()
            assert status.mode == "agent" and status.backends["systemd"][0] is True

            async def applied() -> bool:
                active = await asyncio.to_thread(sd.systemctl, "is-active", "web.service")
                state = await client.get_all(names.STATE_PATH, names.STATE_IFACE)
                return active == "active" and bool(state["InSync"])

            await until(applied, 30)
            assert await asyncio.to_thread(sd.systemctl, "is-enabled", "web.service") == "enabled"
            shown = await asyncio.to_thread(
                sd.systemctl, "show", "op-dbus.service", "-p", "ProtectHome", "-p", "PrivateTmp"
            )
            assert "ProtectHome=tmpfs" in shown and "PrivateTmp=yes" in shown
        finally:
            await client.close()
        # Reload (ExecReload: SIGHUP) applies the state file again: a stop by hand is undone.
        await asyncio.to_thread(sd.systemctl, "stop", "web.service")
        await asyncio.to_thread(sd.systemctl, "reload", "op-dbus.service")

        async def repaired() -> bool:
            return await asyncio.to_thread(sd.systemctl, "is-active", "web.service") == "active"

        await until(repaired, 30)
    finally:
        await asyncio.to_thread(sd.stop)
