"""A container's LXC config file, and op-dbus's own note beside it (opdbus.json).

Blocking file work: call these from a thread. The config is rewritten
atomically; keys op-dbus manages are replaced, every other line is kept.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from opdbus.backends.files import atomic_write
from opdbus.models.container import ContainerMeta, CreateContainerOptions

META = "opdbus.json"
CGROUP2_CONTROLLERS = Path("/sys/fs/cgroup/cgroup.controllers")


def read(path: Path) -> list[tuple[str, str]]:
    entries = []
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            entries.append((key.strip(), value.strip()))
    return entries


def values(entries: list[tuple[str, str]], key: str) -> list[str]:
    return [value for k, value in entries if k == key]


def first(entries: list[tuple[str, str]], key: str) -> str:
    found = values(entries, key)
    return found[0] if found else ""


def _memory_on_cgroup2() -> bool:
    try:
        return "memory" in CGROUP2_CONTROLLERS.read_text().split()
    except OSError:
        return False


def limit_keys() -> tuple[str, str]:
    """(memory key, cpu key) for this host's cgroup layout (v2, or v1/hybrid)."""
    if _memory_on_cgroup2():
        return "lxc.cgroup2.memory.max", "lxc.cgroup2.cpu.max"
    return "lxc.cgroup.memory.limit_in_bytes", "lxc.cgroup.cpu.cfs_quota_us"


def settings(name: str, cid: int, opts: CreateContainerOptions) -> list[tuple[str, str]]:
    """The lines op-dbus writes for a new container."""
    lines: list[tuple[str, str]] = [("lxc.uts.name", name)]
    if opts.bridge is None:
        lines.append(("lxc.net.0.type", "empty"))
    else:
        lines += [
            ("lxc.net.0.type", "veth"),
            ("lxc.net.0.link", opts.bridge),
            ("lxc.net.0.flags", "up"),
            ("lxc.net.0.veth.pair", opts.veth or f"vi{cid}"),
            ("lxc.net.0.name", "eth0"),
        ]
        if opts.hwaddr:
            lines.append(("lxc.net.0.hwaddr", opts.hwaddr))
        for address in opts.ipv4:
            iface = ipaddress.IPv4Interface(address)
            # With no broadcast given, LXC sets 0.0.0.255-style nonsense: name it.
            lines.append(
                (
                    "lxc.net.0.ipv4.address",
                    f"{iface.with_prefixlen} {iface.network.broadcast_address}",
                )
            )
        if opts.gateway:
            lines.append(("lxc.net.0.ipv4.gateway", opts.gateway))
    memory_key, cpu_key = limit_keys()
    if opts.memory_mb:
        lines.append((memory_key, str(opts.memory_mb * 1024 * 1024)))
    if opts.cpus:
        if cpu_key.startswith("lxc.cgroup2"):
            lines.append((cpu_key, f"{opts.cpus * 100000} 100000"))
        else:
            lines += [
                ("lxc.cgroup.cpu.cfs_period_us", "100000"),
                (cpu_key, str(opts.cpus * 100000)),
            ]
    lines += [("lxc.start.auto", "1" if opts.autostart else "0"), ("lxc.start.order", str(cid))]
    return lines


def rewrite(path: Path, new: list[tuple[str, str]], drop: frozenset[str] = frozenset()) -> None:
    """Replace every line whose key ``new`` sets (all lxc.net.0.* when it sets a network),
    and remove the keys in ``drop``."""
    keys = {key for key, _ in new} | drop
    net = any(key.startswith("lxc.net.0.") for key in keys)
    kept = []
    for line in path.read_text().splitlines():
        key = line.partition("=")[0].strip()
        if key in keys or (net and key.startswith("lxc.net.0.")):
            continue
        kept.append(line)
    text = "\n".join([*kept, *(f"{k} = {v}" for k, v in new)]) + "\n"
    atomic_write(path, text.encode(), mode=0o640)


def limit_keys_all() -> frozenset[str]:
    """Every key a memory or CPU limit may be written under (either cgroup layout)."""
    return frozenset(
        {
            "lxc.cgroup2.memory.max",
            "lxc.cgroup2.cpu.max",
            "lxc.cgroup.memory.limit_in_bytes",
            "lxc.cgroup.cpu.cfs_quota_us",
            "lxc.cgroup.cpu.cfs_period_us",
        }
    )


def set_autostart(path: Path, on: bool) -> None:
    rewrite(path, [("lxc.start.auto", "1" if on else "0")])


def read_meta(directory: Path) -> ContainerMeta | None:
    try:
        return ContainerMeta.model_validate_json((directory / META).read_text())
    except (OSError, ValueError):
        return None


def write_meta(directory: Path, meta: ContainerMeta) -> None:
    atomic_write(directory / META, meta.model_dump_json().encode(), mode=0o640)


def static_addressing(rootfs: Path) -> None:
    """The busybox template's rcS runs udhcpc, which flushes the static address LXC set:
    drop it (the container keeps what its config says)."""
    rcs = rootfs / "etc" / "init.d" / "rcS"
    if rcs.is_file():
        lines = [line for line in rcs.read_text().splitlines() if "udhcpc" not in line]
        atomic_write(rcs, ("\n".join(lines) + "\n").encode(), mode=0o755)
