"""Shell completion for bash, zsh and fish: ``opctl completion SHELL`` prints the script.

Each script asks ``opctl __complete --shell SHELL -- WORD...`` for the
candidates of the last word, so the shells share one walk of opctl's own
parser (commands and options can never go stale) and VM, bridge, container
and job names come from the bus (one GetManagedObjects, bounded by a short
timeout; nothing is offered when the daemon cannot be reached).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from opctl import parser as cli_parser
from opctl import parser_ct, parser_net

BUS_TIMEOUT = 2.0  # a TAB must never hang on a stuck daemon

# The scripts are package data, installed where each shell looks (pyproject's
# data-files, the Nix package): completions/<shell>/<the file name it wants>.
SCRIPTS = {"bash": "bash/opctl", "zsh": "zsh/_opctl", "fish": "fish/opctl.fish"}


def script(shell: str) -> str:
    from importlib.resources import files

    return (files("opctl") / "completions" / SCRIPTS[shell]).read_text()


def print_script(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    return 0


def _subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _takes_value(p: argparse.ArgumentParser, word: str) -> bool:
    action = p._option_string_actions.get(word.split("=", 1)[0])
    return action is not None and "=" not in word and action.nargs != 0


def _what(action: argparse.Action) -> str | None:
    """Which names a positional wants: by its help text (the parser's own constants)."""
    if action.help == cli_parser.VM_HELP:
        return "vm"
    if action.help == parser_net.BRIDGE_HELP:
        return "bridge"
    if action.help == parser_ct.CT_HELP:
        return "ct"
    if action.dest == "job":
        return "job"
    if action.dest == "file":
        return "file"
    if action.choices is not None:
        return "choices"
    return None


class _Walk:
    """Where the words typed so far lead: the (sub)parser, which positional comes next,
    whether an option's value does, and the bus to ask."""

    def __init__(self, done: list[str]) -> None:
        self.parser: argparse.ArgumentParser = cli_parser.build_parser()
        self.bus = os.environ.get("OPDBUS_BUS_ADDRESS")
        self.positional = 0
        self.expect: str | None = None  # the option whose value the next word is
        self.foreign = False  # past `--`: the words belong to another command
        for word in done:
            self._feed(word)

    def _feed(self, word: str) -> None:
        if self.foreign:
            return
        if self.expect is not None:
            if self.expect == "--bus":
                self.bus = word
            self.expect = None
        elif word == "--":  # ct exec NAME -- COMMAND...
            self.foreign = True
        elif word.startswith("-"):
            if word.startswith("--bus="):
                self.bus = word.split("=", 1)[1]
            self.expect = word if _takes_value(self.parser, word) else None
        else:
            sub = _subparsers(self.parser)
            if sub is not None and word in sub.choices:
                self.parser, self.positional = sub.choices[word], 0
            else:
                self.positional += 1


def candidates(words: list[str], shell: str) -> list[str]:
    """What may come in place of ``words[-1]`` (the word being typed, maybe empty)."""
    *done, current = words or [""]
    walk = _Walk(done)
    p, bus, positional = walk.parser, walk.bus, walk.positional
    if walk.foreign:
        return []
    if walk.expect is not None:  # an option's value: its choices, if it has any
        choices = p._option_string_actions[walk.expect].choices or ()
        return sorted(str(c) for c in choices if str(c).startswith(current))
    if current.startswith("-"):
        options = [o for o in p._option_string_actions if o.startswith("--") or len(o) == 2]
        return sorted(o for o in options if o.startswith(current))
    sub = _subparsers(p)
    if sub is not None:
        return sorted(name for name in sub.choices if name.startswith(current))
    wanted = [a for a in p._actions if not a.option_strings and a.dest != "help"]
    if positional >= len(wanted):
        return []
    action = wanted[positional]
    what = _what(action)
    if what == "choices":
        return sorted(str(c) for c in action.choices or () if str(c).startswith(current))
    if what == "file":
        return _files(current) if shell == "fish" else []  # bash and zsh complete files
    if what is None:
        return []
    return sorted(name for name in _names(bus, what) if name.startswith(current))


def _files(prefix: str) -> list[str]:
    folder = Path(prefix).parent if "/" in prefix else Path()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        text = str(entry) if "/" in prefix else entry.name
        if text.startswith(prefix):
            out.append(text + "/" if entry.is_dir() else text)
    return sorted(out)


def _names(bus: str | None, what: str) -> list[str]:
    import asyncio

    try:
        return asyncio.run(asyncio.wait_for(_ask(bus, what), BUS_TIMEOUT))
    except Exception:  # no daemon, no bus, no answer in time: nothing to offer
        return []


async def _ask(bus: str | None, what: str) -> list[str]:
    from opctl.client import Client
    from opctl.wire import plain
    from opdbus import names

    iface, key = {
        "vm": (names.VM_IFACE, "Name"),
        "bridge": (names.BRIDGE_IFACE, "Name"),
        "ct": (names.CONTAINER_IFACE, "Name"),
        "job": (names.JOB_IFACE, "Id"),
    }[what]
    client = await Client.connect(bus, call_timeout=BUS_TIMEOUT)
    try:
        (objects,) = await client.call(
            names.ROOT_PATH, names.OBJECT_MANAGER_IFACE, "GetManagedObjects"
        )
    finally:
        await client.close()
    return [
        str(plain(interfaces[iface][key]))
        for interfaces in objects.values()
        if iface in interfaces and key in interfaces[iface]
    ]


def main(argv: list[str]) -> int:
    """``opctl __complete --shell SHELL -- WORD...``: one candidate per line."""
    shell = "bash"
    if argv[:1] == ["--shell"] and len(argv) > 1:
        shell, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    for candidate in candidates(argv, shell):
        print(candidate)
    return 0
