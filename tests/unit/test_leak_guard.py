"""The leak guard looks only at this test process's own tree, never at processes by name."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

from tests.support import Proc, descendants, new_descendants, process_table


def table(*procs: Proc) -> dict[int, Proc]:
    return {proc.pid: proc for proc in procs}


ME = 100


def test_an_unrelated_process_with_a_watched_name_is_not_ours() -> None:
    before = table(Proc(ME, 1, 5, "S", "pytest"))
    after = table(
        Proc(ME, 1, 5, "S", "pytest"),
        # A system bus restarted elsewhere during the test: same name, not ours.
        Proc(200, 1, 50, "S", "dbus-daemon --system"),
        Proc(201, 200, 51, "S", "op-dbusd"),
        # Ours: a child, and a grandchild (re-parented to us when its parent left).
        Proc(300, ME, 60, "S", "dbus-daemon --config-file=/tmp/x/bus.conf"),
        Proc(301, 300, 61, "S", "ovsdb-server"),
        Proc(302, ME, 62, "Z", "[lxc-monitor] <defunct>"),
    )
    leaked = new_descendants(descendants(before, ME), after, ME)
    assert sorted(leaked) == [300, 301]


def test_a_reused_pid_is_a_new_process() -> None:
    before = table(Proc(ME, 1, 5, "S", "pytest"), Proc(300, ME, 60, "S", "libvirtd"))
    after = table(Proc(ME, 1, 5, "S", "pytest"), Proc(300, ME, 99, "S", "dbus-daemon"))
    assert sorted(new_descendants(descendants(before, ME), after, ME)) == [300]


def test_orphans_of_our_children_stay_in_our_tree() -> None:
    """We are a subreaper: a daemonized grandchild is re-parented to us, not to PID 1."""
    me = os.getpid()
    before = descendants(process_table(), me)
    subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 &"], check=True)
    deadline = time.monotonic() + 5
    found: dict[int, Proc] = {}
    while time.monotonic() < deadline and not found:
        found = {
            pid: proc
            for pid, proc in new_descendants(before, process_table(), me).items()
            if proc.cmdline == "sleep 30"
        }
    assert found, "the orphaned sleep did not come back to us"
    (orphan,) = found.values()
    assert orphan.ppid == me
    os.kill(orphan.pid, 9)
    # Our child now: reap it -- unless the session's own reaper (conftest) got
    # there first, which is the same proof that it came back to us.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(orphan.pid, 0)
