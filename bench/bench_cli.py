"""opctl as users feel it: whole commands, process start to exit, against their peers.

The daemon is the sandbox a newcomer starts (`op-dbusd --sandbox`, in a
network namespace of its own): its own bus, libvirt's test driver, its own
ovsdb-server + ovs-vswitchd and lxcpath. Each command runs as a fresh
process, the best of 9 (the machine is noisy; the best is the command's own
cost); the peers are measured in the same run:

- every command vs `python3 -c pass`: target <= 5x (--help <= 3x);
- `opctl status` vs `busctl ... GetAll` of the same properties, `vm list` vs
  `virsh list --all` (libvirt's test driver, as the sandbox uses), `net
  bridge list` vs `ovs-vsctl list-br`, `ct list` vs `lxc-ls -f` on the same
  lxcpath: target <= 3x.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, isolated, report

ROUNDS = 9
OPCTL = [sys.executable, "-m", "opctl"]


def best(argv: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=False)
        times.append(time.perf_counter() - started)
        assert done.returncode == 0, (argv, done.stderr)
    return min(times)


def compare(what: str, took: float, peer: str, other: float, target: float) -> None:
    ratio = took / other
    report(f"{what} vs {peer}", ratio, f"<= {target:g}x", ratio <= target,
           f"{took * 1000:.0f} ms vs {other * 1000:.0f} ms")  # fmt: skip


def start_sandbox(directory: Path) -> subprocess.Popen[bytes]:
    daemon = [sys.executable, "-m", "opdbus", "--sandbox", str(directory)]
    process = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *daemon],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (directory / "bus-address").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the sandbox did not start")
        time.sleep(0.1)
    time.sleep(1.0)  # its backends settle (bridges and containers on the bus)
    return process


def main() -> None:
    isolated()
    with tempfile.TemporaryDirectory(prefix="opdbus-bench-cli-") as tmp:
        sandbox = Path(tmp) / "sandbox"
        daemon = start_sandbox(sandbox)
        try:
            address = (sandbox / "bus-address").read_text().strip()
            env = {**os.environ, "OPDBUS_BUS_ADDRESS": address, "PYTHONPATH": str(REPO)}
            floor = best(["python3", "-c", "pass"], env)
            native = {
                "status": ["busctl", f"--address={address}", "call", "org.opdbus", "/org/opdbus",
                           "org.freedesktop.DBus.Properties", "GetAll", "s", "org.opdbus.Manager1"],
                "vm list": ["virsh", "-c", "test:///default", "list", "--all"],
                "net bridge list": ["ovs-vsctl", f"--db=unix:{sandbox}/ovs/db.sock", "list-br"],
                "ct list": ["lxc-ls", "-f", "-P", str(sandbox / "lxc")],
            }  # fmt: skip
            compare("opctl --help", best([*OPCTL, "--help"], env), "python3 -c pass", floor, 3)
            for command, peer in native.items():
                took = best([*OPCTL, *command.split()], env)
                compare(f"opctl {command}", took, Path(peer[0]).name, best(peer, env), 3)
                compare(f"opctl {command}", took, "python3 -c pass", floor, 5)
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=30)


if __name__ == "__main__":
    main()
