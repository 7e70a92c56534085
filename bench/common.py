"""What the benchmarks share: a private bus, op-dbusd and the echo peer as processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from opdbus.sandbox import PrivateBus, start_private_bus, user_grant  # noqa: E402
from tests.support import base_config, private_network_namespace  # noqa: E402


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    seconds_to_ready: float

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_ready(argv: list[str], workdir: Path, name: str) -> Started:
    """Exec a process and time it until it sends READY=1 (after owning its name)."""
    notify_path = workdir / f"{name}.notify"
    with contextlib.suppress(FileNotFoundError):
        notify_path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"{name}.log", "ab"),  # noqa: SIM115
        )
        while b"READY=1" not in notify.recv(4096):
            pass
        return Started(process, time.perf_counter() - started)


@contextlib.contextmanager
def environment() -> Iterator[tuple[PrivateBus, Path]]:
    with tempfile.TemporaryDirectory(prefix="opdbus-bench-") as tmp:
        workdir = Path(tmp)
        echo = user_grant("root", "org.opdbus.BenchEcho")
        bus = start_private_bus(workdir / "bus", policy_files={"bench.conf": echo})
        try:
            yield bus, workdir
        finally:
            bus.stop()


def start_opdbusd(
    bus: PrivateBus, workdir: Path, name: str = "opdbusd", **overrides: Any
) -> Started:
    config = workdir / f"{name}.json"
    config.write_text(json.dumps(base_config(workdir / name, **overrides)))
    return start_ready(
        [sys.executable, "-m", "opdbus", "--bus", bus.address, "--config", str(config)],
        workdir,
        name,
    )


def start_echo(bus: PrivateBus, workdir: Path, name: str = "echo") -> Started:
    argv = [
        sys.executable,
        str(HERE / "echo_service.py"),
        bus.address,
        str(workdir / f"{name}.log"),
    ]
    return start_ready(argv, workdir, name)


def isolated() -> None:
    """Benchmarks that make bridges run in a network namespace of their own."""
    if not private_network_namespace():
        raise SystemExit("this benchmark needs root (it runs Open vSwitch in its own namespace)")


def report(name: str, ratio: float, target: str, ok: bool, detail: str, unit: str = "x") -> None:
    """One result line; ``unit`` other than "x" prints an absolute value ("ms")."""
    if unit == "x":
        shown = f"ratio {ratio:.2f}x"
    else:
        shown = f"{ratio:.1f} {unit}" if unit == "ms" else f"{ratio:.0f} {unit}"
    print(f"{name}: {shown} (target {target}) {'PASS' if ok else 'MISS'}  [{detail}]")


def median(values: list[float]) -> float:
    return statistics.median(values)
