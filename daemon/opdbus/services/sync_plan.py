"""Smart sync's planning: is the remote tree safe, what is here, what differs.

Blocking (file hashing): run these in a thread. Local files are compared by
their git blob SHA-1 (``sha1("blob <size>\\0" + content)``, what the tree
lists); a stat cache (size, mtime, inode) spares re-reading a file that has
not changed since the last run.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

from opdbus.backends.githost import TreeEntry
from opdbus.errors import BackendFailed, Conflict

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

    def sha(self, rel: str, full: Path, st: os.stat_result) -> tuple[str, bool]:
        """(blob sha, whether the file had to be read)."""
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        known = self.entries.get(rel)
        if known is not None and known[:3] == key:
            return str(known[3]), False
        sha = _file_sha(full, st.st_size)
        self.entries[rel] = [*key, sha]
        return sha, True


def local_state(target: Path, rel: str, cache: StatCache) -> tuple[str, str, bool] | None:
    """(blob sha, mode, was read) of what is at ``rel`` now, or None if nothing is."""
    full = target / rel
    try:
        st = full.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return blob_sha(os.readlink(full).encode()), MODE_LINK, False
    if not stat.S_ISREG(st.st_mode):
        return "", "", False  # a directory or a socket where a file goes: replace it
    sha, read = cache.sha(rel, full, st)
    return sha, MODE_EXEC if st.st_mode & 0o100 else MODE_FILE, read


def walk_local(target: Path) -> list[str]:
    """Every file and symlink under target (relative), skipping the exclusions."""
    found: list[str] = []
    for root, dirs, files in os.walk(target):
        rel_root = os.path.relpath(root, target)
        rel_root = "" if rel_root == "." else rel_root + "/"
        kept = []
        for d in dirs:
            rel = rel_root + d
            if excluded(rel):
                continue
            if os.path.islink(os.path.join(root, d)):
                found.append(rel)  # a symlink to a directory is a link, not a tree
            else:
                kept.append(d)
        dirs[:] = kept
        found += [rel_root + f for f in files if not excluded(rel_root + f)]
    return found


def plan(target: Path, remote: dict[str, Remote], cache: StatCache) -> Plan:
    """Compare the tree with what is under target. Blocking: call it in a thread."""
    result = Plan(remote)
    for rel in sorted(remote):
        _check_parents(target, rel)
        here = local_state(target, rel, cache)
        result.compared += 1
        if here is not None and here[2]:
            result.hashed += 1
        if here is None or (here[0], here[1]) != (remote[rel].sha, remote[rel].mode):
            result.fetch.append(rel)
    if target.is_dir():
        result.remove = sorted(rel for rel in walk_local(target) if rel not in remote)
    live = set(remote)
    cache.entries = {k: v for k, v in cache.entries.items() if k in live}
    return result


def _check_parents(target: Path, rel: str) -> None:
    """Writing rel must not follow a symlinked directory here out of the target."""
    parent = target
    for part in rel.split("/")[:-1]:
        parent = parent / part
        if parent.is_symlink():
            raise Conflict(
                f"{parent} is a symlink here, and the tree has files under it: "
                "refusing to write through it (remove it, or sync with force_full)"
            )
