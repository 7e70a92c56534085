"""``opctl vm``: virtual machines, their snapshots and profiles."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opctl import jsonout, render, rows
from opctl.convert import to_variants, vm_info
from opctl.files import read_document
from opctl.render import cpu_time as _cpu_time
from opctl.wire import HandOver
from opdbus.errors import Conflict, NotSupported
from opdbus.models.vm import VmState, profile_schema
from opdbus.names import VM_IFACE

if TYPE_CHECKING:
    from opctl.commands import Cli


def print_schema(args: argparse.Namespace) -> int:
    print(json.dumps(profile_schema(), indent=2, sort_keys=True))
    return 0


class VmCommands:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.args = cli.args
        self.client = cli.client

    async def run(self) -> int:
        a = self.args
        action = a.vm_command
        if action in ("snapshot", "profile"):
            action = f"{action}_{getattr(a, action + '_action')}"
        handler: Callable[[], Awaitable[int]] = getattr(self, action)
        return await handler()

    async def _vm_job(self, member: str, signature: str = "", body: list[Any] | None = None) -> int:
        path, _ = await self.client.vm(self.args.vm)
        return await self.cli.job(lambda: self.client.vm_job(path, member, signature, body))

    async def _vm_call(
        self, member: str, done: str, signature: str = "", body: list[Any] | None = None
    ) -> int:
        path, before = await self.client.vm(self.args.vm)
        await self.client.vm_call(path, member, signature, body)
        if self.args.json:
            after = vm_info(await self.client.get_all(path, VM_IFACE))
            render.dump(jsonout.mutation(obj=jsonout.vm(path, after)))
        else:
            print(f"{before.name} {done}")
        return 0

    # -- reading ---------------------------------------------------------------

    async def list(self) -> int:
        await self.client.require_backend("libvirt", "VMs")
        vms = await self.client.vms()
        if self.args.json:
            infos = sorted(((path, vm_info(p)) for path, p in vms.items()), key=lambda i: i[1].name)
            render.dump([jsonout.vm(path, info) for path, info in infos])
        elif not vms:
            print("no VMs")
        else:
            render.table(*rows.vms(vms.values()))
        return 0

    async def show(self) -> int:
        path, i = await self.client.vm(self.args.vm)
        if self.args.json:
            render.dump(jsonout.vm(path, i))
            return 0
        render.pairs(
            [
                ("vm", f"{i.name} ({i.uuid})"),
                ("state", i.state.value + (f" ({i.state_reason})" if i.state_reason else "")),
                ("made by", "op-dbus" if i.managed else "another tool (no profile)"),
                ("autostart", "yes" if i.autostart else "no"),
                ("persistent", "yes" if i.persistent else "no (transient)"),
                ("arch", i.arch or "-"),
                ("cpus", str(i.vcpus)),
                ("memory", f"{i.memory_mib} MiB, {rows.mib_of_kib(i.memory_used_kib)} in use"),
                ("cpu time", _cpu_time(i.cpu_time_ns)),
                ("snapshots", str(i.snapshots)),
                ("object", path),
            ]
        )
        if i.disks:
            print()
            render.table(
                ["disk", "device", "format", "source"],
                [
                    (target, device, fmt or "-", source or "-")
                    for target, source, device, fmt in i.disks
                ],
            )
        if i.interfaces:
            print()
            render.table(
                ["nic", "model", "mac", "source"],
                [
                    (kind, model or "-", mac or "-", source or "-")
                    for kind, source, mac, model in i.interfaces
                ],
            )
        return 0

    async def addresses(self) -> int:
        path, info = await self.client.vm(self.args.vm)
        (found,) = await self.client.vm_call(
            path, "GetInterfaceAddresses", "s", [self.args.source or ""]
        )
        rows = [{"interface": i, "mac": m or None, "addresses": list(a)} for i, m, a in found]
        if self.args.json:
            render.dump(rows)
        elif not any(r["addresses"] for r in rows):
            print(f"{info.name} has no addresses the host can see yet", file=sys.stderr)
            print("(a guest on a bridge shows up once it has spoken; --source agent asks "
                  "its guest agent)", file=sys.stderr)  # fmt: skip
        else:
            render.table(
                ["interface", "mac", "address"],
                [(r["interface"], r["mac"] or "-", a) for r in rows for a in r["addresses"]],
            )
        return 0

    domifaddr = addresses  # virsh's word for it

    async def console(self) -> int:
        _, info = await self.client.vm(self.args.vm)
        uri = (await self.client.status()).libvirt_uri
        if not uri:
            raise NotSupported("VMs are off in this mode: there is no console to attach to")
        if info.state is not VmState.RUNNING:
            raise Conflict(f"{info.name} is {info.state.value}: start it first (opctl vm start)")
        print(f"Connecting to {info.name}'s serial console (Ctrl-] leaves)", file=sys.stderr)
        raise HandOver(
            ["virsh", "-c", uri, "console", info.uuid],
            "Debian: apt install libvirt-clients; NixOS: it comes with libvirt",
        )

    async def xml(self) -> int:
        path, _ = await self.client.vm(self.args.vm)
        (xml,) = await self.client.vm_call(path, "GetXML")
        if self.args.json:
            render.dump({"path": path, "xml": xml})
        else:
            print(xml.rstrip("\n"))
        return 0

    # -- changing ---------------------------------------------------------------

    async def create(self) -> int:
        text = await read_document(self.args.file)
        return await self.cli.job(lambda: self.client.create_vm(text, start=self.args.start))

    async def start(self) -> int:
        return await self._vm_job("Start")

    async def stop(self) -> int:
        return await self._vm_job("Stop")

    async def shutdown(self) -> int:
        options = to_variants({"timeout": self.args.timeout, "force": self.args.force})
        return await self._vm_job("Shutdown", "a{sv}", [options])

    async def delete(self) -> int:
        options = to_variants(
            {"remove_storage": self.args.remove_storage, "force": self.args.force}
        )
        return await self._vm_job("Delete", "a{sv}", [options])

    async def reboot(self) -> int:
        return await self._vm_call("Reboot", "asked to reboot")

    async def suspend(self) -> int:
        return await self._vm_call("Suspend", "suspended")

    async def resume(self) -> int:
        return await self._vm_call("Resume", "resumed")

    async def autostart(self) -> int:
        on = self.args.enabled
        return await self._vm_call("SetAutostart", f"autostart {'on' if on else 'off'}", "b", [on])

    async def update(self) -> int:
        text = await read_document(self.args.file)
        return await self._vm_call("UpdateProfile", "profile updated", "s", [text])

    # -- snapshots ----------------------------------------------------------------

    async def snapshot_create(self) -> int:
        options = to_variants({"description": self.args.description or None})
        return await self._vm_job("CreateSnapshot", "sa{sv}", [self.args.name, options])

    async def snapshot_revert(self) -> int:
        return await self._vm_job("RevertSnapshot", "s", [self.args.name])

    async def snapshot_delete(self) -> int:
        return await self._vm_job("DeleteSnapshot", "s", [self.args.name])

    async def snapshot_list(self) -> int:
        path, info = await self.client.vm(self.args.vm)
        (snaps,) = await self.client.vm_call(path, "ListSnapshots")
        rows = [
            {"name": n, "created": t, "state": s, "current": c, "description": d}
            for n, t, s, c, d in snaps
        ]
        if self.args.json:
            render.dump(
                [jsonout.absent({**r, "created": jsonout.stamp(r["created"])}) for r in rows]
            )
        elif not rows:
            print(f"{info.name} has no snapshots")
        else:
            render.table(
                ["name", "created", "state", "current", "description"],
                [
                    (
                        r["name"],
                        render.when(r["created"]),
                        r["state"],
                        "*" if r["current"] else "",
                        r["description"] or "-",
                    )
                    for r in rows
                ],
            )
        return 0

    # -- profiles -------------------------------------------------------------------

    async def profile_check(self) -> int:
        text = await read_document(self.args.file)
        xml, warnings = await self.client.check_vm_profile(text)
        name = _profile_name(text)
        if self.args.json:
            result: dict[str, Any] = {"valid": True, "name": name, "warnings": warnings}
            if self.args.print_xml:
                result["xml"] = xml
            render.dump(result)
            return 0
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if self.args.print_xml:
            print(xml.rstrip("\n"))
        else:
            noted = (
                f" ({len(warnings)} warning{'s' if len(warnings) > 1 else ''})" if warnings else ""
            )
            print(f"profile {name} is valid{noted}")
        return 0


def _profile_name(text: str) -> str:
    """The name of a profile the daemon has just accepted (so it parses)."""
    return str(json.loads(text).get("name", "?"))
