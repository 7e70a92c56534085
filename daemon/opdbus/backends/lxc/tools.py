"""LXC through its own tools (lxc-create, lxc-start, lxc-info, ...) as asyncio subprocesses.

Why the tools and not liblxc's Python binding in a thread: every call here
has a bound we can enforce (a subprocess can be killed; a liblxc call stuck
in C cannot be cancelled, and ``lxc-stop`` without ``-k`` waits its whole
timeout on a busybox guest), ``lxc-monitor`` already streams every state
change for an lxcpath whoever caused it, and there is no C extension to
build. The price, a fork per verb, is ~2 ms against a container start.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from opdbus.backends.process import Result, run
from opdbus.errors import BackendFailed

TOOLS = ("lxc-create", "lxc-start", "lxc-stop", "lxc-info", "lxc-attach", "lxc-destroy")


_SIZE = re.compile(r"([\d.]+)\s*([KMGT]?i?B|bytes)")
_UNITS = {"bytes": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


@dataclass(frozen=True)
class Info:
    state: str  # LXC's word, upper case: RUNNING, STOPPED, FROZEN...
    pid: int
    ipv4: tuple[str, ...]
    cpu_time_ns: int
    memory_used: int


def parse_info(text: str) -> Info:
    """``lxc-info`` output (all its ``Key: value`` lines) -> Info."""
    state, pid, ips, cpu, memory = "STOPPED", 0, [], 0, 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key == "State":
            state = value
        elif key == "PID":
            pid = int(value)
        elif key == "IP" and ":" not in value:
            ips.append(value)
        elif key == "CPU use":
            cpu = int(float(value.split()[0]) * 1e9)
        elif key == "Memory use":
            match = _SIZE.match(value)
            if match:
                memory = int(float(match.group(1)) * _UNITS.get(match.group(2), 1))
    return Info(state, pid, tuple(ips), cpu, memory)


def _log_errors(logfile: Path, keep: int = 3) -> str:
    """The last few ERROR lines of an LXC log, without their timestamps and source places."""
    try:
        lines = logfile.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    messages = [line.rsplit(" - ", 1)[-1].strip() for line in lines if " ERROR " in line]
    return "; ".join(messages[-keep:])


class Lxc:
    """The tools bound to one lxcpath; ``env`` carries OVS_RUNDIR for OVS bridges."""

    def __init__(self, path: Path, *, env: dict[str, str] | None = None) -> None:
        self.path = path
        self.env = env

    def _argv(self, tool: str, name: str, *args: str) -> list[str]:
        return [tool, "-P", str(self.path), "-n", name, *args]

    async def _ok(self, what: str, timeout: float, tool: str, name: str, *args: str) -> Result:
        result = await run(self._argv(tool, name, *args), timeout=timeout, env=self.env, what=what)
        if result.status != 0:
            raise BackendFailed(f"{what}: {result.reason()}")
        return result

    def names(self) -> list[str]:
        """Containers under the lxcpath (a directory with a config), without a subprocess."""
        try:
            entries = list(self.path.iterdir())
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if (e / "config").is_file())

    def config_path(self, name: str) -> Path:
        return self.path / name / "config"

    async def info(self, name: str) -> Info:
        result = await run(
            self._argv("lxc-info", name), timeout=10, env=self.env, what=f"reading {name}"
        )
        if result.status != 0:
            return Info("STOPPED", 0, (), 0, 0)  # gone meanwhile, or never started
        return parse_info(result.stdout)

    async def create(self, name: str, template: str, template_args: list[str]) -> None:
        args = ["-t", template]
        if template_args:
            args += ["--", *template_args]
        await self._ok(f"creating {name}", 300, "lxc-create", name, *args)

    async def start(self, name: str) -> None:
        # lxc-start's own message only points at its log: keep one and quote it.
        logfile = self.path / name / "start.log"
        await asyncio.to_thread(logfile.unlink, missing_ok=True)
        args = ["-d", "--logfile", str(logfile), "--logpriority", "ERROR"]
        result = await run(
            self._argv("lxc-start", name, *args), timeout=30, env=self.env, what=f"starting {name}"
        )
        if result.status != 0:
            errors = await asyncio.to_thread(_log_errors, logfile)
            raise BackendFailed(f"starting {name}: {errors or result.reason()}")

    async def stop(self, name: str, *, timeout: float, kill: bool) -> None:
        # -t bounds the clean halt; our own bound leaves lxc-stop room to kill after it.
        args = ["-k"] if kill else ["-t", str(max(int(timeout), 1))]
        await self._ok(f"stopping {name}", timeout + 15, "lxc-stop", name, *args)

    async def freeze(self, name: str) -> None:
        await self._ok(f"freezing {name}", 15, "lxc-freeze", name)

    async def unfreeze(self, name: str) -> None:
        await self._ok(f"unfreezing {name}", 15, "lxc-unfreeze", name)

    async def destroy(self, name: str) -> None:
        await self._ok(f"deleting {name}", 60, "lxc-destroy", name)

    async def attach(self, name: str, argv: list[str], *, timeout: float) -> Result:
        """Run argv in the container, never through a shell; its status, stdout, stderr."""
        return await run(
            self._argv("lxc-attach", name, "--clear-env", "--", *argv),
            timeout=timeout,
            env=self.env,
            what=f"running {argv[0]} in {name}",
        )
