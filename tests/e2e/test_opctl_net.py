"""opctl net, as a user runs it, against op-dbusd and a real Open vSwitch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.support import PYTHON, base_config, opctl


@pytest.fixture
def net(make_daemon: Any, private_bus: PrivateBus, ovs: PrivateOvs, tmp_path: Path) -> str:
    make_daemon(
        private_bus, base_config(tmp_path, ovsdb={"remote": ovs.remote, "datapath_type": "netdev"})
    )
    return private_bus.address


def test_bridges_ports_and_addresses_from_the_command_line(net: str, ovs: PrivateOvs) -> None:
    made = opctl(
        net,
        "net",
        "bridge",
        "create",
        "cn1",
        "--address",
        "10.97.0.1/24",
        "--external-id",
        "role=lab",
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "bridge cn1 created (/org/opdbus/bridge/cn1)"
    added = opctl(net, "net", "port", "add", "cn1", "cp1", "--type", "internal", "--tag", "5")
    assert added.returncode == 0 and added.stdout.strip() == "port cp1 added to cn1"
    listing = opctl(net, "net", "bridge", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "DATAPATH", "PORTS", "LINK", "ADDRESSES"]
    assert listing[1].split() == ["cn1", "netdev", "1", "up", "10.97.0.1/24"]
    show = opctl(net, "net", "bridge", "show", "cn1").stdout
    assert (
        "addresses: 10.97.0.1/24" in show
        and "external ids: opdbus:addresses=10.97.0.1/24, role=lab" in show
    )
    assert any(line.split()[:3] == ["cp1", "internal", "5"] for line in show.splitlines())
    data = json.loads(opctl(net, "--json", "net", "bridge", "show", "cn1").stdout)
    assert {p["name"]: p["tag"] for p in data["ports"]} == {"cn1": None, "cp1": 5}
    changed = opctl(net, "net", "addr", "set", "cn1", "10.97.0.2/24", "10.98.0.1/24", "--json")
    assert sorted(json.loads(changed.stdout)["object"]["addresses"]) == [
        "10.97.0.2/24",
        "10.98.0.1/24",
    ]
    assert opctl(net, "net", "port", "remove", "cn1", "cp1").returncode == 0
    assert opctl(net, "net", "bridge", "delete", "cn1").stdout.strip() == "bridge cn1 deleted"
    assert ovs.vsctl("list-br").stdout.strip() == ""


def test_apply_file_with_progress_and_exit_codes(net: str, tmp_path: Path) -> None:
    doc = tmp_path / "net.json"
    doc.write_text(
        json.dumps(
            {
                "bridges": [
                    {
                        "name": "cm1",
                        "addresses": ["10.99.0.1/24"],
                        "ports": [{"name": "cq1", "type": "internal"}],
                    },
                    {"name": "cm2", "ports": [{"name": "cpa", "type": "patch", "peer": "cpb"}]},
                    {"name": "cm3", "ports": [{"name": "cpb", "type": "patch", "peer": "cpa"}]},
                ]
            }
        )
    )
    applied = opctl(net, "net", "apply", str(doc))
    assert applied.returncode == 0, applied.stderr
    assert (
        "create bridge cm1 (netdev)" in applied.stdout
        and "add port cpb (patch) to cm3" in applied.stdout
    )
    assert (
        applied.stdout.strip().splitlines()[-1]
        == "job 1 succeeded: 3 created, 0 updated, 0 unchanged"
    )
    again = subprocess.run(
        [PYTHON, "-m", "opctl", "--bus", net, "--json", "net", "apply", "-"],
        input=doc.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    record = json.loads(again.stdout)["job"]
    assert record["state"] == "succeeded" and record["output"]["unchanged"] == ["cm1", "cm2", "cm3"]
    peers = {
        p["name"]: p["peer"]
        for p in json.loads(opctl(net, "--json", "net", "bridge", "show", "cm2").stdout)["ports"]
    }
    assert peers["cpa"] == "cpb"

    doc.write_text(
        json.dumps({"bridges": [{"name": "cm1", "ports": [{"name": "cq1", "tag": 5000}]}]})
    )
    bad = opctl(net, "net", "apply", str(doc))
    assert bad.returncode == 4
    assert (
        "ApplyBridges: bridges[0].ports[0].tag: Input should be less than or equal to 4095"
        in bad.stderr
    )
    missing = opctl(net, "net", "apply", str(tmp_path / "nope.json"))
    assert missing.returncode == 4 and "cannot read" in missing.stderr
    duplicate = opctl(net, "net", "bridge", "create", "cm1")
    assert (
        duplicate.returncode == 8 and "AlreadyExists: bridge cm1 already exists" in duplicate.stderr
    )
    gone = opctl(net, "net", "port", "remove", "cm1", "nothere")
    assert gone.returncode == 7 and "bridge cm1 has no port nothere" in gone.stderr
    for name in ("cm1", "cm2", "cm3"):
        assert opctl(net, "net", "bridge", "delete", name).returncode == 0


def test_net_help_reads_well() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "opctl", "net", "port", "add", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for text in ("--type {system,internal,patch}", "--tag VLAN", "--trunks V1,V2", "--peer PORT"):
        assert text in result.stdout
