"""nixos-rebuild as a job: its output streamed line by line into the job log.

The command runs in its own process group (backends.nix), so a cancel stops
all of it, nix's builders included. Its exit status decides the job's
result. The whole output is kept in ``<state>/rebuild/job-<id>.log`` (the
newest few such logs are kept).
"""

from __future__ import annotations

import socket
from pathlib import Path

from opdbus.backends import nix
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
# The seed's --fast ("Parallel downloads: 25 connections, maximum CPU
# parallelism"); without it nix keeps its own defaults.
FAST = [
    "--option", "http-connections", "25",
    "--option", "max-jobs", "auto",
    "--option", "cores", "0",
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
    if opts.fast:
        argv += FAST
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
        outcome = await nix.run(
            argv, log_file=log_file, on_line=ctx.log, grace=self.config.kill_grace_seconds
        )
        if outcome.status != 0:
            last = next((line for line in reversed(outcome.last) if line.strip()), "no output")
            raise Failed(
                f"nixos-rebuild {action.value} exited with status {outcome.status}: {last}"
            )
        return {"command": " ".join(argv), "log": str(log_file), "lines": outcome.lines}
