"""The console menu's second tier (seed 003's "More Options"), and a job's live log.

Each entry calls op-dbusd: host validation (live, with ``--fix``), update
(validate + sync + rebuild, its output streaming), rebuild with an action
chooser, bridges, containers (start, stop, exec), jobs (live, log, cancel),
audit (list, verify), declarative state (drift, confirm, rollback), a
shell, and rebooting or powering off the host.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.markup import escape
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, OptionList, RichLog, Static
from textual.widgets.option_list import Option

from opctl.client import Client
from opctl.convert import to_variants
from opctl.menu import MenuApp, error_line, job_state_changed
from opctl.wire import SignalEvent, Unreachable
from opdbus import errors, names

REBUILD_ACTIONS = ("switch", "test", "boot", "build", "dry-build")
Row = tuple[str, list[str]]  # a key, its cells
KeyAction = Callable[["Table", str], Awaitable[None]]
Keys = dict[str, tuple[str, KeyAction]]


def _app(screen: Screen[Any]) -> MenuApp:
    app = screen.app
    assert isinstance(app, MenuApp)
    return app


def _client(screen: Screen[Any]) -> Client:
    client = _app(screen).client
    if client is None:
        raise Unreachable("not connected to op-dbusd (reconnecting…)")
    return client


def _fail(screen: Screen[Any], error: Exception) -> None:
    screen.notify(error_line(error), severity="error", timeout=8)


class JobLog(Screen[None]):
    """One job's log, live until it ends (the same lines `opctl jobs log` prints)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("c", "cancel", "cancel the job"),
    ]

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        yield Static(f"job {self.path.rsplit('/', 1)[-1]}", id="title")
        yield RichLog(id="log", wrap=True, markup=False, max_lines=5000)
        yield Footer()

    def on_mount(self) -> None:
        self.follow()

    @work(exclusive=True)
    async def follow(self) -> None:
        log = self.query_one("#log", RichLog)
        title = self.query_one("#title", Static)

        def update(record: Any) -> None:
            pct = f" {record.progress * 100:.0f}%" if record.progress_valid else ""
            title.update(escape(f"job {record.id} {record.operation}: {record.state.value}{pct}"))

        def line(entry: Any) -> None:
            log.write(entry.text)

        try:
            record = await _client(self).wait_job(self.path, on_update=update, on_log=line)
        except errors.OpdbusError as e:
            _fail(self, e)
            return
        title.update(escape(f"job {record.id} {record.state.value}: {record.result}"))

    @work
    async def action_cancel(self) -> None:
        try:
            await _client(self).cancel(self.path)
        except errors.OpdbusError as e:
            _fail(self, e)


class Choice(ModalScreen[str | None]):
    """Pick one of a few words (a rebuild's action); escape: none."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss_none", "back")]

    def __init__(self, question: str, choices: tuple[str, ...]) -> None:
        super().__init__()
        self.question, self.choices = question, choices

    def compose(self) -> ComposeResult:
        yield Static(self.question)
        yield OptionList(*(Option(choice, id=choice) for choice in self.choices))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class Prompt(ModalScreen[str | None]):
    """One line of text (a command to run in a container); escape: none."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss_none", "back")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Static(self.question)
        yield Input(id="answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class Table(Screen[None]):
    """A list from the daemon, with a few one-key actions on the selected row.

    ``live`` says which signals change it: the list is read again then (the
    signals come from the app's one subscription; nothing is polled).
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]

    def __init__(
        self,
        title: str,
        columns: list[str],
        load: Callable[[Client], Awaitable[list[Row]]],
        keys: Keys | None = None,
        live: Callable[[SignalEvent], bool] | None = None,
    ) -> None:
        super().__init__()
        self.heading, self.columns, self.load = title, columns, load
        self.keys = keys or {}
        self.live = live

    def compose(self) -> ComposeResult:
        hints = " · ".join(f"{key} {label}" for key, (label, _) in self.keys.items())
        yield Static(f"[b]{self.heading}[/b]  {hints}  · esc back", id="title")
        yield DataTable(id="rows", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#rows", DataTable)
        for column in self.columns:
            table.add_column(column, key=column)
        if self.live is not None:
            _app(self).listeners.append(self._event)
        self.reload()

    def on_unmount(self) -> None:
        if self._event in _app(self).listeners:
            _app(self).listeners.remove(self._event)

    def _event(self, event: SignalEvent) -> None:
        if self.live is not None and self.live(event):
            self.reload()

    @work(exclusive=True, group="reload")
    async def reload(self) -> None:
        table = self.query_one("#rows", DataTable)
        try:
            rows = await self.load(_client(self))
        except errors.OpdbusError as e:
            self.query_one("#title", Static).update(f"[b]{self.heading}[/b]: {escape(e.message)}")
            return
        keep = table.cursor_row
        table.clear()
        for key, cells in rows:
            table.add_row(*map(Text, cells), key=key)
        if rows:
            table.move_cursor(row=min(keep, len(rows) - 1))

    def selected(self) -> str | None:
        table = self.query_one("#rows", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return str(row_key.value)

    def on_key(self, event: events.Key) -> None:
        if event.key in self.keys:
            event.stop()
            self.run_key(event.key)

    @work(group="keys")
    async def run_key(self, key: str) -> None:
        _, act = self.keys[key]
        row = self.selected()
        if row is None:
            self.notify("nothing selected", severity="warning")
            return
        try:
            await act(self, row)
        except errors.OpdbusError as e:
            _fail(self, e)


# -- the lists ---------------------------------------------------------------------


async def _bridges(client: Client) -> list[Row]:
    await client.require_backend("ovsdb", "bridges")
    return [
        (b.name, [b.name, str(len(b.ports)), b.link_state, ", ".join(b.addresses) or "-"])
        for b in await client.bridges()
    ]


async def _containers(client: Client) -> list[Row]:
    await client.require_backend("lxc", "containers")
    return [
        (c.name, [c.name, str(c.id), c.state.value, ", ".join(c.ipv4) or "-"])
        for c in await client.containers()
    ]


async def _jobs(client: Client) -> list[Row]:
    rows = []
    for job in sorted(await client.jobs(), key=lambda j: -j.id)[:200]:
        pct = f"{job.progress * 100:.0f}%" if job.progress_valid else "-"
        rows.append(
            (names.job_path(job.id), [str(job.id), job.operation, job.state.value, pct, job.result])
        )
    return rows


async def _audit(client: Client) -> list[Row]:
    props = await client.get_all(names.ROOT_PATH, names.MANAGER_IFACE)
    head = int(props.get("AuditSeq", 0))
    entries = await client.audit(max(1, head - 49), 50)
    return [
        (str(e.seq), [str(e.seq), e.time, str(e.uid), e.method, e.result])
        for e in reversed(entries)
    ]


async def _drift(client: Client) -> list[Row]:
    state = await client.state()
    drift = state.get("Drift") or []
    rows = [(f"{p}/{r}", [p, r, what]) for p, r, what in drift]
    pending = state.get("PendingCheckpoint") or ""
    summary = "in sync" if state.get("InSync") else "drifted"
    rows.insert(0, ("-", ["(state)", summary, f"pending checkpoint: {pending or 'none'}"]))
    return rows


async def _ct(table: Table, member: str, name: str) -> None:
    client = _client(table)
    path = names.container_path(name)
    (job,) = await client.call(path, names.CONTAINER_IFACE, member, "a{sv}" if member == "Stop"
                               else "", [{}] if member == "Stop" else [])  # fmt: skip
    table.app.push_screen(JobLog(str(job)))


async def _ct_exec(table: Table, name: str) -> None:
    command = await table.app.push_screen_wait(Prompt(f"command to run in {name}:"))
    if not command:
        return
    client = _client(table)
    status, out, err = await client.call(
        names.container_path(name), names.CONTAINER_IFACE, "Exec", "asa{sv}",
        [shlex.split(command), {}],
    )  # fmt: skip
    table.notify(f"exit {status}\n{(out + err).strip()[-600:]}", timeout=15)


async def _job_cancel(table: Table, path: str) -> None:
    await _client(table).cancel(path)


async def _job_log(table: Table, path: str) -> None:
    table.app.push_screen(JobLog(path))


async def _verify(table: Table, _: str) -> None:
    verdict = await _client(table).verify_audit()
    table.notify(
        ("chain intact" if verdict.ok else "BROKEN: " + verdict.reason),
        severity="information" if verdict.ok else "error",
        timeout=12,
    )


async def _state(table: Table, member: str) -> None:
    await _client(table).state_call(member)
    table.notify(f"{member}: done")
    table.reload()


class MoreOptions(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "back")]
    ENTRIES: ClassVar[list[tuple[str, str]]] = [
        ("validate", "Validate the host"),
        ("fix", "Validate the host and repair what is safe (--fix)"),
        ("update", "Update: validate, smart sync, rebuild switch"),
        ("rebuild", "Rebuild NixOS…"),
        ("bridges", "Bridges and ports"),
        ("containers", "Containers"),
        ("jobs", "Jobs"),
        ("audit", "Audit log"),
        ("state", "Declarative state"),
        ("shell", "Shell"),
        ("reboot", "Reboot the host"),
        ("poweroff", "Power off the host"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("[b]More options[/b]  (enter: choose · esc: back)")
        yield OptionList(*(Option(text, id=key) for key, text in self.ENTRIES), id="options")
        yield Footer()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.choose(str(event.option.id))

    @work(group="more")
    async def choose(self, key: str) -> None:
        try:
            await self._choose(key)
        except errors.OpdbusError as e:
            _fail(self, e)

    async def _job(self, member: str, signature: str, body: list[Any]) -> None:
        (job,) = await _client(self).call(names.ROOT_PATH, names.MANAGER_IFACE, member,
                                          signature, body)  # fmt: skip
        _app(self).last_job = str(job)
        self.app.push_screen(JobLog(str(job)))

    async def _choose(self, key: str) -> None:
        app = _app(self)
        keys: Keys
        if key in ("validate", "fix"):
            await self._job("Validate", "a{sv}", [to_variants({"fix": key == "fix"})])
        elif key == "update":
            await self._job("Update", "a{sv}", [{}])
        elif key == "rebuild":
            action = await app.push_screen_wait(Choice("nixos-rebuild …", REBUILD_ACTIONS))
            if action:
                await self._job("Rebuild", "sa{sv}", [action, {}])
        elif key == "bridges":
            app.push_screen(Table("Bridges", ["NAME", "PORTS", "LINK", "ADDRESSES"], _bridges,
                                  live=lambda e: e.path.startswith(names.BRIDGE_PATH_PREFIX)
                                  or e.member.startswith("Interfaces")))  # fmt: skip
        elif key == "containers":
            keys = {
                "s": ("start", lambda t, n: _ct(t, "Start", n)),
                "x": ("stop", lambda t, n: _ct(t, "Stop", n)),
                "e": ("exec", _ct_exec),
            }
            app.push_screen(Table("Containers", ["NAME", "ID", "STATE", "IPV4"], _containers,
                                  keys, live=lambda e: e.path.startswith(
                                      names.CONTAINER_PATH_PREFIX)))  # fmt: skip
        elif key == "jobs":
            keys = {"enter": ("log", _job_log), "c": ("cancel", _job_cancel)}
            app.push_screen(Table("Jobs", ["ID", "OPERATION", "STATE", "PROGRESS", "RESULT"],
                                  _jobs, keys, live=job_state_changed))  # fmt: skip
        elif key == "audit":
            app.push_screen(Table("Audit log (newest first)", ["SEQ", "TIME", "UID", "METHOD",
                                  "RESULT"], _audit, {"v": ("verify", _verify)}))  # fmt: skip
        elif key == "state":
            keys = {
                "c": ("confirm", lambda t, _: _state(t, "Confirm")),
                "b": ("roll back", lambda t, _: _state(t, "Rollback")),
            }
            app.push_screen(Table("Declarative state", ["PROVIDER", "RESOURCE", "DRIFT"], _drift,
                                  keys, live=lambda e: e.path == names.STATE_PATH))  # fmt: skip
        elif key == "shell":
            await app.hand_terminal([os.environ.get("SHELL", "/bin/sh")])
        elif key in ("reboot", "poweroff"):
            answer = await app.push_screen_wait(Choice(f"{key} the host now?", ("no", "yes")))
            if answer == "yes":
                await app.hand_terminal(["systemctl", key])
