"""``opctl ct``: LXC containers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opctl import render
from opctl.cli_vm import on_off
from opctl.convert import to_variants
from opdbus.errors import InvalidArgs
from opdbus.models.container import ContainerInfo

if TYPE_CHECKING:
    from opctl.cli import Cli

Command = Callable[..., argparse.ArgumentParser]

CT_HELP = "the container's name"


def add_parser(sub: Any, command: Command) -> None:
    ct = sub.add_parser("ct", help="LXC containers: create, lifecycle, exec")
    csub = ct.add_subparsers(
        dest="ct_command", required=True, metavar="ACTION", parser_class=type(ct)
    )
    command(csub, "list", "every container in the daemon's lxcpath, in id order")
    command(csub, "show", "one container: state, network, limits, usage").add_argument(
        "name", help=CT_HELP
    )
    create = command(csub, "create", "create a container (a job)")
    create.add_argument("name", help="letters, digits, '_' and '-'; at most 63")
    create.add_argument("--id", type=int, help="numeric id (default: the lowest free from 100)")
    create.add_argument("--template", choices=["busybox", "download"], help="default busybox")
    create.add_argument("--dist", dest="distribution", help="download template: distribution")
    create.add_argument("--release", help="download template: release")
    create.add_argument("--bridge", help="an OVS or Linux bridge for its veth")
    create.add_argument("--veth", help="host-side veth name (default vi<id>)")
    create.add_argument("--hwaddr", metavar="MAC")
    create.add_argument("--ipv4", action="append", metavar="CIDR", help="static (repeatable)")
    create.add_argument("--gateway", metavar="IP")
    create.add_argument("--memory", dest="memory_mb", type=int, metavar="MiB")
    create.add_argument("--cpus", type=int)
    create.add_argument("--autostart", action="store_true", default=None)
    create.add_argument("--start", action="store_true", default=None, help="start it once made")
    for name, text in (
        ("start", "start a container (a job)"),
        ("restart", "stop cleanly and start again (a job)"),
        ("freeze", "freeze all its processes"),
        ("unfreeze", "thaw a frozen container"),
    ):
        command(csub, name, text).add_argument("name", help=CT_HELP)
    stop = command(csub, "stop", "stop a container (a job)")
    stop.add_argument("name", help=CT_HELP)
    stop.add_argument("--force", action="store_true", help="kill at once, no clean halt")
    stop.add_argument("--timeout", type=float, metavar="SECONDS", help="clean halt's bound")
    delete = command(csub, "delete", "destroy a container, rootfs and config (a job)")
    delete.add_argument("name", help=CT_HELP)
    delete.add_argument("--force", action="store_true", help="kill it first when it runs")
    for p in (create, stop, delete, *(csub.choices[n] for n in ("start", "restart"))):
        p.add_argument("--no-wait", action="store_true", help="print the job path and return")
    autostart = command(csub, "autostart", "start it when op-dbusd first starts after a boot")
    autostart.add_argument("name", help=CT_HELP)
    autostart.add_argument("enabled", type=on_off, metavar="on|off")
    exec_ = command(
        csub,
        "exec",
        "run a command inside (no shell; exits with its status)",
        usage="opctl ct exec [-h] [--timeout S] NAME -- COMMAND [ARG...]",
    )
    exec_.add_argument("name", help=CT_HELP)
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="after --")
    exec_.add_argument("--timeout", type=float, default=None, metavar="S", help="default 30")


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB" if n else "-"


class CtCommands:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.args = cli.args
        self.client = cli.client

    async def run(self) -> int:
        handler: Callable[[], Awaitable[int]] = getattr(self, f"do_{self.args.ct_command}")
        return await handler()

    async def _job(self, member: str, signature: str = "", body: list[Any] | None = None) -> int:
        name = self.args.name
        await self.client.container(name)  # NotFound with a useful message
        return await self.cli.job(
            lambda: self._path(self.client.container_call(name, member, signature, body))
        )

    @staticmethod
    async def _path(call: Awaitable[list[Any]]) -> str:
        (path,) = await call
        return str(path)

    async def _done(self, message: str) -> int:
        info = await self.client.container(self.args.name)
        if self.args.json:
            render.dump(info.model_dump(mode="json"))
        else:
            print(message)
        return 0

    async def do_list(self) -> int:
        containers = await self.client.containers()
        if self.args.json:
            render.dump([c.model_dump(mode="json") for c in containers])
        elif not containers:
            print("no containers")
        else:
            render.table(
                ["id", "name", "state", "pid", "ipv4", "bridge", "memory", "autostart"],
                [
                    (
                        c.id or "-",
                        c.name,
                        c.state.value,
                        c.pid or "-",
                        ", ".join(c.ipv4) or "-",
                        f"{c.bridge} ({c.veth})" if c.bridge else "-",
                        _size(c.memory_used),
                        "yes" if c.autostart else "no",
                    )
                    for c in containers
                ],
            )
        return 0

    async def do_show(self) -> int:
        c = await self.client.container(self.args.name)
        if self.args.json:
            render.dump(c.model_dump(mode="json"))
            return 0
        self._show(c)
        return 0

    @staticmethod
    def _show(c: ContainerInfo) -> None:
        render.pairs(
            [
                ("container", f"{c.name} (id {c.id or '-'})"),
                ("state", c.state.value + (f", pid {c.pid}" if c.pid else "")),
                ("template", c.template or "- (made elsewhere)"),
                ("network", f"{c.veth} on {c.bridge}" if c.bridge else "none"),
                ("ipv4", ", ".join(c.ipv4) or "-"),
                ("memory", f"{_size(c.memory_used)} used, limit {_size(c.memory_limit)}"),
                ("cpus", str(c.cpus or "no limit")),
                ("cpu time", f"{c.cpu_time_ns / 1e9:.2f}s" if c.cpu_time_ns else "-"),
                ("autostart", "yes" if c.autostart else "no"),
            ]
        )

    async def do_create(self) -> int:
        a = self.args
        options = {
            key: getattr(a, key)
            for key in (
                "id", "template", "distribution", "release", "bridge", "veth", "hwaddr",
                "ipv4", "gateway", "memory_mb", "cpus", "autostart", "start",
            )
        }  # fmt: skip
        return await self.cli.job(lambda: self.client.create_container(a.name, options))

    async def do_start(self) -> int:
        return await self._job("Start")

    async def do_restart(self) -> int:
        return await self._job("Restart")

    async def do_stop(self) -> int:
        options = to_variants({"force": self.args.force or None, "timeout": self.args.timeout})
        return await self._job("Stop", "a{sv}", [options])

    async def do_delete(self) -> int:
        return await self._job("Delete", "a{sv}", [to_variants({"force": self.args.force or None})])

    async def do_freeze(self) -> int:
        await self.client.container_call(self.args.name, "Freeze")
        return await self._done(f"{self.args.name} frozen")

    async def do_unfreeze(self) -> int:
        await self.client.container_call(self.args.name, "Unfreeze")
        return await self._done(f"{self.args.name} running again")

    async def do_autostart(self) -> int:
        on = self.args.enabled
        await self.client.container_call(self.args.name, "SetAutostart", "b", [on])
        return await self._done(f"{self.args.name} autostart {'on' if on else 'off'}")

    async def do_exec(self) -> int:
        argv = list(self.args.argv)
        if argv[:1] == ["--"]:
            argv = argv[1:]
        if not argv:
            raise InvalidArgs("opctl ct exec NAME -- COMMAND [ARG...]: no command given")
        options = to_variants({"timeout": self.args.timeout})
        # The command may take its own timeout (default 30 s); the answer comes after it.
        wait = (self.args.timeout or 30.0) + self.client.call_timeout
        status, out, err = await self.client.container_call(
            self.args.name, "Exec", "asa{sv}", [argv, options], timeout=wait
        )
        if self.args.json:
            render.dump({"status": status, "stdout": out, "stderr": err})
            return 0
        sys.stdout.write(out)
        sys.stderr.write(err)
        return int(status) & 0xFF
