"""systemd-analyze security --offline=yes on the NixOS module's op-dbus unit, before and after.

"Before" is the unit without the hardening block (what the module generated
until it had one); "after" is the unit the module generates now, per mode.
Both come from evaluating nix/module.nix through the real nixpkgs lib
(../shared/vendor/nixpkgs-lib.tar.gz) and writing the unit file as NixOS
does (tests/systemd_ns.render_unit). Lower exposure is better (0-10).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from common import REPO, report
from tests.systemd_ns import render_unit
from tests.unit.test_nix_module import configuration, evaluated

HARDENING = (
    "ProtectHome", "PrivateTmp", "ProtectKernelModules", "ProtectKernelLogs", "ProtectClock",
    "RestrictRealtime", "LockPersonality", "SystemCallArchitectures", "RestrictAddressFamilies",
    "ProtectKernelTunables", "ProtectControlGroups",
)  # fmt: skip


def exposure(unit: str, workdir: Path) -> float:
    path = workdir / "op-dbus.service"
    path.write_text(unit)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def main() -> None:
    tarball = REPO.parent / "shared" / "vendor" / "nixpkgs-lib.tar.gz"
    with tempfile.TemporaryDirectory(prefix="opdbus-unit-") as tmp:
        work = Path(tmp)
        subprocess.run(["tar", "-xzf", str(tarball), "-C", tmp], check=True)
        for mode in ("agent", "standalone", "full"):
            body = f'  services.op-dbus = {{ enable = true; mode = "{mode}"; }};'
            service = evaluated(work / "lib", configuration(work, body))["service"]
            after = exposure(render_unit(service, paths={}), work)
            bare = dict(service)
            bare["serviceConfig"] = {
                k: v for k, v in service["serviceConfig"].items() if k not in HARDENING
            }
            before = exposure(render_unit(bare, paths={}), work)
            report(
                f"systemd-analyze security, {mode} mode: exposure after/before",
                after / before,
                "< 1x (lower is safer)",
                after < before,
                f"{before:.1f} -> {after:.1f}",
            )


if __name__ == "__main__":
    main()
