"""opctl.minibus reads what dbus-fast writes, and dbus-fast reads what it writes.

The quick path's decoder is checked against dbus-fast's own marshaller on
every type the bus can carry (alignment, signed and unsigned sizes, doubles,
nested variants, structs in dicts in arrays), not only on the replies the
four quick commands happen to get.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast._private.marshaller import Marshaller
from dbus_fast._private.unmarshaller import Unmarshaller

from opctl import minibus

CASES: list[tuple[str, list[Any]]] = [
    ("ybnqiuxtd", [255, True, -2, 65535, -(2**31), 2**32 - 1, -(2**63), 2**64 - 1, -1.5]),
    ("sog", ["héllo", "/org/opdbus/vm/x", "a{sv}"]),
    ("ay", [b"\x00\x01\xff"]),
    ("a{s(bs)}", [{"libvirt": [True, "up"], "lxc": [False, "off in agent mode"]}]),
    (
        "a{oa{sv}}",
        [{"/a": {"N": Variant("s", "x"), "T": Variant("t", 7), "D": Variant("d", 0.25)}}],
    ),
    ("a(sssst)", [[["a", "b", "c", "d", 1], ["e", "", "g", "h", 2**40]]]),
    ("v", [Variant("a{sv}", {"inner": Variant("ai", [1, -2, 3])})]),
    ("a(yv)", [[[1, Variant("s", "x")], [2, Variant("x", -5)]]]),
    ("aas", [[["one", "two"], [], ["three"]]]),
    ("a{su}", [{}]),
]


def plain(value: Any) -> Any:
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize(("signature", "body"), CASES, ids=[c[0] for c in CASES])
def test_a_body_dbus_fast_wrote_reads_back_the_same(signature: str, body: list[Any]) -> None:
    marshaller = Marshaller(signature, body)
    data = bytes(marshaller.marshall())
    reader = minibus._Reader(data)
    read = [reader.read(t) for t in minibus._types(signature)]
    assert reader.at == len(data)  # every byte read, alignment included
    assert plain(read) == plain(body)


def test_a_call_minibus_writes_is_what_dbus_fast_would_send() -> None:
    data = minibus.method_call(
        7, "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", "GetObjects", ("org.opdbus.VM1",)
    )
    # As if read from dbus-fast's socket (any object with read() will do).
    unmarshaller = Unmarshaller(io.BytesIO(data))  # type: ignore[arg-type]
    message = unmarshaller.unmarshall()
    assert isinstance(message, Message)
    assert message.message_type is MessageType.METHOD_CALL and message.serial == 7
    assert (message.destination, message.path, message.interface, message.member) == (
        "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", "GetObjects",
    )  # fmt: skip
    assert message.signature == "s" and message.body == ["org.opdbus.VM1"]


@pytest.mark.parametrize(
    ("address", "path"),
    [
        ("unix:path=/run/dbus/system_bus_socket", "/run/dbus/system_bus_socket"),
        ("unix:path=/tmp/a%20b/bus,guid=0123", "/tmp/a b/bus"),
        ("tcp:host=x,port=1;unix:abstract=/tmp/dbus-X", "\0/tmp/dbus-X"),
    ],
)
def test_addresses(address: str, path: str) -> None:
    assert minibus.socket_path(address) == path


def test_an_address_without_a_unix_socket_is_left_to_the_ordinary_path() -> None:
    with pytest.raises(minibus.Unexpected):
        minibus.socket_path("tcp:host=localhost,port=5000")
