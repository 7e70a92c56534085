"""Smart sync against a local server speaking the Git host's API (no internet here:
tests/githost_server.py is the stand-in), with a generated repository of a few
thousand files, executables and symlinks among them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opctl.convert import to_variants
from opdbus import names
from opdbus.models.job import JobRecord, JobState
from opdbus.sandbox import PrivateBus
from tests.githost_server import FakeGitHub, Files, serve
from tests.support import running

pytestmark = pytest.mark.timeout(120)

FILES = 2000


def repository(count: int = FILES) -> Files:
    files: Files = {}
    for i in range(count):
        path = f"modules/m{i % 40:02d}/part{i // 40:03d}/file{i}.nix"
        files[path] = ("100644", f"# module {i}\n{{ config, ... }}: {{ }}\n".encode() * (1 + i % 7))
    files["scripts/rebuild_helper.sh"] = ("100755", b"#!/bin/sh\necho rebuild\n")
    files["scripts/smart_sync.sh"] = ("100755", b"#!/bin/sh\necho sync\n")
    files["flake.nix"] = ("100644", b"{ outputs = { self }: { }; }\n")
    files["docs/README.md"] = ("100644", b"# Hyper-NixOS\n")
    files["docs/latest"] = ("120000", b"README.md")  # a symlink inside the tree
    files["config/current"] = ("120000", b"../modules/m00")
    return files


def manifest(root: Path) -> dict[str, tuple[str, str]]:
    """path -> (kind and mode, content hash or link text), for comparing trees."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirs, names_ in os.walk(root):
        for name in [*names_, *[d for d in dirs if os.path.islink(os.path.join(dirpath, d))]]:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = ("link", os.readlink(full))
            else:
                mode = "exec" if full.stat().st_mode & 0o100 else "file"
                out[rel] = (mode, hashlib.sha1(full.read_bytes()).hexdigest())
    return out


def expected(files: Files) -> dict[str, tuple[str, str]]:
    kinds = {"100644": "file", "100755": "exec"}
    return {
        path: ("link", data.decode())
        if mode == "120000"
        else (kinds[mode], hashlib.sha1(data).hexdigest())
        for path, (mode, data) in files.items()
    }


@pytest.fixture
async def github() -> AsyncIterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    fake.commit(repository())
    runner, url = await serve(fake)
    try:
        yield fake, url
    finally:
        await runner.cleanup()


def sync_config(url: str) -> dict[str, Any]:
    return {
        "sync": {
            "repo": "acme/hyper",
            "api_url": url,
            "raw_url": url + "/raw/{repo}/{sha}/{path}",
            "retries": 2,
            "timeout_seconds": 10,
        }
    }


async def sync(client: Client, **options: Any) -> JobRecord:
    async def start() -> str:
        (job,) = await client.call(
            names.ROOT_PATH, names.MANAGER_IFACE, "Sync", "a{sv}", [to_variants(options)]
        )
        return str(job)

    return await client.run_job(start)


async def test_sync_from_empty_then_changes_removals_and_nothing(
    tmp_path: Path, private_bus: PrivateBus, github: tuple[FakeGitHub, str], client: Client
) -> None:
    fake, url = github
    target = tmp_path / "hypervisor" / "src"
    async with running(tmp_path, private_bus, **sync_config(url)):
        first = await sync(client)
        assert first.state is JobState.SUCCEEDED, first.result
        files = repository()
        assert manifest(target) == expected(files)
        assert len(first.output["changed"]) == len(files)

        # Five files change upstream, two go, one is new.
        changed = [path for path in sorted(files) if path.startswith("modules/")][:5]
        for path in changed:
            files[path] = (files[path][0], files[path][1] + b"# changed\n")
        for gone in ("docs/README.md", "scripts/smart_sync.sh"):
            del files[gone]
        files["docs/latest"] = ("120000", b"../flake.nix")
        files["scripts/new_tool.sh"] = ("100755", b"#!/bin/sh\n")
        fake.commit(files)
        fake.requests.clear()
        second = await sync(client)
        assert second.state is JobState.SUCCEEDED, second.result
        assert sorted(second.output["changed"]) == sorted(
            [*changed, "docs/latest", "scripts/new_tool.sh"]
        )
        assert second.output["removed"] == ["docs/README.md", "scripts/smart_sync.sh"]
        assert fake.requests == {"commit": 1, "tree": 1, "raw": 7}
        assert manifest(target) == expected(files)
        assert second.output["hashed"] == 0  # the stat cache answered for every file

        # Nothing changed: conditional requests only, no downloads.
        fake.requests.clear()
        third = await sync(client)
        assert third.result.startswith("up to date at")
        assert fake.requests == {"commit": 1, "tree": 1}
        assert third.output["not_modified"] == 2


async def test_local_extras_exclusions_check_only_dry_run_and_full(
    tmp_path: Path, private_bus: PrivateBus, github: tuple[FakeGitHub, str], client: Client
) -> None:
    fake, url = github
    target = tmp_path / "hypervisor" / "src"
    async with running(tmp_path, private_bus, **sync_config(url)):
        assert (await sync(client)).state is JobState.SUCCEEDED
        (target / "var").mkdir()
        (target / "var" / "state.db").write_text("kept")
        (target / "result").symlink_to("/nix/store/xyz")
        (target / "stray.nix").write_text("not upstream")
        (target / "flake.nix").write_text("edited by hand")
        before = manifest(target)

        checked = await sync(client, check_only=True)
        assert checked.output["changed"] == ["flake.nix"]
        assert checked.output["removed"] == ["stray.nix"]
        assert checked.result.startswith("would update 1 files, deleted 1")
        dry = await sync(client, dry_run=True)
        assert dry.state is JobState.SUCCEEDED and manifest(target) == before

        full = await sync(client, force_full=True)
        assert full.state is JobState.SUCCEEDED, full.result
        assert full.output["mode"] == "full" and fake.requests["tarball"] == 1
        after = manifest(target)
        assert after == expected(repository()) | {
            "var/state.db": before["var/state.db"],
            "result": ("link", "/nix/store/xyz"),
        }


async def test_a_truncated_tree_is_walked(
    tmp_path: Path, private_bus: PrivateBus, github: tuple[FakeGitHub, str], client: Client
) -> None:
    fake, url = github
    fake.truncate = True
    async with running(tmp_path, private_bus, **sync_config(url)):
        record = await sync(client)
        assert record.state is JobState.SUCCEEDED, record.result
        assert manifest(tmp_path / "hypervisor" / "src") == expected(repository())
        assert fake.requests["tree"] > 40  # one per directory


HOSTILE = [
    [{"path": "../escape.nix", "mode": "100644", "type": "blob", "sha": "0" * 40, "size": 1}],
    [{"path": "/etc/evil", "mode": "100644", "type": "blob", "sha": "0" * 40, "size": 1}],
    [
        {
            "path": "docs/latest/inside",
            "mode": "100644",
            "type": "blob",
            "sha": "0" * 40,
            "size": 1,
        },
    ],
]


@pytest.mark.parametrize("entries", HOSTILE, ids=["dotdot", "absolute", "through-symlink"])
async def test_hostile_trees_leave_the_target_as_it_was(
    tmp_path: Path,
    private_bus: PrivateBus,
    github: tuple[FakeGitHub, str],
    client: Client,
    entries: list[dict[str, Any]],
) -> None:
    fake, url = github
    target = tmp_path / "hypervisor" / "src"
    async with running(tmp_path, private_bus, **sync_config(url)):
        assert (await sync(client)).state is JobState.SUCCEEDED
        files = repository()
        files["flake.nix"] = ("100644", b"# new\n")
        fake.commit(files)
        before = manifest(target)
        fake.hostile = entries
        record = await sync(client)
        assert record.state is JobState.FAILED and record.error_name.endswith("BackendFailed")
        assert "is unsafe" in record.result
        assert manifest(target) == before


async def test_faults_fail_cleanly_and_change_nothing(
    tmp_path: Path, private_bus: PrivateBus, github: tuple[FakeGitHub, str], client: Client
) -> None:
    fake, url = github
    target = tmp_path / "hypervisor" / "src"
    async with running(tmp_path, private_bus, **sync_config(url)):
        assert (await sync(client)).state is JobState.SUCCEEDED
        files = repository()
        mods = [path for path in sorted(files) if path.startswith("modules/")]
        for path in mods[:3]:
            files[path] = ("100644", b"# upstream moved on\n")
        files["config/outside"] = ("120000", b"../../../etc/passwd")
        fake.commit(files)
        before = manifest(target)

        outside = await sync(client)
        assert "symlink config/outside points outside" in outside.result
        assert manifest(target) == before
        del files["config/outside"]
        fake.commit(files)

        fake.corrupt = {mods[1]}
        corrupt = await sync(client)
        assert corrupt.error_name.endswith("BackendFailed") and "do not match" in corrupt.result
        assert manifest(target) == before
        fake.corrupt = set()

        fake.cut = {mods[0]: 99}  # every attempt dies mid-file
        cut = await sync(client)
        assert cut.error_name.endswith("BackendUnavailable") and "after 3 attempts" in cut.result
        assert manifest(target) == before
        fake.cut = {mods[0]: 1}  # once: the retry gets it
        retried = await sync(client)
        assert retried.state is JobState.SUCCEEDED
        # The retry is a line of the job's own log, not only of the daemon's.
        log = [line.text for line in await client.job_log(names.job_path(retried.id), 1, 0)]
        assert any("retry 1 of 2 in" in text for text in log), log
        assert manifest(target) == expected(files)

        fake.rate_limited = True
        limited = await sync(client)
        assert limited.error_name.endswith("BackendUnavailable")
        assert "rate limit is used up; it resets at" in limited.result


async def test_the_token_comes_from_the_environment_or_a_private_file(
    tmp_path: Path,
    private_bus: PrivateBus,
    github: tuple[FakeGitHub, str],
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, url = github
    token_file = tmp_path / "github-token"  # beside config.json: the default place
    token_file.write_text("from-file\n")
    token_file.chmod(0o644)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    async with running(tmp_path, private_bus, **sync_config(url)):
        refused = await sync(client, check_only=True)
        assert "readable by others: chmod 600 it" in refused.result
        token_file.chmod(0o600)
        assert (await sync(client, check_only=True)).state is JobState.SUCCEEDED
        assert fake.authorization == "Bearer from-file"
        monkeypatch.setenv("GITHUB_TOKEN", "from-env")
        assert (await sync(client, check_only=True)).state is JobState.SUCCEEDED
        assert fake.authorization == "Bearer from-env"


async def test_a_killed_syncs_staging_is_cleaned_up(
    tmp_path: Path, private_bus: PrivateBus, client: Client, github: tuple[FakeGitHub, str]
) -> None:
    """A sync killed between staging and installing leaves .src.sync-XXXX beside the target."""
    _, url = github
    target = tmp_path / "hypervisor" / "src"
    stale = tmp_path / "hypervisor" / ".src.sync-k1ll3d"
    (stale / "modules").mkdir(parents=True)
    (stale / "modules" / "half.nix").write_text("{ }\n")
    async with running(tmp_path, private_bus, **sync_config(url)):
        assert not stale.exists()  # gone at start, before any sync
        stale.mkdir()  # and one appearing meanwhile goes with the next sync
        done = await sync(client)
        assert done.state is JobState.SUCCEEDED, done.result
    assert not stale.exists()
    assert not list(target.parent.glob(".src.sync-*"))
    assert manifest(target) == expected(repository())
