"""A backend's library loads only in a mode that runs it (and aiohttp only for a sync).

op-dbusd runs in a child process on the test's private bus; once it is up,
it reports which of the heavy libraries it holds (sys.modules): agent mode
must hold none of libvirt, pyroute2 and aiohttp; full mode the first two.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from opdbus.sandbox import PrivateBus
from tests.support import base_config, write_config

pytestmark = pytest.mark.timeout(60)

HEAVY = ("libvirt", "pyroute2", "aiohttp")
CHILD = """
import asyncio, json, sys
from pathlib import Path
from opdbus.config import load_config
from opdbus.daemon import Daemon

async def main(address, path):
    daemon = Daemon(load_config(Path(path), required=True), bus_address=address,
                    config_path=Path(path))
    await daemon.start()
    try:
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
    finally:
        await daemon.stop()

HEAVY = sys.argv[3].split(",")
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def loaded(tmp: Path, bus: PrivateBus, mode: str) -> set[str]:
    config = write_config(tmp / f"{mode}.json", base_config(tmp / mode, mode=mode))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, bus.address, str(config), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout.strip().splitlines()[-1])}


def test_agent_mode_loads_no_backend_library(tmp_path: Path, private_bus: PrivateBus) -> None:
    assert loaded(tmp_path, private_bus, "agent") == set()


def test_full_mode_loads_its_backends_and_aiohttp_waits_for_a_sync(
    tmp_path: Path, private_bus: PrivateBus
) -> None:
    assert loaded(tmp_path, private_bus, "full") == {"libvirt", "pyroute2"}
