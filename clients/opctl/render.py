"""Output for people: aligned tables, times, and a progress bar on a terminal."""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # typing itself costs ~2 ms to import; mypy reads this as True

if TYPE_CHECKING:  # opctl's quick path prints through here: it imports only what it uses
    from collections.abc import Sequence
    from typing import Any, TextIO

    from opdbus.models.job import JobRecord, LogLine


# --no-headers (set once from the command line): rows only, as `systemctl --no-legend`.
HEADERS = True
# -o FIELD,... (set once from the command line): only these columns, in this order.
FIELDS: list[str] | None = None
MIN_LAST = 12  # the free-text column keeps at least this much when a terminal is narrow
# vm list and ct list start with these columns, in this order (read both the same way).
GUEST_COLUMNS = ("name", "state", "cpus", "memory", "used", "cpu time", "autostart")


def choose(headers: Sequence[str], fields: Sequence[str]) -> list[int]:
    """The columns -o names, by header (``cpu time``, ``cpu-time`` or ``cpu_time``)."""
    from opdbus.errors import InvalidArgs

    wanted = []
    for field in fields:
        if field not in headers:
            raise InvalidArgs(
                f"-o {field.replace(' ', '-')}: no such column here; the columns are "
                + ", ".join(header.replace(" ", "-") for header in headers)
            )
        wanted.append(list(headers).index(field))
    return wanted


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO = sys.stdout
) -> None:
    if FIELDS is not None:
        keep = choose(headers, FIELDS)
        headers = [headers[i] for i in keep]
        rows = [[row[i] for i in keep] for row in rows]
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) if HEADERS else 0 for header in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    # On a terminal the last column (free text: never padded) is cut to fit its
    # width; a pipe gets whole lines (scripts and grep want all of it).
    room = None
    if out.isatty():
        from opctl.term import columns

        fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
        room = max(columns() - fixed, MIN_LAST)

    def line(row: Sequence[str]) -> str:
        text = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1]))
        last = row[-1] if row else ""
        if room is not None and len(last) > room:
            last = last[: room - 1] + "…"
        return (f"{text}  {last}" if len(row) > 1 else last).rstrip() + "\n"

    if HEADERS:
        out.write(line([header.upper() for header in headers]))
    for row in cells:
        out.write(line(row))


def dump(value: Any) -> None:
    """--json output: one document, stable key order."""
    import json

    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def pairs(rows: Sequence[tuple[str, str]], out: TextIO = sys.stdout) -> None:
    """``key: value`` lines with the keys right-aligned."""
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.write(f"{key.rjust(width)}: {value}\n")


def when(us: int) -> str:
    if not us:
        return "-"
    from datetime import datetime

    return datetime.fromtimestamp(us / 1_000_000).strftime("%Y-%m-%d %H:%M:%S")


def age(us: int, now_us: int) -> str:
    """How long ago, the way people say it: 45s, 12m, 3h, 2d."""
    seconds = max(now_us - us, 0) // 1_000_000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def cpu_time(ns: int) -> str:
    """CPU time used, as people say it: 4.2s, 3m07s, 2h05m, 1d03h; "-" for none."""
    if not ns:
        return "-"
    seconds = ns / 1e9
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, hours, days = int(seconds // 60), int(seconds // 3600), int(seconds // 86400)
    if hours == 0:
        return f"{minutes}m{int(seconds) % 60:02d}s"
    if days == 0:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{days}d{hours % 24:02d}h"


def duration(record: JobRecord) -> str:
    if not record.started_at:
        return "-"
    end = record.finished_at or int(time.time() * 1_000_000)
    seconds = max(end - record.started_at, 0) / 1_000_000
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def elapsed(record: JobRecord) -> str:
    """How long a job has been running (queued: how long it has waited), as 1m05s."""
    since = record.started_at or record.created_at
    seconds = max(int(time.time() - since / 1_000_000), 0) if since else 0
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def log_line(line: LogLine) -> str:
    from datetime import datetime

    stamp = datetime.fromtimestamp(line.timestamp_us / 1_000_000).strftime("%H:%M:%S")
    return f"{line.number:>5}  {stamp}  {line.text}"


class Progress:
    """A one-line bar on stderr, redrawn in place; log lines scroll above it.

    Off (``enabled=False``) when stderr is not a terminal, with --json, or with
    --no-progress: then nothing but the log lines themselves are written.
    """

    def __init__(self, enabled: bool, out: TextIO = sys.stderr) -> None:
        self.enabled = enabled
        self._out = out
        self._shown = False
        self._record: JobRecord | None = None

    def update(self, record: JobRecord) -> None:
        self._record = record
        self._draw()

    def line(self, text: str, out: TextIO = sys.stdout) -> None:
        self._clear()
        out.write(text + "\n")
        out.flush()
        self._draw()

    def done(self) -> None:
        self._clear()

    async def tick(self, every: float = 0.25) -> None:
        """Redraw until cancelled: the spinner turns and the time goes on between events."""
        import asyncio

        if not self.enabled:
            return
        while True:
            await asyncio.sleep(every)
            self._draw()

    def _clear(self) -> None:
        if self.enabled and self._shown:
            self._out.write("\r\033[K")
            self._out.flush()
            self._shown = False

    def _draw(self) -> None:
        record = self._record
        if not self.enabled or record is None or record.state.finished:
            return
        from opctl.term import columns

        width = max(columns(), 40)
        label = f" {record.operation} (job {record.id}) {record.state.value} {elapsed(record)}"
        if record.progress_valid:
            bar_width = min(30, width - len(label) - 8)
            filled = int(record.progress * bar_width)
            bar = (
                "[" + "#" * filled + "." * (bar_width - filled) + f"] {record.progress * 100:3.0f}%"
            )
        else:
            spinner = "|/-\\"[int(time.monotonic() * 4) % 4]
            bar = f"[{spinner}]"
        self._out.write(("\r" + bar + label)[: width - 1])
        self._out.flush()
        self._shown = True
