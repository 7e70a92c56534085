"""Documents the user hands opctl: a file path, or ``-`` for stdin."""

from __future__ import annotations

import sys
from pathlib import Path

from opdbus.errors import InvalidArgs


async def read_document(name: str) -> str:
    """The text of ``name`` (``-``: stdin), read off the event loop."""
    import asyncio  # here: the parser imports this module, and needs no event loop

    try:
        if name == "-":
            return await asyncio.to_thread(sys.stdin.read)
        return await asyncio.to_thread(Path(name).read_text)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise InvalidArgs(f"cannot read {name}: {reason}") from None
