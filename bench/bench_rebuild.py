"""A rebuild through op-dbusd vs the same command run directly.

The command is tests/fake_nixos_rebuild.py (no NixOS here): 300 lines of
realistic output, 3 ms apart, each stamped with the time it was printed.

- Wall time of the Rebuild job (call to finished) vs running the command
  and reading its output to the end:                         target <= 1.05x
- Line-to-signal latency (printed -> Job1.Log received), p99:  target <= 50 ms
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

from common import REPO, environment, median, report, start_opdbusd
from opctl.client import Client
from opdbus import names
from opdbus.models.job import JobState, LogLine

FAKE = REPO / "tests" / "fake_nixos_rebuild.py"
LINES = 300
ROUNDS = 5
ARGV = [str(FAKE), "build", "--flake", "/etc/nixos#bench", "--impure"]


def direct() -> float:
    started = time.perf_counter()
    with subprocess.Popen(ARGV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        assert process.stdout is not None
        count = sum(1 for _ in process.stdout)
    took = time.perf_counter() - started
    assert process.returncode == 0 and count >= LINES
    return took


async def through_daemon(client: Client, latencies: list[float]) -> float:
    def on_log(line: LogLine) -> None:
        now = time.time()
        if line.text.startswith("@"):
            latencies.append(now - float(line.text[1:].split(" ", 1)[0]))

    async def start() -> str:
        (job,) = await client.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "Rebuild", "sa{sv}", ["build", {}]
        )
        return str(job)

    started = time.perf_counter()
    record = await client.run_job(start, on_log=on_log)
    took = time.perf_counter() - started
    assert record.state is JobState.SUCCEEDED, record.result
    return took


async def measure(address: str) -> None:
    ours: list[float] = []
    theirs: list[float] = []
    latencies: list[float] = []
    async with await Client.connect(address) as client:
        for round_ in range(ROUNDS + 1):
            seen: list[float] = []
            a = await through_daemon(client, seen)
            b = await asyncio.to_thread(direct)
            if round_:
                ours.append(a)
                theirs.append(b)
                latencies += seen
    mine, peer = median(ours), median(theirs)
    report(
        f"rebuild job ({LINES} lines) vs the command run directly",
        mine / peer,
        "<= 1.05x",
        mine / peer <= 1.05,
        f"op-dbusd {mine * 1000:.0f} ms, direct {peer * 1000:.0f} ms",
    )
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    print(
        f"line-to-signal latency: p99 {p99:.1f} ms (target <= 50 ms) "
        f"{'PASS' if p99 <= 50 else 'MISS'}  [p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"{len(latencies)} lines]"
    )


def main() -> None:
    os.environ["FAKE_REBUILD_LINES"] = str(LINES)
    os.environ["FAKE_REBUILD_DELAY"] = "0.003"
    os.environ["FAKE_REBUILD_STAMP"] = "1"
    with environment() as (bus, workdir):
        daemon = start_opdbusd(bus, workdir, mode="agent", rebuild={"command": str(FAKE)})
        try:
            asyncio.run(measure(bus.address))
        finally:
            daemon.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
