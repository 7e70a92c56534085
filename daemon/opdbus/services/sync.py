"""Smart sync as a job: download only what changed upstream, stage it, put it in place.

1. Resolve the ref to a commit; read its tree (refusing one with paths that
   would leave the target); compare with the local files by blob SHA-1.
2. Download what differs, concurrently with a bound, into a staging
   directory beside the target (the same file system), verifying each file
   against its SHA-1. Nothing in the target is touched until every file is in.
3. Move each file into place with rename() (a reader sees the old file or the
   new one, never half), then delete what upstream removed.

``force_full``, or a tree the API cannot list, takes the full path instead:
the commit's tarball, unpacked with the same safety checks into a staging
directory and swapped with the target in one renameat2(RENAME_EXCHANGE).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from opdbus.backends import sync_tree
from opdbus.backends.githost import GitHost, RateLimited, read_token
from opdbus.backends.snapshots import copy_tree as snapshots_copy
from opdbus.backends.sync_tree import (
    MODE_LINK,
    Plan,
    Remote,
    StatCache,
    blob_sha,
    check_link_target,
    plan,
    safe_tree,
)
from opdbus.config import SyncConfig
from opdbus.errors import BackendFailed, InvalidArgs, NotFound
from opdbus.models.sync import SyncOptions
from opdbus.services.jobs import JobBody, JobContext, JobOutcome
from opdbus.services.snapshots import SnapshotCache


class SyncService:
    def __init__(
        self,
        config: SyncConfig,
        state_dir: Path,
        default_target: Path,
        config_dir: Path,
        snapshots: SnapshotCache | None = None,
    ) -> None:
        self.config = config
        self.snapshots = snapshots
        self.dir = state_dir / "sync"
        self.default_target = default_target
        # $GITHUB_TOKEN, else sync.token_file, else github-token beside the config file.
        self.token_file = config.token_file or config_dir / "github-token"

    async def start(self) -> None:
        """At start no sync runs: what a killed one staged beside the default target goes."""
        await asyncio.to_thread(sync_tree.remove_stale_staging, self.default_target)

    def job(self, opts: SyncOptions) -> JobBody:
        if opts.rollback:
            return self._rollback_job(opts)

        async def run(ctx: JobContext) -> JobOutcome:
            output = await self.run(ctx, opts)
            return JobOutcome(_summary(output, opts), output)

        return run

    async def run(self, ctx: JobContext, opts: SyncOptions) -> dict[str, Any]:
        repo = opts.repo or self.config.repo
        target = Path(opts.target) if opts.target else self.default_target
        # One sync at a time (the job holds the sync target): a staging
        # directory beside the target now is one a killed sync left behind.
        for stale in await asyncio.to_thread(sync_tree.remove_stale_staging, target):
            ctx.log(f"removed {stale}, left by a sync that was killed")
        token = await asyncio.to_thread(read_token, self.token_file, dict(os.environ))
        etags = await asyncio.to_thread(sync_tree.load_json, self.dir / "etags.json")
        host = GitHost(
            self.config.api_url,
            self.config.raw_url,
            token=token,
            timeout=self.config.timeout_seconds,
            retries=self.config.retries,
            etags={k: (v[0], v[1]) for k, v in etags.items()},
            on_retry=ctx.log,
        )
        async with host:
            commit = await host.resolve(repo, opts.ref)
            ctx.log(f"{repo} {opts.ref} is {commit[:12]}")
            output: dict[str, Any] = {"repo": repo, "ref": opts.ref, "commit": commit}
            if opts.force_full:
                output |= await self._full(ctx, host, repo, commit, target, opts)
            else:
                try:
                    entries = await host.tree(repo, commit)
                except BackendFailed as e:
                    if isinstance(e, RateLimited):
                        raise
                    ctx.log(f"cannot list the tree ({e.message}): full download instead")
                    output |= await self._full(ctx, host, repo, commit, target, opts)
                else:
                    remote = safe_tree(entries, commit)
                    output |= await self._incremental(ctx, host, repo, commit, target, remote, opts)
            output |= {"requests": host.requests, "not_modified": host.not_modified}
            output["bytes"] = host.bytes
        # Only what this run used: an old commit's tree is not asked for again.
        keep = {url: host.etags[url] for url in host.used if url in host.etags}
        await asyncio.to_thread(sync_tree.save_json, self.dir / "etags.json", keep)
        return output

    # -- incremental ---------------------------------------------------------------

    async def _incremental(
        self,
        ctx: JobContext,
        host: GitHost,
        repo: str,
        commit: str,
        target: Path,
        remote: dict[str, Remote],
        opts: SyncOptions,
    ) -> dict[str, Any]:
        cache = StatCache(self.dir / "statcache.json")
        await asyncio.to_thread(cache.load)
        todo = await asyncio.to_thread(plan, target, remote, cache)
        ctx.log(
            f"compared {todo.compared} files ({todo.hashed} read, the rest known unchanged): "
            f"{len(todo.fetch)} to download, {len(todo.remove)} to delete"
        )
        for rel in todo.fetch:
            ctx.log(f"  changed: {rel}")
        for rel in todo.remove:
            ctx.log(f"  deleted upstream: {rel}")
        result = {"mode": "incremental", "compared": todo.compared, "hashed": todo.hashed}
        result |= {"changed": todo.fetch, "removed": todo.remove}
        if opts.check_only or not (todo.fetch or todo.remove):
            await asyncio.to_thread(cache.save)
            return result
        staging = await asyncio.to_thread(sync_tree.staging_dir, target)
        try:
            await self._download(ctx, host, repo, commit, todo, staging, opts)
            if opts.dry_run:
                ctx.log("dry run: every file downloaded and verified; nothing installed")
                return result
            await self._keep(ctx, target, commit)
            await asyncio.to_thread(sync_tree.install, target, staging, todo)
            await asyncio.to_thread(sync_tree.refresh_cache, cache, target, todo)
            await asyncio.to_thread(cache.save)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return result

    async def _download(
        self,
        ctx: JobContext,
        host: GitHost,
        repo: str,
        commit: str,
        todo: Plan,
        staging: Path,
        opts: SyncOptions,
    ) -> None:
        limit = asyncio.Semaphore(self.config.concurrency)
        done = 0

        async def one(rel: str) -> None:
            nonlocal done
            want = todo.remote[rel]
            async with limit:
                data = await host.raw(repo, commit, rel)
            if not opts.skip_validation and blob_sha(data) != want.sha:
                raise BackendFailed(
                    f"{rel}: the downloaded bytes do not match the tree's SHA-1 {want.sha[:12]} "
                    "(corrupted in transit or on the host); nothing was changed"
                )
            if want.mode == MODE_LINK:
                check_link_target(rel, data, commit)
            await asyncio.to_thread(sync_tree.stage, staging, rel, data, want.mode)
            done += 1
            ctx.step(done, len(todo.fetch))

        tasks = [asyncio.ensure_future(one(rel)) for rel in todo.fetch]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # -- full ---------------------------------------------------------------------

    async def _full(
        self,
        ctx: JobContext,
        host: GitHost,
        repo: str,
        commit: str,
        target: Path,
        opts: SyncOptions,
    ) -> dict[str, Any]:
        ctx.log(f"downloading the whole of {commit[:12]}")
        if opts.check_only:
            return {"mode": "full", "changed": [], "removed": []}
        data = await host.tarball(repo, commit)
        ctx.log(f"tarball: {len(data)} bytes")
        staging = await asyncio.to_thread(sync_tree.staging_dir, target)
        try:
            files = await asyncio.to_thread(sync_tree.unpack, data, staging / "tree", commit)
            if opts.dry_run:
                ctx.log(f"dry run: {files} files unpacked and checked; nothing installed")
                return {"mode": "full", "files": files}
            await self._keep(ctx, target, commit)
            await asyncio.to_thread(sync_tree.swap, target, staging / "tree")
            ctx.log(f"{target} replaced ({files} files)")
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        await asyncio.to_thread((self.dir / "statcache.json").unlink, True)
        return {"mode": "full", "files": files}

    # -- the snapshot cache ---------------------------------------------------------

    async def _keep(self, ctx: JobContext, target: Path, before: str) -> None:
        """The tree as it is, into the cache, before it changes (off: nothing)."""
        if self.snapshots is None or not self.snapshots.enabled:
            return
        try:
            kept = await self.snapshots.keep_tree(target, f"before-{before[:12]}")
        except OSError as e:
            ctx.log(f"the tree was not kept in the cache: {e}")
            return
        if kept is not None:
            ctx.log(f"kept the tree as it was: {kept.path}")

    def _rollback_job(self, opts: SyncOptions) -> JobBody:
        if self.snapshots is None:
            raise InvalidArgs("rollback: this daemon has no snapshot cache")
        self.snapshots.require()
        mixed = [k for k in ("dry_run", "check_only", "force_full", "repo") if getattr(opts, k)]
        if mixed:
            raise InvalidArgs(f"rollback cannot be combined with {', '.join(mixed)}")
        cache = self.snapshots
        target = Path(opts.target) if opts.target else self.default_target

        async def run(ctx: JobContext) -> JobOutcome:
            earlier = await cache.list("source")
            if not earlier:
                raise NotFound(
                    "no earlier source tree in the cache: nothing was synced since the cache "
                    "was turned on"
                )
            snap = earlier[-1]
            ctx.log(f"putting back {snap.path} ({snap.bytes} bytes)")
            await self._keep(ctx, target, "rollback")
            staging = await asyncio.to_thread(sync_tree.staging_dir, target)
            try:
                await asyncio.to_thread(snapshots_copy, snap.path, staging / "tree")
                await asyncio.to_thread(sync_tree.swap, target, staging / "tree")
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, True)
            await asyncio.to_thread((self.dir / "statcache.json").unlink, True)
            output = {"mode": "rollback", "snapshot": str(snap.path), "created": snap.created_us}
            return JobOutcome(f"put back the tree kept as {snap.path.name}", output)

        return run


def _summary(output: dict[str, Any], opts: SyncOptions) -> str:
    commit = output["commit"][:12]
    if output.get("mode") == "full":
        verb = "would replace" if opts.dry_run or opts.check_only else "replaced"
        return f"{verb} the tree with {commit} ({output.get('files', 0)} files)"
    changed, removed = len(output["changed"]), len(output["removed"])
    if not changed and not removed:
        return f"up to date at {commit}"
    verb = "would update" if opts.dry_run or opts.check_only else "updated"
    return f"{verb} {changed} files, deleted {removed}, at {commit}"
