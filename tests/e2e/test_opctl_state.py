"""opctl state, as an admin runs it, against a real op-dbusd and a real Open vSwitch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.support import base_config, opctl


def test_apply_diff_show_confirm_and_drift_from_the_command_line(
    tmp_path: Path, make_daemon: Any, private_bus: PrivateBus, ovs: PrivateOvs
) -> None:
    config = base_config(tmp_path, ovsdb={"remote": ovs.remote, "datapath_type": "netdev"})
    config["mode"] = "standalone"
    make_daemon(private_bus, config)
    bus = private_bus.address
    doc = tmp_path / "host.json"
    doc.write_text(
        json.dumps(
            {
                "net": {
                    "interfaces": [
                        {
                            "name": "cli0",
                            "ports": [{"name": "cli0p", "type": "internal", "tag": 12}],
                            "ipv4": {"address": [{"ip": "10.44.0.1", "prefix": 24}]},
                        }
                    ]
                }
            }
        )
    )
    plan = opctl(bus, "state", "diff", str(doc))
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[0] == "+ net/cli0"
    assert "1 to create, 0 to change, 0 to delete" in plan.stdout
    applied = opctl(bus, "state", "apply", str(doc))
    assert applied.returncode == 0, applied.stderr
    assert "job 1 succeeded: applied 1 change(s)" in applied.stdout
    assert "+ net/cli0" in applied.stdout  # the plan is in the job's log
    nothing = opctl(bus, "state", "diff", str(doc))
    assert nothing.stdout.strip() == "no changes: the host is as the document says"
    shown = json.loads(opctl(bus, "state", "show", "net").stdout)
    assert shown["net"]["interfaces"][0]["ports"] == [
        {"name": "cli0p", "tag": 12, "type": "internal"}
    ]
    drift = opctl(bus, "state", "drift")
    assert drift.stdout.startswith("in sync with the document last applied")
    ovs.vsctl("set", "port", "cli0p", "tag=13")  # by hand
    data: dict[str, Any] = {}
    for _ in range(50):
        data = json.loads(opctl(bus, "--json", "state", "drift").stdout)
        if not data["in_sync"]:
            break
    assert data["drift"] and data["drift"][0]["id"] == "cli0"
    changed = opctl(bus, "state", "diff", str(doc))
    assert '~ net/cli0  ports[cli0p]: {"name": "cli0p", "tag": 13' in changed.stdout
    # With --confirm: kept only once confirmed.
    doc.write_text(json.dumps({"net": {"interfaces": [{"name": "cli0"}, {"name": "cli1"}]}}))
    trial = opctl(bus, "state", "apply", str(doc), "--confirm", "60")
    assert trial.returncode == 0, trial.stderr
    assert "confirm with `opctl state confirm` within 60 s" in trial.stderr
    assert "pending" in opctl(bus, "state", "drift").stderr
    confirmed = opctl(bus, "state", "confirm")
    assert confirmed.stdout.strip() == "confirmed: the changes stay"
    assert sorted(ovs.vsctl("list-br").stdout.split()) == ["cli0", "cli1"]
    again = opctl(bus, "state", "confirm")
    assert again.returncode == 10 and "nothing to confirm" in again.stderr  # Conflict
    bad = opctl(bus, "state", "apply", "-", "--dry-run")
    assert bad.returncode == 4 and "not JSON" in bad.stderr
