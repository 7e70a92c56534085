"""Install: an existing NixOS host becomes a hypervisor (seed 001 "System Installer").

One job, in phases, each a progress step and a "== i/n" line in the log:
copy the source to ``paths.source_dir``, link ``flake_dir/flake.nix`` to it,
check for updates with the smart sync (unless ``skip_update_check``),
keep or generate ``hardware-configuration.nix`` (and log what the machine
is made of), migrate users and settings (services.migrate), then
``nixos-rebuild`` -- test, then switch, unless ``action`` names one -- and
reboot only after a successful switch, when asked.

A phase that writes files runs to its end even when the job is cancelled:
a cancel stops the job *between* phases. A failure or a cancel before the
switch puts back every file this run replaced, newest first, so the host
keeps what it had; the error says which phase failed.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from opdbus.backends import hardware, hostfiles, install_files, process
from opdbus.backends.install_files import Change
from opdbus.config import InstallConfig, PathsConfig
from opdbus.errors import (
    BackendFailed,
    BackendUnavailable,
    Conflict,
    Failed,
    InvalidArgs,
    OpdbusError,
    Timeout,
)
from opdbus.models.install import InstallAction, InstallOptions, MigrateOptions
from opdbus.models.sync import RebuildAction, RebuildOptions, SyncOptions
from opdbus.services.jobs import JobBody, JobContext, JobOutcome
from opdbus.services.migrate import FILE_MODE, Migrator, undo
from opdbus.services.rebuild import RebuildService
from opdbus.services.sync import SyncService

HARDWARE_FILE = "hardware-configuration.nix"

Phase = Callable[[JobContext, list[Change]], Awaitable[None]]


async def whole(work: Awaitable[None]) -> None:
    """Run ``work`` to its end even if the job is cancelled meanwhile; then let the cancel in."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception() from None  # type: ignore[misc]
        raise


def _check_source(source: Path, target: Path, force: bool) -> bool:
    """Blocking: the source is a Hyper-NixOS tree, and replacing ``target`` is allowed.

    True when the source *is* the installed tree (nothing to copy).
    """
    if not source.is_dir():
        hidden = source.parts[1] in ("tmp", "home", "root") or str(source).startswith("/var/tmp")
        hint = (
            " (op-dbusd has a private /tmp and no /home under systemd: put it under /var, "
            "/srv or a mounted medium)"
            if hidden
            else ""
        )
        raise InvalidArgs(f"the source {source} does not exist or is not a directory{hint}")
    if not (source / "flake.nix").is_file():
        raise InvalidArgs(f"the source {source} has no flake.nix: not a Hyper-NixOS tree")
    real, installed = source.resolve(), target.resolve()
    if real != installed and installed in real.parents:
        raise InvalidArgs(f"the source {source} is inside the installed tree {target}")
    if (
        real != installed
        and target.exists()
        and not force
        and not install_files.same_tree(source, target)
    ):
        raise Conflict(
            f"{target} exists and differs from {source}: pass force (opctl install "
            "--force) to replace it; the old tree is kept as a backup"
        )
    return real == installed


def make(
    paths: PathsConfig, config: InstallConfig, sync: SyncService, rebuild: RebuildService
) -> Installer:
    """The installer and its migrator (loaded on the first call: opdbus.daemon)."""
    migrator = Migrator(paths.host_root, paths.configuration_dir, config)
    return Installer(paths, config, migrator, sync, rebuild)


class Installer:
    def __init__(
        self,
        paths: PathsConfig,
        config: InstallConfig,
        migrator: Migrator,
        sync: SyncService,
        rebuild: RebuildService,
    ) -> None:
        self.paths = paths
        self.config = config
        self.migrator = migrator
        self.sync = sync
        self.rebuild = rebuild

    async def prepare(self, opts: InstallOptions) -> None:
        """The checks a caller hears about at once, before a job is made."""
        if opts.source is None:
            raise InvalidArgs("Install: source is required (the Hyper-NixOS tree to install)")
        if opts.reboot and opts.action not in (None, InstallAction.SWITCH):
            raise InvalidArgs(f"Install: reboot needs a switch, not {opts.action}")
        await asyncio.to_thread(_check_source, Path(opts.source), self.paths.source_dir, opts.force)

    def actions(self, opts: InstallOptions) -> list[RebuildAction]:
        if opts.action is None:
            return [RebuildAction.TEST, RebuildAction.SWITCH]
        return [RebuildAction(opts.action.value)]

    def job(self, opts: InstallOptions, caller_uid: int) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            return await self.run(ctx, opts, caller_uid)

        return run

    async def run(self, ctx: JobContext, opts: InstallOptions, caller_uid: int) -> JobOutcome:
        assert opts.source is not None
        source = Path(opts.source)
        hostname = opts.hostname or await asyncio.to_thread(self._hostname)
        output: dict[str, Any] = {"hostname": hostname, "rebuild": []}
        switched = False

        async def copy(ctx: JobContext, journal: list[Change]) -> None:
            await whole(self._copy(ctx, source, opts.force, journal))

        async def link(ctx: JobContext, journal: list[Change]) -> None:
            await whole(self._link(ctx, journal))

        async def update(ctx: JobContext, journal: list[Change]) -> None:
            output["sync"] = await self._update_check(ctx)

        async def detect(ctx: JobContext, journal: list[Change]) -> None:
            await whole(self._hardware(ctx, journal))

        async def migrate(ctx: JobContext, journal: list[Change]) -> None:
            migrate_opts = MigrateOptions(
                users=opts.users, invoking_uid=opts.invoking_uid, hostname=hostname
            )

            async def work() -> None:
                output["migration"] = await self.migrator.run(
                    ctx, migrate_opts, caller_uid, journal
                )

            await whole(work())

        def rebuild_phase(action: RebuildAction) -> Phase:
            async def phase(ctx: JobContext, journal: list[Change]) -> None:
                nonlocal switched
                rebuild_opts = RebuildOptions(host=hostname, fast=opts.fast)
                done = await self.rebuild.run(ctx, action, rebuild_opts)
                output["rebuild"].append({"action": action.value, **done})
                switched = switched or action is RebuildAction.SWITCH

            return phase

        phases: list[tuple[str, Phase]] = [
            (f"copy {source} to {self.paths.source_dir}", copy),
            (f"link {self.paths.flake_dir / 'flake.nix'}", link),
        ]
        if not opts.skip_update_check:
            phases.append(("check for updates (smart sync)", update))
        phases += [("detect the hardware", detect), ("migrate users and settings", migrate)]
        phases += [(f"nixos-rebuild {a.value}", rebuild_phase(a)) for a in self.actions(opts)]
        if opts.reboot:
            phases.append(("reboot", self._reboot))

        journal: list[Change] = []
        total = len(phases)
        for number, (title, phase) in enumerate(phases, 1):
            ctx.log(f"== {number}/{total} {title}")
            ctx.step(number - 1, total)
            try:
                await phase(ctx, journal)
            except BaseException as e:
                if not switched:
                    await asyncio.shield(self._undo(ctx, journal))
                if isinstance(e, OpdbusError):
                    raise type(e)(f"step {number}/{total} ({title}) failed: {e.message}") from None
                if isinstance(e, OSError):
                    where = f"{e.filename}: " if e.filename else ""
                    raise Failed(
                        f"step {number}/{total} ({title}) failed: {where}{e.strerror}"
                    ) from None
                raise
        output["backups"] = [str(c.backup) for c in journal if c.backup is not None]
        last = self.actions(opts)[-1].value
        return JobOutcome(f"installed for host {hostname} (nixos-rebuild {last})", output)

    # -- phases ------------------------------------------------------------------

    def _hostname(self) -> str:
        found = hostfiles.read_settings(self.paths.host_root).hostname
        return found.value if found else socket.gethostname().split(".")[0]

    async def _copy(
        self, ctx: JobContext, source: Path, force: bool, journal: list[Change]
    ) -> None:
        target = self.paths.source_dir
        if await asyncio.to_thread(_check_source, source, target, force):
            ctx.log(f"{source} is the installed tree: nothing to copy")
            return
        if await asyncio.to_thread(install_files.same_tree, source, target):
            ctx.log(f"{target}: unchanged")
            return
        staged = await asyncio.to_thread(install_files.stage_tree, source, target)
        try:
            when = install_files.stamp()
            change = await asyncio.to_thread(install_files.commit_tree, target, staged, when)
        finally:
            await asyncio.to_thread(install_files.discard, staged)
        journal.append(change)
        kept = f"; the old tree kept as {change.backup}" if change.backup else ""
        ctx.log(f"{target}: copied from {source}{kept}")

    async def _link(self, ctx: JobContext, journal: list[Change]) -> None:
        path = self.paths.flake_dir / "flake.nix"
        target = self.paths.source_dir / "flake.nix"
        change = await asyncio.to_thread(install_files.link, path, target, install_files.stamp())
        if change is None:
            ctx.log(f"{path} -> {target}: unchanged")
            return
        journal.append(change)
        kept = f"; the old one kept as {change.backup.name}" if change.backup else ""
        ctx.log(f"{path} -> {target}{kept}")

    async def _update_check(self, ctx: JobContext) -> dict[str, Any] | None:
        try:
            return await self.sync.run(ctx, SyncOptions(target=str(self.paths.source_dir)))
        except (BackendUnavailable, BackendFailed, Timeout) as e:
            # Offline (seed: "Automatically skips if no network detected").
            ctx.log(f"update check failed ({e.message}): installing the source as copied")
            return None

    async def _hardware(self, ctx: JobContext, journal: list[Change]) -> None:
        for line in await asyncio.to_thread(hardware.summary):
            ctx.log(line)
        path = self.paths.flake_dir / HARDWARE_FILE
        if await asyncio.to_thread(path.exists):
            ctx.log(f"{path}: kept (it exists)")
            return
        command = await asyncio.to_thread(shutil.which, self.config.generate_config_command)
        if command is None:
            ctx.log(
                f"{self.config.generate_config_command} not found: {path} not generated "
                "(the rebuild needs one)"
            )
            return
        result = await process.run(
            [command, "--show-hardware-config"],
            timeout=self.config.command_timeout_seconds,
            what="detecting the hardware",
        )
        if result.status != 0:
            raise Failed(f"{command} --show-hardware-config: {result.reason()}")
        await self.migrator.write(
            ctx, {path: result.stdout.encode()}, journal, dry_run=False, mode=FILE_MODE
        )

    async def _reboot(self, ctx: JobContext, journal: list[Change]) -> None:
        argv = self.config.reboot_command
        ctx.log("$ " + " ".join(argv))
        result = await process.run(
            argv, timeout=self.config.command_timeout_seconds, what="rebooting"
        )
        for line in (result.stdout + result.stderr).splitlines():
            ctx.log(line)
        if result.status != 0:
            raise Failed(f"{argv[0]}: {result.reason()} (the switch itself succeeded)")

    async def _undo(self, ctx: JobContext, journal: list[Change]) -> None:
        if not journal:
            return
        ctx.log("putting back what this install replaced:")
        for change in reversed(journal):
            what = f"{change.backup.name} back" if change.backup else "removed (it was new)"
            ctx.log(f"  {change.path}: {what}")
        await asyncio.to_thread(undo, journal)
