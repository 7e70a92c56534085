"""Property tests of the declarative state on real Open vSwitch and LXC (hypothesis).

For random valid documents: applying one twice leaves nothing for the second
time, and the host read back as a document (Query) applies as no change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opdbus.models.job import JobState
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.integration.test_fuzz import Caller
from tests.support import base_config

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("lxc-start") is None, reason="LXC is not installed"),
]

BRIDGES = ["pb0", "pb1", "pb2", "pb3"]
PORTS = ["pp0", "pp1", "pp2", "pp3", "pp4"]
CONTAINERS = [(190, "pc0"), (191, "pc1")]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(BRIDGES), unique=True, max_size=3))
    ports = iter(draw(st.permutations(PORTS)))
    interfaces = []
    for i, name in enumerate(names):
        item: dict[str, Any] = {"name": name, "type": "ovs-bridge", "ports": []}
        for _ in range(draw(st.integers(0, 2))):
            tag = draw(st.none() | st.integers(1, 4094))
            port: dict[str, Any] = {"name": next(ports), "type": "internal"}
            if tag is not None:
                port["tag"] = tag
            item["ports"].append(port)
        ipv4 = draw(st.sampled_from(["none", "off", "static"]))
        if ipv4 == "off":
            item["ipv4"] = {"enabled": False}
        elif ipv4 == "static":
            item["ipv4"] = {"address": [{"ip": f"10.{60 + i}.0.1", "prefix": 24}]}
        interfaces.append(item)
    doc: dict[str, Any] = {"net": {"interfaces": interfaces}}
    chosen = draw(st.lists(st.sampled_from(CONTAINERS), unique=True, max_size=2))
    if chosen:
        doc["lxc"] = {
            "containers": [
                {"id": cid, "name": name, "running": draw(st.booleans()),
                 "autostart": draw(st.booleans())}
                for cid, name in chosen
            ]
        }  # fmt: skip
    return doc


@pytest.fixture
def lxcpath(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "lxc"
    path.mkdir()
    yield path
    for config in path.glob("*/config"):
        for tool in ("lxc-stop", "lxc-destroy"):
            argv = [tool, "-P", str(path), "-n", config.parent.name]
            subprocess.run([*argv, "-k"] if tool == "lxc-stop" else argv, capture_output=True,
                           check=False)  # fmt: skip


@pytest.fixture
def caller(private_bus: PrivateBus) -> Iterator[Caller]:
    c = Caller(private_bus.address)
    try:
        yield c
    finally:
        c.close()


def test_apply_twice_and_apply_query_change_nothing(
    tmp_path: Path,
    make_daemon: Any,
    private_bus: PrivateBus,
    ovs: PrivateOvs,
    lxcpath: Path,
    caller: Caller,
) -> None:
    config = base_config(
        tmp_path,
        ovsdb={"remote": ovs.remote, "datapath_type": "netdev"},
        lxc={"path": str(lxcpath), "stop_timeout_seconds": 1},
    )
    make_daemon(private_bus, config)
    client = caller.client

    def apply(doc: dict[str, Any]) -> Any:
        text = json.dumps(doc)
        record = caller.run(client.run_job(lambda: client.state_apply(text, prune=True)))
        assert record.state is JobState.SUCCEEDED, (doc, record.result)
        return record

    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(documents())
    def property_holds(doc: dict[str, Any]) -> None:
        apply(doc)
        again = apply(doc)
        assert again.output["plan"] == [], again.output["plan"]
        assert caller.run(client.state_diff(json.dumps(doc))) == []
        queried = caller.run(client.state_query(["net", "lxc"]))
        assert caller.run(client.state_diff(json.dumps(queried))) == []

    property_holds()
