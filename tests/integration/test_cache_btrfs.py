"""The snapshot cache on a real btrfs: read-only subvolumes, made and pruned.

This host's file systems are not btrfs, so the test makes one: a 200 MiB
image file, mkfs.btrfs, mounted with a loop device inside a mount namespace
of the test's own (``unshare -m``; the loop device is released when that
namespace's mount goes). The cache runs there in a child process and says
what it made; the test checks it with btrfs's own tools from inside.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("mkfs.btrfs") is None or not Path("/dev/loop-control").exists(),
        reason="needs btrfs-progs (make deps installs it) and loop devices",
    ),
]

CHILD = r"""
import asyncio, json, os, subprocess, sys
from pathlib import Path
from opdbus.config import CacheConfig
from opdbus.services.snapshots import SnapshotCache

mnt = Path(sys.argv[1])

def ro(path):
    try:
        (path / "new-file").write_text("x")
    except OSError as e:
        return e.errno == 30  # EROFS
    return False

async def main():
    src = mnt / "src"
    src.mkdir()
    (src / "a.nix").write_text("{ a = 1; }\n")
    (src / "sub").mkdir()
    (src / "sub" / "link").symlink_to("../a.nix")
    cache = SnapshotCache(CacheConfig(enabled=True, max_bytes=10**9), mnt / "state")
    await cache.start()
    first = await cache.keep_tree(src, "before-one")
    (src / "a.nix").write_text("{ a = 2; }\n")
    subprocess.run(["btrfs", "subvolume", "create", str(mnt / "vol")], check=True,
                   capture_output=True)
    (mnt / "vol" / "f").write_text("in a subvolume\n")
    second = await cache.keep_tree(mnt / "vol", "whole-subvolume")
    point = await cache.keep_checkpoint({"id": "abc123", "sections": {}})
    listed = await cache.list()
    out = {
        "btrfs": cache._btrfs,
        "first": [first.btrfs, os.stat(first.path).st_ino, ro(first.path),
                  (first.path / "a.nix").read_text(), os.readlink(first.path / "sub" / "link")],
        "second": [second.btrfs, ro(second.path), (second.path / "f").read_text()],
        "checkpoint": [point.kind, point.id, oct(os.stat(point.path).st_mode & 0o777)],
        "listed": [(s.kind, s.id, s.btrfs) for s in listed],
    }
    # A limit of one byte: pruning deletes the older subvolume, the newest stays.
    small = SnapshotCache(CacheConfig(enabled=True, max_bytes=1), mnt / "state")
    await small.start()
    await small.keep_tree(src, "before-three")
    out["after_prune"] = [(s.kind, s.id) for s in await small.list()]
    out["subvolumes"] = subprocess.run(
        ["btrfs", "subvolume", "list", "-o", str(mnt / "state" / "@cache" / "source")],
        capture_output=True, text=True, check=True).stdout.count("@cache/source/")
    print(json.dumps(out))

asyncio.run(main())
"""


def test_trees_are_kept_as_read_only_subvolumes_and_pruned(tmp_path: Path) -> None:
    image, mnt, child = tmp_path / "btrfs.img", tmp_path / "mnt", tmp_path / "child.py"
    mnt.mkdir()
    child.write_text(CHILD)
    subprocess.run(["truncate", "-s", "200M", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    script = f'set -e; mount -o loop "{image}" "{mnt}"; "{sys.executable}" "{child}" "{mnt}"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["btrfs"] is True
    btrfs, inode, read_only, text, link = out["first"]
    assert btrfs and inode == 256 and read_only  # a read-only subvolume
    assert text == "{ a = 1; }\n" and link == "../a.nix"  # as it was, symlinks kept
    assert out["second"] == [True, True, "in a subvolume\n"]  # btrfs subvolume snapshot -r
    assert out["checkpoint"] == ["checkpoints", "abc123", "0o400"]
    assert out["listed"] == [
        ["source", "before-one", True],
        ["source", "whole-subvolume", True],
        ["checkpoints", "abc123", False],
    ]
    assert out["after_prune"] == [["checkpoints", "abc123"], ["source", "before-three"]]
    assert out["subvolumes"] == 1  # the pruned ones are deleted subvolumes, not left behind
