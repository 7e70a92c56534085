"""Start time (exec -> org.opdbus owned, READY=1) and idle RSS of op-dbusd.

Targets: start <= 1 s, idle RSS <= 80 MiB. The minimal dbus-fast echo service
is measured the same way in the same run, as the floor to compare against.
"""

from __future__ import annotations

import time

from common import environment, median, report, start_echo, start_opdbusd

RUNS = 5
IDLE_SECONDS = 2.0


def main() -> None:
    starts: dict[str, list[float]] = {"op-dbusd": [], "echo": []}
    rss: dict[str, list[float]] = {"op-dbusd": [], "echo": []}
    with environment() as (bus, workdir):
        for run in range(RUNS):
            for name, start in (("op-dbusd", start_opdbusd), ("echo", start_echo)):
                started = start(bus, workdir, f"{name}-{run}")
                try:
                    starts[name].append(started.seconds_to_ready)
                    time.sleep(IDLE_SECONDS)
                    rss[name].append(started.rss_mib())
                finally:
                    started.stop()
    ours, floor = median(starts["op-dbusd"]), median(starts["echo"])
    report(
        "start, exec -> name owned",
        ours / floor,
        "<= 1 s absolute",
        ours <= 1.0,
        f"op-dbusd {ours * 1000:.0f} ms, dbus-fast echo {floor * 1000:.0f} ms, median of {RUNS}",
    )
    ours, floor = median(rss["op-dbusd"]), median(rss["echo"])
    report(
        "idle RSS",
        ours / floor,
        "<= 80 MiB absolute",
        ours <= 80,
        f"op-dbusd {ours:.1f} MiB, dbus-fast echo {floor:.1f} MiB",
    )


if __name__ == "__main__":
    main()
