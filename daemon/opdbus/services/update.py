"""The one-command update (seed "Development Update"): validate, smart sync, rebuild."""

from __future__ import annotations

from typing import Any

from opdbus.models.sync import RebuildOptions, SyncOptions, UpdateOptions
from opdbus.models.validation import ValidateOptions
from opdbus.services.jobs import JobBody, JobContext, JobOutcome
from opdbus.services.rebuild import RebuildService
from opdbus.services.sync import SyncService
from opdbus.services.validate import Validator


def update_job(
    validator: Validator, sync: SyncService, rebuild: RebuildService, opts: UpdateOptions
) -> JobBody:
    async def run(ctx: JobContext) -> JobOutcome:
        output: dict[str, Any] = {}
        ctx.log("== 1/3 validate")
        validated = await validator.job(ValidateOptions(quick=True))(ctx)
        output["validate"] = validated.output
        ctx.log("== 2/3 smart sync")
        sync_opts = SyncOptions(
            ref=opts.ref, check_only=opts.check_only, force_full=opts.force_full
        )
        synced = await sync.run(ctx, sync_opts)
        output["sync"] = synced
        changed = bool(synced.get("changed") or synced.get("removed") or synced.get("files"))
        if opts.check_only:
            word = "updates available" if changed else "up to date"
            return JobOutcome(f"check only: {word} at {synced['commit'][:12]}", output)
        if opts.skip_rebuild:
            ctx.log("== 3/3 rebuild skipped")
            return JobOutcome(f"synced to {synced['commit'][:12]}; rebuild skipped", output)
        ctx.log(f"== 3/3 nixos-rebuild {opts.rebuild_action.value}")
        output["rebuild"] = await rebuild.run(ctx, opts.rebuild_action, RebuildOptions())
        return JobOutcome(
            f"updated to {synced['commit'][:12]} and ran nixos-rebuild {opts.rebuild_action.value}",
            output,
        )

    return run
