"""Start time (exec -> org.opdbus owned, READY=1) and idle RSS of op-dbusd, with real backends.

`full` mode runs against the backends the sandbox uses -- its own
ovsdb-server + ovs-vswitchd (userspace datapath, in this benchmark's own
network namespace), libvirt's test driver, an lxcpath -- and `agent` mode
against none (D-Bus and systemd only; no systemd here, so it is reported
down). A minimal dbus-fast echo service is measured the same way in the
same run, as the floor. Targets: start <= 0.3 s; idle RSS <= 50 MiB in full
mode, <= 30 MiB in agent mode.
"""

from __future__ import annotations

import time
from typing import Any

from common import environment, isolated, median, report, start_echo, start_opdbusd
from opdbus.sandbox_ovs import start_private_ovs

RUNS = 5
IDLE_SECONDS = 2.0


def main() -> None:
    isolated()
    starts: dict[str, list[float]] = {"full": [], "agent": [], "echo": []}
    rss: dict[str, list[float]] = {"full": [], "agent": [], "echo": []}
    with environment() as (bus, workdir):
        ovs = start_private_ovs(workdir / "ovs")
        (workdir / "lxc").mkdir()
        full: dict[str, Any] = {
            "mode": "full",
            "ovsdb": {"remote": ovs.remote, "datapath_type": "netdev"},
            "libvirt": {"uri": "test:///default"},
            "lxc": {"path": str(workdir / "lxc")},
        }
        try:
            for run in range(RUNS):
                for name in ("full", "agent", "echo"):
                    if name == "echo":
                        started = start_echo(bus, workdir, f"echo-{run}")
                    else:
                        config = full if name == "full" else {"mode": "agent"}
                        started = start_opdbusd(bus, workdir, f"{name}-{run}", **config)
                    try:
                        starts[name].append(started.seconds_to_ready)
                        time.sleep(IDLE_SECONDS)
                        rss[name].append(started.rss_mib())
                    finally:
                        started.stop()
        finally:
            ovs.stop()
    floor = median(starts["echo"])
    for mode in ("full", "agent"):
        ours = median(starts[mode])
        report(
            f"start ({mode} mode), exec -> name owned, vs a bare dbus-fast service",
            ours / floor,
            "<= 0.3 s absolute",
            ours <= 0.3,
            f"op-dbusd {ours * 1000:.0f} ms, dbus-fast echo {floor * 1000:.0f} ms, "
            f"median of {RUNS}",
        )
    floor = median(rss["echo"])
    for mode, limit in (("full", 50), ("agent", 30)):
        ours = median(rss[mode])
        report(
            f"idle RSS ({mode} mode) vs a bare dbus-fast service",
            ours / floor,
            f"<= {limit} MiB absolute",
            ours <= limit,
            f"op-dbusd {ours:.1f} MiB, dbus-fast echo {floor:.1f} MiB",
        )


if __name__ == "__main__":
    main()
