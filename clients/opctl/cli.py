"""``opctl``: the command line for op-dbusd.

Tables for people, ``--json`` for scripts, a progress bar while a job runs,
and one exit code per kind of error (see ``opctl --help``). The arguments
are parsed first (``opctl.parser``, light); only then is what the command
needs imported.
"""

from __future__ import annotations

import sys

from opctl.parser import build_parser
from opctl.wire import Unreachable
from opdbus import errors


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import asyncio

    from opctl.commands import run

    try:
        return asyncio.run(run(args))
    except errors.OpdbusError as e:
        kind = type(e).__name__ if not isinstance(e, Unreachable) else "Unreachable"
        print(f"opctl: {kind}: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
