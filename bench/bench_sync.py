"""Smart sync vs the full tarball path, and the local compare vs git.

1. 5 files changed out of 5000 (incompressible, 2-14 KB each), the stand-in
   Git host throttled to ~100 Mbit/s and ~20 ms per request: requests made
   (target 1 ref + 1 tree + 5 files), bytes (target <= 1/50 of the tarball
   path's), wall time of Sync vs Sync{force_full} (target >= 20x faster).
2. Comparing 10,000 local files (~100 MB) with a tree: the first run (every
   file hashed) vs `git hash-object --stdin-paths` on the same files (target
   <= 1.0x); an unchanged re-run answered by the stat cache vs a plain
   walk + lstat of the same tree (target <= 2x).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import environment, median, report, start_opdbusd
from opctl.client import Client
from opctl.convert import to_variants
from opdbus import names
from opdbus.backends.sync_tree import Remote, StatCache, blob_sha, plan
from opdbus.models.job import JobState
from tests.githost_server import FakeGitHub, Files, ThreadedServer

FILES = 5000
CHANGED = 5
LOCAL_FILES = 10_000
ROUNDS = 3


def random_files(count: int, rng: random.Random) -> Files:
    return {
        f"tree/d{i % 50:02d}/f{i:05d}.bin": ("100644", rng.randbytes(rng.randint(2048, 14336)))
        for i in range(count)
    }


async def sync(client: Client, **options: Any) -> tuple[float, dict[str, Any]]:
    async def start() -> str:
        (job,) = await client.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "Sync", "a{sv}", [to_variants(options)]
        )
        return str(job)

    started = time.perf_counter()
    record = await client.run_job(start)
    took = time.perf_counter() - started
    assert record.state is JobState.SUCCEEDED, record.result
    return took, record.output


async def measure_network(address: str, fake: FakeGitHub, files: Files, rng: random.Random) -> None:
    async with await Client.connect(address) as client:
        await sync(client)  # the first sync: everything (not measured)
        fake.latency, fake.bandwidth = 0.020, 100e6 / 8
        smart: list[float] = []
        full: list[float] = []
        counts: dict[str, int] = {}
        smart_bytes = full_bytes = 0
        for _ in range(ROUNDS):
            for path in rng.sample(sorted(files), CHANGED):
                files[path] = ("100644", rng.randbytes(len(files[path][1])))
            fake.commit(files)
            fake.requests.clear()
            took, output = await sync(client)
            assert len(output["changed"]) == CHANGED
            smart.append(took)
            counts = dict(fake.requests)
            smart_bytes = output["bytes"]
            fake.commit(files)  # a new commit with the same files: the full path does it all
            took, output = await sync(client, force_full=True)
            full.append(took)
            full_bytes = output["bytes"]
    total = sum(counts.values())
    ref, tree, raw = (counts.get(k, 0) for k in ("commit", "tree", "raw"))
    print(
        f"requests for {CHANGED} changed files of {FILES}: {total} "
        f"({ref} ref + {tree} tree + {raw} files; target 1 + 1 + {CHANGED}) "
        f"{'PASS' if total == 2 + CHANGED else 'MISS'}"
    )
    ratio = smart_bytes / full_bytes
    report(
        "bytes, smart sync vs full tarball",
        ratio,
        "<= 0.02x",
        ratio <= 1 / 50,
        f"smart {smart_bytes / 1e6:.2f} MB, full {full_bytes / 1e6:.2f} MB: "
        f"1/{full_bytes / smart_bytes:.0f}",
    )
    speed = median(full) / median(smart)
    report(
        "wall time, full tarball / smart sync (throttled 100 Mbit/s, 20 ms)",
        speed,
        ">= 20x",
        speed >= 20,
        f"smart {median(smart) * 1000:.0f} ms, full {median(full) * 1000:.0f} ms",
    )


def local_compare(rng: random.Random) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        root = Path(tmp) / "src"
        remote: dict[str, Remote] = {}
        for i in range(LOCAL_FILES):
            rel = f"d{i % 100:02d}/s{i % 7}/f{i:05d}.dat"
            data = rng.randbytes(rng.randint(5000, 15000))
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            remote[rel] = Remote(blob_sha(data), "100644", len(data))
        paths = sorted(remote)
        ours: list[float] = []
        git: list[float] = []
        cached: list[float] = []
        walks: list[float] = []
        for _ in range(ROUNDS):
            subprocess.run(["sync"], check=True)
            cache = StatCache(Path(tmp) / "cache.json")
            started = time.perf_counter()
            result = plan(root, remote, cache)
            ours.append(time.perf_counter() - started)
            assert result.fetch == [] and result.hashed == LOCAL_FILES
            started = time.perf_counter()
            out = subprocess.run(
                ["git", "hash-object", "--stdin-paths"],
                input="\n".join(paths),
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            git.append(time.perf_counter() - started)
            assert out[0] == remote[paths[0]].sha
            started = time.perf_counter()
            again = plan(root, remote, cache)
            cached.append(time.perf_counter() - started)
            assert again.hashed == 0
            started = time.perf_counter()
            seen = 0
            for dirpath, _, names_ in os.walk(root):
                for name in names_:
                    os.lstat(os.path.join(dirpath, name))
                    seen += 1
            walks.append(time.perf_counter() - started)
            assert seen == LOCAL_FILES
    megabytes = sum(r.size for r in remote.values()) / 1e6
    first = median(ours) / median(git)
    report(
        f"compare {LOCAL_FILES} files ({megabytes:.0f} MB), first run vs git hash-object",
        first,
        "<= 1.0x",
        first <= 1.0,
        f"op-dbus {median(ours) * 1000:.0f} ms, git {median(git) * 1000:.0f} ms",
    )
    rerun = median(cached) / median(walks)
    report(
        "unchanged re-run with the stat cache vs walk + lstat",
        rerun,
        "<= 2x",
        rerun <= 2,
        f"op-dbus {median(cached) * 1000:.0f} ms, walk {median(walks) * 1000:.0f} ms",
    )


def main() -> None:
    rng = random.Random(6)
    local_compare(rng)
    files = random_files(FILES, rng)
    fake = FakeGitHub()
    fake.commit(files)
    with environment() as (bus, workdir), ThreadedServer(fake) as server:
        config = {
            "repo": fake.repo,
            "api_url": server.url,
            "raw_url": server.url + "/raw/{repo}/{sha}/{path}",
        }
        daemon = start_opdbusd(bus, workdir, mode="agent", sync=config)
        try:
            asyncio.run(measure_network(bus.address, fake, files, rng))
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
