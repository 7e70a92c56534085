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
