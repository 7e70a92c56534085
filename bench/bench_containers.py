"""LXC containers through op-dbusd vs the lxc tools, on the same lxcpath.

- Start one container: Container1.Start until its job has succeeded (the
  container running, as `opctl ct start` waits) vs `lxc-start -d` +
  `lxc-wait -s RUNNING`:                                          target <= 1.2x
- List 100 containers as a user does: `opctl ct list` vs `lxc-ls -f`, each a
  whole process:                                                  target <= 3x
  (GetManagedObjects alone, in an open connection, is printed beside it.)

Alternating rounds after an uncounted warm-up; medians are compared. The 100
containers are one busybox container copied (rootfs and config), as
`lxc-copy` would do without rsync.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import environment, median, report, start_opdbusd
from opctl.client import Client
from opdbus import names
from opdbus.models.job import JobState

COUNT = 100
START_ROUNDS = 9
LIST_ROUNDS = 9


def lxc(path: Path, tool: str, name: str, *args: str) -> None:
    subprocess.run([tool, "-P", str(path), "-n", name, *args], check=True, capture_output=True)


def make_containers(path: Path) -> None:
    lxc(path, "lxc-create", "ct000", "-t", "busybox")
    config = path / "ct000" / "config"
    lines = [line for line in config.read_text().splitlines() if "lxc.net.0" not in line]
    config.write_text("\n".join([*lines, "lxc.net.0.type = empty", ""]))
    for i in range(1, COUNT):
        name = f"ct{i:03d}"
        shutil.copytree(path / "ct000", path / name, symlinks=True)
        text = (path / name / "config").read_text().replace("ct000", name)
        (path / name / "config").write_text(text)


def tools_start(path: Path, name: str) -> float:
    started = time.perf_counter()
    lxc(path, "lxc-start", name, "-d")
    lxc(path, "lxc-wait", name, "-s", "RUNNING", "-t", "10")
    return time.perf_counter() - started


def tools_list(path: Path) -> float:
    started = time.perf_counter()
    out = subprocess.run(
        ["lxc-ls", "-P", str(path), "-f"], check=True, capture_output=True, text=True
    ).stdout
    took = time.perf_counter() - started
    assert len(out.splitlines()) == COUNT + 1
    return took


async def wait_state(client: Client, name: str, state: str) -> None:
    path = names.container_path(name)
    for _ in range(500):
        if (await client.get_all(path, names.CONTAINER_IFACE))["State"] == state:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{name} never became {state} on the bus")


async def daemon_start(client: Client, name: str) -> float:
    # To the job's end: the running state alone arrives while the Start job
    # still holds the container (a stop then was Busy).
    async def start() -> str:
        (job,) = await client.container_call(name, "Start")
        return str(job)

    started = time.perf_counter()
    record = await client.run_job(start)
    took = time.perf_counter() - started
    if record.state is not JobState.SUCCEEDED:
        info = await client.get_all(names.container_path(name), names.CONTAINER_IFACE)
        raise SystemExit(f"Start failed: {record.result}; the bus says {info['State']}")
    return took


def opctl_list(address: str) -> float:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "opctl", "--bus", address, "ct", "list"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    took = time.perf_counter() - started
    assert len(out.splitlines()) == COUNT + 1
    return took


async def daemon_list(client: Client) -> float:
    started = time.perf_counter()
    (objects,) = await client.call(names.ROOT_PATH, names.OBJECT_MANAGER_IFACE, "GetManagedObjects")
    took = time.perf_counter() - started
    assert sum(names.CONTAINER_IFACE in ifaces for ifaces in objects.values()) == COUNT
    return took


async def measure(address: str, path: Path) -> None:
    async with await Client.connect(address) as client:
        for _ in range(300):
            if len(await client.containers()) == COUNT:
                break
            await asyncio.sleep(0.1)
        ours: list[float] = []
        theirs: list[float] = []
        for round_ in range(START_ROUNDS + 1):
            a = await daemon_start(client, "ct000")
            lxc(path, "lxc-stop", "ct000", "-k")
            await wait_state(client, "ct000", "stopped")
            b = await asyncio.to_thread(tools_start, path, "ct000")
            # The daemon must have seen it run before it stops: else "stopped"
            # is the old state, and the next Start finds it still running.
            await wait_state(client, "ct000", "running")
            lxc(path, "lxc-stop", "ct000", "-k")
            await wait_state(client, "ct000", "stopped")
            if round_:
                ours.append(a)
                theirs.append(b)
        mine, peer = median(ours), median(theirs)
        report(
            "start one container via Container1.Start (running on the bus) vs lxc-start + lxc-wait",
            mine / peer,
            "<= 1.2x",
            mine / peer <= 1.2,
            f"op-dbusd {mine * 1000:.0f} ms, lxc tools {peer * 1000:.0f} ms",
        )
        ours, theirs, calls = [], [], []
        for round_ in range(LIST_ROUNDS + 1):
            a = await asyncio.to_thread(opctl_list, address)
            b = await asyncio.to_thread(tools_list, path)
            c = await daemon_list(client)
            if round_:
                ours.append(a)
                theirs.append(b)
                calls.append(c)
        mine, peer = median(ours), median(theirs)
        report(
            f"list {COUNT} containers: opctl ct list vs lxc-ls -f (whole processes)",
            mine / peer,
            "<= 3x",
            mine / peer <= 3,
            f"opctl {mine * 1000:.0f} ms, lxc-ls -f {peer * 1000:.0f} ms; GetManagedObjects "
            f"alone {median(calls) * 1000:.1f} ms",
        )


def main() -> None:
    if shutil.which("lxc-start") is None:
        raise SystemExit("this benchmark needs LXC (make deps installs lxc and busybox-static)")
    with environment() as (bus, workdir):
        path = workdir / "lxc"
        path.mkdir()
        make_containers(path)
        daemon = start_opdbusd(bus, workdir, lxc={"path": str(path)})
        try:
            asyncio.run(measure(bus.address, path))
        finally:
            daemon.stop()
            for config in path.glob("*/config"):
                subprocess.run(
                    ["lxc-stop", "-P", str(path), "-n", config.parent.name, "-k"],
                    capture_output=True,
                    check=False,
                )


if __name__ == "__main__":
    main()
