"""The audit log under accidents and attacks: a full disk, a damaged head, floods of
verifies, and a root attacker against the forward-secure seals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from opdbus.backends import audit_walk, process
from opdbus.errors import BackendUnavailable
from opdbus.models.audit import (
    AuditEntry,
    SealKey,
    evolve,
    make_entry,
    verify_seals,
)
from opdbus.services.audit import AuditLog

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")


@contextlib.asynccontextmanager
async def small_disk(path: Path, size: str) -> AsyncIterator[Path]:
    """A tmpfs of ``size`` (the tests run in a mount namespace of their own)."""
    path.mkdir()
    await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system under ``directory``."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def lines(directory: Path) -> list[bytes]:
    return (directory / "audit.jsonl").read_bytes().splitlines(keepends=True)


async def call(audit: AuditLog, i: int) -> AuditEntry:
    entry = await audit.append(uid=i, kind="call", method="m", target="/x", result="ok")
    assert entry is not None  # the log is on
    return entry


@needs_root
async def test_a_full_disk_refuses_before_acting_and_never_breaks_the_chain(
    tmp_path: Path,
) -> None:
    async with small_disk(tmp_path / "fs", "4m") as fs:
        audit = AuditLog(fs / "audit")
        await audit.open()
        await audit.reserve()  # the daemon claims room ahead of need
        await call(audit, 0)
        filler = await asyncio.to_thread(fill, fs)
        acted = 1
        with pytest.raises(BackendUnavailable) as refused:
            for i in range(1, 100_000):
                await audit.reserve()  # refused here, before the call would act...
                acted += 1  # ...so everything counted here had room for its entry
                await call(audit, i)
        assert "has no room" in str(refused.value) and "nothing was changed" in str(refused.value)
        assert acted > 100  # the room claimed before the disk filled was used
        verdict = await audit.verify()
        assert verdict.ok and verdict.entries == acted, verdict.reason
        written = await asyncio.to_thread(lines, fs / "audit")
        assert len(written) == acted and all(line.endswith(b"\n") for line in written)

        await asyncio.to_thread(filler.unlink)  # space comes back: calls are accepted again
        await audit.reserve()
        entry = await call(audit, -1 % 2**31)
        assert entry.seq == acted + 1
        assert (await audit.verify()).ok
        await audit.close()


@needs_root
async def test_entries_that_hit_a_full_disk_wait_with_their_numbers(tmp_path: Path) -> None:
    """Entries nobody reserved room for (a seal, a note) are retried, never renumbered."""
    async with small_disk(tmp_path / "fs", "1m") as fs:
        audit = AuditLog(fs / "audit")
        await audit.open()
        await audit.append(kind="daemon", method="n", target="", result="one", reserved=False)
        filler = await asyncio.to_thread(fill, fs)
        # More than the page the first entry sits in: the file system must give space.
        late = asyncio.gather(
            *(
                audit.append(kind="daemon", method="n", target="", result="x" * 500, reserved=False)
                for _ in range(20)
            )
        )
        await asyncio.sleep(1.0)
        assert not late.done()
        with pytest.raises(BackendUnavailable, match="cannot be written"):
            await audit.reserve()  # nothing new is accepted while a write fails
        # No half line was left on disk by the failed write.
        assert (
            await asyncio.to_thread(lines, fs / "audit")
            == (await asyncio.to_thread(lines, fs / "audit"))[:1]
        )
        await asyncio.to_thread(filler.unlink)
        written = await late
        assert [entry.seq for entry in written if entry is not None] == list(range(2, 22))
        verdict = await audit.verify()
        assert verdict.ok and verdict.entries == 21
        await audit.reserve()
        assert (await call(audit, 22)).seq == 22
        await audit.close()


async def _filled(directory: Path, count: int) -> AuditLog:
    audit = AuditLog(directory)
    await audit.open()
    for i in range(count):
        await audit.append(uid=i, kind="call", method="m", target="/", result="ok", reserved=False)
    return audit


@pytest.mark.parametrize("head", ["garbled", "deleted"])
async def test_a_cut_tail_with_a_damaged_head_is_not_called_intact(
    tmp_path: Path, head: str
) -> None:
    audit = await _filled(tmp_path, 8)
    await audit.close()
    content = (tmp_path / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "audit.jsonl").write_bytes(b"".join(content[:5]))
    if head == "garbled":
        (tmp_path / "head").write_bytes(b"\x00garbage" * 64)
    else:
        (tmp_path / "head").unlink()
    again = AuditLog(tmp_path)
    await again.open()
    verdict = await again.verify()
    assert not verdict.ok
    assert "a cut-off tail cannot be ruled out" in verdict.reason
    # Still reported after the daemon has written a new head record.
    await again.append(kind="call", method="m", target="/", result="ok", reserved=False)
    await again.close()
    third = AuditLog(tmp_path)
    await third.open()
    later = await third.verify()
    assert not later.ok and "a cut-off tail cannot be ruled out" in later.reason
    await third.close()


async def test_an_unfinished_write_is_not_mistaken_for_tampering(tmp_path: Path) -> None:
    """A crash in the middle of a write leaves part of a line the daemon never acknowledged."""
    audit = await _filled(tmp_path, 4)
    await audit.close()
    with (tmp_path / "audit.jsonl").open("ab") as f:
        f.write(b'{"seq":5,"time":"2026-')
    again = AuditLog(tmp_path)
    await again.open()
    assert not again.problem
    entry = await again.append(kind="call", method="m", target="/", result="ok")
    assert entry is not None and entry.seq == 5
    assert (await again.verify()).ok
    await again.close()


async def test_concurrent_verifies_share_one_walk_and_edits_are_still_caught(
    tmp_path: Path,
) -> None:
    audit = await _filled(tmp_path, 300)
    walks = 0
    original = audit._resume_point

    def counting(*args: object) -> object:
        nonlocal walks
        walks += 1
        return original(*args)  # type: ignore[arg-type]

    audit._resume_point = counting  # type: ignore[method-assign,assignment]
    verdicts = await asyncio.gather(*(audit.verify() for _ in range(40)))
    assert all(v.ok and v.entries == 300 for v in verdicts)
    assert walks <= 2  # one walk, maybe one more begun after it ended
    # An edit to an entry the cached walk already checked is found all the same.
    content = (tmp_path / "audit.jsonl").read_bytes().splitlines(keepends=True)
    content[10] = content[10].replace(b'"result":"ok"', b'"result":"no"')
    (tmp_path / "audit.jsonl").write_bytes(b"".join(content))
    verdict = await audit.verify()
    assert not verdict.ok and verdict.first_bad_seq == 11
    await audit.close()


# -- forward-secure sealing ----------------------------------------------------------


async def sealed_log(tmp_path: Path, epochs: int) -> tuple[AuditLog, SealKey]:
    audit = await _filled(tmp_path, 3)
    text = await audit.init_sealing(1, force=False, uid=0)
    key = SealKey.parse(text)
    for i in range(epochs):
        await audit.append(kind="call", method="m", target="/", result=f"e{i}", reserved=False)
        await asyncio.sleep(1.05)  # the epoch ends: its seal is written, its key forgotten
    return audit, key


def entries(directory: Path) -> list[AuditEntry]:
    return [AuditEntry.model_validate_json(raw) for raw in lines(directory)]


async def test_seals_verify_with_the_key_and_old_keys_are_gone(tmp_path: Path) -> None:
    audit, key = await sealed_log(tmp_path, 3)
    report = verify_seals(entries(tmp_path), key, time.time())
    assert report.ok, report.problems
    assert report.last_epoch >= 2 and report.sealed_through >= 6
    stored = audit.sealing
    assert stored is not None and stored.epoch >= 3
    # Only the current epoch's key is on disk; none of the earlier ones is.
    on_disk = (tmp_path / "seal.key").read_text()
    assert key.key.hex() not in on_disk
    k = key.key
    for _ in range(stored.epoch):
        assert k.hex() not in on_disk
        k = evolve(k)
    assert k.hex() in on_disk
    assert oct((tmp_path / "seal.key").stat().st_mode & 0o777) == "0o600"
    verdict = await audit.verify()
    assert verdict.ok and verdict.sealed_through >= 6
    await audit.close()


async def test_a_root_attacker_cannot_rewrite_sealed_entries(tmp_path: Path) -> None:
    """Edit entry 2 and re-chain everything after it: the plain chain is happy, the seals are not."""
    audit, key = await sealed_log(tmp_path, 2)
    await audit.close()
    log = entries(tmp_path)
    forged: list[AuditEntry] = []
    prev = log[0].prev_hash
    for entry in log:
        fields = entry.body()
        fields.pop("prev_hash")
        if entry.seq == 2:
            fields["result"] = "denied"
        redone = make_entry(entry.seq, prev, **{k: v for k, v in fields.items() if k != "seq"})
        forged.append(redone)
        prev = redone.hash
    (tmp_path / "audit.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in forged))
    report = verify_seals(forged, key, time.time())
    assert not report.ok
    assert any("does not verify" in p for p in report.problems), report.problems


async def test_a_cut_off_sealed_log_is_caught(tmp_path: Path) -> None:
    audit, key = await sealed_log(tmp_path, 3)
    await audit.close()
    log = entries(tmp_path)
    first_seal = next(i for i, e in enumerate(log) if e.kind == "seal")
    report = verify_seals(log[: first_seal + 1], key, time.time())
    assert not report.ok
    assert any("was cut, or sealing stopped" in p for p in report.problems), report.problems
    nothing = verify_seals([], key, time.time())
    assert not nothing.ok and "no sealing started with this key" in nothing.problems[0]


async def test_sealing_catches_up_after_downtime(tmp_path: Path) -> None:
    audit, key = await sealed_log(tmp_path, 1)
    await audit.close()
    await asyncio.sleep(2.2)  # two epochs pass with no daemon
    again = AuditLog(tmp_path)
    await again.open()
    report = verify_seals(entries(tmp_path), key, time.time())
    assert report.ok, report.problems
    await again.close()


async def test_long_stretches_are_walked_in_a_process_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past IN_PROCESS_MAX bytes the walk leaves the daemon's GIL alone; same verdicts."""
    monkeypatch.setattr(audit_walk, "IN_PROCESS_MAX", 0)
    audit = await _filled(tmp_path, 50)
    spawned: list[list[str]] = []
    spawn = process.spawn

    async def watched(argv: list[str], **kwargs: Any) -> Any:
        spawned.append(argv)
        return await spawn(argv, **kwargs)

    monkeypatch.setattr(process, "spawn", watched)
    assert (await audit.verify()).ok
    await audit.append(kind="call", method="m", target="/", result="ok", reserved=False)
    assert (await audit.verify()).entries == 51  # resumed where the last walk ended
    assert len(spawned) == 2 and spawned[1][5] != "0"  # the second walk began past byte 0
    content = (tmp_path / "audit.jsonl").read_bytes().splitlines(keepends=True)
    content[20] = content[20].replace(b'"result":"ok"', b'"result":"no"')
    (tmp_path / "audit.jsonl").write_bytes(b"".join(content))
    verdict = await audit.verify()
    assert not verdict.ok and verdict.first_bad_seq == 21
    await audit.close()
