"""A real systemd, PID 1 of a private PID + mount namespace, with its own system bus.

This host's init is not systemd, so the systemd provider's tests start one
(REAL-COMPONENTS.md, "systemd"). Before systemd runs, the namespace gets
fresh tmpfs on /tmp, /run, /var/tmp and /etc/systemd/system, and
SYSTEMD_UNIT_PATH names only the test's own units: a systemd booted with
the host's paths empties the host's /tmp and starts host services. It is
stopped with SIGKILL to its own pid (PID 1 re-execs on SIGTERM), which ends
every process of its namespace and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOT_TIMEOUT = 20.0
TARGETS = ("sysinit", "basic", "shutdown", "multi-user", "sockets", "timers", "paths", "slices")

INNER = """#!/bin/sh
set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/test-units
cp -a "$1"/. /run/test-units/
if [ -d "$1/bus-policy" ]; then  # the test's own bus policy, instead of the host's
    mount -t tmpfs -o mode=0755 tmpfs /etc/dbus-1/system.d
    cp "$1"/bus-policy/* /etc/dbus-1/system.d/
fi
for d in /tmp /var/tmp /etc/systemd/system; do mount -t tmpfs -o mode=0755 tmpfs "$d"; done
chmod 1777 /tmp /var/tmp
export SYSTEMD_UNIT_PATH=/etc/systemd/system:/run/test-units
exec /lib/systemd/systemd --system --unit=test.target --log-target=console --log-level=warning
"""


def have_systemd() -> bool:
    return Path("/lib/systemd/systemd").exists() and Path("/usr/bin/unshare").exists()


def service(
    description: str,
    exec_start: str = "/bin/sleep infinity",
    install: bool = True,
    kind: str = "simple",
) -> str:
    text = f"[Unit]\nDescription={description}\n\n[Service]\nType={kind}\nExecStart={exec_start}\n"
    if install:
        text += "\n[Install]\nWantedBy=multi-user.target\n"
    return text


@dataclass
class PrivateSystemd:
    workdir: Path
    units: dict[str, str] = field(default_factory=dict)  # name -> unit file text
    files: dict[str, str] = field(default_factory=dict)  # more files, seen at /run/test-units
    bus_policy: list[Path] = field(default_factory=list)  # for its system bus
    pid: int = 0  # systemd's pid as seen from here
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:path=/proc/{self.pid}/root/run/dbus/system_bus_socket"

    def start(self) -> None:
        unit_dir = self.workdir / "units"
        unit_dir.mkdir(parents=True)
        (unit_dir / "dbus.socket").write_text(
            "[Socket]\nListenStream=/run/dbus/system_bus_socket\n"
        )
        (unit_dir / "dbus.service").write_text(
            "[Unit]\nRequires=dbus.socket\n\n[Service]\nExecStart=/usr/bin/dbus-daemon --system "
            "--nofork --nopidfile --address=systemd: --systemd-activation\n"
        )
        for target in TARGETS:
            (unit_dir / f"{target}.target").write_text(f"[Unit]\nDescription={target}\n")
        (unit_dir / "test.target").write_text("[Unit]\nWants=dbus.socket dbus.service\n")
        for name, text in {**self.units, **self.files}.items():
            (unit_dir / name).write_text(text)
        if self.bus_policy:
            (unit_dir / "bus-policy").mkdir()
            for policy in self.bus_policy:
                shutil.copy(policy, unit_dir / "bus-policy" / policy.name)
        inner = self.workdir / "inner.sh"
        inner.write_text(INNER)
        inner.chmod(0o755)
        log = (self.workdir / "systemd.log").open("wb")
        self._proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--propagation",
                "private",
                "--mount-proc",
                str(inner),
                str(unit_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_up()
        except BaseException:
            self.stop()
            raise

    def _wait_up(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"systemd exited: {self.log_tail()}")
            if not self.pid:
                children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self.pid = int(children.read_text().split()[0])
            elif self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"systemd not on its bus within {BOOT_TIMEOUT:g} s: {self.log_tail()}")

    def ready(self) -> bool:
        done = subprocess.run(
            ["busctl", f"--address={self.address}", "call", "org.freedesktop.systemd1",
             "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "GetUnit", "s",
             "dbus.service"],
            check=False,
            capture_output=True,
            timeout=10,
        )  # fmt: skip
        return done.returncode == 0

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "systemd.log").read_text(errors="replace")[-2000:]
        return ""

    def systemctl(self, *args: str) -> str:
        """``systemctl`` inside the namespace (what an admin types by hand)."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "systemctl", "--no-pager", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip()

    def file_state(self, unit: str) -> str:
        return self.systemctl("is-enabled", unit)

    def active_state(self, unit: str) -> str:
        return self.systemctl("is-active", unit)

    def stop(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # the namespace's PID 1: all of it ends
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
            self._proc = None


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(_value(v) for v in value)
    return str(value)


def render_unit(service: dict[str, object], *, paths: dict[str, str]) -> str:
    """A NixOS ``systemd.services.<name>`` (as evaluated) as the unit file NixOS writes.

    ``paths`` maps store paths (the evaluation's fake ones) to real ones here.
    """
    unit = ["[Unit]", f"Description={service['description']}"]
    for key, name in (("requires", "Requires"), ("wants", "Wants"), ("after", "After")):
        if service.get(key):
            unit.append(f"{name}={_value(service[key])}")
    lines = [*unit, "", "[Service]"]
    config = service["serviceConfig"]
    assert isinstance(config, dict)
    for key, value in sorted(config.items()):
        text = _value(value)
        for store, real in paths.items():
            text = text.replace(store, real)
        lines.append(f"{key}={text}")
    if service.get("wantedBy"):
        lines += ["", "[Install]", f"WantedBy={_value(service['wantedBy'])}"]
    return "\n".join(lines) + "\n"
