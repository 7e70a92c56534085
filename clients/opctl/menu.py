"""The console menu: the hypervisor's boot-time screen, a thin client of org.opdbus.

Seed 003 ("Boot menu behavior"): a TUI on the console lists the VMs, starts
the last-run VM after a countdown unless a key is pressed, and has a "More
Options" tier. This one only calls op-dbusd's methods and follows its
signals -- it never polls: a VM started with ``virsh`` by hand changes its
row when libvirt's event reaches the daemon and the daemon's
PropertiesChanged reaches us. Keyboard only; works on the Linux VT (16
colours), over SSH and at 80x24. ``opctl menu`` and ``op-dbus-menu`` run it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.markup import escape
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from opctl.client import Client
from opctl.wire import SignalEvent, Unreachable, resolve_address
from opdbus import errors, names

RETRY_SECONDS = 1.0  # between attempts to reach the bus or the daemon again
COLUMNS = (("name", "NAME"), ("state", "STATE"), ("cpus", "CPUS"), ("memory", "MEMORY"),
           ("autostart", "AUTOSTART"))  # fmt: skip


def error_line(error: Exception) -> str:
    """A daemon's named error as one line a person can act on."""
    if isinstance(error, errors.NotAuthorized):
        return f"not authorized: {error.message}"
    if isinstance(error, errors.OpdbusError):
        return f"{type(error).__name__}: {error.message}"
    return f"{type(error).__name__}: {error}"


def job_state_changed(event: SignalEvent) -> bool:
    """A job came, went, or changed state (not each of its log lines: a rebuild prints
    hundreds a second)."""
    if event.member in ("JobNew", "JobRemoved"):
        return True
    return (
        event.member == "PropertiesChanged"
        and event.args[0] == names.JOB_IFACE
        and "State" in event.args[1]
    )


def vm_cells(props: dict[str, Any]) -> dict[str, str]:
    return {
        "name": str(props.get("Name", "?")),
        "state": str(props.get("State", "?")),
        "cpus": str(props.get("VCPUs", "")),
        "memory": f"{props.get('MemoryMiB', 0)} MiB",
        "autostart": "yes" if props.get("Autostart") else "no",
    }


class Countdown(Screen[bool]):
    """Before the menu: the last-run VM starts when the count reaches 0; any key stops it."""

    def __init__(self, vm: str, seconds: int, tick: float) -> None:
        super().__init__()
        self.vm, self.left, self.tick = vm, seconds, tick

    def compose(self) -> ComposeResult:
        yield Static(self._text(), id="countdown")

    def _text(self) -> str:
        vm = escape(self.vm)
        return f"\n  Starting {vm} in {self.left} s.\n\n  Press any key for the menu instead."

    def on_mount(self) -> None:
        self.timer = self.set_interval(self.tick, self._count)

    def _count(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.timer.stop()
            self.dismiss(True)
        else:
            self.query_one("#countdown", Static).update(self._text())

    def on_key(self, event: events.Key) -> None:
        event.stop()
        self.timer.stop()
        self.dismiss(False)


class MenuApp(App[None]):
    """The main screen: VMs, their actions, a status line; More Options behind ``o``."""

    TITLE = "op-dbus"
    CSS = """
    #status { height: 1; background: $primary-background; }
    #job { height: 1; }
    DataTable { height: 1fr; }
    """
    # The footer shows them in this order and cuts what does not fit in 80
    # columns: the way out and the way on first.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("o", "more", "more"),
        Binding("s", "vm('Start')", "start"),
        Binding("d", "vm('Shutdown')", "shutdown"),
        Binding("f", "vm('Stop')", "kill"),
        Binding("r", "vm('Reboot')", "reboot"),
        Binding("n", "snapshot", "snap"),
        Binding("c", "console", "console"),
        Binding("l", "job_log", "log"),
    ]
    ENABLE_COMMAND_PALETTE = False  # keyboard-only console: its ^p entry costs footer room
    MAIN_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"more", "vm", "snapshot", "console", "job_log"}
    )

    def __init__(self, address: str | None = None, *, tick: float = 1.0) -> None:
        super().__init__()
        self.address = resolve_address(address)
        self.tick = tick  # seconds per countdown step (tests use a faster clock)
        self.client: Client | None = None
        self.owner: str | None = None
        self.props: dict[str, Any] = {}  # Manager1's
        self.vms: dict[str, dict[str, Any]] = {}  # path -> VM1 properties
        self.last_job: str | None = None
        self.running_jobs = 0
        self.listeners: list[Callable[[SignalEvent], None]] = []  # open More Options screens
        self.ready = asyncio.Event()  # the first full list is on screen
        self._countdown_done = False

    # -- layout -------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The VM keys belong to the main screen: hidden and off on every other one."""
        return not (action in self.MAIN_ONLY and len(self.screen_stack) > 1)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("connecting…", id="status")
            yield DataTable(id="vms", cursor_type="row", zebra_stripes=False)
            yield Static("", id="job")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#vms", DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.session()

    # -- the bus ------------------------------------------------------------------

    @work(exclusive=True, group="session")
    async def session(self) -> None:
        """Connected, the list loaded and followed; when the bus or the daemon goes, again."""
        while True:
            try:
                client = await Client.connect(self.address)
            except errors.OpdbusError as e:
                self.status(f"reconnecting… ({error_line(e)})")
                await asyncio.sleep(RETRY_SECONDS)
                continue
            try:
                await self.follow(client)
            except errors.OpdbusError as e:
                self.status(f"reconnecting… ({error_line(e)})")
            finally:
                self.client = None
                await client.close()
            await asyncio.sleep(RETRY_SECONDS)

    async def follow(self, client: Client) -> None:
        async with client.signals("") as queue:
            await self.load(client)
            self.client = client
            while True:
                try:
                    event: SignalEvent | None = await asyncio.wait_for(queue.get(), RETRY_SECONDS)
                except TimeoutError:
                    event = None  # quiet: is the bus still there, the same daemon behind it?
                if not client.bus.connected:
                    raise Unreachable("the bus connection was lost")
                if client.owner != self.owner:
                    if client.owner is None:
                        raise Unreachable("op-dbusd went away")
                    await self.load(client)  # a new daemon: everything again
                elif event is not None:
                    self.dispatch(event)

    async def load(self, client: Client) -> None:
        self.props = await client.get_all(names.ROOT_PATH, names.MANAGER_IFACE)
        self.owner = client.owner
        self.vms = {}
        if self.props.get("Mode") == "full":
            with contextlib.suppress(errors.OpdbusError):  # libvirt down: the status says so
                self.vms = await client.vms()
        self.running_jobs = (await client.count_jobs()).get("running", 0)
        if not self.is_running:
            return  # closing meanwhile: its widgets are going
        table = self.query_one("#vms", DataTable)
        table.clear()
        for path, props in sorted(self.vms.items(), key=lambda kv: str(kv[1].get("Name"))):
            table.add_row(*map(Text, vm_cells(props).values()), key=path)
        self.status()
        self.ready.set()
        if not self._countdown_done:
            self._countdown_done = True
            self.maybe_autostart()

    def dispatch(self, event: SignalEvent) -> None:
        if not self.is_running:
            # The app is closing and its widgets are going, while the session
            # worker may still hold a signal (the worker is cancelled after).
            return
        if event.member == "PropertiesChanged" and event.args[0] == names.VM_IFACE:
            self.vm_changed(event.path, event.args[1])
        elif event.member == "InterfacesAdded" and names.VM_IFACE in event.args[1]:
            self.vm_changed(str(event.args[0]), event.args[1][names.VM_IFACE])
        elif event.member == "InterfacesRemoved" and names.VM_IFACE in event.args[1]:
            path = str(event.args[0])
            if self.vms.pop(path, None) is not None:
                self.query_one("#vms", DataTable).remove_row(path)
        elif event.member == "PropertiesChanged" and event.args[0] == names.MANAGER_IFACE:
            self.props.update(event.args[1])
            self.status()
        elif job_state_changed(event):
            self.jobs_changed()
        for listener in list(self.listeners):
            listener(event)

    def vm_changed(self, path: str, changed: dict[str, Any]) -> None:
        table = self.query_one("#vms", DataTable)
        if path not in self.vms:
            self.vms[path] = dict(changed)
            table.add_row(*map(Text, vm_cells(changed).values()), key=path)
            table.sort("name")
            return
        self.vms[path].update(changed)
        for key, value in vm_cells(self.vms[path]).items():
            table.update_cell(path, key, Text(value))

    @work(exclusive=True, group="counts")
    async def jobs_changed(self) -> None:
        client = self.client
        if client is not None:
            with contextlib.suppress(errors.OpdbusError):
                self.running_jobs = (await client.count_jobs()).get("running", 0)
                self.status()

    def status(self, problem: str | None = None) -> None:
        if not self.is_running:
            return  # closing (see dispatch)
        if problem is not None:
            self.query_one("#status", Static).update(f"[b]{escape(problem)}[/b]")
            return
        backends = self.props.get("Backends", {})
        health = " ".join(
            f"{name} {'ok' if ok else 'DOWN'}" for name, (ok, _) in sorted(backends.items())
        )
        self.query_one("#status", Static).update(
            f"op-dbus {self.props.get('Version', '?')} · mode {self.props.get('Mode', '?')} · "
            f"{health} · jobs running: {self.running_jobs}"
        )

    # -- autostart ----------------------------------------------------------------

    @work(group="autostart")
    async def maybe_autostart(self) -> None:
        vm = str(self.props.get("LastRunVM") or "")
        seconds = int(self.props.get("MenuAutostartTimeout") or 0)
        if not vm or seconds <= 0:
            return
        path = next((p for p, v in self.vms.items() if v.get("Name") == vm), None)
        if path is None or self.vms[path].get("State") == "running":
            return
        if await self.push_screen_wait(Countdown(vm, seconds, self.tick)):
            await self.run_job(f"Start {vm}", lambda c: c.vm_job(path, "Start"))

    # -- running the daemon's jobs -----------------------------------------------

    def job_line(self, text: str) -> None:
        if self.is_running:  # else closing (see dispatch)
            self.query_one("#job", Static).update(escape(text))

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        # What we show comes from the daemon and the host (names, messages):
        # text, never markup.
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    async def run_job(self, what: str, start: Callable[[Client], Awaitable[str]]) -> bool:
        """Start a job, show its progress on the job line; True if it succeeded."""
        client = self.client
        if client is None:
            self.notify("not connected to op-dbusd", severity="error")
            return False

        def started() -> Awaitable[str]:
            return start(client)

        def update(record: Any) -> None:
            pct = f" {record.progress * 100:.0f}%" if record.progress_valid else ""
            self.job_line(f"job {record.id} {record.operation}: {record.state.value}{pct}")

        try:

            async def start_and_keep() -> str:
                self.last_job = await started()  # `l` shows its log
                return self.last_job

            record = await client.run_job(start_and_keep, on_update=update)
        except errors.OpdbusError as e:
            self.job_line(f"{what}: {error_line(e)}")
            self.notify(error_line(e), severity="error", timeout=8)
            return False
        ok = record.state.value == "succeeded"
        self.job_line(f"job {record.id} {record.state.value}: {record.result}")
        if not ok:
            self.notify(f"{what}: {record.result}", severity="error", timeout=8)
        return ok

    def selected(self) -> tuple[str, dict[str, Any]] | None:
        table = self.query_one("#vms", DataTable)
        if not self.vms or table.row_count == 0:
            self.notify("no VM selected", severity="warning")
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        path = str(row_key.value)
        return path, self.vms[path]

    @work(group="actions")
    async def action_vm(self, member: str) -> None:
        chosen = self.selected()
        if chosen is None:
            return
        path, props = chosen
        name = props.get("Name", "?")
        if member == "Reboot":  # answered at once, no job
            client = self.client
            try:
                if client is None:
                    raise Unreachable("not connected to op-dbusd")
                await client.vm_call(path, "Reboot")
                self.job_line(f"{name}: reboot requested")
            except errors.OpdbusError as e:
                self.notify(error_line(e), severity="error", timeout=8)
            return
        signature, body = ("a{sv}", [{}]) if member == "Shutdown" else ("", list[Any]())
        await self.run_job(f"{member} {name}", lambda c: c.vm_job(path, member, signature, body))

    @work(group="actions")
    async def action_snapshot(self) -> None:
        chosen = self.selected()
        if chosen is None:
            return
        path, props = chosen
        snap = "menu-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        await self.run_job(
            f"snapshot {props.get('Name')}",
            lambda c: c.vm_job(path, "CreateSnapshot", "sa{sv}", [snap, {}]),
        )

    async def action_console(self) -> None:
        chosen = self.selected()
        if chosen is None:
            return
        _, props = chosen
        uri = str(self.props.get("LibvirtURI") or "")
        if not uri:
            self.notify("VMs are off in this mode: no console", severity="error")
            return
        await self.hand_terminal(["virsh", "-c", uri, "console", str(props.get("Name"))])

    async def hand_terminal(self, argv: list[str]) -> None:
        """Give the terminal to ``argv`` (a console, a shell) and take it back when it ends."""
        try:
            with self.suspend():
                print(f"$ {' '.join(argv)}   (the menu comes back when it ends)", flush=True)
                try:
                    child = await asyncio.create_subprocess_exec(*argv)
                    await child.wait()
                except OSError as e:
                    print(f"cannot run {argv[0]}: {e.strerror}", flush=True)
                    await asyncio.sleep(2)
        except Exception as e:  # no terminal to give (a headless run)
            self.notify(f"cannot hand over the terminal: {e}", severity="error")

    def action_job_log(self) -> None:
        from opctl.menu_screens import JobLog

        if self.last_job is None:
            self.notify("no job started from this menu yet", severity="warning")
            return
        self.push_screen(JobLog(self.last_job))

    def action_more(self) -> None:
        from opctl.menu_screens import MoreOptions

        self.push_screen(MoreOptions())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="op-dbus-menu", description="The hypervisor's console menu (a client of op-dbusd)."
    )
    p.add_argument("--bus", metavar="ADDRESS", help="default $OPDBUS_BUS_ADDRESS, else system")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.bus)


def from_cli(args: argparse.Namespace) -> int:
    """``opctl menu``: runs without opctl's own connection (the menu keeps its own)."""
    return run(args.bus)


def run(address: str | None) -> int:
    if not sys.stdout.isatty():
        print("op-dbus-menu: needs a terminal", file=sys.stderr)
        return errors.InvalidArgs.exit_code
    MenuApp(address).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
