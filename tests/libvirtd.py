"""A private libvirtd (+ virtlogd) started by the tests themselves; no systemd here.

libvirtd gets its own config, socket directory and pid file; the QEMU driver
still keeps its state in the system paths (/etc/libvirt/qemu, /run/libvirt),
so every domain a test makes is named with TEST_PREFIX and removed at the
end. The first start probes QEMU (~8 s, cached in /var/cache/libvirt); later
starts take a fraction of a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Not "opdbus-...": the leak check watches processes whose command line says "opdbus".
TEST_PREFIX = "vmt-"
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")


def have_libvirtd() -> bool:
    return all(shutil.which(tool) for tool in ("libvirtd", "virtlogd", "virsh", "qemu-img"))


def _pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def _kill(pid: int | None, timeout: float = 10.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


@dataclass
class PrivateLibvirtd:
    workdir: Path  # world-traversable: QEMU runs as libvirt-qemu and opens the pool's files
    started_virtlogd: bool = False
    log_rpc: bool = False  # log every RPC libvirtd receives (benchmarks count them)

    @property
    def socket(self) -> Path:
        return self.workdir / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def pool_dir(self) -> Path:
        return self.workdir / "pool"

    @property
    def iso_dir(self) -> Path:
        return self.workdir / "isos"

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["virsh", "-q", "-c", self.uri, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def start(self) -> None:
        Path("/var/log/libvirt").mkdir(parents=True, exist_ok=True)
        Path("/run/libvirt").mkdir(parents=True, exist_ok=True)
        kvm = Path("/dev/kvm")
        if kvm.exists():
            # Debian ships it root:root 0600; QEMU (libvirt-qemu, group kvm) needs it.
            subprocess.run(["chgrp", "kvm", str(kvm)], check=False)
            kvm.chmod(0o660)
        if not VIRTLOGD_SOCKET.exists():
            subprocess.run(["virtlogd", "-d", "-p", str(self.workdir / "virtlogd.pid")], check=True)
            self.started_virtlogd = True
        conf = self.workdir / "libvirtd.conf"
        # Level 1 for the RPC layer logs one RPC_SERVER_CLIENT_MSG_RX line per message.
        filters = 'log_filters = "1:rpc.netserverclient 3:*"\n' if self.log_rpc else ""
        level = 1 if self.log_rpc else 3
        conf.write_text(
            f'unix_sock_dir = "{self.workdir}"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            f"{filters}"
            f'log_outputs = "{level}:file:{self.workdir}/libvirtd.log"\n'
        )
        self.restart()
        self.cleanup()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists() and self.virsh("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"libvirtd did not come up; see {self.workdir}/libvirtd.log")

    def kill(self) -> None:
        """libvirtd dies (as in a crash); domains keep running."""
        _kill(_pid(self.workdir / "libvirtd.pid"))
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def restart(self, env: dict[str, str] | None = None) -> None:
        """Start libvirtd (again) on the config start() wrote; back once it answers.

        ``env`` replaces its environment: libvirtd runs ``ovs-vsctl`` for OVS
        ports, which finds its database through OVS_RUNDIR.
        """
        subprocess.run(
            [
                "libvirtd",
                "-d",
                "-f",
                str(self.workdir / "libvirtd.conf"),
                "-p",
                str(self.workdir / "libvirtd.pid"),
            ],
            check=True,
            env=env,
        )
        self.wait_ready()

    @contextlib.contextmanager
    def environment(self, **extra: str) -> Iterator[None]:
        """libvirtd runs with these variables set, then as before."""
        self.kill()
        self.restart({**os.environ, **extra})
        try:
            yield
        finally:
            self.cleanup()
            self.kill()
            self.restart()

    def rpc_messages(self) -> int:
        """API calls libvirtd has received so far (log_rpc only).

        Only the remote program's messages (0x20008086): keepalive pings come
        on their own timer, whatever the client does.
        """
        log = (self.workdir / "libvirtd.log").read_text()
        return sum(
            "RPC_SERVER_CLIENT_MSG_RX" in line and " prog=536903814 " in line
            for line in log.splitlines()
        )

    def domains(self) -> list[str]:
        out = self.virsh("list", "--all", "--name").stdout.split()
        return [name for name in out if name.startswith(TEST_PREFIX)]

    def cleanup(self) -> None:
        """Remove every test domain and the test pool (leftovers of an earlier run too)."""
        for name in self.domains():
            self.virsh("destroy", name, check=False)
            self.virsh(
                "undefine", name, "--snapshots-metadata", "--managed-save", "--nvram", check=False
            )
        for pool in self.virsh("pool-list", "--all", "--name").stdout.split():
            if pool.startswith(TEST_PREFIX):
                self.virsh("pool-destroy", pool, check=False)
                self.virsh("pool-undefine", pool, check=False)
        if self.pool_dir.is_dir():
            for leftover in self.pool_dir.iterdir():
                leftover.unlink()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()
        _kill(_pid(self.workdir / "libvirtd.pid"))
        if self.started_virtlogd:
            _kill(_pid(self.workdir / "virtlogd.pid"))
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_private_libvirtd(*, log_rpc: bool = False) -> PrivateLibvirtd:
    workdir = Path(tempfile.mkdtemp(prefix="libvirtd-t-", dir="/var/tmp"))
    workdir.chmod(0o755)
    libvirtd = PrivateLibvirtd(workdir, log_rpc=log_rpc)
    libvirtd.pool_dir.mkdir(mode=0o755)
    libvirtd.iso_dir.mkdir(mode=0o755)
    try:
        libvirtd.start()
    except BaseException:
        libvirtd.stop()
        raise
    return libvirtd
