"""nixos-rebuild as a job: its output streamed line by line into the job log.

The command runs in its own process group, so a cancel stops all of it
(nix's builders included): SIGTERM, then SIGKILL after a grace period. Its
exit status decides the job's result. The whole output is kept in
``<state>/rebuild/<job>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

from opdbus.config import RebuildConfig
from opdbus.errors import Failed
from opdbus.models.sync import RebuildAction, RebuildOptions
from opdbus.services.jobs import JobBody, JobContext, JobOutcome

# The seed's --refresh: re-fetch flake inputs and ignore every cached answer.
REFRESH = [
    "--refresh",
    "--option", "tarball-ttl", "0",
    "--option", "narinfo-cache-positive-ttl", "0",
    "--option", "narinfo-cache-negative-ttl", "0",
]  # fmt: skip


def rebuild_argv(
    command: str, action: RebuildAction, opts: RebuildOptions, flake_dir: Path, host: str
) -> list[str]:
    argv = [command, action.value, "--flake", f"{opts.flake or flake_dir}#{opts.host or host}"]
    if opts.show_trace:
        argv.append("--show-trace")
    if opts.impure:
        argv.append("--impure")
    if opts.refresh:
        argv += REFRESH
    return argv


class RebuildService:
    def __init__(self, config: RebuildConfig, state_dir: Path, flake_dir: Path) -> None:
        self.config = config
        self.log_dir = state_dir / "rebuild"
        self.flake_dir = flake_dir

    def job(self, action: RebuildAction, opts: RebuildOptions) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            output = await self.run(ctx, action, opts)
            return JobOutcome(f"nixos-rebuild {action.value} succeeded", output)

        return run

    async def run(
        self, ctx: JobContext, action: RebuildAction, opts: RebuildOptions
    ) -> dict[str, str | int]:
        host = socket.gethostname().split(".")[0]
        argv = rebuild_argv(self.config.command, action, opts, self.flake_dir, host)
        ctx.log("$ " + " ".join(argv))
        log_file = self.log_dir / f"job-{ctx.job.id}.log"
        lines: list[str] = []
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise Failed(f"cannot run {argv[0]}: {e.strerror}") from None
        try:
            assert process.stdout is not None
            while raw := await process.stdout.readline():
                line = raw.decode(errors="replace").rstrip("\n")
                lines.append(line)
                ctx.log(line)
            status = await process.wait()
        except BaseException:
            await asyncio.shield(self._stop(process))
            raise
        finally:
            await asyncio.to_thread(_write_log, log_file, argv, lines)
        if status != 0:
            last = next((line for line in reversed(lines) if line.strip()), "no output")
            raise Failed(f"nixos-rebuild {action.value} exited with status {status}: {last}")
        return {"command": " ".join(argv), "log": str(log_file), "lines": len(lines)}

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        """The whole process group: SIGTERM, then SIGKILL after the grace period."""
        if process.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, self.config.kill_grace_seconds), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                await asyncio.wait_for(process.wait(), wait)
                break
            except TimeoutError:
                continue
        # Children that left the group's leader behind: the group is gone when its pgid is.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _write_log(path: Path, argv: list[str], lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("$ " + " ".join(argv) + "\n" + "".join(line + "\n" for line in lines))
