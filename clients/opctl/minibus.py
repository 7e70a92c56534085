"""A blocking D-Bus client in the standard library alone, for opctl's quick reads.

``opctl status`` and the list commands ask op-dbusd a call or two and print
a table. Through dbus-fast that is an event loop, its marshaller and its
imports: ~60 ms before the first byte. This speaks the wire protocol
directly: connect, authenticate (EXTERNAL), Hello, send the calls back to
back, read the replies. It knows only what those reads need: calls with
string arguments, and replies of any signature.

Anything it does not expect (another transport, a refused authentication,
an error reply, a timeout) raises ``Unexpected``; opctl then takes its
ordinary path, which reports the problem the way every other command does.
"""

from __future__ import annotations

import _socket  # the C module: `socket` would import enum, selectors and more (~4 ms)
import os

TYPE_CHECKING = False  # typing itself costs ~2 ms to import; mypy reads this as True

if TYPE_CHECKING:
    from typing import Any


class Unexpected(Exception):
    """Not the answer the quick path handles: the caller takes the ordinary path."""


class Refused(Unexpected):
    """The daemon answered with an error (its name and message)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


class TimedOut(Unexpected):
    """No answer within the timeout: ``what`` (Interface.Member) after ``limit`` s."""

    def __init__(self, what: str, limit: float) -> None:
        super().__init__(f"no answer to {what} within {limit:g} s")
        self.what = what
        self.limit = limit


def _unescape(value: str) -> str:
    """D-Bus address values escape bytes as %XX."""
    if "%" not in value:
        return value
    out = bytearray()
    i = 0
    raw = value.encode()
    while i < len(raw):
        if raw[i] == ord("%"):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode()


def socket_path(address: str) -> str:
    """The unix socket of the first usable address (abstract names start with NUL)."""
    for one in address.split(";"):
        kind, _, rest = one.partition(":")
        if kind != "unix":
            continue
        keys = dict(pair.partition("=")[::2] for pair in rest.split(",") if pair)
        if "path" in keys:
            return _unescape(keys["path"])
        if "abstract" in keys:
            return "\0" + _unescape(keys["abstract"])
    raise Unexpected(f"no unix socket in {address!r}")


# -- marshalling (little-endian) ---------------------------------------------------


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def _pad(buffer: bytearray, to: int) -> None:
    buffer.extend(b"\0" * (-len(buffer) % to))


def _string(buffer: bytearray, text: str, kind: str = "s") -> None:
    data = text.encode()
    if kind == "g":
        buffer.append(len(data))
    else:
        _pad(buffer, 4)
        buffer.extend(_u32(len(data)))
    buffer.extend(data + b"\0")


def method_call(
    serial: int, destination: str, path: str, interface: str, member: str, args: tuple[str, ...]
) -> bytes:
    """A METHOD_CALL message whose arguments are all strings."""
    body = bytearray()
    for arg in args:
        _string(body, arg)
    fields = bytearray()
    for code, kind, value in (
        (1, "o", path),
        (2, "s", interface),
        (3, "s", member),
        (6, "s", destination),
        (8, "g", "s" * len(args)),
    ):
        if code == 8 and not args:
            continue
        _pad(fields, 8)
        fields.extend(bytes((code, 1)) + kind.encode() + b"\0")
        _string(fields, value, kind)
    message = bytearray(b"l\x01\x00\x01")
    message.extend(_u32(len(body)) + _u32(serial) + _u32(len(fields)))
    message.extend(fields)
    _pad(message, 8)
    return bytes(message + body)


# -- unmarshalling ------------------------------------------------------------------

# Fixed-size types: (size, signed). Integers are read with int.from_bytes: the
# struct module is a shared library of its own to load (doubles alone use it).
_FIXED = {
    "y": (1, False),
    "b": (4, False),
    "n": (2, True),
    "q": (2, False),
    "i": (4, True),
    "u": (4, False),
    "h": (4, False),
    "x": (8, True),
    "t": (8, False),
    "d": (8, False),
}
_ALIGN = {"(": 8, "{": 8, "a": 4, "s": 4, "o": 4, "g": 1, "v": 1}


def _alignment(code: str) -> int:
    return _ALIGN[code] if code in _ALIGN else _FIXED[code][0]


def _complete_type(signature: str, start: int) -> int:
    """Where the single complete type at ``start`` ends."""
    c = signature[start]
    if c == "a":
        return _complete_type(signature, start + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        i = start + 1
        while signature[i] != close:
            i = _complete_type(signature, i)
        return i + 1
    return start + 1


def _types(signature: str) -> list[str]:
    out, i = [], 0
    while i < len(signature):
        end = _complete_type(signature, i)
        out.append(signature[i:end])
        i = end
    return out


class _Reader:
    """Values as dbus-fast gives them: lists for arrays and structs, dicts, plain variants."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.at = offset

    def align(self, to: int) -> None:
        self.at += -self.at % to

    def read(self, kind: str) -> Any:
        c = kind[0]
        if c in _FIXED:
            size, signed = _FIXED[c]
            self.align(size)
            raw = self.data[self.at : self.at + size]
            self.at += size
            if c == "d":
                import struct

                return struct.unpack("<d", raw)[0]
            value = int.from_bytes(raw, "little", signed=signed)
            return bool(value) if c == "b" else value
        if c in "so":
            length = self.read("u")
            text = self.data[self.at : self.at + length].decode()
            self.at += length + 1
            return text
        if c == "g":
            length = self.data[self.at]
            text = self.data[self.at + 1 : self.at + 1 + length].decode()
            self.at += length + 2
            return text
        if c == "v":
            return self.read(self.read("g"))
        if c == "(":
            self.align(8)
            return [self.read(t) for t in _types(kind[1:-1])]
        if c == "a":
            length = self.read("u")
            item = kind[1:]
            self.align(_alignment(item[0]))
            end = self.at + length
            if item == "y":  # bytes, as dbus-fast gives them
                self.at = end
                return self.data[end - length : end]
            if item[0] == "{":
                key_type, value_type = _types(item[1:-1])
                pairs = {}
                while self.at < end:
                    self.align(8)
                    key = self.read(key_type)
                    pairs[key] = self.read(value_type)
                return pairs
            values = []
            while self.at < end:
                values.append(self.read(item))
            return values
        raise Unexpected(f"cannot read D-Bus type {kind!r}")


class Connection:
    """One authenticated connection; ``calls`` sends several calls at once."""

    def __init__(self, address: str, timeout: float) -> None:
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._timeout = timeout
        self._buffer = b""
        self._serial = 1
        try:
            self._sock.connect(socket_path(address))
            # Authentication, BEGIN and Hello in one write (as sd-bus does).
            uid = str(os.getuid()).encode().hex()
            hello = method_call(
                1, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                "Hello", (),
            )  # fmt: skip
            self._sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\nBEGIN\r\n" + hello)
            line = self._line()
            if not line.startswith(b"OK "):
                raise Unexpected(f"the bus refused authentication: {line!r}")
            self._replies({1})
        except TimeoutError as e:
            self.close()
            raise TimedOut("org.freedesktop.DBus.Hello", timeout) from e
        except OSError as e:
            self.close()
            raise Unexpected(str(e)) from e
        except Unexpected:
            self.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def _more(self) -> None:
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            raise Unexpected("the bus closed the connection")
        self._buffer += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._more()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _message(self) -> tuple[int, dict[int, Any], bytes, int]:
        """The next message: (type, header fields, whole message, body offset)."""
        while len(self._buffer) < 16:
            self._more()
        if self._buffer[0:1] != b"l":
            raise Unexpected("a big-endian message")
        body_length = int.from_bytes(self._buffer[4:8], "little")
        fields_length = int.from_bytes(self._buffer[12:16], "little")
        body_at = 16 + fields_length + (-(16 + fields_length) % 8)
        while len(self._buffer) < body_at + body_length:
            self._more()
        data = self._buffer[: body_at + body_length]
        self._buffer = self._buffer[body_at + body_length :]
        reader = _Reader(data, 12)
        fields = {code: value for code, value in reader.read("a(yv)")}
        return data[1], fields, data, body_at

    def _replies(self, serials: set[int]) -> dict[int, list[Any]]:
        """The bodies of the replies to ``serials`` (signals and others are skipped)."""
        out: dict[int, list[Any]] = {}
        while len(out) < len(serials):
            kind, fields, data, body_at = self._message()
            serial = fields.get(5)
            if kind not in (2, 3) or serial not in serials:
                continue
            body = _Reader(data, body_at)
            values = [body.read(t) for t in _types(fields.get(8, ""))]
            if kind == 3:
                raise Refused(fields.get(4, ""), str(values[0]) if values else "")
            out[serial] = values
        return out

    def calls(self, *calls: tuple[str, str, str, tuple[str, ...]]) -> list[list[Any]]:
        """Send every (path, interface, member, string args) call, then read all replies."""
        serials = []
        out = bytearray()
        for path, interface, member, args in calls:
            self._serial += 1
            serials.append(self._serial)
            out.extend(method_call(self._serial, "org.opdbus", path, interface, member, args))
        try:
            self._sock.sendall(out)
            replies = self._replies(set(serials))
        except TimeoutError as e:
            raise TimedOut(f"{calls[-1][1]}.{calls[-1][2]}", self._timeout) from e
        except OSError as e:
            raise Unexpected(str(e)) from e
        return [replies[serial] for serial in serials]
