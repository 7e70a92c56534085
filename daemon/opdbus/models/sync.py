"""Options of the sync, rebuild and update jobs (seed 001's scripts' flags)."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, ConfigDict

from opdbus.models.base import Model

_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
# A branch, tag or SHA: git's ref rules, roughly, and never an option.
_REF = re.compile(r"[A-Za-z0-9._/-]{1,255}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _check_repo(text: str) -> str:
    if not _REPO.fullmatch(text) or ".." in text:
        raise ValueError(f"{text!r} is not owner/name")
    return text


def _check_ref(text: str) -> str:
    if not _REF.fullmatch(text) or text.startswith(("-", "/")) or ".." in text:
        raise ValueError(f"{text!r} is not a branch, tag or commit SHA")
    return text


def _check_target(text: str) -> str:
    path = PurePosixPath(text)
    if not path.is_absolute() or ".." in path.parts or len(path.parts) < 3:
        raise ValueError(f"{text!r}: the target is an absolute path at least two levels deep")
    return str(path)


def _check_host(text: str) -> str:
    if not _HOST.fullmatch(text):
        raise ValueError(f"{text!r} is not a host name")
    return text


class _Strict(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyncOptions(_Strict):
    repo: Annotated[str, AfterValidator(_check_repo)] | None = None  # default: sync.repo
    ref: Annotated[str, AfterValidator(_check_ref)] = "main"
    target: Annotated[str, AfterValidator(_check_target)] | None = None  # default: source_dir
    dry_run: bool = False  # download and verify, install nothing
    check_only: bool = False  # compare only: no downloads
    skip_validation: bool = False  # do not check downloads against their SHA-1
    force_full: bool = False  # the tarball, not the changed files
    rollback: bool = False  # the tree before the last sync, from the snapshot cache


class RebuildAction(StrEnum):
    BUILD = "build"
    TEST = "test"
    SWITCH = "switch"
    BOOT = "boot"
    DRY_BUILD = "dry-build"
    DRY_ACTIVATE = "dry-activate"


class RebuildOptions(_Strict):
    flake: Annotated[str, AfterValidator(_check_target)] | None = None  # default: flake_dir
    host: Annotated[str, AfterValidator(_check_host)] | None = None  # default: hostname
    show_trace: bool = False
    impure: bool = True
    refresh: bool = False  # the seed's --refresh and zero cache TTLs
    fast: bool = False  # the seed's --fast: 25 download connections, every core


class UpdateOptions(_Strict):
    ref: Annotated[str, AfterValidator(_check_ref)] = "main"
    check_only: bool = False
    skip_rebuild: bool = False
    force_full: bool = False
    rebuild_action: RebuildAction = RebuildAction.SWITCH
