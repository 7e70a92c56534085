"""``opctl audit``: list the log, verify its chain (and, with the key, its seals), start sealing."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opctl import jsonout, render
from opdbus import errors
from opdbus.models.audit import (
    AuditEntry,
    ChainState,
    SealKey,
    SealVerifier,
    rfc3339_to_us,
    walk,
)

if TYPE_CHECKING:
    from opctl.commands import Cli

PAGE = 1000


def offline_verify(args: argparse.Namespace) -> int | None:
    """``verify --file`` needs no daemon; anything else does (None)."""
    if args.file is None:
        return None
    try:
        key = _key(args)
        entries, state = _file_entries(args.file)
        return _report(args, state, key, entries)
    except errors.OpdbusError as e:
        from opctl.cli import report

        return report(e, json_errors=args.json)


def _key(args: argparse.Namespace) -> SealKey | None:
    text = args.key
    if args.key_file is not None:
        try:
            text = args.key_file.read_text()
        except OSError as e:
            raise errors.InvalidArgs(f"cannot read {args.key_file}: {e.strerror}") from None
    if text is None:
        return None
    try:
        return SealKey.parse(text)
    except ValueError as e:
        raise errors.InvalidArgs(str(e)) from None


def _file_entries(path: Path) -> tuple[list[AuditEntry], ChainState]:
    try:
        raw = path.read_bytes().splitlines(keepends=True)
    except OSError as e:
        raise errors.NotFound(f"cannot read {path}: {e.strerror}") from None
    state = walk(iter(raw), ChainState())
    entries = []
    for line in raw:
        try:
            entries.append(AuditEntry.model_validate_json(line))
        except ValueError:
            continue
    return entries, state


def _report(
    args: argparse.Namespace,
    state: ChainState | None,
    key: SealKey | None,
    entries: list[AuditEntry],
) -> int:
    problems: list[str] = []
    if state is not None and state.broken:
        problems.append(state.reason)
    sealed: dict[str, Any] = {}
    if key is not None:
        verifier = SealVerifier(key)
        for entry in entries:
            verifier.feed(entry)
        report = verifier.finish(time.time())
        problems.extend(p for p in report.problems if p not in problems)
        sealed = {
            "sealed_through": report.sealed_through,
            "last_sealed_epoch": report.last_epoch,
            "unsealed": report.unsealed,
        }
    ok = not problems
    if args.json:
        render.dump(
            {
                "ok": ok,
                "entries": len(entries),
                "problems": problems,
                "verified_with_key": key is not None,
                **sealed,
            }
        )
    elif ok:
        text = f"audit log intact: {len(entries)} entries"
        if sealed:
            text += (
                f"; seals prove entries 1-{sealed['sealed_through']} (through epoch "
                f"{sealed['last_sealed_epoch']}); {sealed['unsealed']} after them not sealed yet"
            )
        print(text)
    else:
        print("audit log BROKEN:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    return 0 if ok else errors.Failed.exit_code


class AuditCommands:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.client = cli.client
        self.args = cli.args

    async def run(self) -> int:
        action = self.args.audit_command
        if action == "verify":
            return await self._verify()
        if action == "seal-init":
            return await self._seal_init()
        return await self._list()

    async def _verify(self) -> int:
        key = _key(self.args)
        if key is not None:
            entries = [entry async for entry in self._all_entries()]
            return _report(self.args, None, key, entries)
        verdict = await self.client.verify_audit()
        if self.args.json:
            problems = verdict.reason.split("; ") if not verdict.ok else []
            render.dump(
                {
                    "ok": verdict.ok,
                    "entries": (await self.client.status()).audit_seq,
                    "first_bad_seq": verdict.first_bad_seq,
                    "problems": problems,
                    "verified_with_key": False,
                }
            )
        elif verdict.ok:
            print(f"audit log intact: {verdict.reason}")
        else:
            print("audit log BROKEN:", file=sys.stderr)
            for problem in verdict.reason.split("; "):
                print(f"  - {problem}", file=sys.stderr)
        return 0 if verdict.ok else errors.Failed.exit_code

    async def _all_entries(self) -> AsyncIterator[AuditEntry]:
        start = 1
        while True:
            page = await self.client.audit(start, PAGE)
            for entry in page:
                yield entry
            if len(page) < PAGE:
                return
            start = page[-1].seq + 1

    async def _seal_init(self) -> int:
        key = await self.client.init_audit_sealing(self.args.epoch, force=self.args.force)
        if self.args.json:
            render.dump({"verification_key": key, "epoch_seconds": self.args.epoch})
            return 0
        print(key)
        print(
            "\nThis is the audit log's verification key. It is not stored anywhere and will not "
            "be shown again:\nkeep it off this host. Check the log with:\n"
            "  opctl audit verify --key KEY",
            file=sys.stderr,
        )
        return 0

    async def _list(self) -> int:
        start = self.args.start
        limit = self.args.last
        if start is None:
            head = (await self.client.status()).audit_seq
            start = max(head - limit + 1, 1)
        entries = await self.client.audit(start, limit)
        if self.args.json:
            render.dump(
                [
                    jsonout.absent({**entry.model_dump(), "time": jsonout.iso(entry.time)})
                    for entry in entries
                ]
            )
            return 0
        from opctl.cli_watch import Namer

        namer = Namer()
        await namer.seed(self.client)  # objects by the names people use, not escaped paths
        render.table(
            ["seq", "time", "user", "kind", "method", "object", "job", "result"],
            [
                (
                    e.seq,
                    render.when(rfc3339_to_us(e.time)),  # local time, as every table
                    _user(e.uid),
                    e.kind,
                    e.method.removeprefix("org.opdbus."),
                    namer.name(e.object) if e.object.startswith("/") else e.object or "-",
                    e.job.rsplit("/", 1)[-1] if e.job else "-",
                    e.result,
                )
                for e in entries
            ],
        )
        return 0


def _user(uid: int) -> str:
    """A user's name where this host knows it (the number otherwise)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
