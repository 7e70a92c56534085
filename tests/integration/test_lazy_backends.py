"""A backend's library loads only in a mode that runs it (and aiohttp only for a sync).

op-dbusd runs in a child process on the test's private bus; once it is up,
it reports which of the heavy libraries it holds (sys.modules): agent mode
must hold none of libvirt, pyroute2 and aiohttp; full mode libvirt alone,
even with Open vSwitch up and a bridge to watch (the link view is read and
followed with opdbus.backends.rtnl; pyroute2 waits for the first change).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.support import base_config, write_config

pytestmark = pytest.mark.timeout(60)

HEAVY = ("libvirt", "pyroute2", "aiohttp")
CHILD = """
import asyncio, json, sys
from pathlib import Path
from typing import Any
from opdbus.config import load_config
from opdbus.daemon import Daemon

async def main(address, path):
    daemon = Daemon(load_config(Path(path), required=True), bus_address=address,
                    config_path=Path(path))
    await daemon.start()
    try:
        before = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        if len(sys.argv) > 4:  # a bridge to give an address, over the bus: the first change
            busctl = ["busctl", "--address=" + address, "--json=short", "call", "org.opdbus",
                      "/org/opdbus/bridge/" + sys.argv[4], "org.opdbus.Bridge1"]
            done = await asyncio.create_subprocess_exec(
                *busctl, "SetAddresses", "asa{sv}", "1", "10.66.0.1/24", "0")
            assert await done.wait() == 0
            got = await asyncio.create_subprocess_exec(
                *busctl[:3], "get-property", *busctl[4:], "Addresses", stdout=-1)
            out, _ = await got.communicate()
            print(json.dumps([before, json.loads(out)["data"]]))
            return
        print(json.dumps(before))
    finally:
        await daemon.stop()

HEAVY = sys.argv[3].split(",")
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def loaded(tmp: Path, bus: PrivateBus, mode: str, **config: Any) -> set[str]:
    path = write_config(tmp / f"{mode}.json", base_config(tmp / mode, mode=mode, **config))
    return {name.split(".")[0] for name in _child(bus, path)}


def _child(bus: PrivateBus, config: Path, *extra: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, bus.address, str(config), ",".join(HEAVY), *extra],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_agent_mode_loads_no_backend_library(tmp_path: Path, private_bus: PrivateBus) -> None:
    assert loaded(tmp_path, private_bus, "agent") == set()


def test_full_mode_loads_libvirt_and_the_rest_waits_for_first_use(
    tmp_path: Path, private_bus: PrivateBus, ovs: PrivateOvs
) -> None:
    ovs.vsctl("add-br", "lz0", "--", "set", "bridge", "lz0", "datapath_type=netdev")
    network = {"ovsdb": {"remote": ovs.remote, "datapath_type": "netdev"}}
    assert loaded(tmp_path, private_bus, "full", **network) == {"libvirt"}
    # The first change of a link loads pyroute2 (in a thread) and makes the change.
    path = write_config(tmp_path / "change.json", base_config(tmp_path / "change", **network))
    before, addresses = _child(private_bus, path, "lz0")
    assert not any(name.startswith("pyroute2") for name in before)
    assert addresses == ["10.66.0.1/24"]
    assert ovs.vsctl("br-exists", "lz0").returncode == 0
