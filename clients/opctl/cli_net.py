"""``opctl net``: Open vSwitch bridges, ports and addresses."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opctl import render
from opctl.files import read_document
from opdbus.models.network import BridgeInfo

if TYPE_CHECKING:
    from opctl.cli import Cli

Command = Callable[..., argparse.ArgumentParser]


BRIDGE_HELP = "the bridge's name"


def _vlan_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of VLAN numbers like 10,20"
        ) from None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _addressing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", metavar="IP", help="default route through this bridge")
    p.add_argument("--mtu", type=int, metavar="N", help="MTU of the bridge's interface")
    p.add_argument("--dhcp", action="store_true", default=None, help="address by DHCP instead")


def add_parser(sub: Any, command: Command) -> None:
    net = sub.add_parser("net", help="Open vSwitch bridges, ports and addresses")
    nsub = net.add_subparsers(
        dest="net_command", required=True, metavar="OBJECT", parser_class=type(net)
    )

    bridge = nsub.add_parser("bridge", help="list, show, create, delete bridges")
    bsub = bridge.add_subparsers(
        dest="net_action", required=True, metavar="ACTION", parser_class=type(net)
    )
    command(bsub, "list", "every bridge, whoever made it")
    command(bsub, "show", "one bridge and its ports").add_argument("name", help=BRIDGE_HELP)
    create = command(bsub, "create", "create a bridge (its own internal port comes with it)")
    create.add_argument("name", help="1-15 bytes of printable ASCII, no '/' or spaces")
    create.add_argument(
        "--datapath", choices=["system", "netdev"], help="default: the daemon's config"
    )
    create.add_argument("--fail-mode", choices=["standalone", "secure"])
    create.add_argument("--stp", action="store_true", default=None)
    create.add_argument(
        "--address", action="append", metavar="CIDR", help="IPv4 address (repeatable)"
    )
    create.add_argument("--external-id", action="append", type=_key_value, metavar="KEY=VALUE")
    _addressing(create)
    command(bsub, "delete", "delete a bridge with its ports").add_argument("name", help=BRIDGE_HELP)

    port = nsub.add_parser("port", help="add or remove ports")
    psub = port.add_subparsers(
        dest="net_action", required=True, metavar="ACTION", parser_class=type(net)
    )
    add = command(psub, "add", "add a port to a bridge")
    add.add_argument("bridge", help=BRIDGE_HELP)
    add.add_argument("port", help="the port's name (type system: an existing interface)")
    add.add_argument(
        "--type",
        choices=["system", "internal", "patch"],
        default=None,
        help="system (an existing interface; default), internal, patch",
    )
    add.add_argument("--tag", type=int, metavar="VLAN", help="access VLAN 0-4095")
    add.add_argument("--trunks", type=_vlan_list, metavar="V1,V2", help="trunked VLANs")
    add.add_argument("--peer", metavar="PORT", help="the other end of a patch port")
    remove = command(psub, "remove", "remove a port from a bridge")
    remove.add_argument("bridge", help=BRIDGE_HELP)
    remove.add_argument("port", help="the port to remove")

    addr = nsub.add_parser("addr", help="addresses of a bridge's own interface")
    asub = addr.add_subparsers(
        dest="net_action", required=True, metavar="ACTION", parser_class=type(net)
    )
    set_ = command(asub, "set", "set exactly these addresses (none: remove them)")
    set_.add_argument("bridge", help=BRIDGE_HELP)
    set_.add_argument(
        "addresses",
        nargs="*",
        metavar="CIDR",
        help="exactly these IPv4 addresses (none: remove all)",
    )
    _addressing(set_)

    apply = command(nsub, "apply", "make bridges and ports match a JSON file (a job)")
    apply.add_argument(
        "file", help='{"bridges": [...]} or the seed\'s {"interfaces": [...]}; - for stdin'
    )
    apply.add_argument(
        "--no-wait", action="store_true", help="print the job path and return at once"
    )


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
        bridges = await self.client.bridges()
        if self.args.json:
            render.dump([b.model_dump(mode="json") for b in bridges])
        elif not bridges:
            print("no bridges")
        else:
            render.table(
                ["name", "datapath", "ports", "link", "addresses"],
                [
                    (
                        b.name,
                        b.datapath_type,
                        len(b.ports) - 1,
                        b.link_state,
                        ", ".join(b.addresses) or "-",
                    )
                    for b in bridges
                ],
            )
        return 0

    async def bridge_show(self) -> int:
        bridge = await self.client.bridge(self.args.name)
        if self.args.json:
            render.dump(bridge.model_dump(mode="json"))
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
            render.dump({"deleted": self.args.name})
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
            render.dump((await self.client.bridge(bridge)).model_dump(mode="json"))
        else:
            print(message)
        return 0

    async def apply(self) -> int:
        text = await read_document(self.args.file)
        return await self.cli.job(lambda: self.client.apply_bridges(text))
