"""``opctl state``: apply, diff, show, confirm, roll back, and drift of the desired state."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opctl import jsonout, render
from opctl.files import read_document
from opdbus import names
from opdbus.models.job import JobRecord

if TYPE_CHECKING:
    from opctl.commands import Cli

SIGNS = {"create": "+", "modify": "~", "delete": "-"}


def print_schema(args: argparse.Namespace) -> int:
    from opdbus.models.state import section_schema

    print(json.dumps(section_schema(args.provider), indent=2, sort_keys=True))
    return 0


class StateCommands:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.client = cli.client
        self.args = cli.args

    async def run(self) -> int:
        handler: Callable[[], Any] = getattr(self, "_" + self.args.state_command)
        result: int = await handler()
        return result

    async def _apply(self) -> int:
        text = await read_document(self.args.file)
        options: dict[str, Any] = {
            "dry_run": self.args.dry_run or None,
            "prune": self.args.prune or None,
            "confirm_timeout": self.args.confirm or None,
            "providers": self.args.provider,
        }

        def show(record: JobRecord) -> None:
            if record.output.get("checkpoint") and self.args.confirm:
                print(
                    f"confirm with `opctl state confirm` within {self.args.confirm} s, "
                    "or it is rolled back",
                    file=sys.stderr,
                )

        return await self.cli.job(lambda: self.client.state_apply(text, **options), show)

    async def _diff(self) -> int:
        text = await read_document(self.args.file)
        plan = await self.client.state_diff(text, prune=self.args.prune or None)
        if self.args.json:
            render.dump(plan)
            return 0
        if not plan:
            print("no changes: the host is as the document says")
            return 0
        for change in plan:
            print(_line(change))
        counts = {op: sum(1 for c in plan if c["op"] == op) for op in SIGNS}
        print(
            f"\n{counts['create']} to create, {counts['modify']} to change, "
            f"{counts['delete']} to delete"
        )
        return 0

    async def _show(self) -> int:
        document = await self.client.state_query(list(self.args.provider))
        print(json.dumps(document, indent=2, sort_keys=True))
        return 0

    async def _confirm(self) -> int:
        await self.client.state_call("Confirm")
        return await self._done("confirmed: the changes stay")

    async def _rollback(self) -> int:
        await self.client.state_call("Rollback")
        return await self._done("rolled back: the host is as it was before the apply")

    async def _reload(self) -> int:
        (job,) = await self.client.state_call("Reload")
        if job == "/":
            return await self._done("no state file to apply", changed=False)
        return self.cli.finish_job(await self.cli.follow(str(job)))

    async def _drift(self) -> int:
        state = await self.client.state()
        drift = [list(entry) for entry in state["Drift"]]
        if self.args.json:
            render.dump(await self._summary())
            return 0
        if not state["Digest"]:
            print("no document has been applied yet")
        elif not drift:
            print(f"in sync with the document last applied ({state['Digest'][:12]})")
        else:
            render.table(["provider", "id", "what differs"], drift)
        if state["PendingCheckpoint"]:
            print(
                f"checkpoint {state['PendingCheckpoint']} is pending: "
                "`opctl state confirm` or `opctl state rollback`",
                file=sys.stderr,
            )
        return 0

    async def _checkpoints(self) -> int:
        kind = "" if self.args.all else "checkpoints"
        (rows,) = await self.client.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "ListSnapshots", "s", [kind]
        )
        found = [(str(k), str(i), int(c), int(b), str(p)) for k, i, c, b, p in rows]
        if self.args.json:
            render.dump(
                [
                    {"kind": k, "id": i, "created": jsonout.stamp(c), "bytes": b, "path": p}
                    for k, i, c, b, p in found
                ]
            )
            return 0
        if not found:
            print("no snapshots yet: they are kept when a state apply or a sync changes something")
            return 0
        now = time.time_ns() // 1000
        render.table(
            ["kind", "id", "age", "size", "path"],
            [(k, i, render.age(c, now), render.size(b), p) for k, i, c, b, p in found],
        )
        return 0

    async def _done(self, text: str, *, changed: bool = True) -> int:
        if self.args.json:  # the mutation's shape: the state object as it is now
            render.dump(jsonout.mutation(obj=await self._summary() if changed else None))
        else:
            print(text)
        return 0

    async def _summary(self) -> dict[str, Any]:
        state = await self.client.state()
        return {
            "path": names.STATE_PATH,
            "in_sync": state["InSync"],
            "digest": state["Digest"] or None,
            "pending_checkpoint": state["PendingCheckpoint"] or None,
            "drift": [{"provider": p, "id": i, "what": w} for p, i, w in state["Drift"]],
        }


def _line(change: dict[str, Any]) -> str:
    sign = SIGNS[change["op"]]
    where = f"{change['provider']}/{change['id']}"
    if change["op"] != "modify":
        return f"{sign} {where}"
    before, after = json.dumps(change["from"]), json.dumps(change["to"])
    return f"{sign} {where}  {change['field']}: {before} -> {after}"
