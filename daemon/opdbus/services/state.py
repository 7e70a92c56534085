"""The declarative state: make the host what a document says, keep it so, undo it.

Apply is one job (services.state_apply): validate, diff, checkpoint, apply in
order, verify -- on any failure the checkpoint is restored. With a confirm
timeout the checkpoint stays pending and is restored when it runs out unless
Confirm() comes first; deletions (prune) wait for the confirm too. A pending
checkpoint survives a restart (it is in the state dir), and so does its
deadline: one that ran out meanwhile is restored at start.

Drift: the providers' event-fed caches say when a resource changed; the
document last applied is compared again (never polling) and every difference
is a Drifted signal. With drift_policy "enforce" the document is applied
again, as an audited job, after a short quiet time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from opdbus.backends.state_files import StateFiles, read_text
from opdbus.config import Mode, StateConfig
from opdbus.errors import (
    BackendUnavailable,
    Busy,
    Conflict,
    Failed,
    InvalidArgs,
    NotSupported,
    OpdbusError,
)
from opdbus.models.state import SECTIONS, Change, StateDocument, parse_state, plan_json
from opdbus.names import STATE_TARGET
from opdbus.services.jobs import Job, JobContext, JobFailed, JobManager, JobOutcome
from opdbus.services.providers.base import Provider
from opdbus.services.snapshots import SnapshotCache
from opdbus.services.state_apply import (
    Plan,
    apply_deletions,
    apply_forward,
    checkpoint,
    describe,
    make_plan,
    merge_checkpoint,
    merge_plan,
    plan_after_units,
    restore,
    starts_units,
    verify,
)
from opdbus.services.workers import Workers

log = logging.getLogger(__name__)

DRIFT_QUIET = 0.02  # seconds: changes arriving together are compared once


class StateObserver(Protocol):
    def state_changed(self) -> None: ...
    def drifted(self, provider: str, rid: str, what: str) -> None: ...
    def applied(self, digest: str, job: str) -> None: ...


@dataclass(frozen=True)
class ApplyOptions:
    dry_run: bool = False
    prune: bool = False
    confirm_timeout: int = 0  # seconds; 0: commit at once
    providers: tuple[str, ...] = ()  # () = every provider the document names
    if_digest: str = ""


class StateService:
    def __init__(
        self,
        config: StateConfig,
        mode: Mode,
        providers: Sequence[Provider],
        modes: Mapping[str, frozenset[Mode]],
        jobs: JobManager,
        checks: Workers,
        files: StateFiles,
        snapshots: SnapshotCache | None = None,
    ) -> None:
        self.config = config
        self.mode = mode
        self.modes = modes  # the modes each provider is part of (opdbus.kinds)
        order = list(SECTIONS)
        self.providers = sorted(providers, key=lambda p: order.index(p.name))
        self.jobs = jobs
        self.checks = checks
        self.files = files
        self.snapshots = snapshots
        self.observers: list[StateObserver] = []
        self.desired: StateDocument | None = None
        self.digest = ""
        self.drift: list[tuple[str, str, str]] = []
        self.pending: dict[str, Any] | None = None  # the checkpoint awaiting Confirm()
        self._applying = 0  # apply jobs running: drift is not judged meanwhile
        self._recheck: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        saved = await asyncio.to_thread(self.files.read_desired)
        if saved is not None:
            with contextlib.suppress(OpdbusError, KeyError, ValueError):
                self.desired = StateDocument.model_validate(saved["document"])
                self.digest = self.desired.digest()
        pending = await asyncio.to_thread(self.files.read_checkpoint)
        if pending is not None:
            self._resume(pending)
        for provider in self.providers:
            provider.subscribe(self._changed)
        if self.desired is not None:
            # What the last applied document names is watched for drift from the start.
            sections = self.desired.sections()
            for provider in self.providers:
                if provider.name in sections:
                    try:
                        await provider.prepare(sections[provider.name])
                    except OpdbusError as e:
                        log.warning("state: %s not watched yet: %s", provider.name, e.message)
        await self.reload(uid=0, missing_ok=True)
        self._changed()

    async def stop(self) -> None:
        for handle in (self._recheck, self._expiry):
            if handle is not None:
                handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resume(self, saved: dict[str, Any]) -> None:
        """A checkpoint found at start: an apply the daemon died in, or one awaiting Confirm."""
        if saved.get("phase") == "pending" and saved.get("expires_at", 0) > _now_us():
            self.pending = saved
            self._arm_expiry()
            log.warning(
                "state: checkpoint %s is pending; it is restored at its deadline unless confirmed",
                saved["id"],
            )
            return
        why = (
            "its confirm time ran out"
            if saved.get("phase") == "pending"
            else ("the daemon stopped in the middle of the apply")
        )
        log.warning("state: restoring checkpoint %s: %s", saved.get("id"), why)
        self.pending = saved
        self._spawn(self._rollback_job(f"Rollback ({why})", uid=0), "state-restore")

    # -- reading -----------------------------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        return not self.drift

    @property
    def pending_id(self) -> str:
        return str(self.pending["id"]) if self.pending else ""

    @property
    def pending_expires(self) -> int:
        return int(self.pending.get("expires_at", 0)) if self.pending else 0

    async def parse(self, text: str) -> StateDocument:
        return await self.checks.run(parse_state, text, "state document")

    def _provider(self, name: str, *, later: bool = False) -> Provider:
        """A provider by name: known, in this mode, present and reachable -- or the named error.

        ``later``: its backend may come up during the apply (the document starts
        systemd units first), so a backend that is down now is not an error yet.
        """
        if name not in SECTIONS:
            raise InvalidArgs(f"unknown provider {name!r} (known: {', '.join(SECTIONS)})")
        if name not in self.modes:
            raise NotSupported(f"this op-dbusd has no {name} provider yet")
        if self.mode not in self.modes[name]:
            raise NotSupported(f"the {name} provider is off in {self.mode.value} mode")
        provider = next((p for p in self.providers if p.name == name), None)
        if provider is None:
            raise BackendUnavailable(
                f"the {name} provider is not available on this host (see Manager1.Backends)"
            )
        reason = provider.available()
        if reason is not None and not later:
            raise BackendUnavailable(f"{name}: {reason}")
        return provider

    @staticmethod
    async def _prepare(providers: Sequence[Provider], doc: StateDocument) -> None:
        sections = doc.sections()
        for provider in providers:
            await provider.prepare(sections[provider.name])

    def _select(
        self, doc: StateDocument, names: Sequence[str], *, units_first: bool = False
    ) -> list[Provider]:
        """The providers for a document's sections (only ``names`` of them, if given).

        ``units_first`` (an apply): when the document starts systemd units, the
        sections after them may wait for the backends those units bring up.
        """
        present = doc.sections()
        for name in names:
            if name not in SECTIONS:
                raise InvalidArgs(f"unknown provider {name!r} (known: {', '.join(SECTIONS)})")
        wanted = [name for name in present if not names or name in names]
        later = units_first and "systemd" in wanted and starts_units(doc)
        return [
            self._provider(name, later=later and name != "systemd")
            for name in SECTIONS
            if name in wanted
        ]

    async def diff(self, text: str, *, prune: bool, providers: Sequence[str]) -> str:
        doc = await self.parse(text)
        chosen = self._select(doc, providers)
        await self._prepare(chosen, doc)
        plan = make_plan(chosen, doc, prune=prune)
        return plan_json(plan.all())

    def query(self, names: Sequence[str]) -> StateDocument:
        chosen = names or [p.name for p in self.providers if p.available() is None]
        sections: dict[str, Any] = {}
        for name in chosen:
            sections[name] = self._provider(name).query()
        return StateDocument.model_validate(sections)

    # -- applying ----------------------------------------------------------------------------

    async def apply(self, doc: StateDocument, opts: ApplyOptions, uid: int) -> Job:
        if opts.if_digest and opts.if_digest != self.digest:
            raise Conflict(
                "the desired state changed since you read it (digest "
                f"{self.digest[:12] or 'none'}, not {opts.if_digest[:12]}); read Digest again"
            )
        if self.pending is not None and not opts.dry_run:
            raise Busy(f"checkpoint {self.pending_id} awaits Confirm() or Rollback() first")
        providers = self._select(doc, opts.providers, units_first=True)
        targets = [STATE_TARGET]
        for provider in providers:
            ids = set(provider.resources(doc.sections()[provider.name]))
            if opts.prune:
                ids |= provider.owned()
            targets += provider.targets(ids)
        operation = "Apply state (dry run)" if opts.dry_run else "Apply state"
        return await self.jobs.submit(
            operation, self._apply_body(doc, opts, providers), targets=targets, uid=uid
        )

    def _apply_body(
        self, doc: StateDocument, opts: ApplyOptions, providers: list[Provider]
    ) -> Callable[[JobContext], Any]:
        async def run(ctx: JobContext) -> JobOutcome:
            self._applying += 1
            try:
                return await self._apply(ctx, doc, opts, providers)
            finally:
                self._applying -= 1
                self._changed()

        return run

    async def _apply(
        self, ctx: JobContext, doc: StateDocument, opts: ApplyOptions, providers: list[Provider]
    ) -> JobOutcome:
        # Sections whose backend is down wait for the systemd units this apply
        # starts (openvswitch.service, then the bridges); the rest plan now.
        waiting = [p for p in providers if p.available() is not None]
        if waiting and (not starts_units(doc) or any(p.name == "systemd" for p in waiting)):
            # Nothing this apply starts can bring it up: fail now, not after a wait.
            down = waiting[0]
            raise BackendUnavailable(f"{down.name}: {down.available()}")
        ready = [p for p in providers if p not in waiting]
        await self._prepare(ready, doc)
        plan = make_plan(ready, doc, prune=opts.prune)
        changes = plan.all()
        output: dict[str, Any] = {"plan": [c.as_json() for c in changes]}
        _log_plan(ctx, changes, ready, waiting)
        ctx.progress(0.1)
        if opts.dry_run:
            if waiting:
                raise BackendUnavailable(
                    f"dry run: {', '.join(p.name for p in waiting)} cannot be planned before "
                    f"its backend is up ({waiting[0].available()})"
                )
            return JobOutcome(f"dry run: {len(changes)} change(s) would be made", output)
        if not changes and not waiting:
            await self._commit(doc, ctx)
            return JobOutcome("nothing to change: the host is as the document says", output)
        expires = _now_us() + opts.confirm_timeout * 1_000_000 if opts.confirm_timeout else 0
        saved = checkpoint(plan, doc=doc, expires_us=expires)
        await asyncio.to_thread(self.files.write_checkpoint, saved)
        ctx.log(f"checkpoint {saved['id']} saved")
        await self._keep(ctx, saved)
        output["checkpoint"] = saved["id"]
        try:
            await apply_forward(plan, ctx)
            if waiting:
                wait = self.config.backend_wait_seconds
                later = await plan_after_units(ctx, doc, waiting, prune=opts.prune, wait=wait)
                merge_plan(plan, later)
                merge_checkpoint(saved, checkpoint(later, doc=doc, expires_us=expires))
                await asyncio.to_thread(self.files.write_checkpoint, saved)
                changes = plan.all()
                output["plan"] = [c.as_json() for c in changes]
                await apply_forward(later, ctx)
            left = verify(plan, deletions=False)
            if left:
                raise Failed("verify: " + "; ".join(describe(c) for c in left[:5]))
            ctx.log("verified: the host is as the document says")
            ctx.progress(0.85)
            if opts.confirm_timeout:
                saved["phase"] = "pending"
                await asyncio.to_thread(self.files.write_checkpoint, saved)
                return self._pending_outcome(saved, len(changes), opts, output)
            await apply_deletions(providers, plan, ctx)
            left = verify(plan, deletions=True)
            if left:
                raise Failed("verify: " + "; ".join(describe(c) for c in left[:5]))
        except (OpdbusError, asyncio.CancelledError) as e:
            await asyncio.shield(self._undo(ctx, providers, saved, e))
            raise
        await asyncio.to_thread(self.files.remove_checkpoint)
        await self._commit(doc, ctx)
        return JobOutcome(f"applied {len(changes)} change(s)", output)

    def _pending_outcome(
        self, saved: dict[str, Any], count: int, opts: ApplyOptions, output: dict[str, Any]
    ) -> JobOutcome:
        self.pending = saved
        self._arm_expiry()
        self._notify()
        held = len(saved["deletions"])
        tail = f"; {held} deletion(s) wait for it" if held else ""
        return JobOutcome(
            f"applied {count - held} change(s); confirm within "
            f"{opts.confirm_timeout} s or checkpoint {saved['id']} is restored{tail}",
            output,
        )

    async def _keep(self, ctx: JobContext, saved: dict[str, Any]) -> None:
        """A copy in the snapshot cache; never the reason an apply fails."""
        if self.snapshots is None or not self.snapshots.enabled:
            return
        try:
            kept = await self.snapshots.keep_checkpoint(saved)
        except OSError as e:
            ctx.log(f"checkpoint not kept in the cache: {e}")
            return
        if kept is not None:
            ctx.log(f"checkpoint kept as {kept.path}")

    async def _undo(
        self,
        ctx: JobContext,
        providers: list[Provider],
        saved: dict[str, Any],
        error: BaseException,
    ) -> None:
        why = error.message if isinstance(error, OpdbusError) else "cancelled"
        ctx.log(f"failed ({why}): putting the host back")
        try:
            await restore(providers, saved, ctx)
        except OpdbusError as e:
            ctx.log(f"restoring failed: {e.message}")
            raise JobFailed(
                Failed(f"{why}; restoring the checkpoint failed too: {e.message}"),
                {"checkpoint": saved["id"]},
            ) from None
        await asyncio.to_thread(self.files.remove_checkpoint)
        if isinstance(error, OpdbusError):
            raise JobFailed(
                type(error)(f"{why}; the host is back where it was"), {"checkpoint": saved["id"]}
            ) from None

    async def _commit(self, doc: StateDocument, ctx: JobContext) -> None:
        digest = doc.digest()
        record = {
            "digest": digest,
            "document": doc.model_dump(mode="json", exclude_none=True),
            "applied_at": _now_us(),
            "job": ctx.job.path,
        }
        if digest != self.digest:
            await asyncio.to_thread(self.files.write_desired, record)
        self.desired, self.digest = doc, digest
        for observer in self.observers:
            observer.applied(digest, ctx.job.path)
        self._notify()

    # -- confirm, roll back, reload ------------------------------------------------------------

    async def confirm(self, uid: int) -> None:
        saved = self.pending
        if saved is None:
            raise Conflict("no checkpoint is pending: nothing to confirm")
        self._disarm_expiry()
        doc = StateDocument.model_validate(saved["desired"])
        providers = [p for p in self.providers if p.name in doc.sections()]
        if saved["deletions"]:
            job = await self.jobs.submit(
                "Confirm state (deletions)",
                lambda ctx: self._confirmed_deletions(ctx, providers, saved),
                targets=[STATE_TARGET],
                uid=uid,
            )
            await job.finished.wait()
            if job.record.error_name:
                raise Failed(f"the confirmed deletions failed: {job.record.result}")
        self.pending = None
        await asyncio.to_thread(self.files.remove_checkpoint)
        self.desired, self.digest = doc, doc.digest()
        await asyncio.to_thread(
            self.files.write_desired,
            {"digest": self.digest, "document": saved["desired"], "applied_at": _now_us()},
        )
        self._notify()
        self._changed()

    async def _confirmed_deletions(
        self, ctx: JobContext, providers: list[Provider], saved: dict[str, Any]
    ) -> JobOutcome:
        await apply_deletions(providers, saved, ctx)
        return JobOutcome(f"{len(saved['deletions'])} resource(s) deleted")

    async def rollback(self, uid: int) -> None:
        if self.pending is None:
            raise Conflict("no checkpoint is pending: nothing to roll back")
        job = await self._rollback_job("Rollback state", uid)
        if job.record.error_name:
            raise Failed(job.record.result)

    async def _rollback_job(self, operation: str, uid: int) -> Job:
        saved = self.pending
        assert saved is not None
        self._disarm_expiry()
        providers = [p for p in self.providers if p.name in saved["sections"]]

        async def run(ctx: JobContext) -> JobOutcome:
            self._applying += 1
            try:
                await restore(providers, saved, ctx)
            finally:
                self._applying -= 1
            self.pending = None
            await asyncio.to_thread(self.files.remove_checkpoint)
            self._notify()
            self._changed()
            return JobOutcome(f"checkpoint {saved['id']} restored")

        job = await self.jobs.submit(operation, run, targets=[STATE_TARGET], uid=uid)
        await job.finished.wait()
        return job

    def _arm_expiry(self) -> None:
        self._disarm_expiry()
        delay = max((self.pending_expires - _now_us()) / 1_000_000, 0)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _disarm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expired(self) -> None:
        self._expiry = None
        if self.pending is not None:
            log.warning(
                "state: checkpoint %s was not confirmed in time: restoring", self.pending_id
            )
            self._spawn(
                self._rollback_job("Rollback state (not confirmed in time)", uid=0),
                "state-expired",
            )

    async def reload(self, uid: int, *, missing_ok: bool = False) -> Job | None:
        """Apply the configured state file (at start, on Reload() and SIGHUP)."""
        path = self.config.file
        text = await asyncio.to_thread(read_text, path)
        if text is None:
            if missing_ok:
                return None
            raise Failed(f"there is no state file at {path} (the config's state.file)")
        try:
            doc = await self.parse(text)
        except InvalidArgs as e:
            log.error("state file %s: %s", path, e.message)
            if missing_ok:
                return None
            raise InvalidArgs(f"{path}: {e.message}") from None
        if self.pending is not None:
            log.warning("state file not applied: checkpoint %s is pending", self.pending_id)
            return None
        return await self.apply(doc, ApplyOptions(), uid)

    # -- drift -------------------------------------------------------------------------------------

    def _changed(self) -> None:
        """A resource changed: compare again once changes arriving together are in."""
        if self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(DRIFT_QUIET, self._judge)

    def _judge(self) -> None:
        self._recheck = None
        if self._applying or self.pending is not None:
            return  # an apply's own changes are not drift; it judges again when done
        found: list[tuple[str, str, str]] = []
        if self.desired is not None:
            sections = self.desired.sections()
            for provider in self.providers:
                section = sections.get(provider.name)
                if section is None or provider.available() is not None:
                    continue
                changes = provider.diff(section, provider.query(), prune=False, owned=set())
                found += [(c.provider, c.id, _what(c)) for c in changes]
        new = [entry for entry in found if entry not in self.drift]
        if found != self.drift:
            self.drift = found
            self._notify()
        for name, rid, what in new:
            log.warning("state drift: %s/%s %s", name, rid, what)
            for observer in self.observers:
                observer.drifted(name, rid, what)
        if new and self.config.drift_policy == "enforce":
            self._spawn(self._enforce(), "state-enforce")

    async def _enforce(self) -> None:
        await asyncio.sleep(self.config.enforce_delay_seconds)
        if not self.drift or self.desired is None or self._applying or self.pending:
            return
        names = sorted({provider for provider, _, _ in self.drift})
        try:
            job = await self.apply(self.desired, ApplyOptions(providers=tuple(names)), uid=0)
        except OpdbusError as e:
            log.warning("state: drift not repaired: %s", e.message)
            return
        log.info("state: repairing drift in %s (job %d)", ", ".join(names), job.id)

    def _notify(self) -> None:
        for observer in self.observers:
            observer.state_changed()


def _log_plan(
    ctx: JobContext, changes: list[Change], ready: list[Provider], waiting: list[Provider]
) -> None:
    ctx.log(f"plan: {len(changes)} change(s) over {', '.join(p.name for p in ready)}")
    for change in changes:
        ctx.log(f"  {describe(change)}")
    if waiting:
        names = ", ".join(p.name for p in waiting)
        ctx.log(f"  {names}: planned once its backend is up (after the units start)")


def _what(change: Change) -> str:
    if change.op == "create":
        return "missing"
    return f"{change.field}: {change.before} (wanted {change.after})"


def _now_us() -> int:
    return time.time_ns() // 1000


__all__ = ["ApplyOptions", "Path", "Plan", "StateService"]
