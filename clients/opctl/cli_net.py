"""``opctl net``: Open vSwitch bridges, ports and addresses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opctl import jsonout, render, rows
from opctl.files import read_document
from opdbus import names
from opdbus.models.network import BridgeInfo

if TYPE_CHECKING:
    from opctl.commands import Cli


class NetCommands:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.args = cli.args
        self.client = cli.client

    async def run(self) -> int:
        what, action = self.args.net_command, getattr(self.args, "net_action", None)
        if what == "apply":
            return await self.apply()
        handler = getattr(self, f"{what}_{action}")
        result: int = await handler()
        return result

    async def bridge_list(self) -> int:
        await self.client.require_backend("ovsdb", "bridges")
        if self.args.json:
            render.dump([jsonout.bridge(b) for b in await self.client.bridges()])
            return 0
        bridges = (await self.client.managed(names.BRIDGE_IFACE)).values()
        if not bridges:
            print("no bridges")
        else:
            render.table(*rows.bridges(bridges))
        return 0

    async def bridge_show(self) -> int:
        bridge = await self.client.bridge(self.args.name)
        if self.args.json:
            render.dump(jsonout.bridge(bridge))
            return 0
        self._show(bridge)
        return 0

    def _show(self, b: BridgeInfo) -> None:
        render.pairs(
            [
                ("bridge", f"{b.name} ({b.uuid})"),
                ("datapath", b.datapath_type),
                ("fail mode", b.fail_mode or "-"),
                ("stp", "on" if b.stp else "off"),
                ("link", f"{b.link_state} (admin {b.admin_state})"),
                ("addresses", ", ".join(b.addresses) or ("dhcp" if b.dhcp else "-")),
                ("gateway", b.gateway or "-"),
                ("mtu", str(b.mtu or "-")),
                ("external ids", ", ".join(f"{k}={v}" for k, v in b.external_ids.items()) or "-"),
                ("error", b.error or "-"),
            ]
        )
        print()
        render.table(
            ["port", "type", "tag", "trunks", "ofport", "interfaces"],
            [
                (
                    p.name,
                    p.type + (f" -> {p.peer}" if p.peer else ""),
                    "-" if p.tag is None else p.tag,
                    ",".join(map(str, p.trunks)) or "-",
                    "-" if p.ofport is None else p.ofport,
                    ", ".join(p.interfaces),
                )
                for p in b.ports
            ],
        )

    async def bridge_create(self) -> int:
        a = self.args
        options = {
            "datapath_type": a.datapath,
            "fail_mode": a.fail_mode,
            "stp": a.stp,
            "addresses": a.address,
            "gateway": a.gateway,
            "mtu": a.mtu,
            "dhcp": a.dhcp,
            "external_ids": dict(a.external_id) if a.external_id else None,
        }
        path = await self.client.create_bridge(a.name, options)
        return await self._done(a.name, f"bridge {a.name} created ({path})")

    async def bridge_delete(self) -> int:
        await self.client.delete_bridge(self.args.name)
        if self.args.json:
            render.dump(jsonout.mutation())  # the object is gone
        else:
            print(f"bridge {self.args.name} deleted")
        return 0

    async def port_add(self) -> int:
        a = self.args
        options = {"type": a.type, "tag": a.tag, "trunks": a.trunks, "peer": a.peer}
        await self.client.add_port(a.bridge, a.port, options)
        return await self._done(a.bridge, f"port {a.port} added to {a.bridge}")

    async def port_remove(self) -> int:
        await self.client.remove_port(self.args.bridge, self.args.port)
        return await self._done(
            self.args.bridge, f"port {self.args.port} removed from {self.args.bridge}"
        )

    async def addr_set(self) -> int:
        a = self.args
        options = {"gateway": a.gateway, "mtu": a.mtu, "dhcp": a.dhcp}
        await self.client.set_addresses(a.bridge, list(a.addresses), options)
        return await self._done(a.bridge, f"{a.bridge}: {', '.join(a.addresses) or 'no addresses'}")

    async def _done(self, bridge: str, message: str) -> int:
        if self.args.json:
            render.dump(jsonout.mutation(obj=jsonout.bridge(await self.client.bridge(bridge))))
        else:
            print(message)
        return 0

    async def apply(self) -> int:
        text = await read_document(self.args.file)
        return await self.cli.job(lambda: self.client.apply_bridges(text))
