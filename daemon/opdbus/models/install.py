"""The installer's options and what it finds on the host (seed 001 "System Installer").

A host becomes a hypervisor by MigrateHostSettings (its users and base
settings written as Nix) and Install (source, flake link, hardware
configuration, migration, rebuild). These are the options of both and the
host's facts they carry from the files the host keeps to the Nix files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from opdbus.models.base import Model

# A NixOS networking.hostName: one DNS label (RFC 1123), at most 63 characters.
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# What useradd accepts for a login name (and nothing a shell would read specially).
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,30}\$?")

# The groups every migrated user gains: seed 001, "User Migration".
HYPERVISOR_GROUPS = ("input", "kvm", "libvirtd", "video", "wheel")
# Groups a NixOS system has (or a hypervisor configuration adds): a Debian
# host's other system groups (cdrom, plugdev, netdev, sudo, ...) do not
# exist there, so they are left out, and the log says which.
NIXOS_GROUPS = frozenset(
    {
        *HYPERVISOR_GROUPS,
        "adm", "audio", "dialout", "disk", "docker", "lp", "networkmanager",
        "render", "systemd-journal", "tty", "users", "uucp",
    }
)  # fmt: skip


def check_hostname(text: str) -> str:
    if not _HOSTNAME.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a host name: 1 to 63 letters, digits and inner hyphens, no dots"
        )
    return text


def _check_user(text: str) -> str:
    if not _USER.fullmatch(text):
        raise ValueError(f"{text!r} is not a user name")
    return text


def _check_source(text: str) -> str:
    path = PurePosixPath(text)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ValueError(f"{text!r}: the source is an absolute path below /, without '..'")
    return str(path)


Hostname = Annotated[str, AfterValidator(check_hostname)]
UserName = Annotated[str, AfterValidator(_check_user)]


class _Strict(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MigrateOptions(_Strict):
    dry_run: bool = False  # detect and report; write nothing
    users: list[UserName] | None = Field(None, max_length=4096)  # default: every UID >= 1000
    # Who ran the client under sudo (opctl passes $SUDO_UID); default: the caller.
    invoking_uid: int | None = Field(None, ge=0, le=2**32 - 2)
    hostname: Hostname | None = None  # default: the host's own


class InstallAction(StrEnum):
    BUILD = "build"
    TEST = "test"
    SWITCH = "switch"


class InstallOptions(_Strict):
    hostname: Hostname | None = None  # default: the host's own
    action: InstallAction | None = None  # default: test, then switch
    force: bool = False  # replace an existing, different source tree (a backup is kept)
    source: Annotated[str, AfterValidator(_check_source)] | None = None  # required
    reboot: bool = False  # after a successful switch
    fast: bool = False  # the seed's parallel download settings for the rebuild
    skip_update_check: bool = False  # offline: no smart sync of the copied source
    users: list[UserName] | None = Field(None, max_length=4096)
    invoking_uid: int | None = Field(None, ge=0, le=2**32 - 2)


@dataclass(frozen=True, slots=True)
class HostUser:
    """One account as read (a plain dataclass: a host has thousands, built in one go)."""

    name: str
    uid: int
    description: str
    home: str
    shell: str
    group: str  # the primary group's name
    gid: int
    groups: tuple[str, ...]  # supplementary groups, as NixOS will have them
    password_hash: str | None  # from the shadow file; None if it has no entry
    invoking: bool = False


class Found(_Strict):
    """One host setting and the file it was read from."""

    value: str
    source: str


class HostSettings(_Strict):
    hostname: Found | None = None
    time_zone: Found | None = None
    locale: Found | None = None
    console_keymap: Found | None = None
    console_font: Found | None = None
    xkb_layout: Found | None = None
    xkb_variant: Found | None = None
    xkb_options: Found | None = None
    state_version: Found | None = None
    swap_devices: list[Found] = Field(default_factory=list)
    resume_device: Found | None = None

    def missing(self) -> list[str]:
        return [
            name for name, value in self if value is None or (name == "swap_devices" and not value)
        ]
