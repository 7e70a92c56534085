"""Facts about the host, read from /proc, /dev and the file system.

Every function here blocks (file I/O, ioctl): call them from a thread.
"""

from __future__ import annotations

import ctypes
import fcntl
import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


@dataclass(frozen=True)
class PathInfo:
    exists: bool
    is_dir: bool = False
    mode: int = 0  # permission bits only
    uid: int = -1
    gid: int = -1


def path_info(path: Path) -> PathInfo:
    try:
        st = path.stat()
    except FileNotFoundError:
        return PathInfo(False)
    return PathInfo(True, stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def free_bytes(path: Path) -> tuple[int, int]:
    """(available to unprivileged users, total) bytes of the file system holding path."""
    while not path.exists():
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def same_file_system(a: Path, b: Path) -> bool:
    """Whether two paths (or their nearest existing parents) are on one file system."""

    def existing(path: Path) -> Path:
        while not path.exists():
            path = path.parent
        return path

    return os.stat(existing(a)).st_dev == os.stat(existing(b)).st_dev


def trim_memory() -> None:
    """Give freed heap back to the system (glibc keeps it otherwise; no-op elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields:
                scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
                out[key] = int(fields[0]) * scale
    return out


def cpu_virt_flags() -> set[str]:
    """Which of vmx (Intel VT-x) / svm (AMD-V) the CPU advertises."""
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("flags"):
                return {"vmx", "svm"} & set(line.split(":", 1)[1].split())
    return set()


def group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def kvm_api_version(device: Path) -> int:
    """Open the KVM device and ask its API version (12 on every sane kernel)."""
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION)
    finally:
        os.close(fd)


def read_machine_id() -> str:
    """This host's D-Bus machine id (what Peer.GetMachineId answers); "" if it has none."""
    for path in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            return text
    return ""
