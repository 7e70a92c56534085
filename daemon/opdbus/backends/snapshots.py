"""Snapshots kept under ``<state>/@cache``: read-only copies of what op-dbus is about to change.

Blocking (tree walks, subprocesses): run these in a thread. Two kinds:
``checkpoints`` (a state checkpoint's JSON, one read-only file each) and
``source`` (the configuration source tree as it was before a sync or a
rollback replaced it). A tree is kept as a read-only btrfs subvolume when
the state directory is on btrfs and btrfs-progs are installed (a snapshot
when the tree is itself a subvolume, else reflinked copies: no data
copied), otherwise as a hard-linked tree. A hard link shares the file with
the live tree: sync never writes a file in place (it writes a new one and
renames it), so a snapshot keeps its bytes -- but an edit by hand in place
would show in both. Names are ``<created µs>-<label>``, so they sort by age.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("checkpoints", "source")
BTRFS_TIMEOUT = 600.0  # a big tree copied with reflinks still walks every file


@dataclass(frozen=True)
class Snapshot:
    kind: str  # "checkpoints" or "source"
    id: str  # the label: a checkpoint's id, a tree's reason
    created_us: int
    bytes: int  # apparent size of what it holds
    path: Path
    btrfs: bool = False


def filesystem_type(path: Path) -> str:
    """The type of the file system ``path`` is on (longest mount point that holds it)."""
    path = path.resolve()
    best, kind = "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            mount = left.split()[4].replace("\\040", " ")
            if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(
                mount
            ) >= len(best):
                best, kind = mount, right.split()[0]
    return kind


def can_btrfs(directory: Path) -> bool:
    return filesystem_type(directory) == "btrfs" and shutil.which("btrfs") is not None


def _btrfs(*args: str) -> None:
    done = subprocess.run(
        ["btrfs", *args], capture_output=True, text=True, timeout=BTRFS_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise OSError(0, f"btrfs {' '.join(args[:2])}: {done.stderr.strip() or done.returncode}")


def _is_subvolume(path: Path) -> bool:
    # btrfs gives every subvolume's root inode 256 (elsewhere 256 is just a number).
    return path.stat().st_ino == 256 and filesystem_type(path) == "btrfs"


def link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a tree of hard links to ``src``'s files (symlinks copied, modes kept)."""
    dst.mkdir(mode=0o700)
    for root, dirs, files in os.walk(src):
        here = Path(root)
        there = dst / here.relative_to(src)
        for name in dirs:
            source = here / name
            if source.is_symlink():
                os.symlink(os.readlink(source), there / name)
            else:
                (there / name).mkdir()
                shutil.copystat(source, there / name, follow_symlinks=False)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for name in files:
            source = here / name
            if source.is_symlink():
                os.symlink(os.readlink(source), there / name)
            elif stat.S_ISREG(source.lstat().st_mode):
                os.link(source, there / name)
    shutil.copystat(src, dst)


def keep_tree(src: Path, dst: Path, *, btrfs: bool) -> bool:
    """Keep ``src`` as it is now at ``dst``; True if as a btrfs subvolume."""
    if btrfs:
        if _is_subvolume(src):
            _btrfs("subvolume", "snapshot", "-r", str(src), str(dst))
            return True
        _btrfs("subvolume", "create", str(dst))
        try:
            done = subprocess.run(
                ["cp", "-a", "--reflink=auto", f"{src}/.", str(dst)],
                capture_output=True,
                text=True,
                timeout=BTRFS_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                raise OSError(0, f"cp --reflink: {done.stderr.strip()}")
            _btrfs("property", "set", "-ts", str(dst), "ro", "true")
        except BaseException:
            remove(dst)
            raise
        return True
    tmp = dst.with_name(dst.name + ".partial")
    try:
        link_tree(src, tmp)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return False


def keep_file(data: dict[str, Any], dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
    tmp.chmod(0o400)
    tmp.rename(dst)


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).lstat().st_size
    return total


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            if _is_subvolume(path) and shutil.which("btrfs"):
                _btrfs("property", "set", "-ts", str(path), "ro", "false")
                _btrfs("subvolume", "delete", str(path))
                return
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def entries(root: Path, known: dict[Path, Snapshot]) -> list[Snapshot]:
    """Every finished snapshot, oldest first (a ``.partial`` one is a crash's leftover).

    ``known``: snapshots already looked at, by path. A snapshot never changes,
    so its tree is walked (for its size) once, not on every listing; ``known``
    is updated to what is there now.
    """
    out: list[Snapshot] = []
    for kind in KINDS:
        with contextlib.suppress(FileNotFoundError):
            for path in (root / kind).iterdir():
                created, _, label = path.name.partition("-")
                if path.name.endswith(".partial") or not created.isdigit():
                    continue
                snap = known.get(path)
                if snap is None:
                    btrfs = path.is_dir() and _is_subvolume(path)
                    label = label.removesuffix(".json")
                    snap = Snapshot(kind, label, int(created), size(path), path, btrfs)
                out.append(snap)
    known.clear()
    known.update((snap.path, snap) for snap in out)
    return sorted(out, key=lambda s: (s.created_us, s.kind))


def remove_partial(root: Path) -> list[Path]:
    gone = []
    for kind in KINDS:
        with contextlib.suppress(FileNotFoundError):
            for path in (root / kind).glob("*.partial"):
                remove(path)
                gone.append(path)
    return gone


def new_path(root: Path, kind: str, label: str, suffix: str = "") -> Path:
    (root / kind).mkdir(parents=True, exist_ok=True, mode=0o700)
    return root / kind / f"{time.time_ns() // 1000}-{label}{suffix}"


def copy_tree(src: Path, dst: Path) -> None:
    """A real copy (a restored tree must not share files with its snapshot)."""
    shutil.copytree(src, dst, symlinks=True)
