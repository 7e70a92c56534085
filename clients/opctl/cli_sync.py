"""``opctl sync``, ``opctl rebuild``, ``opctl update``: the host's source and its system."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opctl.convert import to_variants
from opdbus import names

if TYPE_CHECKING:
    from opctl.cli import Cli

Command = Callable[..., argparse.ArgumentParser]
ACTIONS = ["build", "test", "switch", "boot", "dry-build", "dry-activate"]


def _no_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true", help="print the job path and return at once")


def add_parsers(sub: Any, command: Command) -> None:
    sync = command(sub, "sync", "smart sync of the configuration source (a job)")
    sync.add_argument("--repo", metavar="OWNER/NAME", help="default: the daemon's sync.repo")
    sync.add_argument("--ref", metavar="REF", help="branch, tag or commit (default main)")
    sync.add_argument("--target", metavar="DIR", help="default: /etc/hypervisor/src")
    sync.add_argument("--dry-run", action="store_true", help="download and verify; install nothing")
    sync.add_argument("--check-only", action="store_true", help="only compare; download nothing")
    sync.add_argument("--skip-validation", action="store_true", help="no SHA-1 check of downloads")
    sync.add_argument("--force-full", action="store_true", help="the whole tarball, swapped in")
    sync.add_argument(
        "--rollback",
        action="store_true",
        help="put back the tree as it was before the last sync (needs the snapshot cache)",
    )
    _no_wait(sync)

    rebuild = command(sub, "rebuild", "nixos-rebuild ACTION, its output streamed (a job)")
    rebuild.add_argument("action", choices=ACTIONS, metavar="ACTION", help=", ".join(ACTIONS))
    rebuild.add_argument("--flake", metavar="DIR", help="default /etc/nixos")
    rebuild.add_argument("--host", metavar="NAME", help="default: this host's short name")
    rebuild.add_argument("--show-trace", action="store_true")
    rebuild.add_argument("--no-impure", dest="impure", action="store_false", default=None)
    rebuild.add_argument("--refresh", action="store_true", help="re-fetch inputs, no cache TTLs")
    _no_wait(rebuild)

    update = command(sub, "update", "validate, smart sync, then rebuild (one job)")
    update.add_argument("--ref", metavar="REF", help="default main")
    update.add_argument("--check-only", action="store_true", help="validate and compare only")
    update.add_argument("--skip-rebuild", action="store_true")
    update.add_argument("--force-full", action="store_true")
    update.add_argument(
        "--rebuild-action", choices=ACTIONS, metavar="ACTION", help="default switch"
    )
    _no_wait(update)


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
