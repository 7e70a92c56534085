"""Child processes: each in its own process group, ended as a group, never outliving us.

Every program op-dbusd runs (lxc-* tools, lxc-monitor, nixos-rebuild, the
sandbox's dbus-daemon and Open vSwitch) starts in a process group of its own,
so a timeout or a cancel can end it together with whatever it forked (nix's
builders, LXC's helpers). The groups are also registered with a **reaper**: a
tiny process of its own that holds the read end of a pipe from us. When we
go -- even by SIGKILL -- the pipe closes, and the reaper ends every group
still registered (SIGTERM, then SIGKILL). PR_SET_PDEATHSIG alone would reach
only the direct children, never their children.

Containers LXC starts with ``lxc-start -d`` are not in these groups (LXC
daemonizes their monitor): they keep running when op-dbusd stops, as a
hypervisor's guests should.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

from opdbus.errors import Timeout

# Runs with -I -S (no site, nothing imported but builtins' os, signal, time):
# starts in ~10 ms and needs nothing of ours. argv: [-c, MARK, fd].
_REAPER_CODE = r"""
import os, signal, sys, time
fd, groups, buf = int(sys.argv[2]), set(), b""
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    try:
        chunk = os.read(fd, 4096)
    except InterruptedError:
        continue
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
for sig in (signal.SIGTERM, signal.SIGKILL):
    for group in list(groups):
        try:
            os.killpg(group, sig)
        except OSError:
            groups.discard(group)
    deadline = time.monotonic() + 3
    while groups and time.monotonic() < deadline:
        time.sleep(0.05)
        for group in list(groups):
            try:
                os.killpg(group, 0)
            except OSError:
                groups.discard(group)
"""
REAPER_MARK = "op-dbus-reaper"


class Reaper:
    """The process that ends our process groups when we end (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._owner = 0  # the pid that started it (a fork of us must start its own)
        self.process: subprocess.Popen[bytes] | None = None

    def ensure_started(self) -> None:
        """Start the reaper if this process has none (blocking: call it before the loop runs)."""
        with self._lock:
            if self._fd is not None and self._owner == os.getpid():
                return
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _REAPER_CODE, REAPER_MARK, str(read_end)],
                    pass_fds=(read_end,),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    # Its own session: a Ctrl-C on our terminal must not end it first.
                    start_new_session=True,
                )
            except BaseException:
                os.close(write_end)
                raise
            finally:
                os.close(read_end)
            os.set_blocking(write_end, False)
            self._fd, self._owner = write_end, os.getpid()

    def add(self, group: int) -> None:
        self._send(f"+{group}\n")

    def discard(self, group: int) -> None:
        self._send(f"-{group}\n")

    def _send(self, line: str) -> None:
        self.ensure_started()
        assert self._fd is not None
        try:
            os.write(self._fd, line.encode())
        except BlockingIOError:  # 64 KiB of registrations unread: the reaper is stuck
            pass
        except OSError as e:
            if e.errno != errno.EPIPE:
                raise


REAPER = Reaper()


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str

    def reason(self) -> str:
        """The program's own last words, for an error message."""
        lines = [line for line in (self.stderr or self.stdout).splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit status {self.status}"


async def spawn(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    stdout: int = asyncio.subprocess.PIPE,
    stderr: int = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new process group that ends when we do (see ``end``)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=True,
    )
    REAPER.add(process.pid)
    return process


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


async def end(process: asyncio.subprocess.Process, *, grace: float = 0) -> None:
    """End ``process`` and its whole group: SIGTERM, SIGKILL after ``grace`` (0: at once).

    Whatever the group's leader forked goes too (nix's builders); then the
    group is forgotten by the reaper.
    """
    try:
        if process.returncode is None and grace:
            _signal_group(process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), grace)
        # Also when the leader is gone: its children may not be. Its pid is
        # not free for reuse while they are in its group.
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()
    finally:
        REAPER.discard(process.pid)


def forget(process: asyncio.subprocess.Process) -> None:
    """A program that ended by itself: its group is no longer ours to end.

    Not killed: what it daemonized on purpose (``lxc-start -d``'s container
    monitor) must live on.
    """
    REAPER.discard(process.pid)


async def run(
    argv: list[str],
    *,
    timeout: float,
    what: str,
    env: dict[str, str] | None = None,
) -> Result:
    """Run a program to its end within ``timeout`` (then its whole group is killed)."""
    process = await spawn(argv, env=env)
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except BaseException as e:
        await asyncio.shield(end(process))
        if isinstance(e, TimeoutError):
            raise Timeout(f"{what}: {argv[0]} did not finish within {timeout:g} s") from None
        raise
    forget(process)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen in a new process group that ends when we do (blocking: not on the loop)."""
    process = subprocess.Popen(argv, start_new_session=True, **kwargs)
    REAPER.add(process.pid)
    return process


def end_sync(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10) -> None:
    """``end`` for a Popen: ``sig`` to its group, SIGKILL if it has not gone within ``wait``."""
    try:
        if process.poll() is None:
            _signal_group(process.pid, sig)
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        _signal_group(process.pid, signal.SIGKILL)
    finally:
        REAPER.discard(process.pid)
