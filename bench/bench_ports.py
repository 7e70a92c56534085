"""Adding ports 1..1000 to one bridge, one AddPort call each, through op-dbusd.

Target: the last 100 cost at most 2x the first 100 (no quadratic growth).

Each AddPort returns once the change is applied. ovs-vswitchd's own
reconfiguration gets slower with every port it manages, whoever asks, so
op-dbusd's growth is measured against ovsdb-server with a stand-in applier
that acknowledges at once (bench/instant_applier.py): that ratio is the one
held to the target. The same 1000 adds are then run with the real
ovs-vswitchd, for op-dbusd and for `ovs-vsctl add-port` alike, and printed
as context.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from common import HERE, environment, isolated, report, start_opdbusd
from opctl.client import Client
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import SCHEMA, PrivateOvs, start_private_ovs

PORTS = 1000
WINDOW = 100
ROUNDS = 3


async def through_daemon(address: str) -> list[float]:
    costs = []
    async with await Client.connect(address) as client:
        await client.create_bridge("pb0", {})
        for i in range(PORTS):
            started = time.perf_counter()
            await client.add_port("pb0", f"pp{i}", {"type": "internal"})
            costs.append(time.perf_counter() - started)
        await client.delete_bridge("pb0")
    return costs


def through_vsctl(ovs: PrivateOvs) -> list[float]:
    ovs.vsctl("add-br", "vb0", "--", "set", "bridge", "vb0", "datapath_type=netdev")
    costs = []
    for i in range(PORTS):
        started = time.perf_counter()
        ovs.vsctl("add-port", "vb0", f"vp{i}", "--", "set", "interface", f"vp{i}", "type=internal")
        costs.append(time.perf_counter() - started)
    ovs.vsctl("del-br", "vb0", timeout=120)  # closing 1000 interfaces takes a while
    return costs


def growth(costs: list[float]) -> tuple[float, float, float]:
    first, last = sum(costs[:WINDOW]), sum(costs[-WINDOW:])
    return last / first, first, last


def with_instant_applier(bus_address: str, bus: PrivateBus, workdir: Path) -> list[float]:
    """op-dbusd's own cost: ovsdb-server with a stand-in that acknowledges at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    ovs = start_private_ovs(workdir / "ovs-instant")
    assert ovs.switch is not None
    ovs._end(ovs.switch)  # the real ovs-vswitchd goes; the stand-in acknowledges instead
    ovs.switch = None
    applier = subprocess.Popen(
        [sys.executable, str(HERE / "instant_applier.py"), ovs.remote, str(SCHEMA)]
    )
    daemon = start_opdbusd(
        bus,
        workdir,
        name="opdbusd-instant",
        ovsdb={"remote": ovs.remote, "datapath_type": "netdev"},
    )
    try:
        return asyncio.run(through_daemon(bus_address))
    finally:
        daemon.stop()
        applier.terminate()
        applier.wait()
        ovs.stop()


def main() -> None:
    isolated()
    with environment() as (bus, workdir):
        # Its own cost, three times (the machine is noisy); then once for real.
        alone = [with_instant_applier(bus.address, bus, workdir / f"r{n}") for n in range(ROUNDS)]
        ovs = start_private_ovs(workdir / "ovs")
        daemon = start_opdbusd(
            bus, workdir, ovsdb={"remote": ovs.remote, "datapath_type": "netdev"}
        )
        try:
            ours = asyncio.run(through_daemon(bus.address))
            floor = through_vsctl(ovs)
        finally:
            daemon.stop()
            ovs.stop()
    ratios = sorted(growth(costs)[0] for costs in alone)
    ratio = ratios[len(ratios) // 2]
    per_port = 1000 * sum(sum(costs) for costs in alone) / (PORTS * ROUNDS)
    report(
        f"AddPort x{PORTS}, op-dbusd's own cost: last {WINDOW} vs first {WINDOW}",
        ratio,
        "<= 2x",
        ratio <= 2.0,
        f"median of {ROUNDS} runs ({', '.join(f'{r:.2f}x' for r in ratios)}), "
        f"{per_port:.1f} ms per port",
    )
    ratio, first, last = growth(ours)
    floor_ratio, floor_first, floor_last = growth(floor)
    print(
        f"  with the real ovs-vswitchd: op-dbusd grows {ratio:.2f}x "
        f"({first:.2f} s -> {last:.2f} s), "
        f"ovs-vsctl grows {floor_ratio:.2f}x ({floor_first:.2f} s -> {floor_last:.2f} s); "
        f"per port op-dbusd {1000 * sum(ours) / PORTS:.1f} ms, "
        f"ovs-vsctl {1000 * sum(floor) / PORTS:.1f} ms"
    )


if __name__ == "__main__":
    main()
