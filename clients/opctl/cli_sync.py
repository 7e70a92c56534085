"""``opctl sync``, ``opctl rebuild``, ``opctl update``: the host's source and its system."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opctl.convert import to_variants
from opdbus import names

if TYPE_CHECKING:
    from opctl.commands import Cli


class SyncCommands:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.args = cli.args
        self.client = cli.client

    async def _start(self, member: str, signature: str, *body: Any) -> str:
        (job,) = await self.client.call(
            names.ROOT_PATH, names.MANAGER_IFACE, member, signature, list(body)
        )
        return str(job)

    def _flags(self, *keys: str) -> dict[str, Any]:
        # Flags left off are not sent: the daemon's defaults apply.
        return {key: getattr(self.args, key) or None for key in keys}

    async def sync(self) -> int:
        options = {
            **self._flags("repo", "ref", "target"),
            **self._flags("dry_run", "check_only", "skip_validation", "force_full", "rollback"),
        }
        return await self.cli.job(lambda: self._start("Sync", "a{sv}", to_variants(options)))

    async def rebuild(self) -> int:
        options = self._flags("flake", "host", "show_trace", "refresh")
        options["impure"] = self.args.impure
        return await self.cli.job(
            lambda: self._start("Rebuild", "sa{sv}", self.args.action, to_variants(options))
        )

    async def update(self) -> int:
        options = self._flags("ref", "check_only", "skip_rebuild", "force_full", "rebuild_action")
        return await self.cli.job(lambda: self._start("Update", "a{sv}", to_variants(options)))
