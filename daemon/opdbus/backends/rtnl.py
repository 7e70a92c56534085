"""A lean rtnetlink monitor: a raw NETLINK_ROUTE socket read from the event loop.

pyroute2 decodes every attribute of every message (a link message carries
dozens, statistics included); creating 200 tap devices made that decoding
the daemon's main cost. The monitor needs a few fields, so it reads the
kernel's structs itself: link name/flags/MTU/operstate, IPv4 address and
prefix, and IPv4 default routes (table, gateway, output interface).
Messages come out as dicts keyed like pyroute2's, so one code path folds
both into the link view.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RCVBUF = 8 * 1024 * 1024  # a burst of thousands of events must not overflow it

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
RTATTR = struct.Struct("=HH")

EVENTS = {
    16: "RTM_NEWLINK",
    17: "RTM_DELLINK",
    20: "RTM_NEWADDR",
    21: "RTM_DELADDR",
    24: "RTM_NEWROUTE",
    25: "RTM_DELROUTE",
}
IFLA_IFNAME, IFLA_MTU, IFLA_OPERSTATE = 3, 4, 16
IFA_ADDRESS = 1
RTA_OIF, RTA_GATEWAY, RTA_TABLE = 4, 5, 15
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


def _attrs(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    while offset + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            return
        yield kind & 0x3FFF, data[offset + RTATTR.size : offset + length]
        offset += (length + 3) & ~3


def parse(message_type: int, body: bytes) -> dict[str, Any] | None:  # noqa: PLR0912 (one struct per kind)
    """One rtnetlink message body -> the fields the link view folds in."""
    event = EVENTS.get(message_type)
    if event is None:
        return None
    if event in ("RTM_NEWLINK", "RTM_DELLINK"):
        family, _, index, flags, _ = IFINFO.unpack_from(body)
        out: dict[str, Any] = {"event": event, "index": index, "flags": flags, "family": family}
        for kind, value in _attrs(body, IFINFO.size):
            if kind == IFLA_IFNAME:
                out["ifname"] = value.rstrip(b"\0").decode(errors="replace")
            elif kind == IFLA_MTU:
                out["mtu"] = struct.unpack("=I", value[:4])[0]
            elif kind == IFLA_OPERSTATE:
                out["operstate"] = OPERSTATES[value[0]] if value[0] < len(OPERSTATES) else "UNKNOWN"
        return out
    if event in ("RTM_NEWADDR", "RTM_DELADDR"):
        family, prefixlen, _, _, index = IFADDR.unpack_from(body)
        out = {"event": event, "family": family, "prefixlen": prefixlen, "index": index}
        for kind, value in _attrs(body, IFADDR.size):
            if kind == IFA_ADDRESS and family == socket.AF_INET:
                out["address"] = str(ipaddress.IPv4Address(value[:4]))
        return out
    family, dst_len, _, _, table, _, _, _, _ = RTMSG.unpack_from(body)
    out = {"event": event, "family": family, "dst_len": dst_len, "table": table}
    for kind, value in _attrs(body, RTMSG.size):
        if kind == RTA_OIF:
            out["oif"] = struct.unpack("=I", value[:4])[0]
        elif kind == RTA_GATEWAY and family == socket.AF_INET:
            out["gateway"] = str(ipaddress.IPv4Address(value[:4]))
        elif kind == RTA_TABLE:
            out["table"] = struct.unpack("=I", value[:4])[0]
    return out


def messages(datagram: bytes) -> Iterator[dict[str, Any]]:
    offset = 0
    while offset + NLMSG_HDR.size <= len(datagram):
        length, kind, _, _, _ = NLMSG_HDR.unpack_from(datagram, offset)
        if length < NLMSG_HDR.size:
            return
        parsed = parse(kind, datagram[offset + NLMSG_HDR.size : offset + length])
        if parsed is not None:
            yield parsed
        offset += (length + 3) & ~3


NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
DUMP_TIMEOUT = 5.0  # the kernel answers a dump at once; this bounds a wedged one


def _request(kind: int, body: bytes, seq: int, *, dump: bool = True) -> bytes:
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, flags, seq, 0) + body


def links(index: int = 0) -> bytes:
    """RTM_GETLINK: every link (index 0, a dump), or the one with ``index``."""
    return _request(RTM_GETLINK, IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0), 1, dump=not index)


def addresses() -> bytes:
    return _request(RTM_GETADDR, IFADDR.pack(socket.AF_INET, 0, 0, 0, 0), 2)


def routes() -> bytes:
    return _request(RTM_GETROUTE, RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0), 3)


def ask(*requests: bytes) -> list[dict[str, Any]]:
    """Send each request and read its answer (blocking: run it in a thread).

    What the daemon reads of the kernel's links, addresses and routes at
    start and after each change, without pyroute2 (~10 MiB and 170 ms to
    import); the answers come out as the monitor's messages do.
    """
    out: list[dict[str, Any]] = []
    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_NETLINK, kind, NETLINK_ROUTE) as s:
        s.settimeout(DUMP_TIMEOUT)
        s.bind((0, 0))
        for request in requests:
            s.send(request)
            while not _answered(s.recv(1 << 20), out):
                pass
    return out


def _answered(datagram: bytes, out: list[dict[str, Any]]) -> bool:
    """Fold one datagram of an answer into ``out``; True once the answer is complete."""
    offset = 0
    done = False
    while offset + NLMSG_HDR.size <= len(datagram):
        length, kind, flags, _, _ = NLMSG_HDR.unpack_from(datagram, offset)
        if length < NLMSG_HDR.size:
            break
        body = datagram[offset + NLMSG_HDR.size : offset + length]
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0]
            if code:
                raise OSError(code, os.strerror(code))
            done = True  # an acknowledgement
        elif kind == NLMSG_DONE:
            done = True
        else:
            parsed = parse(kind, body)
            if parsed is not None:
                out.append(parsed)
            if not flags & 0x2:  # NLM_F_MULTI: a one-message answer ends with itself
                done = True
        offset += (length + 3) & ~3
    return done


class RtnlMonitor:
    """Hands every link, IPv4 address and IPv4 route message to ``handle``.

    ``overrun`` is called when the kernel dropped messages (ENOBUFS): the
    caller must read the state afresh.
    """

    def __init__(
        self, handle: Callable[[dict[str, Any]], None], overrun: Callable[[], None]
    ) -> None:
        self._handle = handle
        self._overrun = overrun
        self._sock: socket.socket | None = None

    def open(self) -> None:
        kind = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_ROUTE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        self._sock = sock

    def start(self) -> None:
        """Begin reading (messages that arrived since open() are read first)."""
        assert self._sock is not None
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                datagram = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    log.warning(
                        "netlink events were lost (buffer overrun); reading the state afresh"
                    )
                    self._overrun()
                    continue
                raise
            for message in messages(datagram):
                self._handle(message)
