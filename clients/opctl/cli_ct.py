"""``opctl ct``: LXC containers."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opctl import jsonout, render, rows
from opctl.convert import to_variants
from opctl.wire import HandOver
from opdbus.errors import Conflict, InvalidArgs, NotSupported
from opdbus.models.container import ContainerInfo, ContainerState
from opdbus.names import CONTAINER_IFACE

if TYPE_CHECKING:
    from opctl.commands import Cli


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
            render.dump(jsonout.mutation(obj=jsonout.container(info)))
        else:
            print(message)
        return 0

    async def do_list(self) -> int:
        await self.client.require_backend("lxc", "containers")
        if self.args.json:
            render.dump([jsonout.container(c) for c in await self.client.containers()])
            return 0
        containers = (await self.client.managed(CONTAINER_IFACE)).values()
        if not containers:
            print("no containers")
        else:
            render.table(*rows.containers(containers))
        return 0

    async def do_show(self) -> int:
        c = await self.client.container(self.args.name)
        if self.args.json:
            render.dump(jsonout.container(c))
            return 0
        self._show(c)
        return 0

    @staticmethod
    def _show(c: ContainerInfo) -> None:
        used = rows.mib_of_bytes(c.memory_used)
        render.pairs(
            [
                ("container", f"{c.name} (id {c.id or '-'})"),
                ("state", c.state.value + (f", pid {c.pid}" if c.pid else "")),
                ("template", c.template or "- (made elsewhere)"),
                ("network", f"{c.veth} on {c.bridge}" if c.bridge else "none"),
                ("ipv4", ", ".join(c.ipv4) or "-"),
                ("memory", f"{used} used, limit {rows.mib_of_bytes(c.memory_limit)}"),
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

    async def do_attach(self) -> int:
        info = await self.client.container(self.args.name)
        path = (await self.client.status()).lxc_path
        if not path:
            raise NotSupported("containers are off in this mode: there is nothing to attach to")
        if info.state is not ContainerState.RUNNING:
            raise Conflict(f"{info.name} is {info.state.value}: start it first (opctl ct start)")
        argv = list(self.args.argv)
        if argv[:1] == ["--"]:
            argv = argv[1:]
        raise HandOver(
            ["lxc-attach", "-P", path, "-n", info.name, *(["--", *argv] if argv else [])],
            "Debian: apt install lxc; NixOS: virtualisation.lxc.enable",
        )

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
