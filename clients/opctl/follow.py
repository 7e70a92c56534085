"""Following a job to its end: the part of :class:`opctl.client.Client` that turns a
snapshot plus the signals queued after it into one ordered stream of updates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from opctl.wire import SignalEvent, as_job_record, as_log_line
from opdbus import names

if TYPE_CHECKING:
    from opctl.client import Client
    from opdbus.models.job import JobRecord, LogLine


async def follow_job(
    client: Client,
    path: str,
    queue: asyncio.Queue[SignalEvent],
    on_update: Callable[[JobRecord], None] | None,
    on_log: Callable[[LogLine], None] | None,
) -> JobRecord:
    """Report a job's log and changes until it ends: its state and log as they are
    now, then the signals queued since (subscribed before), without gaps or repeats."""
    props, snapshot_at = await client.snapshot(path, names.JOB_IFACE)
    printed = 0

    async def catch_up(upto: int | None = None) -> None:
        nonlocal printed
        if on_log is None:
            return
        while upto is None or printed < upto:
            lines = await client.job_log(path, printed + 1, 0)
            if not lines:
                return
            for line in lines:
                if upto is not None and line.number > upto:
                    return
                on_log(line)
                printed = line.number

    await catch_up()
    record = as_job_record(props)
    if on_update:
        on_update(record)
    while not record.state.finished:
        event = await queue.get()
        if event.path != path:
            continue
        if event.member == "Log" and on_log is not None:
            number, stamp, text = event.args
            if number > printed + 1:
                await catch_up(number - 1)
            if number > printed:
                on_log(as_log_line(number, stamp, text))
                printed = number
        elif (
            event.member == "PropertiesChanged"
            and event.args[0] == names.JOB_IFACE
            and event.arrival > snapshot_at  # older ones are in the snapshot already
        ):
            props.update(event.args[1])
            record = as_job_record(props)
            if on_update:
                on_update(record)
    await catch_up()
    return record
