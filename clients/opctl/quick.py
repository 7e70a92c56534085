"""opctl's entry point, and its quick path for the reads people type most.

``opctl status``, ``vm list``, ``net bridge list`` and ``ct list`` (with
``--bus`` and ``--no-headers``) are answered here with the standard library
alone (``opctl.minibus``): no argparse tree, no event loop, no dbus-fast,
no pydantic. A few ms, like ``virsh list`` or ``ovs-vsctl list-br``.

Everything else, and every read that does not go as expected (no daemon, a
backend down, a refusal, another transport), goes to ``opctl.cli.main``,
which does it again the ordinary way and reports the problem the way every
command does. The tables come from ``opctl.rows`` on both paths.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself costs ~2 ms to import; mypy reads this as True
if TYPE_CHECKING:  # annotations only: each function imports what it runs
    from opctl import minibus, rows

# The command words the quick path answers, and what each asks.
QUICK = {
    ("status",): "status",
    ("vm", "list"): "vm",
    ("vm", "ls"): "vm",
    ("net", "bridge", "list"): "bridge",
    ("net", "bridge", "ls"): "bridge",
    ("ct", "list"): "ct",
    ("ct", "ls"): "ct",
}
# Which backend must be up for a list, and the interface of its objects.
LISTS = {
    "vm": ("libvirt", "org.opdbus.VM1"),
    "bridge": ("ovsdb", "org.opdbus.Bridge1"),
    "ct": ("lxc", "org.opdbus.Container1"),
}
DISABLE_ENV = "OPCTL_NO_QUICK"  # set: always the ordinary path (tests compare the two)
MANAGER = ("/org/opdbus", "org.freedesktop.DBus.Properties", "GetAll", ("org.opdbus.Manager1",))


def parse(words: list[str]) -> tuple[str, str | None, bool] | None:
    """(what, --bus, --no-headers) when the quick path can answer ``words``, else None."""
    bus = None
    headers = True
    rest = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--bus" and i + 1 < len(words):
            bus = words[i + 1]
            i += 1
        elif word.startswith("--bus="):
            bus = word[len("--bus=") :]
        elif word == "--no-headers":
            headers = False
        elif word.startswith("-"):
            return None  # --json, -o, --help, ...: the ordinary path
        else:
            rest.append(word)
        i += 1
    what = QUICK.get(tuple(rest))
    return None if what is None else (what, bus, headers)


def _address(bus: str | None) -> str:
    """--bus, then $OPDBUS_BUS_ADDRESS, then the system bus (as opctl.wire resolves it)."""
    return (
        bus
        or os.environ.get("OPDBUS_BUS_ADDRESS")
        or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        or "unix:path=/var/run/dbus/system_bus_socket"
    )


def _timeout() -> float | None:
    """$OPDBUS_CALL_TIMEOUT or the default; None when it is bad (the ordinary path says why)."""
    from opctl.defaults import CALL_TIMEOUT, CALL_TIMEOUT_ENV

    text = os.environ.get(CALL_TIMEOUT_ENV)
    if not text:
        return CALL_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 0 < seconds <= 86400 else None


def _timed_out(what: str, limit: float) -> int:
    """A silent daemon: say so now, as the ordinary path would after its own wait."""
    from opctl.cli import report
    from opctl.wire import no_answer
    from opdbus.errors import Timeout

    return report(Timeout(no_answer(what, "/org/opdbus", limit)), json_errors=False)


def _read(
    connection: minibus.Connection, what: str, address: str
) -> tuple[list[str], rows.Table | None, str | None] | None:
    """(lines before, table, line after) to print; None when the ordinary path must answer."""
    from opctl import rows

    if what == "status":
        (manager,), (counts,) = connection.calls(
            MANAGER, ("/org/opdbus", "org.opdbus.Manager1", "CountJobs", ())
        )
        first, backends, last = rows.status(manager, counts, address)
        return [first], backends, last
    backend, interface = LISTS[what]
    (manager,), (objects,) = connection.calls(
        MANAGER, ("/org/opdbus", "org.opdbus.Manager1", "GetObjects", (interface,))
    )
    if rows.backend_refusal(manager, backend):
        return None  # NotSupported or BackendUnavailable, worded by the ordinary path
    tables = {"vm": rows.vms, "bridge": rows.bridges, "ct": rows.containers}
    head, body = tables[what](objects.values())
    return ([], (head, body), None) if body else ([EMPTY[what]], None, None)


def answer(what: str, bus: str | None, headers: bool) -> bool:
    """Print the answer; False (nothing printed) when the ordinary path must do it.

    minibus.TimedOut goes up: waiting the whole timeout again would only double it.
    """
    from opctl import minibus, render

    timeout = _timeout()
    if timeout is None:
        return False
    address = _address(bus)
    try:
        connection = minibus.Connection(address, timeout)
    except minibus.TimedOut:
        raise
    except minibus.Unexpected:
        return False
    try:
        found = _read(connection, what, address)
    except minibus.TimedOut:
        raise
    except minibus.Unexpected:
        return False
    finally:
        connection.close()
    if found is None:
        return False
    before, table, after = found
    render.HEADERS = headers
    for line in before:
        sys.stdout.write(line + "\n")
    if table is not None:
        render.table(*table)
    if after is not None:
        sys.stdout.write(after + "\n")
    return True


EMPTY = {"vm": "no VMs", "bridge": "no bridges", "ct": "no containers"}


def main() -> int:
    words = sys.argv[1:]
    quick = None if os.environ.get(DISABLE_ENV) else parse(words)
    if quick is not None:
        from opctl.minibus import TimedOut

        try:
            if answer(*quick):
                sys.stdout.flush()
                return 0
        except TimedOut as e:
            return _timed_out(e.what, e.limit)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # as opctl.cli: what a shell reports for SIGPIPE
        except KeyboardInterrupt:
            return 130
        except Exception:
            # A bug of ours: the ordinary path does the command again and, if
            # the bug is shared, reports it in one line. OPCTL_DEBUG shows where.
            if os.environ.get("OPCTL_DEBUG"):
                raise
    from opctl.cli import main as ordinary

    return ordinary(words)
