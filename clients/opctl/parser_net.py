"""opctl's network commands (a part of :mod:`opctl.parser`, as light: argparse only)."""

from __future__ import annotations

import argparse

from opctl.parser import Command

TYPE_CHECKING = False  # no typing at run time (opctl --help); mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


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


def net_commands(sub: Any, command: Command) -> None:
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
