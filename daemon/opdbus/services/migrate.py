"""MigrateHostSettings: the host's people and base settings, carried over as NixOS modules.

Seed 001 ("User Migration", "System Settings Migration") and 003 ("Where
configurations live"): users with UID >= 1000 go to ``users-local.nix``
(mode 0600: it holds their password hashes), hostname, time zone, locale,
keyboard, stateVersion, swap and resume device to ``system-local.nix``.

Every string is written as a Nix string literal with ``\\``, ``"`` and ``$``
escaped, so no GECOS field can end a string or interpolate. The text is a
pure function of what was read (no time stamp), so a second run finds the
files unchanged and writes nothing. Each file is parse-checked by
``nix-instantiate --parse`` before it replaces anything; what it replaces is
kept as ``<name>.bak-<time>``. Password hashes never reach the job's log or
output (anyone on the bus may read those).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opdbus.backends import hostfiles, install_files, process
from opdbus.backends.hostfiles import Accounts
from opdbus.backends.install_files import Change
from opdbus.config import InstallConfig
from opdbus.errors import Failed, InvalidArgs
from opdbus.models.install import (
    HYPERVISOR_GROUPS,
    Found,
    HostSettings,
    HostUser,
    MigrateOptions,
)
from opdbus.services.jobs import JobBody, JobContext, JobOutcome

USERS_FILE = "users-local.nix"
SYSTEM_FILE = "system-local.nix"
FILE_MODE = 0o600  # seed: umask 077; users-local.nix holds password hashes

# A login shell as the nixpkgs package NixOS wants (a Debian path does not exist there).
_SHELL_PACKAGES = {
    "bash": "bashInteractive", "sh": "bashInteractive", "zsh": "zsh", "fish": "fish",
    "dash": "dash", "tcsh": "tcsh", "csh": "tcsh", "nu": "nushell",
}  # fmt: skip
_SHELLS_TO_ENABLE = {"zsh", "fish"}  # NixOS wants programs.<shell>.enable for these
_NO_LOGIN = {"nologin", "false"}
NOLOGIN_PATH = "/run/current-system/sw/bin/nologin"

_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("$", "\\$"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
# Per-user log lines up to this many users; past it, one summary line (the
# job's output lists every user).
LOGGED_USERS = 20


_SPECIAL = re.compile(r'[\\"$\n\r\t\0]')


def nix_string(text: str) -> str:
    """``text`` as a Nix string literal that evaluates to exactly ``text``."""
    if _SPECIAL.search(text) is None:  # most names, homes and groups: nothing to escape
        return f'"{text}"'
    if "\0" in text:
        raise InvalidArgs("a NUL byte cannot be written to a Nix file")
    # Backslashes first: the escapes added after must stay as they are.
    for plain, escaped in _ESCAPES:
        text = text.replace(plain, escaped)
    return f'"{text}"'


HASH_KEPT = "hash kept"


def password_state(user: HostUser) -> str:
    if user.password_hash is None:
        return "none (no shadow entry)"
    if user.password_hash == "":
        return "empty (logs in without a password)"
    if user.password_hash.startswith(("!", "*")):
        return "locked"
    return HASH_KEPT


def _shell(path: str) -> tuple[str, str | None]:
    """The Nix value of a login shell, and the shell to enable (zsh, fish) if any."""
    name = os.path.basename(path)
    if name in _NO_LOGIN:
        return nix_string(NOLOGIN_PATH), None
    package = _SHELL_PACKAGES.get(name)
    if package is None:
        return nix_string(path), None
    return f"pkgs.{package}", name if name in _SHELLS_TO_ENABLE else None


def _user(user: HostUser, shell: str, groups: str) -> str:
    invoking = "      # the user who ran the installer\n" if user.invoking else ""
    password = (
        f"      hashedPassword = {nix_string(user.password_hash)};\n"
        if user.password_hash is not None
        else ""
    )
    return (
        f"    {nix_string(user.name)} = {{\n{invoking}"
        f"      isNormalUser = true;\n"
        f"      uid = {user.uid};\n"
        f"      description = {nix_string(user.description)};\n"
        f"      home = {nix_string(user.home)};\n"
        f"      shell = {shell};\n"
        f"      group = {nix_string(user.group)};\n"
        f"      extraGroups = [ {groups} ];\n"
        f"{password}"
        f"    }};\n"
    )


def render_users(accounts: Accounts) -> str:
    parts = [
        "# Written by op-dbus (Manager1.MigrateHostSettings) from etc/passwd, etc/shadow\n"
        "# and etc/group. It holds password hashes: keep it mode 0600.\n"
        "{ pkgs, ... }:\n{\n  users.users = {\n"
    ]
    enable: set[str] = set()
    # Thousands of users share a few shells and group lists: render each once.
    shells: dict[str, tuple[str, str | None]] = {}
    group_lists: dict[tuple[str, ...], str] = {}
    for user in accounts.users:
        shell = shells.get(user.shell) or shells.setdefault(user.shell, _shell(user.shell))
        if shell[1]:
            enable.add(shell[1])
        groups = group_lists.get(user.groups) or group_lists.setdefault(
            user.groups, " ".join(map(nix_string, user.groups))
        )
        parts.append(_user(user, shell[0], groups))
    parts.append("  };\n")
    if accounts.groups:
        parts.append("  users.groups = {\n")
        for name, gid in sorted(accounts.groups.items()):
            parts.append(f"    {nix_string(name)} = {{ gid = {gid}; }};\n")
        parts.append("  };\n")
    parts += [f"  programs.{shell}.enable = true;\n" for shell in sorted(enable)]
    parts.append("}\n")
    return "".join(parts)


# (setting, the NixOS option it becomes)
_SYSTEM_OPTIONS = (
    ("hostname", "networking.hostName"),
    ("time_zone", "time.timeZone"),
    ("locale", "i18n.defaultLocale"),
    ("console_keymap", "console.keyMap"),
    ("console_font", "console.font"),
    ("xkb_layout", "services.xserver.xkb.layout"),
    ("xkb_variant", "services.xserver.xkb.variant"),
    ("xkb_options", "services.xserver.xkb.options"),
    ("state_version", "system.stateVersion"),
)


def render_system(settings: HostSettings) -> str:
    lines = [
        "# Written by op-dbus (Manager1.MigrateHostSettings) from the host's own files;",
        "# each value's source is beside it.",
        "{ lib, ... }:",
        "{",
    ]
    for name, option in _SYSTEM_OPTIONS:
        found = getattr(settings, name)
        if found is not None:
            lines.append(f"  {option} = {nix_string(found.value)}; # {found.source}")
    # mkDefault: hardware-configuration.nix usually lists the same swap and
    # resume device; its definition then wins instead of adding a duplicate.
    if settings.swap_devices:
        devices = " ".join(f"{{ device = {nix_string(s.value)}; }}" for s in settings.swap_devices)
        sources = ", ".join(sorted({s.source for s in settings.swap_devices}))
        lines.append(f"  swapDevices = lib.mkDefault [ {devices} ]; # {sources}")
    if settings.resume_device is not None:
        found = settings.resume_device
        lines.append(
            f"  boot.resumeDevice = lib.mkDefault {nix_string(found.value)}; # {found.source}"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class Detected:
    accounts: Accounts
    settings: HostSettings


def _setting_lines(settings: HostSettings) -> list[str]:
    lines = []
    for name, value in settings:
        label = name.replace("_", " ")
        if isinstance(value, Found):
            lines.append(f"{label}: {value.value} (from {value.source})")
        elif isinstance(value, list) and value:
            lines += [f"{label}: {found.value} (from {found.source})" for found in value]
    missing = settings.missing()
    if missing:
        lines.append("not found: " + ", ".join(name.replace("_", " ") for name in missing))
    return lines


class Migrator:
    def __init__(self, root: Path, configuration_dir: Path, config: InstallConfig) -> None:
        self.root = root
        self.dir = configuration_dir
        self.config = config

    def job(self, opts: MigrateOptions, caller_uid: int) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            journal: list[Change] = []
            try:
                output = await self.run(ctx, opts, caller_uid, journal)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(undo, journal))
                raise
            written = [path for path, what in output["files"].items() if what == "written"]
            users = _users(len(output["users"]))
            if opts.dry_run:
                message = f"dry run: {users}; nothing written"
            elif written:
                message = f"{users}; wrote " + ", ".join(written)
            else:
                message = f"{users}; files already up to date"
            return JobOutcome(message, output)

        return run

    async def detect(self, opts: MigrateOptions, caller_uid: int) -> Detected:
        invoking = opts.invoking_uid if opts.invoking_uid is not None else caller_uid

        def read() -> Detected:
            accounts = hostfiles.read_accounts(self.root, opts.users, invoking)
            settings = hostfiles.read_settings(self.root)
            if opts.hostname is not None:
                settings = settings.model_copy(
                    update={"hostname": Found(value=opts.hostname, source="the hostname option")}
                )
            return Detected(accounts, settings)

        return await asyncio.to_thread(read)

    def render(self, found: Detected) -> dict[Path, bytes]:
        return {
            self.dir / USERS_FILE: render_users(found.accounts).encode(),
            self.dir / SYSTEM_FILE: render_system(found.settings).encode(),
        }

    async def run(
        self, ctx: JobContext, opts: MigrateOptions, caller_uid: int, journal: list[Change]
    ) -> dict[str, Any]:
        found = await self.detect(opts, caller_uid)
        ctx.log(f"read from {self.root}: {_users(len(found.accounts.users))}")
        users = found.accounts.users
        if len(users) > LOGGED_USERS:
            invoking = next((f"; invoking user {u.name}" for u in users if u.invoking), "")
            locked = sum(1 for u in users if password_state(u) != HASH_KEPT)
            ctx.log(
                f"users {users[0].name} .. {users[-1].name}{invoking}: each gains "
                f"{', '.join(HYPERVISOR_GROUPS)}; {locked} without a usable password hash "
                "(the job's output lists every user)"
            )
        for user in users if len(users) <= LOGGED_USERS else []:
            who = ", the invoking user" if user.invoking else ""
            ctx.log(
                f"user {user.name} (uid {user.uid}{who}): groups {', '.join(user.groups)}; "
                f"password {password_state(user)}"
            )
        for note in found.accounts.notes:
            ctx.log(note)
        for line in _setting_lines(found.settings):
            ctx.log(line)
        files = await asyncio.to_thread(self.render, found)  # thousands of users: not on the loop
        states = await self.write(ctx, files, journal, dry_run=opts.dry_run)
        base = set(HYPERVISOR_GROUPS)
        # Compact (a host may have thousands of users; the file has the rest):
        # names in order, and only what sets a user apart.
        return {
            "users": [u.name for u in users],
            "invoking": next((u.name for u in users if u.invoking), None),
            "hypervisor_groups": list(HYPERVISOR_GROUPS),
            "more_groups": {
                u.name: [g for g in u.groups if g not in base]
                for u in users
                if not base.issuperset(u.groups)
            },
            "no_password_hash": {
                u.name: password_state(u) for u in users if password_state(u) != HASH_KEPT
            },
            "settings": found.settings.model_dump(),
            "missing": found.settings.missing(),
            "files": {str(path): state for path, state in states.items()},
            "backups": [str(c.backup) for c in journal if c.backup is not None],
        }

    async def write(
        self,
        ctx: JobContext,
        files: dict[Path, bytes],
        journal: list[Change],
        *,
        dry_run: bool,
        mode: int = FILE_MODE,
    ) -> dict[Path, str]:
        """Stage, parse-check, then put each changed file in place (journalled for an undo)."""
        states: dict[Path, str] = {}
        staged: dict[Path, Path] = {}
        try:
            for path, data in files.items():
                if not await asyncio.to_thread(install_files.differs, path, data, mode):
                    states[path] = "unchanged"
                    ctx.log(f"{path}: unchanged")
                elif dry_run:
                    states[path] = "would be written"
                    ctx.log(f"{path}: would be written ({len(data)} bytes)")
                else:
                    staged[path] = await asyncio.to_thread(
                        install_files.stage_file, path, data, mode
                    )
            if staged:
                await self.check_parses(ctx, staged)
            when = install_files.stamp()
            for path, tmp in staged.items():
                change = await asyncio.to_thread(install_files.commit_file, path, tmp, when)
                journal.append(change)
                states[path] = "written"
                kept = f"; the old one kept as {change.backup.name}" if change.backup else ""
                ctx.log(f"{path}: written{kept}")
        finally:
            for tmp in staged.values():
                await asyncio.shield(asyncio.to_thread(install_files.discard, tmp))
        return states

    async def check_parses(self, ctx: JobContext, staged: dict[Path, Path]) -> None:
        """``nix-instantiate --parse`` of every staged file, in one run (it takes ~30 ms)."""
        if self.config.parse_command is None:
            return
        command = await asyncio.to_thread(shutil.which, self.config.parse_command)
        if command is None:
            ctx.log(f"{self.config.parse_command} not found: the files are not parse-checked")
            return
        if await self._parse(command, list(staged.values())) is None:
            return
        for path, tmp in staged.items():  # rare: find which one, to name it
            why = await self._parse(command, [tmp])
            if why is not None:
                raise Failed(f"{path.name} as generated does not parse ({why}); nothing replaced")
        raise Failed("the generated files do not parse together; nothing replaced")

    async def _parse(self, command: str, files: list[Path]) -> str | None:
        """None if all parse, else nix's error line (stderr only: stdout echoes the
        files, password hashes and all)."""
        result = await process.run(
            [command, "--parse", *map(str, files)],
            timeout=self.config.command_timeout_seconds,
            what="checking the generated Nix",
        )
        if result.status == 0:
            return None
        said = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        return next((line for line in said if line.startswith("error:")), None) or (
            said[-1] if said else f"exit status {result.status}"
        )


def _users(count: int) -> str:
    return f"{count} user{'' if count == 1 else 's'}"


def undo(journal: list[Change]) -> None:
    """Put back what a failed run replaced, newest first (blocking)."""
    while journal:
        change = journal.pop()
        with contextlib.suppress(FileNotFoundError):
            install_files.restore(change)
