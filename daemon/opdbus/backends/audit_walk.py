"""Walk a stretch of the audit log in a process of its own.

Checking 300 000 entries is seconds of pure-Python CPU (parse, canonical JSON,
sha256 per entry). In a thread of the daemon that work holds the GIL, and the
event loop -- every client's every call -- would wait behind it. A child
process has a GIL of its own: the daemon stays responsive however long the
walk takes. Small stretches are walked in a thread instead (starting a
process costs more than they do).

Protocol: ``python -I -m opdbus.backends.audit_walk LOG START END SEQ HASH``
prints one JSON object: the ChainState reached (seals and notices as entries).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from opdbus.backends import process
from opdbus.models.audit import AuditEntry, ChainState, walk

# Below this many bytes (about 13 000 entries) a thread is quicker than a process.
IN_PROCESS_MAX = 4 * 1024 * 1024


def read_lines(path: Path, start: int, end: int) -> Iterator[bytes]:
    """The log's lines from byte ``start`` up to byte ``end`` (the store reads with this too)."""
    with path.open("rb") as f:
        f.seek(start)
        remaining = end - start
        for raw in f:
            if remaining <= 0:
                return
            if len(raw) > remaining:
                raw = raw[:remaining]  # noqa: PLW2901 (a line written past ``end``)
            remaining -= len(raw)
            yield raw


def _encode(state: ChainState) -> str:
    data = asdict(state)
    data["seals"] = [entry.model_dump() for entry in state.seals]
    data["notices"] = [entry.model_dump() for entry in state.notices]
    return json.dumps(data)


def _decode(text: str) -> ChainState:
    data = json.loads(text)
    data["seals"] = [AuditEntry.model_validate(e) for e in data["seals"]]
    data["notices"] = [AuditEntry.model_validate(e) for e in data["notices"]]
    return ChainState(**data)


async def walk_apart(path: Path, state: ChainState, end: int) -> ChainState:
    """``walk`` from ``state`` to byte ``end``, in a child process."""
    argv = [
        sys.executable, "-I", "-m", "opdbus.backends.audit_walk",
        str(path), str(state.offset), str(end), str(state.seq), state.hash,
    ]  # fmt: skip
    child = await process.spawn(argv)
    try:
        out, err = await child.communicate()
    except BaseException:
        await asyncio.shield(process.end(child))
        raise
    process.forget(child)
    if child.returncode != 0:
        raise OSError(f"the audit walker failed: {err.decode(errors='replace').strip()[-300:]}")
    found = _decode(out.decode())
    found.seals[:0] = state.seals
    found.notices[:0] = state.notices
    return found


def main(argv: list[str]) -> int:
    # Background work: the daemon's own process comes first for the CPU.
    os.nice(10)
    path, start, end, seq, prev = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    state = walk(read_lines(path, start, end), ChainState(seq=seq, hash=prev, offset=start))
    sys.stdout.write(_encode(state))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
