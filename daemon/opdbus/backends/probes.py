"""Is a backend there? Cheap, bounded, non-blocking reachability probes.

Each probe speaks just enough of the backend's own protocol to tell a live
service from a stale socket: OVSDB answers a JSON-RPC ``echo``; libvirtd
accepts its socket; LXC is its tools on PATH. Later backends replace these
with their real connection state.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from opdbus.models.health import Probe


async def _connect(
    target: str, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open ``unix:PATH`` or ``tcp:HOST:PORT``."""
    async with asyncio.timeout(timeout):
        if target.startswith("unix:"):
            return await asyncio.open_unix_connection(target[5:])
        if target.startswith("tcp:"):
            host, _, port = target[4:].rpartition(":")
            return await asyncio.open_connection(host.strip("[]"), int(port))
    raise ValueError(f"unsupported address {target!r} (use unix:PATH or tcp:HOST:PORT)")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def probe_ovsdb(remote: str, timeout: float) -> Probe:
    """Connect and exchange a JSON-RPC echo with ovsdb-server."""
    try:
        reader, writer = await _connect(remote, timeout)
    except (OSError, TimeoutError, ValueError) as e:
        return Probe(False, f"ovsdb-server not reachable at {remote}: {why(e)}")
    try:
        writer.write(json.dumps({"method": "echo", "params": ["op-dbus"], "id": "probe"}).encode())
        async with asyncio.timeout(timeout):
            await writer.drain()
            data = b""
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    return Probe(False, f"ovsdb-server at {remote} closed the connection")
                data += chunk
                try:
                    reply = json.loads(data)
                    break
                except ValueError:
                    continue
        if reply.get("id") != "probe" or reply.get("error"):
            return Probe(False, f"{remote} did not answer like ovsdb-server")
        return Probe(True, f"ovsdb-server at {remote}")
    except TimeoutError:
        return Probe(False, f"ovsdb-server at {remote} did not answer within {timeout:g} s")
    except OSError as e:
        return Probe(False, f"ovsdb-server at {remote}: {why(e)}")
    finally:
        await _close(writer)


def libvirt_socket(uri: str) -> str | None:
    """The unix socket a libvirt URI connects to, or None when it uses none."""
    parts = urlsplit(uri)
    scheme = parts.scheme
    if "+" in scheme:
        driver, transport = scheme.split("+", 1)
    else:
        driver, transport = scheme, "unix" if not parts.hostname else "tls"
    if transport != "unix" or driver == "test":
        return None
    query = parse_qs(parts.query)
    if "socket" in query:
        return query["socket"][0]
    if parts.path == "/session":
        runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
        return f"{runtime}/libvirt/libvirt-sock"
    return "/run/libvirt/libvirt-sock"


async def probe_libvirt(uri: str, timeout: float) -> Probe:
    if uri.startswith("test:"):
        if importlib.util.find_spec("libvirt") is None:
            return Probe(False, "libvirt test driver needs libvirt-python, which is not installed")
        return Probe(True, f"libvirt test driver ({uri})")
    socket_path = libvirt_socket(uri)
    if socket_path is None:
        return Probe(False, f"cannot probe {uri}: only local unix-socket URIs are probed")
    try:
        _, writer = await _connect(f"unix:{socket_path}", timeout)
    except (OSError, TimeoutError) as e:
        return Probe(False, f"libvirtd not reachable at {socket_path}: {why(e)}")
    await _close(writer)
    return Probe(True, f"libvirtd at {socket_path} ({uri})")


def _lxc_sync(lxc_path: Path) -> Probe:
    missing = [
        tool for tool in ("lxc-start", "lxc-info", "lxc-create") if shutil.which(tool) is None
    ]
    if missing:
        return Probe(False, f"LXC tools not installed (missing {', '.join(missing)})")
    if os.geteuid() != 0:
        # Unprivileged LXC needs subuid maps and delegated cgroups op-dbus does not set up.
        return Probe(False, "LXC tools found, but op-dbusd runs containers only as root")
    where = lxc_path if lxc_path.exists() else lxc_path.parent
    if not os.access(where, os.W_OK):
        return Probe(False, f"LXC tools found, but {where} is not writable")
    return Probe(True, f"LXC tools, containers in {lxc_path}")


async def probe_lxc(lxc_path: Path) -> Probe:
    return await asyncio.to_thread(_lxc_sync, lxc_path)


async def probe_systemd(address: str) -> Probe:
    """Is there a bus where systemd should answer? (The units service connects and says more.)"""
    socket = address.removeprefix("unix:path=").split(",", 1)[0]
    if address.startswith("unix:path=") and not await asyncio.to_thread(os.path.exists, socket):
        return Probe(False, f"no system bus at {socket}: systemd is not running here")
    return Probe(True, f"a bus at {address}")


def why(error: BaseException) -> str:
    """An exception as a few words for Manager1.Backends."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__
