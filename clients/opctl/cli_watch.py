"""``opctl watch``: every signal of op-dbusd, live, until Ctrl-C.

For people, one line per event naming the object as people know it (``vm
tiny: State=running``), the way ``virsh event --all --loop`` reads; ``--json``
keeps the raw form, one JSON object per line. When the bus goes away it says
so and connects again; when op-dbusd leaves the bus and comes back it says
that too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opctl.client import Client
from opctl.parser import _env_timeout
from opctl.wire import SignalEvent, Unreachable, plain
from opdbus import names

if TYPE_CHECKING:
    from opctl.commands import Cli

RECONNECT_FIRST, RECONNECT_MAX = 0.5, 5.0
VALUE_MAX = 60  # a property's value is cut to this many characters (the object has it all)


def _value(value: Any, key: str = "") -> str:
    if key.endswith("At") and isinstance(value, int) and value:  # µs since the epoch
        return datetime.fromtimestamp(value / 1_000_000).strftime("%H:%M:%S.%f")[:-3]
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= VALUE_MAX else text[: VALUE_MAX - 1] + "…"


KINDS = {
    names.JOB_PATH_PREFIX: "job",
    names.BRIDGE_PATH_PREFIX: "bridge",
    names.VM_PATH_PREFIX: "vm",
    names.CONTAINER_PATH_PREFIX: "ct",
    names.UNIT_PATH_PREFIX: "unit",
}


class Namer:
    """Object paths -> what people call the objects: ``vm tiny``, ``job 12 (Validate)``."""

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def learn(self, path: str, interfaces: dict[str, dict[str, Any]]) -> None:
        for props in interfaces.values():
            if "Operation" in props and "Id" in props:
                self.known[path] = f"job {props['Id']} ({props['Operation']})"
            elif "Name" in props:
                self.known[path] = f"{self._kind(path)} {props['Name']}"

    async def seed(self, client: Client) -> None:
        """Learn the names of the objects there are (one GetManagedObjects)."""
        (objects,) = await client.call(
            names.ROOT_PATH, names.OBJECT_MANAGER_IFACE, "GetManagedObjects"
        )
        for path, interfaces in plain(objects).items():
            self.learn(path, interfaces)

    def forget(self, path: str) -> None:
        self.known.pop(path, None)

    def name(self, path: str) -> str:
        if path in self.known:
            return self.known[path]
        if path == names.ROOT_PATH:
            return "op-dbusd"
        if path == names.STATE_PATH:
            return "state"
        head, _, leaf = path.rpartition("/")
        return f"{self._kind(path)} {names.unescape_path_element(leaf)}" if head else path

    def _kind(self, path: str) -> str:
        return KINDS.get(path.rpartition("/")[0], path.rpartition("/")[0])

    def describe(self, event: SignalEvent) -> str | None:
        """One line for people, or None when there is nothing to say."""
        member, args = event.member, event.args
        if member == "InterfacesAdded":
            self.learn(args[0], args[1])
            return f"{self.name(args[0])} added"
        if member == "InterfacesRemoved":
            line = f"{self.name(args[0])} removed"
            self.forget(args[0])
            return line
        who = self.name(event.path)
        if member == "PropertiesChanged":
            changed = [f"{key}={_value(value, key)}" for key, value in sorted(args[1].items())]
            changed += [f"{key} changed" for key in args[2]]
            return f"{who}: {', '.join(changed)}" if changed else None
        if member == "Log":
            return f"{who}: {args[2]}"
        if member == "Completed":
            return f"{who} completed: {'succeeded' if args[0] else 'failed'}: {args[1]}"
        if member == "JobNew":  # (job)
            return f"{self.name(args[0])} queued"
        if member == "JobRemoved":  # (job, result)
            return f"{self.name(args[0])} ended: {args[1]}"
        return f"{who}: {member} " + " ".join(_value(arg) for arg in args)


class Watch:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.args = cli.args
        self.namer = Namer()

    async def run(self) -> int:
        """Until SIGINT/SIGTERM, which end it normally (exit 0)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            watcher = asyncio.create_task(self._loop())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (watcher, stopper):
                task.cancel()
            outcome, _ = await asyncio.gather(watcher, stopper, return_exceptions=True)
            if isinstance(outcome, Exception):
                raise outcome
            return 0
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    def _note(self, text: str) -> None:
        """What happened to the watching itself: stderr, so --json's stdout stays events only."""
        print(f"{_now()} {text}", file=sys.stderr, flush=True)

    async def _loop(self) -> None:
        client = self.cli.client  # closed by opctl's run(); the ones made here, here
        try:
            while True:
                await self._watch(client)
                self._note(f"the bus at {client.address} went away; connecting again…")
                if client is not self.cli.client:
                    await client.close()
                client = self.cli.client
                client = await self._reconnect()
                self._note("connected again (events while away are lost)")
        finally:
            if client is not self.cli.client:
                await client.close()

    async def _reconnect(self) -> Client:
        delay = RECONNECT_FIRST
        while True:
            await asyncio.sleep(delay)
            with contextlib.suppress(Unreachable):
                return await Client.connect(
                    self.args.bus, call_timeout=self.args.call_timeout or _env_timeout()
                )
            delay = min(delay * 2, RECONNECT_MAX)

    async def _watch(self, client: Client) -> None:
        """Print events until the connection ends."""
        owner: asyncio.Queue[str] = asyncio.Queue()
        client.on_owner_change = owner.put_nowait
        async with client.signals("") as queue:
            if not self.args.json:
                await self._seed(client)
                self._note(f"watching org.opdbus on {client.address} (Ctrl-C to stop)")
            # Shielded: cancelling our wait must not cancel the bus's own future
            # (close() awaits it); it ends when the connection does.
            lost = asyncio.ensure_future(
                asyncio.shield(client.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
            )
            try:
                while not lost.done():
                    event = asyncio.ensure_future(queue.get())
                    moved = asyncio.ensure_future(owner.get())
                    await asyncio.wait({event, lost, moved}, return_when=asyncio.FIRST_COMPLETED)
                    for waiter in (event, moved):
                        waiter.cancel()
                    if moved.done() and not moved.cancelled():
                        self._note(
                            "op-dbusd is on the bus" if moved.result() else "op-dbusd left the bus"
                        )
                    if event.done() and not event.cancelled():
                        self._print(event.result())
            finally:
                lost.cancel()
                with contextlib.suppress(BaseException):
                    await lost

    async def _seed(self, client: Client) -> None:
        with contextlib.suppress(Exception):  # no daemon yet: paths will do
            await self.namer.seed(client)

    def _print(self, event: SignalEvent) -> None:
        if self.args.json:
            raw = {
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "path": event.path,
                "interface": event.interface,
                "member": event.member,
                "args": event.args,
            }
            print(json.dumps(raw, default=str), flush=True)
            return
        line = self.namer.describe(event)
        if line is not None:
            print(f"{_now()} {line}", flush=True)


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]
