"""Smart sync's files: is the remote tree safe, what is here, what differs, and
putting the new files in place.

Blocking (file hashing, renames): run these in a thread. Local files are
compared by their git blob SHA-1 (``sha1("blob <size>\\0" + content)``, what
the tree lists); a stat cache (size, mtime, inode) spares re-reading a file
that has not changed since the last run. New files are staged in a directory
beside the target (``.<target>.sync-*``, same file system) and renamed into
place; a whole tree is swapped in with renameat2(RENAME_EXCHANGE).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import logging
import os
import posixpath
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opdbus.backends.githost import TreeEntry
from opdbus.errors import BackendFailed, Conflict

log = logging.getLogger(__name__)

RENAME_EXCHANGE = 2
AT_FDCWD = -100
STAGING_INFIX = ".sync-"

# Paths never synced nor deleted (the seed's installer exclusions).
EXCLUDED_PREFIXES = (".git/", "result/", "target/", "tools/target/", "var/")
EXCLUDED_SUFFIXES = (".socket",)
CHUNK = 1 << 20

MODE_FILE, MODE_EXEC, MODE_LINK = "100644", "100755", "120000"


def excluded(path: str) -> bool:
    probe = path + "/"
    return probe.startswith(EXCLUDED_PREFIXES) or path.endswith(EXCLUDED_SUFFIXES)


@dataclass(frozen=True)
class Remote:
    sha: str
    mode: str
    size: int


@dataclass
class Plan:
    remote: dict[str, Remote]
    fetch: list[str] = field(default_factory=list)  # changed or missing, sorted
    remove: list[str] = field(default_factory=list)  # here but gone upstream
    compared: int = 0
    hashed: int = 0  # files actually read (not answered by the stat cache)


def safe_tree(entries: list[TreeEntry], commit: str) -> dict[str, Remote]:
    """The tree's files, or BackendFailed naming the first entry that would leave the target."""
    blobs: dict[str, Remote] = {}
    links: set[str] = set()
    for entry in entries:
        path = entry.path
        parts = path.split("/")
        bad = (
            not path
            or path.startswith("/")
            or "\0" in path
            or "\\" in path
            or any(part in ("", ".", "..") for part in parts)
        )
        if bad:
            raise BackendFailed(f"the tree of {commit[:12]} is unsafe: path {path!r}")
        if entry.type != "blob" or excluded(path):
            continue  # trees are implied; submodules and exclusions are not synced
        if entry.mode not in (MODE_FILE, MODE_EXEC, MODE_LINK):
            raise BackendFailed(f"the tree of {commit[:12]} has {path} with mode {entry.mode}")
        blobs[path] = Remote(entry.sha, entry.mode, entry.size)
        if entry.mode == MODE_LINK:
            links.add(path)
    for path in blobs:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in links:
                raise BackendFailed(
                    f"the tree of {commit[:12]} is unsafe: {path} lies under the symlink {parent}"
                )
            parent = parent.rpartition("/")[0]
    return blobs


def check_link_target(path: str, target: bytes, commit: str) -> None:
    """A symlink's text must point inside the target directory."""
    text = target.decode(errors="replace")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), text))
    if text.startswith("/") or resolved == ".." or resolved.startswith("../") or "\0" in text:
        raise BackendFailed(
            f"the tree of {commit[:12]} is unsafe: symlink {path} points outside ({text!r})"
        )


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _file_sha(path: Path, size: int) -> str:
    digest = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class StatCache:
    """path -> (size, mtime_ns, inode, sha), kept as JSON in the state dir."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.entries: dict[str, list[int | str]] = {}

    def load(self) -> None:
        try:
            data = json.loads(self.file.read_text())
            self.entries = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.entries = {}

    def save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, separators=(",", ":")))
        os.replace(tmp, self.file)

    def sha(self, root: str, rel: str, st: os.stat_result) -> tuple[str, bool]:
        """(blob sha, whether the file had to be read)."""
        known = self.entries.get(rel)
        if (
            known is not None
            and known[0] == st.st_size
            and known[1] == st.st_mtime_ns
            and known[2] == st.st_ino
        ):
            return str(known[3]), False
        sha = _file_sha(Path(root, rel), st.st_size)
        self.entries[rel] = [st.st_size, st.st_mtime_ns, st.st_ino, sha]
        return sha, True


def scan(target: Path) -> dict[str, os.stat_result]:
    """Every file, symlink and odd node under target (relative path -> lstat), exclusions
    skipped; one lstat per entry, and symlinked directories are entries, not descended."""
    found: dict[str, os.stat_result] = {}
    stack = [(str(target), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            rel = prefix + entry.name
            if excluded(rel):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, rel + "/"))
            else:
                found[rel] = entry.stat(follow_symlinks=False)
    return found


def plan(target: Path, remote: dict[str, Remote], cache: StatCache) -> Plan:
    """Compare the tree with what is under target. Blocking: call it in a thread."""
    result = Plan(remote)
    here = scan(target)
    root = str(target)
    links = {rel for rel, st in here.items() if stat.S_ISLNK(st.st_mode)}
    for rel in sorted(remote):
        if links:
            _check_parents(target, rel, links)
        want = remote[rel]
        st = here.get(rel)
        result.compared += 1
        if st is None:
            result.fetch.append(rel)
            continue
        if stat.S_ISLNK(st.st_mode):
            sha, mode = blob_sha(os.readlink(target / rel).encode()), MODE_LINK
        elif stat.S_ISREG(st.st_mode):
            sha, read = cache.sha(root, rel, st)
            result.hashed += read
            mode = MODE_EXEC if st.st_mode & 0o100 else MODE_FILE
        else:
            sha, mode = "", ""  # a socket or device where a file goes: replace it
        if (sha, mode) != (want.sha, want.mode):
            result.fetch.append(rel)
    result.remove = sorted(rel for rel in here if rel not in remote)
    cache.entries = {k: v for k, v in cache.entries.items() if k in remote}
    return result


def _check_parents(target: Path, rel: str, links: set[str]) -> None:
    """Writing rel must not follow a symlinked directory here out of the target."""
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        parent = "/".join(parts[:i])
        if parent in links:
            raise Conflict(
                f"{target / parent} is a symlink here, and the tree has files under it: "
                "refusing to write through it (remove it, or sync with force_full)"
            )


# -- staging and installing (blocking) ------------------------------------------------


def staging_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_INFIX}", dir=target.parent))


def remove_stale_staging(target: Path) -> list[Path]:
    """Staging directories a killed sync left beside ``target``; removed, and listed.

    Call it only when no sync runs (at start): they are ours by their name.
    """
    try:
        leftovers = list(target.parent.glob(f".{target.name}{STAGING_INFIX}*"))
    except OSError:
        return []
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s, left by a sync that was killed", path)
    return leftovers


def stage(staging: Path, rel: str, data: bytes, mode: str) -> None:
    path = staging / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == MODE_LINK:
        os.symlink(data.decode(), path)
        return
    path.write_bytes(data)
    path.chmod(0o755 if mode == MODE_EXEC else 0o644)


def install(target: Path, staging: Path, todo: Plan) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for rel in todo.remove:
        path = target / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
    for rel in todo.fetch:
        dst = target / rel
        node = target
        for part in rel.split("/")[:-1]:
            node = node / part
            if node.is_symlink() or (node.exists() and not node.is_dir()):
                node.unlink()  # a file upstream turned into a directory
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)  # a directory upstream turned into a file
        os.replace(staging / rel, dst)
    for rel in todo.remove:
        _prune(target, (target / rel).parent)


def _prune(target: Path, directory: Path) -> None:
    while directory != target and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


def refresh_cache(cache: StatCache, target: Path, todo: Plan) -> None:
    for rel in todo.fetch:
        if todo.remote[rel].mode != MODE_LINK:
            st = (target / rel).lstat()
            cache.entries[rel] = [st.st_size, st.st_mtime_ns, st.st_ino, todo.remote[rel].sha]


def unpack(data: bytes, into: Path, commit: str) -> int:
    """The tarball's files under ``into`` (its top directory stripped), checked like a tree."""
    # tarfile (~0.8 MiB resident with its compressors) loads only when a sync
    # falls back to a tarball: a daemon that never syncs never needs it.
    import tarfile

    into.mkdir(parents=True)
    files = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            rel = member.name.partition("/")[2].rstrip("/")
            if not rel or member.isdir() or excluded(rel):
                continue
            parts = rel.split("/")
            if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise BackendFailed(f"the tarball of {commit[:12]} is unsafe: path {rel!r}")
            dst = into / rel
            for parent in dst.relative_to(into).parents:
                if parent != Path(".") and (into / parent).is_symlink():
                    raise BackendFailed(
                        f"the tarball of {commit[:12]} is unsafe: {rel} lies under a symlink"
                    )
            dst.parent.mkdir(parents=True, exist_ok=True)
            if member.issym():
                check_link_target(rel, member.linkname.encode(), commit)
                os.symlink(member.linkname, dst)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                dst.write_bytes(source.read())
                dst.chmod(0o755 if member.mode & 0o100 else 0o644)
            else:
                raise BackendFailed(f"the tarball of {commit[:12]} has {rel} of an odd kind")
            files += 1
    return files


def swap(target: Path, new: Path) -> None:
    """Put ``new`` where ``target`` is in one step; keep the excluded paths the old one had."""
    if not target.exists():
        os.rename(new, target)
        return
    for prefix in (".git", "result", "target", "tools/target", "var"):
        if os.path.lexists(target / prefix) and not os.path.lexists(new / prefix):
            (new / prefix).parent.mkdir(parents=True, exist_ok=True)
            os.rename(target / prefix, new / prefix)
    libc = ctypes.CDLL(None, use_errno=True)
    status = libc.renameat2(
        AT_FDCWD, os.fsencode(new), AT_FDCWD, os.fsencode(target), RENAME_EXCHANGE
    )
    if status != 0:
        raise OSError(ctypes.get_errno(), f"renameat2 {new} <-> {target}")


def load_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def save_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
