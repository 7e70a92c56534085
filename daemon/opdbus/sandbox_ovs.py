"""A private Open vSwitch (ovsdb-server + ovs-vswitchd) in one directory.

Both run as our children (no --detach), with OVS_RUNDIR/OVS_LOGDIR/OVS_DBDIR
pointing into the directory, a fresh database made from the installed
schema, and pid files. The sandbox uses it; so do the test fixtures.
Synchronous, like the rest of the sandbox: it runs outside the event loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from opdbus.backends.process import end_sync, popen

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
TOOLS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")


def ovs_installed() -> bool:
    return SCHEMA.is_file() and all(shutil.which(tool) for tool in TOOLS)


def _wait_socket(path: Path, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{path.stem} exited with status {process.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
        time.sleep(0.01)
    raise RuntimeError(f"{path} did not appear within {timeout:g} s")


@dataclass
class PrivateOvs:
    directory: Path
    db: subprocess.Popen[bytes] | None = None
    switch: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.directory / "db.sock"

    @property
    def remote(self) -> str:
        return f"unix:{self.socket}"

    def vsctl(
        self, *args: str, check: bool = True, timeout: int = 10
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ovs-vsctl", f"--db={self.remote}", f"--timeout={timeout}", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout + 20,
        )

    def start_db(self) -> None:
        d = self.directory
        with open(d / "ovsdb-server.err", "ab") as errors:
            self.db = popen(
                [
                    "ovsdb-server",
                    str(d / "conf.db"),
                    f"--remote=punix:{self.socket}",
                    f"--pidfile={d / 'ovsdb-server.pid'}",
                    f"--unixctl={d / 'ovsdb-server.ctl'}",
                    f"--log-file={d / 'ovsdb-server.log'}",
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        _wait_socket(self.socket, self.db)

    def start_switch(self) -> None:
        d = self.directory
        with open(d / "ovs-vswitchd.err", "ab") as errors:
            self.switch = popen(
                [
                    "ovs-vswitchd",
                    self.remote,
                    f"--pidfile={d / 'ovs-vswitchd.pid'}",
                    f"--unixctl={d / 'ovs-vswitchd.ctl'}",
                    f"--log-file={d / 'ovs-vswitchd.log'}",
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        _wait_socket(d / "ovs-vswitchd.ctl", self.switch)

    @staticmethod
    def _end(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if process is not None:
            end_sync(process, sig)

    def kill_db(self) -> None:
        """Stop ovsdb-server hard (the tests' way of pulling it away from the daemon)."""
        self._end(self.db, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def stop(self) -> None:
        """Delete every bridge, then stop both daemons.

        Userspace-datapath bridges are tap devices that outlive ovs-vswitchd:
        left in place they would linger on the host after we are gone.
        """
        if self.db is not None and self.db.poll() is None and self.switch is not None:
            bridges = self.vsctl("list-br", check=False).stdout.split()
            if bridges and self.switch.poll() is None:
                removals = [
                    arg for name in bridges for arg in ("--", "--if-exists", "del-br", name)
                ]
                self.vsctl(*removals, check=False)
        self._end(self.switch)
        self._end(self.db)
        self.switch = self.db = None


def start_private_ovs(directory: Path) -> PrivateOvs:
    """Fresh database, ovsdb-server, `ovs-vsctl --no-wait init`, ovs-vswitchd."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OVS_RUNDIR": str(directory),
        "OVS_LOGDIR": str(directory),
        "OVS_DBDIR": str(directory),
    }
    ovs = PrivateOvs(directory, env=env)
    with contextlib.suppress(FileNotFoundError):
        (directory / "conf.db").unlink()
    made = subprocess.run(
        ["ovsdb-tool", "create", str(directory / "conf.db"), str(SCHEMA)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        raise RuntimeError(f"ovsdb-tool create failed: {made.stderr.strip()}")
    try:
        ovs.start_db()
        ovs.vsctl("--no-wait", "init")
        ovs.start_switch()
    except BaseException:
        ovs.stop()
        raise
    return ovs
