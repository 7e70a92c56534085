"""``opctl sync``, ``rebuild``, ``update``, ``install``, ``host migrate``: the host's
source, its system, and becoming a hypervisor."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from opctl import render
from opctl.convert import to_variants
from opdbus import names

if TYPE_CHECKING:
    from opctl.commands import Cli
    from opdbus.models.job import JobRecord


def _invoking_uid() -> int | None:
    """Who ran opctl under sudo (seed: the installer marks that user)."""
    text = os.environ.get("SUDO_UID", "")
    return int(text) if text.isdigit() else None


def show_migration(record: JobRecord) -> None:
    """The migrated users as a table (the settings and files are in the job's log above)."""
    output = record.output or {}
    migration = output.get("migration", output)
    users = migration.get("users") or []
    if not users:
        return
    more, no_hash = migration.get("more_groups", {}), migration.get("no_password_hash", {})
    invoking = migration.get("invoking")
    rows = [
        [
            name + (" *" if name == invoking else ""),
            ",".join(more.get(name, [])) or "-",
            no_hash.get(name, "hash kept"),
        ]
        for name in users
    ]
    render.table(["USER", "MORE GROUPS", "PASSWORD"], rows)
    print("every user gains " + ", ".join(migration.get("hypervisor_groups", [])))
    if invoking:
        print("* the invoking user")


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
        options = self._flags("flake", "host", "show_trace", "refresh", "fast")
        options["impure"] = self.args.impure
        return await self.cli.job(
            lambda: self._start("Rebuild", "sa{sv}", self.args.action, to_variants(options))
        )

    async def update(self) -> int:
        options = self._flags("ref", "check_only", "skip_rebuild", "force_full", "rebuild_action")
        return await self.cli.job(lambda: self._start("Update", "a{sv}", to_variants(options)))

    async def install(self) -> int:
        options = {
            **self._flags("source", "hostname", "action", "users"),
            **self._flags("force", "reboot", "fast", "skip_update_check"),
            "invoking_uid": _invoking_uid(),
        }
        return await self.cli.job(
            lambda: self._start("Install", "a{sv}", to_variants(options)), show_migration
        )

    async def host(self) -> int:
        options = {**self._flags("dry_run", "users", "hostname"), "invoking_uid": _invoking_uid()}
        return await self.cli.job(
            lambda: self._start("MigrateHostSettings", "a{sv}", to_variants(options)),
            show_migration,
        )
