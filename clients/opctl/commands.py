"""What opctl's commands do: the daemon-wide ones here, each group's in ``opctl.cli_*``.

Imported by ``opctl.cli.main`` once the arguments are parsed (the parser,
``opctl.parser``, stays free of dbus-fast, asyncio and pydantic).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from opctl import jsonout, render, rows
from opctl.client import Client
from opctl.parser import _env_timeout
from opctl.wire import Detached, job_ref_to_path
from opdbus import errors, names

if TYPE_CHECKING:
    from opdbus.models.job import JobRecord, LogLine

# Each group's commands (opctl.cli_*) and the models (pydantic) are imported
# by the command that uses them: `opctl status` pays for neither.


def job_exit_code(record: JobRecord) -> int:
    from opdbus.models.job import JobState

    if record.state is JobState.SUCCEEDED:
        return 0
    if record.state is JobState.CANCELLED:
        return errors.Cancelled.exit_code
    return errors.ERRORS_BY_NAME.get(record.error_name, errors.Failed).exit_code


class Cli:
    def __init__(self, args: argparse.Namespace, client: Client) -> None:
        self.args = args
        self.client = client
        self.progress = render.Progress(
            enabled=sys.stderr.isatty() and not args.no_progress and not args.json
        )

    async def status(self) -> int:
        if self.args.json:
            status = await self.client.status()
            counts = await self.client.count_jobs()
            render.dump(
                {
                    "version": status.version,
                    "mode": status.mode,
                    "bus": self.client.address,
                    "backends": {
                        n: {"available": ok, "detail": d} for n, (ok, d) in status.backends.items()
                    },
                    "jobs": counts,
                    "audit_seq": status.audit_seq,
                    "audit_enabled": status.audit_enabled,
                }
            )
            return 0
        first, backends, last = rows.status(
            await self.client.get_all(names.ROOT_PATH, names.MANAGER_IFACE),
            await self.client.count_jobs(),
            self.client.address,
        )
        print(first)
        render.table(*backends)
        print(last)
        return 0

    async def follow(
        self, start: Callable[[], Awaitable[str]] | str, *, numbered: bool = False
    ) -> JobRecord:
        """Run (or attach to) a job, streaming its log and a progress bar.

        ``numbered``: log lines as ``jobs log`` prints them. Ctrl-C stops the
        waiting, not the job: it says so and how to follow it (``Detached``).
        """
        path = start if isinstance(start, str) else None

        def started(job: str) -> None:
            nonlocal path
            path = job

        def on_log(line: LogLine) -> None:
            if not self.args.json:
                self.progress.line(render.log_line(line) if numbered else line.text)

        if isinstance(start, str):
            follower = self.client.wait_job(start, on_update=self.progress.update, on_log=on_log)
        else:
            follower = self.client.run_job(
                start, on_update=self.progress.update, on_log=on_log, on_started=started
            )
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        job = asyncio.create_task(follower)
        ctrl_c = asyncio.create_task(interrupted.wait())
        # The bar moves (spinner, elapsed time) between the job's own events.
        tick = asyncio.create_task(self.progress.tick())
        try:
            await asyncio.wait({job, ctrl_c}, return_when=asyncio.FIRST_COMPLETED)
            if job.done():
                return job.result()
            raise Detached(path)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            for task in (job, ctrl_c, tick):
                task.cancel()
            await asyncio.gather(job, ctrl_c, tick, return_exceptions=True)
            self.progress.done()

    async def job(
        self,
        start: Callable[[], Awaitable[str]],
        show: Callable[[JobRecord], None] | None = None,
    ) -> int:
        """Start a job; follow it to its end (``show`` prints its output for people),
        or with --no-wait print its path."""
        if getattr(self.args, "no_wait", False):
            path = await start()
            if self.args.json:
                render.dump(jsonout.mutation(await self.client.job(path)))
            else:
                print(path)
            return 0
        record = await self.follow(start)
        if show is not None and not self.args.json:
            show(record)
        return self.finish_job(record)

    def finish_job(self, record: JobRecord, *, mutation: bool = True) -> int:
        """Report a job's end; under --json, a mutation's shape (or, for
        ``jobs wait``, the job itself)."""
        from opdbus.models.job import JobState

        if self.args.json:
            render.dump(jsonout.mutation(record) if mutation else jsonout.job(record))
        elif record.state is not JobState.SUCCEEDED:
            print(f"job {record.id} {record.state.value}: {record.result}", file=sys.stderr)
        else:
            print(f"job {record.id} succeeded: {record.result}")
        return job_exit_code(record)

    async def validate(self) -> int:
        def start() -> Awaitable[str]:
            return self.client.validate(quick=self.args.quick, fix=self.args.fix)

        def show(record: JobRecord) -> None:
            if not record.output.get("checks"):
                return
            from opdbus.models.validation import ValidationReport

            report = ValidationReport.model_validate(record.output)
            print()
            render.table(
                ["check", "status", "message"],
                [
                    (c.name, c.status.value, c.message + "".join(f" [fixed: {f}]" for f in c.fixed))
                    for c in report.checks
                ],
            )

        return await self.job(start, show)

    async def jobs(self) -> int:
        action = self.args.jobs_command
        if action == "list":
            return await self._jobs_list()
        path = job_ref_to_path(self.args.job)
        if action == "show":
            record = await self.client.job(path)
            if self.args.json:
                render.dump(jsonout.job(record))
            else:
                self._show(path, record)
            return 0
        if action == "log":
            return await self._jobs_log(path)
        if action == "cancel":
            await self.client.cancel(path)
            record = await self.client.job(path)
            if self.args.json:
                render.dump(jsonout.mutation(record))
            else:
                print(f"job {record.id} {record.state.value}")
            return 0
        return self.finish_job(await self.follow(path), mutation=False)

    async def _jobs_list(self) -> int:
        records = await self.client.jobs()
        if self.args.state:
            records = [r for r in records if r.state.value == self.args.state]
        if self.args.last is not None:
            records = records[-self.args.last :] if self.args.last > 0 else []
        if self.args.json:
            render.dump([jsonout.job(record) for record in records])
        elif not records:
            print("no jobs")
        else:
            render.table(
                ["id", "state", "operation", "progress", "started", "took", "result"],
                [
                    (
                        r.id,
                        r.state.value,
                        r.operation,
                        f"{r.progress * 100:.0f}%" if r.progress_valid else "-",
                        render.when(r.started_at),
                        render.duration(r),
                        r.result,
                    )
                    for r in records
                ],
            )
        return 0

    async def _jobs_log(self, path: str) -> int:
        if self.args.follow:  # the same lines as without --follow, then the new ones
            return job_exit_code(await self.follow(path, numbered=True))
        lines = await self.client.job_log(path, self.args.start, 0)
        if self.args.json:
            render.dump([jsonout.log_line(line) for line in lines])
        else:
            for line in lines:
                print(render.log_line(line))
        return 0

    def _show(self, path: str, r: JobRecord) -> None:
        render.pairs(
            [
                ("job", f"{r.id} ({path})"),
                ("operation", r.operation),
                ("state", r.state.value),
                ("progress", f"{r.progress * 100:.0f}%" if r.progress_valid else "-"),
                ("targets", ", ".join(r.targets) or "-"),
                ("started by", f"uid {r.started_by_uid}"),
                ("created", render.when(r.created_at)),
                ("started", render.when(r.started_at)),
                ("finished", render.when(r.finished_at)),
                ("result", r.result or "-"),
                ("error", r.error_name or "-"),
                ("log lines", str(r.log_lines)),
            ]
        )

    async def net(self) -> int:
        from opctl.cli_net import NetCommands

        return await NetCommands(self).run()

    async def vm(self) -> int:
        from opctl.cli_vm import VmCommands

        return await VmCommands(self).run()

    async def ct(self) -> int:
        from opctl.cli_ct import CtCommands

        return await CtCommands(self).run()

    async def sync(self) -> int:
        from opctl.cli_sync import SyncCommands

        return await SyncCommands(self).sync()

    async def rebuild(self) -> int:
        from opctl.cli_sync import SyncCommands

        return await SyncCommands(self).rebuild()

    async def update(self) -> int:
        from opctl.cli_sync import SyncCommands

        return await SyncCommands(self).update()

    async def install(self) -> int:
        from opctl.cli_sync import SyncCommands

        return await SyncCommands(self).install()

    async def host(self) -> int:
        from opctl.cli_sync import SyncCommands

        return await SyncCommands(self).host()

    async def audit(self) -> int:
        from opctl.cli_audit import AuditCommands

        return await AuditCommands(self).run()

    async def state(self) -> int:
        from opctl.cli_state import StateCommands

        return await StateCommands(self).run()

    async def watch(self) -> int:
        from opctl.cli_watch import Watch

        return await Watch(self).run()


async def run(args: argparse.Namespace) -> int:
    render.HEADERS = not args.no_headers
    render.FIELDS = args.output
    offline: Callable[[argparse.Namespace], int | None] | None = getattr(args, "offline", None)
    if offline is not None:  # may need no daemon (opctl vm profile schema, audit verify --file)
        status = offline(args)
        if status is not None:
            return status
    client = await Client.connect(args.bus, call_timeout=args.call_timeout or _env_timeout())
    try:
        cli = Cli(args, client)
        command: Callable[[], Awaitable[int]] = getattr(cli, args.command)
        return await command()
    finally:
        await client.close()
