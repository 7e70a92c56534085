"""100 bridges, each with one internal port, through op-dbusd vs ovs-vsctl.

- ApplyBridges (one document, one transaction) vs ONE `ovs-vsctl` with
  100 `-- add-br` (each also adding the port):            target <= 1.5x

(100 separate ovs-vsctl processes are no fair peer -- one transaction
against 100 process starts -- and are no longer measured.) Both wait until
ovs-vswitchd has applied the change (ovs-vsctl does by default; op-dbusd
waits for cur_cfg), run against the same private
ovsdb-server/ovs-vswitchd (userspace datapath) in their own network
namespace, in alternating rounds after one uncounted warm-up round; the
median of each is compared.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from common import environment, isolated, median, report, start_opdbusd
from opctl.client import Client
from opdbus.models.job import JobState
from opdbus.sandbox_ovs import PrivateOvs, start_private_ovs

COUNT = 100
ROUNDS = 5


def clear(ovs: PrivateOvs) -> None:
    bridges = ovs.vsctl("list-br").stdout.split()
    if bridges:
        ovs.vsctl(*[arg for name in bridges for arg in ("--", "del-br", name)])


def bridge_args(i: int) -> list[str]:
    return [
        "--",
        "add-br",
        f"bb{i}",
        "--",
        "set",
        "bridge",
        f"bb{i}",
        "datapath_type=netdev",
        "--",
        "add-port",
        f"bb{i}",
        f"bp{i}",
        "--",
        "set",
        "interface",
        f"bp{i}",
        "type=internal",
    ]


def vsctl_batched(ovs: PrivateOvs) -> float:
    started = time.perf_counter()
    ovs.vsctl(*[arg for i in range(COUNT) for arg in bridge_args(i)])
    return time.perf_counter() - started


async def through_daemon(address: str) -> float:
    document = json.dumps(
        {
            "bridges": [
                {"name": f"bb{i}", "ports": [{"name": f"bp{i}", "type": "internal"}]}
                for i in range(COUNT)
            ]
        }
    )
    async with await Client.connect(address) as client:
        started = time.perf_counter()
        record = await client.run_job(lambda: client.apply_bridges(document))
        took = time.perf_counter() - started
    assert record.state is JobState.SUCCEEDED, record.result
    assert len(record.output["created"]) == COUNT
    return took


def main() -> None:
    isolated()
    with environment() as (bus, workdir):
        ovs = start_private_ovs(workdir / "ovs")
        daemon = start_opdbusd(
            bus, workdir, ovsdb={"remote": ovs.remote, "datapath_type": "netdev"}
        )
        times: dict[str, list[float]] = {"daemon": [], "batched": []}
        try:
            runs: dict[str, Callable[[], float]] = {
                "daemon": lambda: asyncio.run(through_daemon(bus.address)),
                "batched": lambda: vsctl_batched(ovs),
            }
            # One uncounted round first: each side's first run pays one-time
            # costs (ovs-vswitchd's first netdev datapath, lazy imports).
            for round_ in range(ROUNDS + 1):
                for name, run in runs.items():
                    took = run()
                    if round_:
                        times[name].append(took)
                    assert len(ovs.vsctl("list-br").stdout.split()) == COUNT
                    clear(ovs)
                    # ovs-vswitchd goes on tidying up (interface status rows)
                    # after del-br returns: let it finish before the next side.
                    time.sleep(0.5)
        finally:
            daemon.stop()
            ovs.stop()
    ours, batched = median(times["daemon"]), median(times["batched"])
    report(
        f"{COUNT} bridges via ApplyBridges vs one batched ovs-vsctl",
        ours / batched,
        "<= 1.5x",
        ours / batched <= 1.5,
        f"op-dbusd {ours:.3f} s, one ovs-vsctl {batched:.3f} s",
    )


if __name__ == "__main__":
    main()
