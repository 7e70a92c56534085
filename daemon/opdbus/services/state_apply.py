"""Apply as one transaction: diff, checkpoint, apply in order, verify -- or put it all back.

Order: providers in dependency order (systemd units, then net, then lxc and
vms), deletions (prune) last of all. A checkpoint is the current state of
every resource the plan touches, written to the state directory before
anything changes; restoring it is applying the diff back to it, in reverse
order, then checking that it took. A checkpoint that is still pending after
a crash is restored at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from opdbus.errors import BackendUnavailable, Failed, OpdbusError
from opdbus.models.state import SECTIONS, Change, StateDocument
from opdbus.services.jobs import JobContext
from opdbus.services.providers.base import Provider

log = logging.getLogger(__name__)

BACKEND_POLL = 0.05  # seconds between looks at a backend an apply waits for


@dataclass
class Plan:
    """What an apply would do, per provider, in the order it would do it."""

    providers: list[Provider]
    desired: dict[str, BaseModel]
    current: dict[str, BaseModel]
    changes: dict[str, list[Change]] = field(default_factory=dict)

    def all(self) -> list[Change]:
        return [c for p in self.providers for c in self.changes.get(p.name, [])]

    def forward(self, provider: str) -> list[Change]:
        return [c for c in self.changes.get(provider, []) if c.op != "delete"]

    def deletions(self, provider: str) -> list[Change]:
        return [c for c in self.changes.get(provider, []) if c.op == "delete"]

    def touched(self, provider: str) -> set[str]:
        return {c.id for c in self.changes.get(provider, [])}


def make_plan(providers: Sequence[Provider], doc: StateDocument, *, prune: bool) -> Plan:
    """Diff every provider's section against the host (reads caches only)."""
    sections = doc.sections()
    plan = Plan(list(providers), {}, {})
    for provider in providers:
        desired = sections[provider.name]
        current = provider.query()
        plan.desired[provider.name] = desired
        plan.current[provider.name] = current
        plan.changes[provider.name] = provider.diff(
            desired, current, prune=prune, owned=provider.owned()
        )
    return plan


def merge_plan(plan: Plan, later: Plan) -> None:
    """``later`` (sections planned once their backend came up) joins ``plan``, in order."""
    plan.providers += later.providers
    plan.desired.update(later.desired)
    plan.current.update(later.current)
    plan.changes.update(later.changes)


def starts_units(doc: StateDocument) -> bool:
    """Whether the document starts systemd units (whose backends later sections may need)."""
    units = doc.systemd.units.values() if doc.systemd is not None else []
    return any(unit.active_state == "active" for unit in units)


async def plan_after_units(
    ctx: JobContext, doc: StateDocument, waiting: list[Provider], *, prune: bool, wait: float
) -> Plan:
    """After the units started: wait (bounded) for these sections' backends, then plan them.

    A backend coming up says so on its own connection (the OVSDB client
    reconnects by itself); this only looks every BACKEND_POLL seconds.
    """
    names = ", ".join(p.name for p in waiting)
    ctx.log(f"waiting for {names} to come up (at most {wait:g} s)")
    for _ in range(max(int(wait / BACKEND_POLL), 1)):
        if all(p.available() is None for p in waiting):
            break
        await asyncio.sleep(BACKEND_POLL)
    else:
        down = next(p for p in waiting if p.available() is not None)
        raise BackendUnavailable(
            f"{down.name}: its backend did not come up within {wait:g} s of the units "
            f"starting ({down.available()}; state.backend_wait_seconds)"
        )
    sections = doc.sections()
    for provider in waiting:
        await provider.prepare(sections[provider.name])
    later = make_plan(waiting, doc, prune=prune)
    found = later.all()
    ctx.log(f"plan: {len(found)} change(s) over {names}")
    for change in found:
        ctx.log(f"  {describe(change)}")
    return later


def describe(change: Change) -> str:
    """One line of a plan, like ``terraform plan``: ``+ net/br0``, ``~ lxc/c1 running: ...``."""
    sign = {"create": "+", "modify": "~", "delete": "-"}[change.op]
    where = f"{change.provider}/{change.id}"
    if change.op == "modify":
        return f"{sign} {where} {change.field}: {_short(change.before)} -> {_short(change.after)}"
    return f"{sign} {where}"


def _short(value: object) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


# -- checkpoints -----------------------------------------------------------------------


def checkpoint(plan: Plan, *, doc: StateDocument, expires_us: int = 0) -> dict[str, Any]:
    """The current state of everything the plan touches (JSON, for the state dir)."""
    sections: dict[str, Any] = {}
    created: dict[str, list[str]] = {}
    for provider in plan.providers:
        touched = plan.touched(provider.name)
        if not touched:
            continue
        current = plan.current[provider.name]
        kept = provider.restrict(current, touched)
        sections[provider.name] = kept.model_dump(mode="json", exclude_none=True)
        created[provider.name] = sorted(touched - set(provider.resources(current)))
    return {
        "id": uuidlib.uuid4().hex[:12],
        "created_at": time.time_ns() // 1000,
        "expires_at": expires_us,
        "phase": "applying",
        "sections": sections,
        "created": created,
        "deletions": [c.as_json() for c in plan.all() if c.op == "delete"],
        "desired": doc.model_dump(mode="json", exclude_none=True),
    }


def merge_checkpoint(saved: dict[str, Any], later: dict[str, Any]) -> None:
    """What a later part of the same apply touches, into the checkpoint already saved."""
    saved["sections"].update(later["sections"])
    saved["created"].update(later["created"])
    saved["deletions"] += later["deletions"]


def _section(provider: Provider, data: dict[str, Any]) -> BaseModel:
    return SECTIONS[provider.name].model_validate(data)


async def restore(providers: Sequence[Provider], saved: dict[str, Any], ctx: JobContext) -> None:
    """Put back what a checkpoint holds, in reverse order; verify it; raise if it did not take."""
    ctx.log("restoring the checkpoint")
    by_name = {p.name: p for p in providers}
    problems: list[str] = []
    order = [p for p in reversed(providers) if p.name in saved["sections"]]
    for provider in order:
        section = _section(provider, saved["sections"][provider.name])
        touched = set(provider.resources(section)) | set(saved["created"].get(provider.name, []))
        created = set(saved["created"].get(provider.name, []))
        current = provider.restrict(provider.query(), touched)
        changes = provider.diff(section, current, prune=True, owned=created, exact=True)
        for change in changes:
            ctx.log(f"  {describe(change)}")
        try:
            await provider.apply(section, changes, ctx)
        except OpdbusError as e:
            problems.append(f"{provider.name}: {e.message}")
    for name, data in saved["sections"].items():
        provider = by_name[name]
        section = _section(provider, data)
        touched = set(provider.resources(section)) | set(saved["created"].get(name, []))
        left = provider.diff(
            section,
            provider.restrict(provider.query(), touched),
            prune=True,
            owned=set(saved["created"].get(name, [])),
            exact=True,
        )
        if left:
            problems.append(f"{name}: still differs: " + "; ".join(describe(c) for c in left[:5]))
    if problems:
        raise Failed("restoring the checkpoint failed: " + "; ".join(problems))
    ctx.log("the checkpoint is restored")


# -- applying ------------------------------------------------------------------------------


async def apply_forward(plan: Plan, ctx: JobContext) -> None:
    """Everything but deletions, provider by provider, in order."""
    total = max(sum(len(plan.forward(p.name)) for p in plan.providers), 1)
    done = 0
    for provider in plan.providers:
        changes = plan.forward(provider.name)
        if not changes:
            continue
        ctx.log(f"{provider.name}: {len(changes)} change(s)")
        await provider.apply(plan.desired[provider.name], changes, ctx)
        done += len(changes)
        ctx.progress(0.1 + 0.7 * done / total)


async def apply_deletions(
    providers: Iterable[Provider], plan_or_saved: Plan | dict[str, Any], ctx: JobContext
) -> None:
    """Prune: the deletions, after everything else is in place and verified."""
    for provider in providers:
        if isinstance(plan_or_saved, Plan):
            changes = plan_or_saved.deletions(provider.name)
            desired = plan_or_saved.desired[provider.name]
        else:
            changes = [
                Change(d["provider"], d["id"], "delete", before=d["from"])
                for d in plan_or_saved["deletions"]
                if d["provider"] == provider.name
            ]
            desired = provider.section({})
        if changes:
            ctx.log(f"{provider.name}: deleting {len(changes)} resource(s) the state made")
            await provider.apply(desired, changes, ctx)


def verify(plan: Plan, *, deletions: bool) -> list[Change]:
    """What still differs after applying (everything but deletions, or those too)."""
    left: list[Change] = []
    for provider in plan.providers:
        owned = provider.owned()
        changes = provider.diff(
            plan.desired[provider.name], provider.query(), prune=deletions, owned=owned
        )
        wanted_gone = {c.id for c in plan.deletions(provider.name)}
        left += [c for c in changes if c.op != "delete" or c.id in wanted_gone]
    return left
