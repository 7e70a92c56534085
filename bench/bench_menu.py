"""The console menu with 200 VMs (libvirt's test driver, a node file of 200 domains).

1. Start to the first full VM list: `python -m opctl menu` (headless, 80x24)
   from exec until the list of 200 is loaded and painted, vs `opctl vm list`
   from exec to exit on the same daemon. Target <= 2x.
2. A VM's state changed (VM1.Stop / Start by another client) -> its row
   repainted in a running menu: p99 target <= 200 ms (60 changes). The time
   includes the daemon's job, libvirt's event and the signal.

Medians of alternating rounds.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from pathlib import Path

from common import environment, median, report, start_opdbusd
from opctl.client import Client
from opctl.menu import MenuApp
from opdbus.models.job import JobState

VMS = 200
ROUNDS = 7
CHANGES = 60
HERE = Path(__file__).resolve().parent

# Run as a program: the menu, headless, that quits once its first full list is painted.
PROBE = """
import sys
from opctl.menu import MenuApp

class Probe(MenuApp):
    async def load(self, client):
        await super().load(client)
        if len(self.vms) == int(sys.argv[2]):
            self.call_after_refresh(self.exit)

Probe(sys.argv[1]).run(headless=True, size=(80, 24))
"""


def node_file(path: Path) -> Path:
    domains = "".join(
        f"<domain type='test'><name>vm{i:03d}</name><memory>65536</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
        for i in range(VMS)
    )
    path.write_text(
        "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
        "<active>2</active><mhz>2000</mhz><model>i686</model></cpu><memory>8388608</memory>"
        f"{domains}</node>"
    )
    return path


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-500:]
    return took


class Watched(MenuApp):
    """The menu, stamping when a VM's row has been repainted after a change."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.painted: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    def vm_changed(self, path: str, changed: dict[str, object]) -> None:
        super().vm_changed(path, changed)
        if "State" in changed:
            state = str(changed["State"])
            self.call_after_refresh(lambda: self.painted.put_nowait((state, time.perf_counter())))


async def repaint_latency(address: str) -> list[float]:
    app = Watched(address)
    client = await Client.connect(address)
    out: list[float] = []
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            while not app.ready.is_set():
                await pilot.pause(0.01)
            path = next(p for p, v in app.vms.items() if v["Name"] == "vm000")
            for i in range(CHANGES):
                member, want = ("Stop", "shutoff") if i % 2 == 0 else ("Start", "running")
                started = time.perf_counter()
                record = await client.run_job(functools.partial(client.vm_job, path, member))
                assert record.state is JobState.SUCCEEDED, record.result
                while True:
                    state, at = await asyncio.wait_for(app.painted.get(), 10)
                    if state == want:
                        out.append(at - started)
                        break
    finally:
        await client.close()
    return out


def main() -> None:
    with environment() as (bus, workdir):
        uri = f"test://{node_file(workdir / 'node.xml')}"
        daemon = start_opdbusd(bus, workdir, mode="full", libvirt={"uri": uri})
        try:
            menu = [sys.executable, "-c", PROBE, bus.address, str(VMS)]
            vm_list = [sys.executable, "-m", "opctl", "--bus", bus.address, "vm", "list"]
            timed(menu), timed(vm_list)  # warm the page cache
            menus, lists = [], []
            for _ in range(ROUNDS):
                menus.append(timed(menu))
                lists.append(timed(vm_list))
            a, b = median(menus), median(lists)
            report(
                f"menu start to its first full list of {VMS} VMs vs opctl vm list",
                a / b,
                "<= 2x",
                a / b <= 2,
                f"{a * 1000:.0f} ms vs {b * 1000:.0f} ms",
            )
            lat = sorted(asyncio.run(repaint_latency(bus.address)))
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            report(
                "VM state changed elsewhere -> its row repainted, p99",
                p99,
                "<= 200 ms",
                p99 <= 200,
                f"p50 {median(lat) * 1000:.1f} ms over {len(lat)} (Stop/Start job included)",
                unit="ms",
            )
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
