"""``opctl``: the command line for op-dbusd.

Tables for people, ``--json`` for scripts, a progress bar while a job runs,
and one exit code per kind of error (see ``opctl --help``). The arguments
are parsed first (``opctl.parser``, light); only then is what the command
needs imported.
"""

from __future__ import annotations

import os
import sys

from opctl.parser import parse
from opdbus import errors

EXIT_INTERRUPTED = 130  # what a shell reports for a tool ended by SIGINT
EXIT_BROKEN_PIPE = 141  # what a shell reports for a tool killed by SIGPIPE


def report(e: errors.OpdbusError, *, json_errors: bool) -> int:
    """One line on stderr (under --json, one JSON object) and the kind's exit code."""
    from opctl.wire import Unreachable

    kind = type(e).__name__ if not isinstance(e, Unreachable) else "Unreachable"
    if json_errors:
        import json

        from opctl.jsonout import error

        print(json.dumps(error(e, kind)), file=sys.stderr)
    else:
        print(f"opctl: {kind}: {e.message}", file=sys.stderr)
    return e.exit_code


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["__complete"]:  # what the shell completion scripts ask (not in --help)
        from opctl.complete import main as complete

        return complete(words[1:])
    args = parse(words)
    standalone = getattr(args, "standalone", None)
    if standalone is not None:  # opctl menu: a program of its own
        return int(standalone(args) or 0)
    import asyncio

    from opctl.commands import run
    from opctl.wire import Detached, HandOver  # after parsing: --help does without them

    try:
        status = asyncio.run(run(args))
        sys.stdout.flush()  # here, where a closed pipe can still be told apart
        return status
    except errors.OpdbusError as e:
        return report(e, json_errors=args.json)
    except HandOver as e:
        sys.stdout.flush()
        try:
            os.execvp(e.argv[0], e.argv)
        except OSError as failed:
            print(f"opctl: cannot run {e.argv[0]}: {failed.strerror} ({e.install_hint})",
                  file=sys.stderr)  # fmt: skip
            return errors.NotFound.exit_code
    except Detached as e:
        print(e.advice(), file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`opctl ... | head`): nothing left to say, and
        # Python must not complain while flushing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as e:  # a bug of ours: one line, never a traceback
        if os.environ.get("OPCTL_DEBUG"):
            raise
        print(
            f"opctl: internal error: {type(e).__name__}: {e} (OPCTL_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return errors.Failed.exit_code
