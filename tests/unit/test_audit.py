from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from opdbus.backends.audit_store import AuditFiles
from opdbus.models.audit import AuditEntry
from opdbus.services.audit import AuditLog


async def filled(directory: Path, count: int) -> AuditLog:
    audit = AuditLog(directory)
    await audit.open()
    for i in range(count):
        await audit.reserve()
        await audit.append(
            uid=i,
            kind="call",
            method="org.opdbus.Manager1.Validate",
            target="/org/opdbus",
            args_digest=f"{i:064x}",
            result="ok",
        )
    return audit


def lines(directory: Path) -> list[str]:
    return (directory / "audit.jsonl").read_text().splitlines(keepends=True)


def rewrite(directory: Path, new_lines: list[str]) -> None:
    (directory / "audit.jsonl").write_text("".join(new_lines))


async def test_chain_verifies_and_reopens(tmp_path: Path) -> None:
    audit = await filled(tmp_path, 5)
    verdict = await audit.verify()
    assert verdict.ok and verdict.entries == 5
    await audit.close()
    again = AuditLog(tmp_path)
    await again.open()
    assert again.head_seq == 5 and not again.problem
    entry = await again.append(
        uid=0,
        kind="job",
        method="Validate",
        target="/org/opdbus",
        job="/org/opdbus/job/1",
        result="succeeded",
    )
    assert entry is not None and entry.seq == 6
    first = AuditEntry.model_validate_json(lines(tmp_path)[4])
    assert entry.prev_hash == first.hash
    assert (await again.verify()).ok
    await again.close()


async def test_concurrent_appends_are_serialized_into_one_chain(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    await audit.open()
    entries = await asyncio.gather(
        *(
            audit.append(uid=i, kind="call", method="m", target="/", result="ok", reserved=False)
            for i in range(200)
        )
    )
    assert sorted(entry.seq for entry in entries if entry is not None) == list(range(1, 201))
    assert (await audit.verify()).ok
    await audit.close()
    head, problem = await asyncio.to_thread(AuditFiles(tmp_path)._read_head)
    assert head is not None and head.seq == 200 and not problem


@pytest.mark.parametrize(
    ("tamper", "first_bad", "reason"),
    [
        ("edit", 3, "entry 3 was altered"),
        ("delete", 3, "expected entry 3, found entry 4"),
        ("reorder", 3, "expected entry 3, found entry 4"),
        ("truncate", 9, "log ends at entry 8 but entry 10 was written"),
        ("cut-mid-line", 10, "entry 10 is cut off"),
        ("rehash", 4, "entry 4 does not chain to entry 3"),
    ],
)
async def test_tampering_is_detected_at_the_right_entry(
    tmp_path: Path, tamper: str, first_bad: int, reason: str
) -> None:
    audit = await filled(tmp_path, 10)
    content = lines(tmp_path)
    if tamper == "edit":
        content[2] = content[2].replace('"result":"ok"', '"result":"denied"')
    elif tamper == "delete":
        del content[2]
    elif tamper == "reorder":
        content[2], content[3] = content[3], content[2]
    elif tamper == "truncate":
        content = content[:8]
    elif tamper == "cut-mid-line":
        content[9] = content[9][:40]
    elif tamper == "rehash":
        # A careful forger fixes entry 3's own hash; the chain still breaks at 4.
        entry = AuditEntry.model_validate_json(content[2])
        body = {**entry.body(), "result": "denied"}
        forged = AuditEntry.model_validate(
            {**body, "hash": AuditEntry.compute_hash(entry.prev_hash, body)}
        )
        content[2] = forged.model_dump_json() + "\n"
    rewrite(tmp_path, content)
    verdict = await audit.verify()
    assert not verdict.ok
    assert verdict.first_bad_seq == first_bad
    assert reason in verdict.reason
    await audit.close()
    # A restarted daemon still sees it, and chaining on does not hide it.
    again = AuditLog(tmp_path)
    await again.open()
    await again.append(uid=0, kind="call", method="m", target="/", result="ok", reserved=False)
    later = await again.verify()
    assert not later.ok and later.first_bad_seq == first_bad
    await again.close()


async def test_truncation_is_remembered_across_a_restart(tmp_path: Path) -> None:
    audit = await filled(tmp_path, 6)
    await audit.close()
    rewrite(tmp_path, lines(tmp_path)[:4])
    again = AuditLog(tmp_path)
    await again.open()
    assert "log ends before entry 6" in again.problem
    entry = await again.append(uid=0, kind="call", method="m", target="/", result="ok")
    # Chained from the head record, so the gap 5-6 stays visible; 7 is the
    # daemon's own note of what it found.
    assert entry is not None and entry.seq == 8
    (notice,) = await again.read(7, 1)
    assert notice.kind == "daemon" and "log ends before entry 6" in notice.result
    verdict = await again.verify()
    assert not verdict.ok and verdict.first_bad_seq == 5
    await again.close()


async def test_read_pages_through_entries(tmp_path: Path) -> None:
    audit = await filled(tmp_path, 30)
    page = await audit.read(11, 5)
    assert [entry.seq for entry in page] == [11, 12, 13, 14, 15]
    assert await audit.read(31, 5) == []
    await audit.append(uid=0, kind="call", method="m", target="/", result="ok", reserved=False)
    assert [entry.seq for entry in await audit.read(29, 0)] == [29, 30, 31]
    await audit.close()
