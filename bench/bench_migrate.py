"""Migrating 1 000 users, against getent reading the same accounts into a file, same run.

Ours: MigrateHostSettings through op-dbusd on a private bus, from the call to
the job's end (read etc/passwd, shadow, group and the settings files, render
two Nix files, write them with fsync, keeping the old ones). Each round runs
on a changed account list, so the files are really written. Measured with
the daemon's nix-instantiate --parse check of the files (the default) and
without it (install.parse_command null).

The peer: `sh -c 'getent passwd > F && getent shadow >> F'`, in a mount
namespace of its own where the same passwd/shadow/group are bind-mounted over
/etc (the host's own files are never touched). Target: <= 2x.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from common import environment, median, report, start_opdbusd
from opctl.client import Client
from opctl.convert import to_variants
from opdbus import names
from opdbus.models.job import JobState

USERS = 1000
ROUNDS = 15
# A real SHA-512 crypt hash (made by chpasswd), the same for every user.
HASH = (
    "$6$Y7PXdNO556PelrHv$D.dwAqpRHzBHWMZSmv6PS3dO6QBaLdHvGO8TiJybGlCHG9G2EEOiZnq6WcQvSLKNM8K5"
    "5NAeFXFhc5VlrIBkj1"
)


def make_root(root: Path, users: int) -> None:
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    passwd = ["root:x:0:0:root:/root:/bin/bash", "nobody:x:65534:65534::/nonexistent:/bin/false"]
    shadow = ["root:*:19000:0:99999:7:::", "nobody:*:19000:0:99999:7:::"]
    group = ["root:x:0:", "audio:x:29:" + ",".join(f"u{i}" for i in range(0, users, 3))]
    group += ["sudo:x:27:u0,u1", "users:x:100:", "nogroup:x:65534:"]
    for i in range(users):
        uid = 1000 + i
        passwd.append(f"u{i}:x:{uid}:{uid}:User {i},,,:/home/u{i}:/bin/bash")
        shadow.append(f"u{i}:{HASH}:19000:0:99999:7:::")
        group.append(f"u{i}:x:{uid}:")
    (etc / "passwd").write_text("\n".join(passwd) + "\n")
    (etc / "shadow").write_text("\n".join(shadow) + "\n")
    (etc / "group").write_text("\n".join(group) + "\n")
    (etc / "hostname").write_text("hyper01\n")


# Runs as root inside `unshare --mount`: the bind mounts die with the namespace.
PEER = textwrap.dedent(
    """
    import subprocess, sys, time
    etc, out, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for name in ("passwd", "shadow", "group"):
        subprocess.run(["mount", "--bind", f"{etc}/{name}", f"/etc/{name}"], check=True)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(["sh", "-c", f"getent passwd > {out} && getent shadow >> {out}"], check=True)
        times.append(time.perf_counter() - started)
    lines = open(out).read().count("\\n")
    print(" ".join(map(str, times)), lines)
    """
)


def peer(root: Path, workdir: Path, rounds: int) -> tuple[list[float], int]:
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", PEER,
         str(root / "etc"), str(workdir / "getent.out"), str(rounds)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    *times, lines = done.stdout.split()
    return [float(t) for t in times], int(lines)


async def migrate(client: Client, users: list[str] | None) -> tuple[float, dict[str, Any]]:
    options = to_variants({"users": users})

    async def start() -> str:
        (path,) = await client.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "MigrateHostSettings", "a{sv}", [options]
        )
        return str(path)

    started = time.perf_counter()
    record = await client.run_job(start)
    took = time.perf_counter() - started
    assert record.state is JobState.SUCCEEDED, record.result
    return took, record.output


async def ours(address: str, root: Path) -> list[float]:
    client = await Client.connect(address)
    try:
        await migrate(client, None)  # warm: the first run writes the files
        times = []
        everyone = [f"u{i}" for i in range(USERS)]
        for n in range(ROUNDS):
            # A different account list each round (one user left out), so the
            # users file really changes and is written, old one kept.
            chosen = everyone[:n] + everyone[n + 1 :]
            took, output = await migrate(client, chosen)
            assert "written" in output["files"].values() and len(output["users"]) == USERS - 1
            times.append(took)
        return times
    finally:
        await client.close()


def main() -> None:
    with environment() as (bus, workdir):
        root = workdir / "root"
        make_root(root, USERS)
        results = {}
        for label, parse in (("with the parse check", "nix-instantiate"), ("no parse check", None)):
            name = "opdbusd-parse" if parse else "opdbusd"
            daemon = start_opdbusd(
                bus, workdir, name=name, mode="agent",
                paths={"host_root": str(root)}, install={"parse_command": parse},
            )  # fmt: skip
            try:
                results[label] = median(asyncio.run(ours(bus.address, root)))
            finally:
                daemon.stop()
        times, lines = peer(root, workdir, ROUNDS)
        assert lines == 2 * (USERS + 2), lines  # getent read the bind-mounted accounts
        theirs = median(times)
        for label, took in results.items():
            report(
                f"MigrateHostSettings of {USERS} users ({label}) vs getent passwd+shadow > file",
                took / theirs,
                "<= 2x",
                took / theirs <= 2,
                f"{took * 1000:.1f} ms vs {theirs * 1000:.1f} ms, medians of {ROUNDS}",
            )
        print(json.dumps({k: round(v * 1000, 2) for k, v in results.items()}))


if __name__ == "__main__":
    main()
