"""10 000 fuzzed calls over every method and every option, against a real op-dbusd
(libvirt's test driver, a real Open vSwitch, real LXC): every answer is a success or
a named error, never an internal error, never a traceback, and the daemon lives.

Arguments follow each method's D-Bus signature; a{sv} options use every option name
any method knows (plus unknown ones) with values of every D-Bus type; strings range
from plausible names to control characters, huge texts and hostile JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dbus_fast import Variant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from opctl.client import Client
from opdbus import errors, names
from opdbus.bus.base import OpdbusInterface, dbus_methods
from opdbus.bus.bridge import Bridge1
from opdbus.bus.container import Container1
from opdbus.bus.job import Job1
from opdbus.bus.manager import Manager1
from opdbus.bus.vm import VM1
from opdbus.models import audit, container, network, sync, validation, vm
from opdbus.sandbox import PrivateBus
from opdbus.sandbox_ovs import PrivateOvs
from tests.support import base_config

pytestmark = pytest.mark.timeout(900)

CALLS = int(os.environ.get("OPDBUS_FUZZ_CALLS", "10000"))
T = TypeVar("T")

# Names the daemon knows of: a fuzzed name hits real objects now and then.
NAMES = ["fz0", "fz1", "test", "fzc", "ovsbr0", "x" * 16, "", ".", "../x", "a b"]
STANDARD_ERRORS = {
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownProperty",
    "org.freedesktop.DBus.Error.PropertyReadOnly",
    "org.freedesktop.DBus.Error.InvalidArgs",
}


def option_names() -> list[str]:
    """Every field of every model the daemon decodes from a{sv}, and some it does not know."""
    found: set[str] = set()
    for module in (audit, container, network, sync, validation, vm):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel:
                found |= set(value.model_fields)
    return sorted(found | {"bogus", "", "x" * 300})


# What a D-Bus string can carry: any Unicode but NUL and surrogates (utf-8 has none).
CHARS = st.characters(exclude_characters="\x00", codec="utf-8")
texts = st.one_of(
    st.sampled_from(NAMES),
    st.text(CHARS, max_size=40),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x1F), max_size=8),
    st.just("a" * 70_000),
    st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 20_000)),
    st.builds(lambda n: '{"n": ' + "9" * n + "}", st.integers(1, 6000)),
    st.just('{"bridges": [{"name": "fz0", "ports": [{"name": "fz0p", "type": "internal"}]}]}'),
    st.just('{"interfaces": "x"}'),
    st.just('{"name": "fzvm", "memory_mb": 64, "description": "\\u0001"}'),
    st.just('{"name": "fzvm2", "memory_mb": 64}'),
    st.just("main"),
    st.just("build"),
)
integers = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 100, 2**31 - 1, -1]))
unsigned = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 100, 4094, 4096]))


def variants() -> st.SearchStrategy[Variant]:
    return st.one_of(
        st.builds(lambda v: Variant("s", v), texts),
        st.builds(lambda v: Variant("b", v), st.booleans()),
        st.builds(lambda v: Variant("u", v), unsigned),
        st.builds(lambda v: Variant("i", v), integers),
        st.builds(lambda v: Variant("t", v), st.integers(0, 2**64 - 1)),
        st.builds(lambda v: Variant("d", v), st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(lambda v: Variant("as", v), st.lists(texts, max_size=4)),
        st.builds(lambda v: Variant("ai", v), st.lists(integers, max_size=4)),
        st.builds(lambda v: Variant("a{ss}", v), st.dictionaries(texts, texts, max_size=3)),
    )


def strategy_for(signature: str) -> st.SearchStrategy[Any]:
    if signature == "s":
        return texts
    if signature == "b":
        return st.booleans()
    if signature in ("u", "t"):
        return unsigned
    if signature == "as":
        return st.lists(texts, max_size=5)
    if signature == "a{sv}":
        return st.dictionaries(st.sampled_from(option_names()), variants(), max_size=4)
    raise AssertionError(f"no strategy for {signature}")


def split(signature: str) -> list[str]:
    """A method's in-signature as one signature per argument."""
    out, i = [], 0
    while i < len(signature):
        if signature.startswith("a{sv}", i):
            out.append("a{sv}")
            i += 5
        elif signature.startswith("as", i):
            out.append("as")
            i += 2
        else:
            out.append(signature[i])
            i += 1
    return out


class Caller:
    """A client on a loop of its own thread, callable from hypothesis' synchronous tests."""

    def __init__(self, address: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client: Client = self.run(Client.connect(address))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def caller(private_bus: PrivateBus) -> Iterator[Caller]:
    c = Caller(private_bus.address)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def lxcpath(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "lxc"
    path.mkdir()
    yield path
    for config in path.glob("*/config"):  # a fuzzed Start may have left one running
        subprocess.run(
            ["lxc-stop", "-P", str(path), "-n", config.parent.name, "-k"],
            capture_output=True,
            check=False,
        )


def test_ten_thousand_fuzzed_calls_get_named_answers(
    tmp_path: Path,
    make_daemon: Any,
    private_bus: PrivateBus,
    ovs: PrivateOvs,
    caller: Caller,
    lxcpath: Path,
) -> None:
    config = base_config(
        tmp_path,
        libvirt={"uri": "test:///default"},
        ovsdb={"remote": ovs.remote, "datapath_type": "netdev"},
        sync={"api_url": "http://127.0.0.1:9", "retries": 0, "timeout_seconds": 1},
        rebuild={"command": "/bin/false"},
        jobs={"retention_seconds": 5, "cancel_wait_seconds": 2, "max_concurrent": 8},
        lxc={"path": str(lxcpath), "stop_timeout_seconds": 1},
    )
    daemon = make_daemon(private_bus, config)
    client = caller.client
    caller.run(client.create_bridge("fz0", {}))
    created = caller.run(client.run_job(lambda: client.create_container("fzc", {})))
    assert created.state.value == "succeeded", created.result
    vms = caller.run(client.vms())
    targets: dict[type[OpdbusInterface], list[str]] = {
        Manager1: [names.ROOT_PATH],
        Job1: [names.job_path(1), names.job_path(99)],
        Bridge1: [names.bridge_path("fz0"), names.bridge_path("nope")],
        VM1: [*vms, names.vm_path("nope")],
        Container1: [names.container_path("fzc")],
    }
    live = {names.bridge_path("fz0"), *vms, names.container_path("fzc")}
    methods = [
        (cls.INTERFACE, member, method.in_signature, path)
        for cls, paths in targets.items()
        for member, method in dbus_methods(cls).items()
        for path in paths
        # The objects the fuzz works on stay: Delete is fuzzed on missing ones.
        if not (member == "Delete" and path in live)
    ]
    outcomes: Counter[str] = Counter()
    bad: list[str] = []

    @st.composite
    def calls(draw: st.DrawFn) -> tuple[str, str, str, str, list[Any]]:
        interface, member, signature, path = draw(st.sampled_from(methods))
        args = [draw(strategy_for(sig)) for sig in split(signature)]
        return interface, member, signature, path, args

    @settings(
        max_examples=CALLS,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(calls())
    def one(call: tuple[str, str, str, str, list[Any]]) -> None:
        interface, member, signature, path, args = call
        try:
            caller.run(client.call(path, interface, member, signature, args))
            outcomes["ok"] += 1
        except errors.OpdbusError as e:
            name = type(e).__name__
            outcomes[name] += 1
            message = e.message
            # The daemon's own crash is "internal error (ref ...)"; a backend's
            # words (libvirt says "internal error: ...") are its own.
            if "internal error (ref" in message or "Traceback" in message:
                bad.append(f"{interface}.{member}{args!r:.200}: {name}: {message}")

    one()
    total = sum(outcomes.values())
    print(f"fuzz: {total} calls over {len(methods)} (method, object) pairs: {dict(outcomes)}")
    assert total >= CALLS
    assert not bad, "\n".join(bad[:20])
    # Every error that crossed the bus had a name the client knows: no generic
    # "Failed" stood in for something unnamed, and the daemon never logged a crash.
    log = daemon.log()
    assert "Traceback" not in log and "internal error (ref" not in log, log[-3000:]
    assert caller.run(client.status()).version  # still serving
    verdict = caller.run(client.verify_audit())
    assert verdict.ok, verdict.reason
    json.dumps(dict(outcomes))
