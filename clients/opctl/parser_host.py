"""opctl's commands for the host's source and system: sync, rebuild, update, install,
host migrate (a part of :mod:`opctl.parser`, as light: argparse only)."""

from __future__ import annotations

import argparse

from opctl.parser import ACTIONS, Command, Parser, no_wait

TYPE_CHECKING = False  # no typing at run time (opctl --help); mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


def host_commands(sub: Any, command: Command) -> None:
    sync = command(sub, "sync", "smart sync of the configuration source (a job)")
    sync.add_argument("--repo", metavar="OWNER/NAME", help="default: the daemon's sync.repo")
    sync.add_argument("--ref", metavar="REF", help="branch, tag or commit (default main)")
    sync.add_argument("--target", metavar="DIR", help="default: the daemon's paths.source_dir")
    sync.add_argument("--dry-run", action="store_true", help="download and verify; install nothing")
    sync.add_argument("--check-only", action="store_true", help="only compare; download nothing")
    sync.add_argument("--skip-validation", action="store_true", help="no SHA-1 check of downloads")
    sync.add_argument("--force-full", action="store_true", help="the whole tarball, swapped in")
    sync.add_argument(
        "--rollback",
        action="store_true",
        help="put back the tree as it was before the last sync (needs the snapshot cache)",
    )
    no_wait(sync)

    rebuild = command(sub, "rebuild", "nixos-rebuild ACTION, its output streamed (a job)")
    rebuild.add_argument("action", choices=ACTIONS, metavar="ACTION", help=", ".join(ACTIONS))
    rebuild.add_argument("--flake", metavar="DIR", help="default /etc/nixos")
    rebuild.add_argument("--host", metavar="NAME", help="default: this host's short name")
    rebuild.add_argument("--show-trace", action="store_true")
    rebuild.add_argument("--no-impure", dest="impure", action="store_false", default=None)
    rebuild.add_argument("--refresh", action="store_true", help="re-fetch inputs, no cache TTLs")
    rebuild.add_argument("--fast", action="store_true", help="25 download connections, all cores")
    no_wait(rebuild)

    update = command(sub, "update", "validate, smart sync, then rebuild (one job)")
    update.add_argument("--ref", metavar="REF", help="default main")
    update.add_argument("--check-only", action="store_true", help="validate and compare only")
    update.add_argument("--skip-rebuild", action="store_true")
    update.add_argument("--force-full", action="store_true")
    update.add_argument(
        "--rebuild-action", choices=ACTIONS, metavar="ACTION", help="default switch"
    )
    no_wait(update)

    install = command(
        sub,
        "install",
        "make this NixOS host a hypervisor: copy, link, migrate, rebuild (one job)",
        description="Copy SOURCE to /etc/hypervisor/src, link /etc/nixos/flake.nix to it, "
        "check for updates, keep or generate the hardware configuration, migrate users and "
        "settings, then nixos-rebuild test and switch. A failure before the switch puts back "
        "every file it replaced.",
    )
    install.add_argument("--source", metavar="DIR", required=True, help="the Hyper-NixOS tree")
    install.add_argument("--hostname", metavar="NAME", help="default: this host's name")
    install.add_argument(
        "--action",
        choices=("build", "test", "switch"),
        metavar="ACTION",
        help="build, test or switch (default: test, then switch)",
    )
    install.add_argument(
        "--force", action="store_true", help="replace a different installed tree (kept as backup)"
    )
    install.add_argument("--reboot", action="store_true", help="reboot after a successful switch")
    install.add_argument("--fast", action="store_true", help="25 download connections, all cores")
    install.add_argument(
        "--skip-update-check", action="store_true", help="offline: no smart sync of the source"
    )
    install.add_argument("--users", type=_names, metavar="NAME,...", help="default: UID >= 1000")
    no_wait(install)

    host = sub.add_parser("host", help="this host's users and settings, carried over to NixOS")
    hsub = host.add_subparsers(
        dest="host_command", required=True, metavar="ACTION", parser_class=Parser
    )
    migrate = command(
        hsub,
        "migrate",
        "write users-local.nix and system-local.nix from this host's files (a job)",
        description="Users with UID >= 1000 (password hashes kept; each gains wheel, kvm, "
        "libvirtd, video, input) and hostname, time zone, locale, keyboard, stateVersion, "
        "swap and resume device, as NixOS modules in /etc/hypervisor/configuration.",
    )
    migrate.add_argument("--dry-run", action="store_true", help="report only; write nothing")
    migrate.add_argument("--users", type=_names, metavar="NAME,...", help="default: UID >= 1000")
    migrate.add_argument("--hostname", metavar="NAME", help="default: this host's name")
    no_wait(migrate)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name")
    return names
