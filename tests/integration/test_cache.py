"""The snapshot cache (cache.enabled; NixOS enableCache): kept checkpoints and source trees.

Sync runs against the local Git host stand-in (tests/githost_server.py); the
trees are compared file by file with what the repository held. This
machine's file systems are not btrfs, so trees are kept as hard-linked
trees here; test_cache_btrfs.py makes a btrfs of its own for the other path.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opdbus import errors, names
from opdbus.models.job import JobState
from opdbus.sandbox import PrivateBus
from tests.githost_server import FakeGitHub, Files, serve
from tests.integration.test_sync import expected, manifest, sync, sync_config
from tests.support import opctl, running

pytestmark = pytest.mark.timeout(120)


def small_repository(version: int) -> Files:
    files: Files = {
        f"modules/m{i}.nix": ("100644", f"# module {i}, version {version}\n".encode())
        for i in range(50)
    }
    files["flake.nix"] = ("100644", f"{{ version = {version}; }}\n".encode())
    files["docs/latest"] = ("120000", b"../flake.nix")
    files["README.md"] = ("100644", b"# the same in every version\n")
    if version == 1:
        files["old-only.nix"] = ("100644", b"# gone in version 2\n")
    return files


@pytest.fixture
async def github() -> AsyncIterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    fake.commit(small_repository(1))
    runner, url = await serve(fake)
    try:
        yield fake, url
    finally:
        await runner.cleanup()


def cached(**cache: Any) -> dict[str, Any]:
    return {"cache": {"enabled": True, **cache}}


async def snapshots(client: Client, kind: str = "") -> list[tuple[str, str, int, int, str]]:
    (rows,) = await client.call(names.ROOT_PATH, names.MANAGER_IFACE, "ListSnapshots", "s", [kind])
    return [(str(k), str(i), int(c), int(b), str(p)) for k, i, c, b, p in rows]


async def test_sync_keeps_the_tree_it_replaces_and_rollback_puts_it_back(
    tmp_path: Path, private_bus: PrivateBus, github: tuple[FakeGitHub, str], client: Client
) -> None:
    fake, url = github
    target = tmp_path / "hypervisor" / "src"
    async with running(tmp_path, private_bus, **sync_config(url), **cached()):
        first = await sync(client)
        assert first.state is JobState.SUCCEEDED, first.result
        assert await snapshots(client) == []  # nothing was there to keep
        fake.commit(small_repository(2))
        second = await sync(client)
        assert second.state is JobState.SUCCEEDED, second.result
        assert manifest(target) == expected(small_repository(2))
        ((kind, label, created, size, path),) = await snapshots(client, "source")
        assert kind == "source" and label.startswith("before-") and size > 0
        assert abs(created - time.time_ns() // 1000) < 60_000_000
        assert manifest(Path(path)) == expected(small_repository(1))  # kept as it was
        log = [line.text for line in await client.job_log(names.job_path(second.id))]
        assert any(f"kept the tree as it was: {path}" in text for text in log)
        # A file sync did not change is the live tree's own (a hard link: no copy).
        assert os.stat(Path(path) / "README.md").st_ino == os.stat(target / "README.md").st_ino
        assert os.stat(Path(path) / "flake.nix").st_ino != os.stat(target / "flake.nix").st_ino
        back = await sync(client, rollback=True)
        assert back.state is JobState.SUCCEEDED, back.result
        assert manifest(target) == expected(small_repository(1))
        assert back.output["mode"] == "rollback" and back.output["snapshot"] == path
        # The tree the rollback replaced was kept too: rolling back again goes forward.
        assert [s[1] for s in await snapshots(client, "source")][-1] == "before-rollback"
        forward = await sync(client, rollback=True)
        assert forward.state is JobState.SUCCEEDED, forward.result
        assert manifest(target) == expected(small_repository(2))
        shown = await asyncio.to_thread(opctl, private_bus.address, "state", "checkpoints", "--all")
        assert shown.returncode == 0, shown.stderr
        assert "source" in shown.stdout and "before-rollback" in shown.stdout


async def test_a_real_checkpoint_lands_in_the_cache(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    lxcpath = tmp_path / "lxc"
    lxcpath.mkdir()
    config = {**cached(), "mode": "full", "lxc": {"path": str(lxcpath)}}
    async with running(tmp_path, private_bus, **config):
        doc = {"lxc": {"containers": [{"id": 900, "name": "cachect"}]}}
        done = await client.run_job(lambda: client.state_apply(json.dumps(doc), dry_run=False))
        checkpoint = done.output.get("checkpoint")
        try:
            assert done.state is JobState.SUCCEEDED, done.result
            ((kind, label, _created, size, path),) = await snapshots(client, "checkpoints")
            assert (kind, label) == ("checkpoints", checkpoint) and size > 0
            mode = stat.S_IMODE(os.stat(path).st_mode)
            assert mode == 0o400, oct(mode)
            kept = json.loads(Path(path).read_text())
            assert kept["id"] == checkpoint and kept["created"] == {"lxc": ["cachect"]}
            shown = await asyncio.to_thread(opctl, private_bus.address, "state", "checkpoints")
            assert shown.returncode == 0 and checkpoint in shown.stdout, shown.stdout
            assert "AGE" in shown.stdout and " B " in shown.stdout
        finally:
            await client.run_job(lambda: client.state_apply(json.dumps({"lxc": {}}), prune=True))


async def test_pruning_keeps_the_newest_of_each_kind_within_the_size_limit(
    tmp_path: Path, private_bus: PrivateBus, github: tuple[FakeGitHub, str], client: Client
) -> None:
    fake, url = github
    async with running(tmp_path, private_bus, **sync_config(url), **cached(max_bytes=1)):
        assert (await sync(client)).state is JobState.SUCCEEDED
        for version in (2, 3, 4):
            fake.commit(small_repository(version))
            assert (await sync(client)).state is JobState.SUCCEEDED
        kept = await snapshots(client, "source")
        assert len(kept) == 1  # over the limit: only the newest stays
        assert manifest(Path(kept[0][4])) == expected(small_repository(3))
        left = sorted(p.name for p in (tmp_path / "state" / "@cache" / "source").iterdir())
        assert left == [Path(kept[0][4]).name]


async def test_without_the_cache_listing_and_rollback_say_it_is_off(
    tmp_path: Path, private_bus: PrivateBus, github: tuple[FakeGitHub, str], client: Client
) -> None:
    _fake, url = github
    async with running(tmp_path, private_bus, **sync_config(url)):
        with pytest.raises(errors.NotSupported, match="snapshot cache is off"):
            await snapshots(client)
        with pytest.raises(errors.NotSupported, match="enableCache"):
            await sync(client, rollback=True)
    assert not (tmp_path / "state" / "@cache").exists()


async def test_rollback_with_nothing_kept_is_not_found_and_changes_nothing(
    tmp_path: Path, private_bus: PrivateBus, github: tuple[FakeGitHub, str], client: Client
) -> None:
    _fake, url = github
    target = tmp_path / "hypervisor" / "src"
    async with running(tmp_path, private_bus, **sync_config(url), **cached()):
        assert (await sync(client)).state is JobState.SUCCEEDED
        before = manifest(target)
        done = await sync(client, rollback=True)
        assert done.state is JobState.FAILED and done.error_name == errors.NotFound.dbus_name
        assert "no earlier source tree" in done.result
        assert manifest(target) == before
        with pytest.raises(errors.InvalidArgs, match="cannot be combined with dry_run"):
            await sync(client, rollback=True, dry_run=True)
