"""opctl's container commands (a part of :mod:`opctl.parser`, as light: argparse only)."""

from __future__ import annotations

import argparse

from opctl.parser import Command, on_off

TYPE_CHECKING = False  # no typing at run time (opctl --help); mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


CT_HELP = "the container's name"


def ct_commands(sub: Any, command: Command) -> None:
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
    attach = command(
        csub,
        "attach",
        "a shell (or COMMAND) inside, on this terminal (lxc-attach; as root, on the host)",
        usage="opctl ct attach [-h] NAME [-- COMMAND [ARG...]]",
        description="Hands this terminal to lxc-attach -P LXCPATH -n NAME (the daemon's "
        "lxcpath, from Manager1.LXCPath): an interactive shell with a tty, like lxc-attach. "
        "Needs what lxc-attach needs: root on the host running op-dbusd.",
    )
    attach.add_argument("name", help=CT_HELP)
    attach.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="after --")
