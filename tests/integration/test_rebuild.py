"""Rebuild and Update. No NixOS here: tests/fake_nixos_rebuild.py stands in for
nixos-rebuild (realistic output over time, a chosen exit status, a child process
like nix's builders); smart sync runs against tests/githost_server.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opctl.convert import to_variants
from opdbus import names
from opdbus.errors import Busy, InvalidArgs
from opdbus.models.job import JobRecord, JobState, LogLine
from opdbus.sandbox import PrivateBus
from tests.githost_server import FakeGitHub, serve
from tests.integration.test_sync import repository, sync_config
from tests.support import CALM, running

pytestmark = pytest.mark.timeout(60)

FAKE = Path(__file__).resolve().parent.parent / "fake_nixos_rebuild.py"


def rebuild_config(**more: Any) -> dict[str, Any]:
    return {**CALM, "rebuild": {"command": str(FAKE), "kill_grace_seconds": 1}, **more}


async def call(client: Client, member: str, signature: str, *body: Any) -> str:
    (job,) = await client.call(names.ROOT_PATH, names.MANAGER_IFACE, member, signature, list(body))
    return str(job)


async def rebuild(
    client: Client, action: str, lines: list[LogLine] | None = None, **opts: Any
) -> JobRecord:
    return await client.run_job(
        lambda: call(client, "Rebuild", "sa{sv}", action, to_variants(opts)),
        on_log=None if lines is None else lines.append,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_output_streams_in_order_and_is_kept(
    tmp_path: Path, private_bus: PrivateBus, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_file = tmp_path / "argv"
    monkeypatch.setenv("FAKE_REBUILD_RECORD", str(record_file))
    async with running(tmp_path, private_bus, **rebuild_config()):
        lines: list[LogLine] = []
        done = await rebuild(client, "switch", lines, show_trace=True, refresh=True, host="hyper")
        assert done.state is JobState.SUCCEEDED, done.result
        texts = [line.text for line in lines]
        assert texts[0].startswith(f"$ {FAKE} switch --flake ")
        assert texts[1:4] == [
            "building the system configuration...",
            "these 3 derivations will be built:",
            "  /nix/store/4x1q9kq0mvr3f2ng1i4n0aab2n3l2y9k-etc.drv",
        ]
        assert texts[-1] == "reloading user units for root..."
        assert [line.number for line in lines] == list(range(1, len(lines) + 1))
        argv = record_file.read_text().splitlines()
        flake = tmp_path / "nixos"
        assert argv[:3] == ["switch", "--flake", f"{flake}#hyper"]
        assert argv[3:6] == ["--show-trace", "--impure", "--refresh"]
        assert "narinfo-cache-negative-ttl" in argv
        kept = Path(done.output["log"]).read_text().splitlines()
        assert kept == texts


async def test_failure_cancel_and_one_at_a_time(
    tmp_path: Path, private_bus: PrivateBus, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_file = tmp_path / "argv"
    monkeypatch.setenv("FAKE_REBUILD_RECORD", str(record_file))
    async with running(tmp_path, private_bus, **rebuild_config()):
        monkeypatch.setenv("FAKE_REBUILD_STATUS", "3")
        failed = await rebuild(client, "build")
        assert failed.state is JobState.FAILED and failed.error_name.endswith(".Failed")
        assert "exited with status 3: error: builder for" in failed.result

        monkeypatch.setenv("FAKE_REBUILD_STATUS", "0")
        monkeypatch.setenv("FAKE_REBUILD_DELAY", "0.5")
        record_file.unlink()
        path = await call(client, "Rebuild", "sa{sv}", "switch", {})
        with pytest.raises(Busy):
            await call(client, "Rebuild", "sa{sv}", "build", {})
        for _ in range(100):
            if record_file.exists() and "child=" in record_file.read_text():
                break
            await asyncio.sleep(0.05)
        child = int(record_file.read_text().split("child=")[1])
        assert alive(child)
        await client.cancel(path)
        record = await client.wait_job(path)
        assert record.state is JobState.CANCELLED
        for _ in range(40):  # the group's SIGTERM reached the child too
            if not alive(child):
                break
            await asyncio.sleep(0.05)
        assert not alive(child)

        with pytest.raises(InvalidArgs, match="not one of build, test, switch"):
            await call(client, "Rebuild", "sa{sv}", "explode", {})


@contextlib.asynccontextmanager
async def github() -> AsyncIterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    fake.commit(repository(200))
    runner, url = await serve(fake)
    try:
        yield fake, url
    finally:
        await runner.cleanup()


async def test_update_validates_syncs_and_rebuilds(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    async with (
        github() as (_, url),
        running(tmp_path, private_bus, **rebuild_config(**sync_config(url))),
    ):

        async def update(**opts: Any) -> JobRecord:
            return await client.run_job(lambda: call(client, "Update", "a{sv}", to_variants(opts)))

        checked = await update(check_only=True)
        assert checked.state is JobState.SUCCEEDED, checked.result
        assert checked.result.startswith("check only: updates available")
        assert not (tmp_path / "hypervisor" / "src" / "flake.nix").exists()

        synced = await update(skip_rebuild=True)
        assert synced.result.endswith("rebuild skipped")
        assert (tmp_path / "hypervisor" / "src" / "flake.nix").is_file()

        full = await update(rebuild_action="test")
        assert full.state is JobState.SUCCEEDED, full.result
        assert full.output["validate"]["checks"] and full.output["sync"]["changed"] == []
        assert full.output["rebuild"]["command"].split()[1] == "test"
        assert "ran nixos-rebuild test" in full.result
