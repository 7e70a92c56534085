"""``opctl``'s command line: every command, option and help text, and nothing heavy.

``opctl --help`` and argument errors must answer as fast as Python starts:
this module imports neither dbus-fast nor asyncio nor pydantic (a test
watches the import graph). What a command does lives in ``opctl.commands``
and ``opctl.cli_*``, imported once the arguments are known; an offline
command (``vm profile schema``) is named here as a :class:`Lazy` reference.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from opctl.defaults import CALL_TIMEOUT, CALL_TIMEOUT_ENV
from opdbus import errors

TYPE_CHECKING = False  # typing costs ~2 ms to import (opctl --help); mypy reads this as True
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NoReturn


Command = Callable[..., argparse.ArgumentParser]
PROVIDERS = ("systemd", "net", "lxc", "vms")
ACTIONS = ["build", "test", "switch", "boot", "dry-build", "dry-activate"]


class Lazy:
    """A function in a module imported only when it is called."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, args: argparse.Namespace) -> int | None:
        function: Callable[[argparse.Namespace], int | None] = getattr(
            importlib.import_module(self.module), self.name
        )
        return function(args)


EXIT_CODES = """exit codes:
  0   success
  1   failed (a job failed, the audit chain is broken, or an unexpected error)
  2   backend unavailable          3   not authorized
  4   invalid arguments            5   backend failed
  7   not found                    8   already exists
  9   busy (another job holds it)  10  conflict with the current state
  11  cancelled                    12  timed out
  13  not supported in this mode   14  daemon or bus unreachable
  130 interrupted (Ctrl-C)         141 the output's reader went away (| head)
"""


class Parser(argparse.ArgumentParser):
    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse would ask shutil for the width (and import it, ~2.5 ms of --help);
        # the same width, less the 2 columns argparse leaves.
        kind = self.formatter_class
        if not (isinstance(kind, type) and issubclass(kind, argparse.HelpFormatter)):
            return super()._get_formatter()
        from opctl.term import columns

        return kind(prog=self.prog, width=columns() - 2)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(errors.InvalidArgs.exit_code, f"{self.prog}: {message}\n")


class _Retry(Exception):
    """A partly built parser could not read the command line: the whole tree will."""


class _PartParser(Parser):
    """The top of a partly built tree (build_parser(only=...)): an error here may come
    from a command it left out, so it is not reported; parse() asks the whole tree."""

    def error(self, message: str) -> NoReturn:
        raise _Retry(message)


class _Skipped:
    """The parser of a command this run does not use: it takes every call and builds
    nothing (opctl's whole tree is ~100 parsers, ~13 ms to build)."""

    def __getattr__(self, name: str) -> _Skipped:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Skipped:
        return self

    def __getitem__(self, key: Any) -> _Skipped:
        return self


class _Only:
    """The top level's subparsers, building in full only the command ``wanted``
    (None: every command); the others get a parser with their help line only."""

    def __init__(self, sub: Any, wanted: str | None) -> None:
        self._sub, self._wanted = sub, wanted

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._wanted is None or name == self._wanted:
            return self._sub.add_parser(name, **kwargs)
        self._sub.add_parser(name, help=kwargs.get("help"))
        return _Skipped()


# Options before the command that take a value (the word after them is not the command).
_VALUED = frozenset({"--bus", "-o", "--output", "--call-timeout"})


def command_word(words: list[str]) -> str:
    """The command a command line names ("" if none): what build_parser builds in full."""
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            return words[i + 1] if i + 1 < len(words) else ""
        if word in _VALUED:
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            return word
    return ""


def parse(words: list[str]) -> argparse.Namespace:
    """``words`` parsed by a parser that built only their command's part of the tree.

    Should argparse read the command line otherwise than command_word did (an
    abbreviated option taking a value, say), it is parsed again by the whole tree.
    """
    wanted = command_word(words)
    try:
        args = build_parser(wanted).parse_args(words)
    except _Retry:
        return build_parser().parse_args(words)
    if args.command != wanted:
        return build_parser().parse_args(words)
    return args


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """opctl's parser; ``only``: build that command in full and the others as help lines."""
    top = Parser if only is None else _PartParser
    p = top(
        prog="opctl",
        description="Control op-dbusd, the hypervisor host daemon on D-Bus (org.opdbus).",
        epilog=EXIT_CODES
        + "\nThe bus is --bus ADDRESS, else $OPDBUS_BUS_ADDRESS, else the system bus.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(p, None)
    p.add_argument("--version", action=_Version, help="print opctl's version and exit")
    # The same options are accepted after the command too (opctl validate
    # --json); SUPPRESS keeps an unset one from overwriting the top level's.
    common = Parser(add_help=False)
    _global_options(common, argparse.SUPPRESS)

    def command(group: Any, name: str, text: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name, help=text, parents=[common], **kwargs
        )
        return parser

    sub = _Only(
        p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=top),
        only,
    )
    command(sub, "status", "daemon version, mode, backend health, jobs")

    v = command(
        sub,
        "validate",
        "check this host's health (a job)",
        description="Validate the host: directories, config, disk, memory, "
        "virtualization, backends, bus policy, audit log.",
    )
    v.add_argument("--quick", action="store_true", help="essential checks only")
    v.add_argument(
        "--fix", action="store_true", help="repair what is safe to repair, say what changed"
    )
    v.add_argument("--no-wait", action="store_true", help="print the job path and return at once")

    jobs = sub.add_parser("jobs", help="list, inspect, follow and cancel jobs")
    jsub = jobs.add_subparsers(
        dest="jobs_command", required=True, metavar="ACTION", parser_class=Parser
    )
    jlist = command(jsub, "list", "jobs the daemon still remembers (newest last)")
    jlist.add_argument(
        "--state",
        choices=("queued", "running", "succeeded", "failed", "cancelled", "interrupted"),
        metavar="STATE",
        help="only jobs in this state (queued, running, succeeded, failed, cancelled, interrupted)",
    )
    jlist.add_argument("--last", type=int, metavar="N", help="only the newest N")
    for name, text in (
        ("show", "one job's details"),
        ("cancel", "cancel a queued or running job"),
        ("wait", "wait until a job ends; exit with its result"),
    ):
        command(jsub, name, text).add_argument("job", help="job number or object path")
    log = command(jsub, "log", "a job's log")
    log.add_argument("job", help="job number or object path")
    log.add_argument(
        "--from", dest="start", type=int, default=1, metavar="N", help="first line (default 1)"
    )
    log.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

    _audit(sub, command)
    _state(sub, command)
    from opctl.parser_net import net_commands

    net_commands(sub, command)
    _vm(sub, command)
    from opctl.parser_ct import ct_commands

    ct_commands(sub, command)
    from opctl.parser_host import host_commands

    host_commands(sub, command)
    command(sub, "watch", "print every signal op-dbusd sends until interrupted")
    menu = command(
        sub,
        "menu",
        "the console menu: VMs live, their actions, More Options (a full-screen TUI)",
        description="The hypervisor's console screen (also op-dbus-menu): starts the last-run "
        "VM after the daemon's countdown unless a key is pressed.",
    )
    # Runs its own event loop (Textual's), not inside opctl's.
    menu.set_defaults(standalone=Lazy("opctl.menu", "from_cli"))
    completion = command(
        sub,
        "completion",
        "print the shell completion script for bash, zsh or fish",
        description="Completes commands, options, and VM, bridge, container and job names "
        "(asked from the bus). bash: `source <(opctl completion bash)`; zsh: `source "
        "<(opctl completion zsh)` or save it as _opctl in $fpath; fish: `opctl completion fish "
        "| source`. pip install and the NixOS module install all three.",
    )
    completion.add_argument("shell", choices=["bash", "zsh", "fish"])
    completion.set_defaults(offline=Lazy("opctl.complete", "print_script"))
    return p


class _Version(argparse.Action):
    """--version, looked up only when asked (the package metadata costs a few ms)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"opctl {version('op-dbus')}")
        except PackageNotFoundError:
            print("opctl (not installed: running from a source tree)")
        parser.exit()


def _path(text: str) -> Path:
    from pathlib import Path  # only the commands that take a file need it

    return Path(text)


def _global_options(p: argparse.ArgumentParser, default: Any) -> None:
    """--bus, --json, --no-progress; ``default`` is None at the top, SUPPRESS below."""
    flag_default = False if default is None else default
    p.add_argument(
        "--bus",
        metavar="ADDRESS",
        default=default,
        help="D-Bus address of the bus op-dbusd serves on",
    )
    p.add_argument(
        "--json", action="store_true", default=flag_default, help="machine-readable output"
    )
    p.add_argument(
        "--no-headers",
        action="store_true",
        default=flag_default,
        help="tables without their header line",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FIELD,...",
        type=_fields,
        default=default,
        help="tables show only these columns, in this order (e.g. -o name,state; like nmcli -f)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        default=flag_default,
        help="no progress bar while waiting on a job",
    )
    p.add_argument(
        "--call-timeout",
        type=_seconds,
        metavar="SECONDS",
        dest="call_timeout",
        default=default,
        help="how long a call may go unanswered before opctl gives up (exit 12; default "
        f"${CALL_TIMEOUT_ENV} or {CALL_TIMEOUT:g}); jobs are followed for as long as they run",
    )


def _fields(text: str) -> list[str]:
    fields = [
        field.strip().lower().replace("_", " ").replace("-", " ") for field in text.split(",")
    ]
    if not all(fields):
        raise argparse.ArgumentTypeError(f"{text!r}: name the columns, comma-separated")
    return fields


def _env_timeout() -> float:
    text = os.environ.get(CALL_TIMEOUT_ENV)
    if not text:
        return CALL_TIMEOUT
    try:
        return _seconds(text)
    except argparse.ArgumentTypeError as e:
        raise errors.InvalidArgs(f"${CALL_TIMEOUT_ENV}={text}: {e}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 86400 seconds")
    return value


def _audit(sub: Any, command: Command) -> None:
    audit = sub.add_parser("audit", help="the hash-chained, sealable audit log")
    asub = audit.add_subparsers(
        dest="audit_command", required=True, metavar="ACTION", parser_class=type(audit)
    )
    alist = command(asub, "list", "entries (default: the last 20)")
    alist.add_argument("--from", dest="start", type=int, metavar="SEQ", help="first entry")
    alist.add_argument("--last", type=int, default=20, metavar="N", help="the last N entries")
    verify = command(
        asub,
        "verify",
        "recompute the chain (with --key, prove the seals); exit 1 naming every problem",
        description="Without --key the daemon checks its hash chain. With --key (the "
        "verification key seal-init printed) opctl itself fetches every entry and proves "
        "that no entry sealed so far was changed, removed or inserted -- which holds even "
        "if the host was taken over after it was sealed. --file checks a copy of "
        "audit.jsonl without any daemon.",
    )
    key = verify.add_mutually_exclusive_group()
    key.add_argument("--key", metavar="KEY", help="the verification key from seal-init")
    key.add_argument("--key-file", type=_path, metavar="FILE", help="read the key from FILE")
    verify.add_argument(
        "--file", type=_path, metavar="AUDIT_JSONL", help="verify this file instead of asking"
    )
    verify.set_defaults(offline=Lazy("opctl.cli_audit", "offline_verify"))
    seal = command(
        asub,
        "seal-init",
        "start forward-secure sealing; prints the verification key ONCE",
        description="Start sealing the audit log. The key printed is never stored or shown "
        "again: keep it off this host (a password manager, paper). Every epoch the daemon "
        "seals the log and forgets that epoch's key.",
    )
    seal.add_argument(
        "--epoch", type=int, default=900, metavar="SECONDS", help="epoch length (default 900)"
    )
    seal.add_argument("--force", action="store_true", help="start over with a new key")


def _state(sub: Any, command: Command) -> None:
    state = sub.add_parser(
        "state",
        help="the host as a desired-state document: apply, diff, show, confirm, drift",
        description="A document ({net, lxc, vms, systemd} or {version: 1, plugins}) says "
        "what the host should be; op-dbusd makes it so as one transaction, keeps it so, "
        "and can undo it.",
    )
    ssub = state.add_subparsers(
        dest="state_command", required=True, metavar="ACTION", parser_class=type(state)
    )
    apply = command(ssub, "apply", "make the host what FILE says (a job)")
    apply.add_argument("file", metavar="FILE", help="the document (- for stdin)")
    apply.add_argument("--dry-run", action="store_true", help="plan only, change nothing")
    apply.add_argument(
        "--prune",
        action="store_true",
        help="also delete what the state made that FILE no longer lists (never anything else)",
    )
    apply.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="SECONDS",
        help="keep a checkpoint: without `opctl state confirm` in time, it is rolled back",
    )
    apply.add_argument(
        "--provider", action="append", choices=PROVIDERS, help="only this section (repeatable)"
    )
    apply.add_argument("--no-wait", action="store_true", help="print the job path and return")
    diff = command(ssub, "diff", "what `apply FILE` would change, like terraform plan")
    diff.add_argument("file", metavar="FILE", help="the document (- for stdin)")
    diff.add_argument("--prune", action="store_true", help="include what prune would delete")
    show = command(ssub, "show", "the host as a document (what Query says)")
    show.add_argument(
        "provider", nargs="*", metavar="PROVIDER", help=f"{', '.join(PROVIDERS)} (default: all)"
    )
    command(ssub, "confirm", "keep the pending checkpoint's changes")
    command(ssub, "rollback", "restore the pending checkpoint now")
    command(ssub, "drift", "where the host differs from the document last applied")
    command(ssub, "reload", "apply the state file again (as SIGHUP does)")
    checkpoints = command(
        ssub, "checkpoints", "checkpoints kept in the snapshot cache, with age and size"
    )
    checkpoints.add_argument(
        "--all", action="store_true", help="also the source trees kept before each sync"
    )
    schema = command(ssub, "schema", "a provider's section's JSON Schema (no daemon needed)")
    schema.add_argument("provider", choices=PROVIDERS)
    schema.set_defaults(offline=Lazy("opctl.cli_state", "print_schema"))


VM_HELP = "the VM's name or UUID"


def no_wait(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--no-wait", action="store_true", help="print the job path and return at once")
    return p


def on_off(text: str) -> bool:
    if text in ("on", "off"):
        return text == "on"
    raise argparse.ArgumentTypeError(f"{text!r}: say on or off")


def _vm(sub: Any, command: Command) -> None:
    vm = sub.add_parser("vm", help="virtual machines (libvirt): lifecycle, snapshots, profiles")
    vsub = vm.add_subparsers(
        dest="vm_command", required=True, metavar="ACTION", parser_class=type(vm)
    )
    command(vsub, "list", "every VM libvirt knows, whoever made it")
    command(vsub, "show", "one VM: state, devices, usage").add_argument("vm", help=VM_HELP)
    addresses = command(
        vsub,
        "addresses",
        "a running VM's IP addresses (like virsh domifaddr)",
        aliases=["domifaddr"],
    )
    addresses.add_argument("vm", help=VM_HELP)
    addresses.add_argument(
        "--source",
        choices=["lease", "agent", "arp"],
        help="where to look (default: libvirt's DHCP leases, then the host's ARP table)",
    )
    console = command(
        vsub,
        "console",
        "attach this terminal to a running VM's serial console (virsh console; Ctrl-] leaves)",
        description="Hands this terminal to virsh -c URI console VM, with the daemon's libvirt "
        "URI (Manager1.LibvirtURI). Needs what virsh needs to reach that libvirtd.",
    )
    console.add_argument("vm", help=VM_HELP)
    create = no_wait(command(vsub, "create", "define a VM from a profile (a job)"))
    create.add_argument("file", help="a JSON profile (see opctl vm profile schema); - for stdin")
    create.add_argument("--start", action="store_true", help="start it once defined")
    for name, text in (
        ("start", "start a stopped VM (a job)"),
        ("stop", "stop a VM at once, like pulling the plug (a job)"),
    ):
        no_wait(command(vsub, name, text)).add_argument("vm", help=VM_HELP)
    shutdown = no_wait(command(vsub, "shutdown", "ask the guest to power off (ACPI; a job)"))
    shutdown.add_argument("vm", help=VM_HELP)
    shutdown.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="how long to wait (default: config)"
    )
    shutdown.add_argument(
        "--force", action="store_true", help="stop it when the guest ignores the request"
    )
    for name, text in (
        ("reboot", "ask the guest to reboot"),
        ("suspend", "pause a running VM's CPUs"),
        ("resume", "resume a suspended VM"),
        ("xml", "the domain XML libvirt holds"),
    ):
        command(vsub, name, text).add_argument("vm", help=VM_HELP)
    autostart = command(vsub, "autostart", "start the VM when the host boots, or not")
    autostart.add_argument("vm", help=VM_HELP)
    autostart.add_argument("enabled", type=on_off, metavar="on|off")
    update = command(vsub, "update", "replace a stopped VM's profile (redefines it)")
    update.add_argument("vm", help=VM_HELP)
    update.add_argument("file", help="the new JSON profile; - for stdin")
    delete = no_wait(command(vsub, "delete", "undefine a VM (a job)"))
    delete.add_argument("vm", help=VM_HELP)
    delete.add_argument(
        "--remove-storage",
        action="store_true",
        help="also delete its volumes in the daemon's pool (never ISOs or other paths)",
    )
    delete.add_argument("--force", action="store_true", help="stop it first when it runs")

    snap = vsub.add_parser("snapshot", help="create, list, revert, delete snapshots")
    ssub = snap.add_subparsers(
        dest="snapshot_action", required=True, metavar="ACTION", parser_class=type(vm)
    )
    screate = no_wait(command(ssub, "create", "take a snapshot (a job)"))
    screate.add_argument("vm", help=VM_HELP)
    screate.add_argument("name", help="the snapshot's name")
    screate.add_argument("--description", default="", metavar="TEXT")
    command(ssub, "list", "a VM's snapshots, oldest first").add_argument("vm", help=VM_HELP)
    for name, text in (
        ("revert", "go back to a snapshot (a job)"),
        ("delete", "delete a snapshot (a job)"),
    ):
        one = no_wait(command(ssub, name, text))
        one.add_argument("vm", help=VM_HELP)
        one.add_argument("name", help="the snapshot's name")

    prof = vsub.add_parser("profile", help="check a profile, or print its JSON Schema")
    psub = prof.add_subparsers(
        dest="profile_action", required=True, metavar="ACTION", parser_class=type(vm)
    )
    check = command(psub, "check", "validate a profile against this host; defines nothing")
    check.add_argument("file", help="a JSON profile; - for stdin")
    check.add_argument("--print-xml", action="store_true", help="print the domain XML it makes")
    schema = command(psub, "schema", "the profile's JSON Schema (needs no daemon)")
    schema.set_defaults(offline=Lazy("opctl.cli_vm", "print_schema"))
