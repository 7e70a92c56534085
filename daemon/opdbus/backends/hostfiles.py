"""The host's accounts and base settings, read from the files NixOS and Debian keep.

Everything is read below a root (``paths.host_root``: ``/`` on a host, a
private copy in the tests and the sandbox). Each setting comes back with the
file it was read from, so the installer's log can say where every value came
from and which were not found. Blocking: call from a thread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from opdbus.errors import Failed, InvalidArgs
from opdbus.models.install import (
    HYPERVISOR_GROUPS,
    NIXOS_GROUPS,
    Found,
    HostSettings,
    HostUser,
    check_hostname,
)

NIXOS_CONFIGURATION = "etc/nixos/configuration.nix"
# Debian's sudo group is NixOS's wheel (which every migrated user gains anyway).
_RENAMED_GROUPS = {"sudo": "wheel"}


@dataclass
class Accounts:
    users: list[HostUser]
    groups: dict[str, int]  # groups the users need declared: name -> gid
    notes: list[str] = field(default_factory=list)


def _read(root: Path, rel: str) -> str | None:
    """A host file's text; None when it is not there (a file the host lacks is no error)."""
    try:
        return (root / rel).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as e:  # unreadable (op-dbusd not root): say so, never guess around it
        raise Failed(f"cannot read {root / rel}: {e.strerror}") from None


def _rows(text: str | None, width: int) -> list[list[str]]:
    """The colon-separated lines of passwd, shadow or group with at least ``width`` fields."""
    rows = []
    for line in (text or "").splitlines():
        if line and not line.startswith(("#", "+", "-")):
            fields = line.split(":")
            if len(fields) >= width:
                rows.append(fields)
    return rows


def _uid_range(root: Path) -> tuple[int, int]:
    """login.defs' UID_MIN and UID_MAX (1000 and 60000 when it does not say)."""
    found = {"UID_MIN": 1000, "UID_MAX": 60000}
    for line in (_read(root, "etc/login.defs") or "").splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in found and words[1].isdigit():
            found[words[0]] = int(words[1])
    return found["UID_MIN"], found["UID_MAX"]


def read_accounts(root: Path, names: list[str] | None, invoking_uid: int | None) -> Accounts:
    """The people's accounts (UID_MIN <= uid <= UID_MAX), or just ``names``."""
    low, high = _uid_range(root)
    passwd = _rows(_read(root, "etc/passwd"), 7)
    shadow = {row[0]: row[1] for row in _rows(_read(root, "etc/shadow"), 2)}
    group_rows = _rows(_read(root, "etc/group"), 4)
    group_names = {int(row[2]): row[0] for row in group_rows if row[2].isdigit()}
    group_gids = {row[0]: int(row[2]) for row in group_rows if row[2].isdigit()}
    members: dict[str, list[str]] = {}
    for row in group_rows:
        for member in filter(None, row[3].split(",")):
            members.setdefault(member, []).append(row[0])

    people = [row for row in passwd if row[2].isdigit() and low <= int(row[2]) <= high]
    if names is not None:
        known = {row[0] for row in people}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise InvalidArgs(
                f"not a user with a UID from {low} to {high} in {root / 'etc/passwd'}: "
                + ", ".join(unknown)
            )
        wanted = set(names)
        people = [row for row in people if row[0] in wanted]

    accounts = Accounts(users=[], groups={})
    dropped: set[str] = set()
    # Thousands of users share a few group lists: each distinct one is sorted
    # out once (what NixOS has, what must be declared, what is left out).
    classified: dict[tuple[str, ...], tuple[str, ...]] = {}

    def classify(member_of: tuple[str, ...]) -> tuple[str, ...]:
        kept = set()
        for group in {_RENAMED_GROUPS.get(g, g) for g in member_of} | set(HYPERVISOR_GROUPS):
            gid_of = group_gids.get(group)
            if group in NIXOS_GROUPS:
                kept.add(group)
            elif gid_of is not None and low <= gid_of <= high:
                kept.add(group)  # a group people made: declared with its gid
                accounts.groups[group] = gid_of
            else:
                dropped.add(group)
        return tuple(sorted(kept))

    for name, _, uid, gid, gecos, home, shell, *_ in people:
        primary = group_names.get(int(gid)) if gid.isdigit() else None
        if primary is None:
            accounts.notes.append(f"{name}: primary group {gid} is not in etc/group; using users")
            primary = "users"
        elif primary not in NIXOS_GROUPS:
            accounts.groups[primary] = int(gid)
        key = tuple(members.get(name, ()))
        groups = classified.get(key)
        if groups is None:
            groups = classified[key] = classify(key)
        if primary in groups:  # NixOS lists the primary group once, as group
            groups = tuple(g for g in groups if g != primary)
        accounts.users.append(
            HostUser(
                name,
                int(uid),
                gecos.rstrip(","),  # Debian's empty room and phone fields
                home,
                shell,
                primary,
                int(gid) if gid.isdigit() else 100,
                groups,
                shadow.get(name),
                invoking_uid == int(uid),
            )
        )
    if dropped:
        accounts.notes.append(
            "system groups NixOS does not have, left out: " + ", ".join(sorted(dropped))
        )
    return accounts


# -- base settings -------------------------------------------------------------


def _assignments(text: str | None) -> dict[str, str]:
    """KEY=value lines (locale.conf, vconsole.conf, /etc/default/*), quotes removed."""
    found = {}
    for line in (text or "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            if value:
                found[key] = value
    return found


def _nix_option(text: str | None, option: str) -> str | None:
    """A plain string an existing configuration.nix gives ``option`` (no interpolation)."""
    if not text:
        return None
    pattern = r"(?m)^[^#\n]*?\b" + re.escape(option) + r'\s*=\s*"([^"\\$]*)"\s*;'
    match = re.search(pattern, text)
    return match.group(1) if match else None


def device_path(spec: str) -> str:
    """fstab's UUID=/LABEL=/PARTUUID= forms as the /dev/disk/by-* path NixOS wants."""
    for prefix, directory in (
        ("UUID=", "by-uuid"),
        ("LABEL=", "by-label"),
        ("PARTUUID=", "by-partuuid"),
        ("PARTLABEL=", "by-partlabel"),
    ):
        if spec.startswith(prefix):
            return f"/dev/disk/{directory}/{spec[len(prefix) :]}"
    return spec


def _time_zone(root: Path) -> Found | None:
    try:
        target = os.readlink(root / "etc/localtime")
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        return Found(value=target.rsplit("zoneinfo/", 1)[1], source="etc/localtime")
    zone = (_read(root, "etc/timezone") or "").strip()
    return Found(value=zone, source="etc/timezone") if zone else None


def _swaps(root: Path) -> list[Found]:
    from_fstab = []
    for line in (_read(root, "etc/fstab") or "").splitlines():
        words = line.split()
        if len(words) >= 3 and not words[0].startswith("#") and words[2] == "swap":
            from_fstab.append(Found(value=device_path(words[0]), source="etc/fstab"))
    if from_fstab:
        return from_fstab
    active = []
    for line in (_read(root, "proc/swaps") or "").splitlines()[1:]:
        words = line.split()
        if words and not words[0].startswith("/dev/zram"):  # zram is made at boot, not kept
            active.append(Found(value=words[0], source="proc/swaps"))
    return active


def _resume(root: Path, nixos: str | None) -> Found | None:
    for word in (_read(root, "proc/cmdline") or "").split():
        if word.startswith("resume=") and len(word) > len("resume="):
            return Found(value=device_path(word[len("resume=") :]), source="proc/cmdline")
    resume = _assignments(_read(root, "etc/initramfs-tools/conf.d/resume")).get("RESUME")
    if resume and resume != "none":
        return Found(value=device_path(resume), source="etc/initramfs-tools/conf.d/resume")
    value = _nix_option(nixos, "boot.resumeDevice")
    return Found(value=value, source=NIXOS_CONFIGURATION) if value else None


def _first(*candidates: tuple[str | None, str]) -> Found | None:
    for value, source in candidates:
        if value:
            return Found(value=value, source=source)
    return None


def _hostname(root: Path, nixos: str | None) -> Found | None:
    name = (_read(root, "etc/hostname") or "").strip().split(".")[0]
    try:
        return Found(value=check_hostname(name), source="etc/hostname")
    except ValueError:
        value = _nix_option(nixos, "networking.hostName")
        return Found(value=value, source=NIXOS_CONFIGURATION) if value else None


def read_settings(root: Path) -> HostSettings:
    """The host's base settings; a value the live files lack is taken from configuration.nix."""
    nixos = _read(root, NIXOS_CONFIGURATION)
    locale_conf = _assignments(_read(root, "etc/locale.conf"))
    default_locale = _assignments(_read(root, "etc/default/locale"))
    vconsole = _assignments(_read(root, "etc/vconsole.conf"))
    keyboard = _assignments(_read(root, "etc/default/keyboard"))
    xorg = _read(root, "etc/X11/xorg.conf.d/00-keyboard.conf") or ""

    def xorg_option(name: str) -> str | None:
        match = re.search(r'(?m)^\s*Option\s+"' + name + r'"\s+"([^"]*)"', xorg)
        return match.group(1) if match else None

    def nix(option: str) -> tuple[str | None, str]:
        return _nix_option(nixos, option), NIXOS_CONFIGURATION

    xkb_file = "etc/X11/xorg.conf.d/00-keyboard.conf"
    return HostSettings(
        hostname=_hostname(root, nixos),
        time_zone=_time_zone(root) or _first(nix("time.timeZone")),
        locale=_first(
            (locale_conf.get("LANG"), "etc/locale.conf"),
            (default_locale.get("LANG"), "etc/default/locale"),
            nix("i18n.defaultLocale"),
        ),
        console_keymap=_first(
            (vconsole.get("KEYMAP"), "etc/vconsole.conf"),
            nix("console.keyMap"),
            # Debian's console-setup follows the X11 layout.
            (keyboard.get("XKBLAYOUT", "").split(",")[0], "etc/default/keyboard"),
        ),
        console_font=_first((vconsole.get("FONT"), "etc/vconsole.conf"), nix("console.font")),
        xkb_layout=_first(
            (keyboard.get("XKBLAYOUT"), "etc/default/keyboard"),
            (xorg_option("XkbLayout"), xkb_file),
            nix("services.xserver.xkb.layout"),
            nix("services.xserver.layout"),
        ),
        xkb_variant=_first(
            (keyboard.get("XKBVARIANT"), "etc/default/keyboard"),
            (xorg_option("XkbVariant"), xkb_file),
            nix("services.xserver.xkb.variant"),
        ),
        xkb_options=_first(
            (keyboard.get("XKBOPTIONS"), "etc/default/keyboard"),
            (xorg_option("XkbOptions"), xkb_file),
            nix("services.xserver.xkb.options"),
        ),
        state_version=_first(nix("system.stateVersion")),
        swap_devices=_swaps(root),
        resume_device=_resume(root, nixos),
    )
