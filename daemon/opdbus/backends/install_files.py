"""The installer's file work: replace a file or a tree with a backup, or put it all back.

Every replacement is staged beside its target (same file system), then put
in place with a rename; what was there is kept as ``<name>.bak-<time>``
(seed 001: "Preserves existing configurations with backup"). A file that
would not change is left alone, with no backup, so a second run changes
nothing. Each replacement is recorded as a :class:`Change`, so an install
that fails later can put back exactly what it replaced. Blocking: call from
a thread.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opdbus.backends import files, sync_tree
from opdbus.backends.files import fsync_dir


@dataclass(frozen=True)
class Change:
    path: Path
    backup: Path | None  # what was there, moved aside; None: nothing was there


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _backup_name(path: Path, when: str) -> Path:
    backup = path.with_name(f"{path.name}.bak-{when}")
    n = 1
    while os.path.lexists(backup):  # two runs within a second
        backup = path.with_name(f"{path.name}.bak-{when}-{n}")
        n += 1
    return backup


def ensure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


# -- one file ---------------------------------------------------------------------


def differs(path: Path, data: bytes, mode: int) -> bool:
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            return True
        return path.read_bytes() != data
    except FileNotFoundError:
        return True


def stage_file(path: Path, data: bytes, mode: int) -> Path:
    """``data`` synced in a temporary file beside ``path`` (its directory made if need be)."""
    ensure_dir(path.parent)
    return files.stage(path, data, mode=mode)


def commit_file(path: Path, staged: Path, when: str) -> Change:
    """Put ``staged`` at ``path``; the old file stays until the rename, then is the backup."""
    backup = None
    if os.path.lexists(path):
        backup = _backup_name(path, when)
        os.link(path, backup, follow_symlinks=False)
    try:
        os.replace(staged, path)
    except BaseException:
        if backup is not None:
            backup.unlink()
        raise
    fsync_dir(path.parent)
    return Change(path, backup)


def discard(staged: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if staged.is_dir() and not staged.is_symlink():
            shutil.rmtree(staged)
        else:
            staged.unlink()


def link(path: Path, target: Path, when: str) -> Change | None:
    """``path`` as a symlink to ``target`` (None if it already is one)."""
    with contextlib.suppress(OSError):
        if os.readlink(path) == str(target):
            return None
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    discard(tmp)
    os.symlink(target, tmp)
    try:
        return commit_file(path, tmp, when)
    except BaseException:
        discard(tmp)
        raise


# -- a tree -----------------------------------------------------------------------


def _rel(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _ignore(root: str) -> Callable[[str, list[str]], set[str]]:
    """copytree's filter: what the smart sync never touches is not installed either
    (seed 001's exclusions: .git/, result/, target/, tools/target/, var/, *.socket)."""

    def ignore(directory: str, entries: list[str]) -> set[str]:
        prefix = os.path.relpath(directory, root)
        prefix = "" if prefix == "." else prefix
        return {e for e in entries if sync_tree.excluded(_rel(prefix, e))}

    return ignore


def same_tree(source: Path, target: Path) -> bool:
    """Whether ``target`` holds exactly what ``source`` does (names, kinds, modes, bytes, links)."""

    def listing(directory: Path, prefix: str) -> dict[str, os.DirEntry[str]]:
        return {
            e.name: e for e in os.scandir(directory) if not sync_tree.excluded(_rel(prefix, e.name))
        }

    def walk(a: Path, b: Path, prefix: str) -> bool:
        try:
            left, right = listing(a, prefix), listing(b, prefix)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if left.keys() != right.keys():
            return False
        for name, x in left.items():
            y = right[name]
            sx, sy = x.stat(follow_symlinks=False), y.stat(follow_symlinks=False)
            if stat.S_IFMT(sx.st_mode) != stat.S_IFMT(sy.st_mode):
                return False
            if x.is_symlink():
                if os.readlink(x.path) != os.readlink(y.path):
                    return False
            elif x.is_dir(follow_symlinks=False):
                if not walk(Path(x.path), Path(y.path), _rel(prefix, name)):
                    return False
            elif stat.S_IMODE(sx.st_mode) != stat.S_IMODE(sy.st_mode) or not filecmp.cmp(
                x.path, y.path, shallow=False
            ):
                return False
        return True

    return walk(source, target, "")


def stage_tree(source: Path, target: Path) -> Path:
    """A copy of ``source`` beside ``target`` (symlinks kept as links, excludes left out)."""
    ensure_dir(target.parent)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent))
    os.rmdir(staged)
    try:
        shutil.copytree(source, staged, symlinks=True, ignore=_ignore(str(source)))
    except BaseException:
        discard(staged)
        raise
    return staged


def commit_tree(target: Path, staged: Path, when: str) -> Change:
    """The staged tree in place in one step (the sync's swap: what it never touches,
    .git/ and var/, stays in the live tree); the old one becomes the backup."""
    backup = _backup_name(target, when) if os.path.lexists(target) else None
    sync_tree.swap(target, staged)
    if backup is not None:
        os.rename(staged, backup)  # what the swap left there: the old tree
    fsync_dir(target.parent)
    return Change(target, backup)


# -- putting it back --------------------------------------------------------------


def restore(change: Change) -> None:
    """Undo one change: the backup back at its path, or what was made removed."""
    path = change.path
    if change.backup is None:
        discard(path)
    elif path.is_dir() and not path.is_symlink():
        sync_tree.swap(path, change.backup)  # the live tree's .git/ and var/ go back with it
        shutil.rmtree(change.backup)
    else:
        os.replace(change.backup, path)
    fsync_dir(path.parent)
