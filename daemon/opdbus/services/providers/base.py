"""The one protocol every kind of resource implements for the declarative state.

A provider sees its section of the document as resources by id. It can say
what the host has now (``query``, in the document's own schema), what differs
(``diff``: pure, no I/O, built from ``compare`` per resource), make changes
through the resource's own service (``apply``), and tell when its resources
change (``subscribe``: the event-fed caches, never polling). Checkpoint,
restore and verify are the state service's, built on these: a checkpoint is
the current section restricted to the resources a plan touches, and restoring
it is applying the diff back to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from opdbus.models.state import Change
from opdbus.services.jobs import JobBody, JobContext

# A field that differs: (field, what the host has, what the document wants).
Difference = tuple[str, Any, Any]


async def follow_running(
    ctx: JobContext,
    what: str,
    wanted: bool | None,
    running: bool,
    start: Callable[[], JobBody],
    stop: tuple[str, Callable[[], JobBody]],
) -> None:
    """Start or stop a resource as ``wanted`` says (None: left as it is), inside the apply job.

    ``stop`` is how the kind says it and what does it ("shut down", a VM's job).
    """
    if wanted and not running:
        ctx.log(f"  start {what}")
        await start()(ctx)
    elif wanted is False and running:
        verb, body = stop
        ctx.log(f"  {verb} {what}")
        await body()(ctx)


def dump(model: BaseModel) -> dict[str, Any]:
    """A resource as a document shows it (unset fields left out)."""
    return model.model_dump(mode="json", exclude_none=True)


class Provider(ABC):
    name: ClassVar[str]  # the document's section: "net", "lxc", "vms"

    # -- what the document and the host say ------------------------------------------

    @abstractmethod
    def available(self) -> str | None:
        """None when the provider can work now; else why not (BackendUnavailable)."""

    @abstractmethod
    def query(self) -> BaseModel:
        """Every resource the host has, as a section of the document."""

    @abstractmethod
    def resources(self, section: BaseModel) -> Mapping[str, BaseModel]:
        """A section's resources by id."""

    @abstractmethod
    def section(self, resources: Mapping[str, BaseModel]) -> BaseModel:
        """A section holding these resources, by id (to restrict one, or to build one)."""

    async def prepare(self, section: BaseModel) -> None:  # noqa: B027 -- a default, on purpose
        """Before a diff or apply of ``section``: make sure its resources are known.

        Most providers know every resource of their kind; one that watches only
        what documents name (systemd units) starts watching them here.
        """

    @abstractmethod
    def compare(self, want: BaseModel, have: BaseModel, *, exact: bool = False) -> list[Difference]:
        """How a resource the host has differs from the wanted one (pure).

        ``exact`` (restoring a checkpoint): what the resource has beyond what
        is wanted counts too (a bridge's extra ports), not only what is named.
        """

    @abstractmethod
    def owned(self) -> set[str]:
        """Ids of resources the declarative state made: the only ones prune may delete."""

    @abstractmethod
    def targets(self, ids: set[str]) -> list[str]:
        """The objects an apply of these resources holds (a job on them meanwhile is Busy)."""

    # -- changing the host ---------------------------------------------------------------

    @abstractmethod
    async def apply(self, desired: BaseModel, changes: list[Change], ctx: JobContext) -> None:
        """Carry out ``changes`` (from ``diff`` against ``desired``) through the services."""

    @abstractmethod
    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever one of the provider's resources changes."""

    # -- derived ---------------------------------------------------------------------------

    def restrict(self, section: BaseModel, ids: set[str]) -> BaseModel:
        return self.section({rid: r for rid, r in self.resources(section).items() if rid in ids})

    def diff(
        self,
        desired: BaseModel,
        current: BaseModel,
        *,
        prune: bool,
        owned: set[str],
        exact: bool = False,
    ) -> list[Change]:
        """What would make ``current`` into ``desired``; deletions only of ``owned`` ones."""
        want, have = self.resources(desired), self.resources(current)
        changes: list[Change] = []
        for rid, spec in want.items():
            found = have.get(rid)
            if found is None:
                changes.append(Change(self.name, rid, "create", after=dump(spec)))
                continue
            for field, before, after in self.compare(spec, found, exact=exact):
                changes.append(Change(self.name, rid, "modify", field, before, after))
        if prune:
            for rid in sorted(have.keys() - want.keys()):
                if rid in owned:
                    changes.append(Change(self.name, rid, "delete", before=dump(have[rid])))
        return changes
