"""The declarative state against the native tools and against itself, same run.

1. From empty, 100 bridges each with an internal VLAN port: one State1.Apply vs
   ONE batched `ovs-vsctl` doing the same (both wait for ovs-vswitchd):
   target <= 1.5x.
2. A no-op Apply of 100 bridges + 100 ports + 20 containers (nothing written) vs
   one Query of the same: target <= 1.2x.
3. A change by hand (`ovs-vsctl set port ... tag=N`) -> the Drifted signal: p99
   target <= 100 ms (50 changes).
4. Diff of a 1000-VM document against a host that matches it (libvirt's test
   driver): target <= 50 ms (an absolute bound, from the issue).

Real ovsdb-server/ovs-vswitchd (userspace datapath) and LXC, in a network
namespace of the benchmark's own; the median of alternating rounds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import environment, isolated, median, report, start_opdbusd
from opctl.client import Client
from opdbus import names
from opdbus.models.job import JobState
from opdbus.sandbox_ovs import PrivateOvs, start_private_ovs

COUNT = 100
CONTAINERS = 20
ROUNDS = 5
VMS = 1000


def document(prefix: str, containers: int = 0) -> dict[str, Any]:
    interfaces = [
        {
            "name": f"{prefix}{i}",
            "ports": [{"name": f"{prefix}p{i}", "type": "internal", "tag": 1 + i}],
        }
        for i in range(COUNT)
    ]
    doc: dict[str, Any] = {"net": {"interfaces": interfaces}}
    if containers:
        doc["lxc"] = {"containers": [{"id": 300 + i, "name": f"bc{i}"} for i in range(containers)]}
    return doc


def vsctl_batched(ovs: PrivateOvs, prefix: str) -> float:
    args: list[str] = []
    for i in range(COUNT):
        args += [
            "--", "add-br", f"{prefix}{i}", "--", "set", "bridge", f"{prefix}{i}",
            "datapath_type=netdev", "--", "add-port", f"{prefix}{i}", f"{prefix}p{i}",
            f"tag={1 + i}", "--", "set", "interface", f"{prefix}p{i}", "type=internal",
        ]  # fmt: skip
    started = time.perf_counter()
    ovs.vsctl(*args, timeout=120)
    return time.perf_counter() - started


def clear(ovs: PrivateOvs) -> None:
    bridges = ovs.vsctl("list-br").stdout.split()
    if bridges:
        ovs.vsctl(*[a for b in bridges for a in ("--", "del-br", b)], timeout=120)
    time.sleep(0.5)  # ovs-vswitchd's teardown must not land on the next side


async def apply(client: Client, doc: dict[str, Any], **opts: Any) -> tuple[float, Any]:
    text = json.dumps(doc)
    started = time.perf_counter()
    record = await client.run_job(lambda: client.state_apply(text, **opts))
    took = time.perf_counter() - started
    assert record.state is JobState.SUCCEEDED, record.result
    return took, record


async def from_empty(client: Client, ovs: PrivateOvs) -> None:
    ours: list[float] = []
    theirs: list[float] = []
    for round_ in range(ROUNDS + 1):
        clear(ovs)
        took, _ = await apply(client, document("sb"), prune=True)
        await apply(client, {"net": {"interfaces": []}}, prune=True)  # gone again
        clear(ovs)
        vs = await asyncio.to_thread(vsctl_batched, ovs, "vb")
        if round_:  # the first round warms up
            ours.append(took)
            theirs.append(vs)
    clear(ovs)
    ratio = median(ours) / median(theirs)
    report(
        "state Apply from empty: 100 bridges + 100 VLAN ports vs one batched ovs-vsctl",
        ratio,
        "<= 1.5x",
        ratio <= 1.5,
        f"Apply {median(ours) * 1000:.0f} ms, ovs-vsctl {median(theirs) * 1000:.0f} ms",
    )


async def noop(client: Client) -> None:
    doc = document("nb", CONTAINERS)
    await apply(client, doc)
    applies: list[float] = []
    queries: list[float] = []
    work: list[float] = []  # the job's own time: started -> finished
    for _ in range(ROUNDS * 2):
        took, record = await apply(client, doc)
        assert record.output["plan"] == [], "a no-op apply planned changes"
        work.append((record.finished_at - record.started_at) / 1e6)
        started = time.perf_counter()
        await client.state_query(["net", "lxc"])
        queries.append(time.perf_counter() - started)
        applies.append(took)
    ratio = median(applies) / median(queries)
    report(
        "no-op Apply of 100 bridges + 100 ports + 20 containers vs one Query of the same",
        ratio,
        "<= 1.2x",
        ratio <= 1.2,
        f"Apply (a job, to its end) {median(applies) * 1000:.1f} ms, of which the job's "
        f"own work {median(work) * 1000:.1f} ms; Query {median(queries) * 1000:.1f} ms; "
        "0 writes to the host (plan empty); the rest is the call's audit entry and the job "
        "record made durable before the answer",
    )


async def drift(client: Client, ovs: PrivateOvs) -> None:
    latencies: list[float] = []
    async with client.signals(f"path='{names.STATE_PATH}',member='Drifted'") as queue:
        for i in range(50):
            tag = 2000 + i
            started = time.perf_counter()
            await asyncio.to_thread(ovs.vsctl, "set", "port", "nbp0", f"tag={tag}")
            while True:
                event = await asyncio.wait_for(queue.get(), 5)
                if event.args[1] == "nb0" and str(tag) in event.args[2]:
                    break
            latencies.append(time.perf_counter() - started)
    p99 = statistics.quantiles(latencies, n=100)[98]
    report(
        "a change by hand (ovs-vsctl) -> Drifted signal, p99",
        p99 * 1000,
        "<= 100 ms",
        p99 <= 0.1,
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
        f"over {len(latencies)} changes (the ovs-vsctl process included)",
        unit="ms",
    )


async def diff_1000(address: str) -> None:
    client = await Client.connect(address)
    try:
        domains = [{"profile": {"name": f"bv{i}", "memory_mb": 16}} for i in range(VMS)]
        doc = {"vms": {"domains": domains}}
        await apply(client, doc)
        text = json.dumps(doc)
        times = []
        for _ in range(ROUNDS * 2):
            started = time.perf_counter()
            plan = await client.state_diff(text)
            times.append(time.perf_counter() - started)
            assert plan == [], plan[:3]
    finally:
        await client.close()
    took = median(times)
    report(
        "Diff of a 1000-VM document against a matching host",
        took * 1000,
        "<= 50 ms",
        took <= 0.05,
        f"median {took * 1000:.1f} ms over {len(times)} calls (libvirt's test driver)",
        unit="ms",
    )


async def measure(address: str, ovs: PrivateOvs) -> None:
    client = await Client.connect(address)
    try:
        await from_empty(client, ovs)
        await noop(client)
        await drift(client, ovs)
        await apply(client, {"net": {"interfaces": []}, "lxc": {"containers": []}}, prune=True)
    finally:
        await client.close()


def main() -> None:
    isolated()
    with environment() as (bus, workdir), tempfile.TemporaryDirectory() as lxc:
        ovs = start_private_ovs(workdir / "ovs")
        try:
            daemon = start_opdbusd(
                bus, workdir, mode="full",
                ovsdb={"remote": ovs.remote, "datapath_type": "netdev"},
                lxc={"path": lxc, "stop_timeout_seconds": 1},
            )  # fmt: skip
            try:
                asyncio.run(measure(bus.address, ovs))
            finally:
                daemon.stop()
            for config in Path(lxc).glob("*/config"):
                subprocess.run(["lxc-stop", "-P", lxc, "-n", config.parent.name, "-k"],
                               capture_output=True, check=False)  # fmt: skip
        finally:
            ovs.stop()
        daemon = start_opdbusd(bus, workdir, name="vms", libvirt={"uri": "test:///default"})
        try:
            asyncio.run(diff_1000(bus.address))
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
