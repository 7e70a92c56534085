"""Small blocking file helpers. Call them from a thread, never from the event loop."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage(path: Path, data: bytes, *, mode: int, sync: bool = True) -> Path:
    """``data`` in a temporary file beside ``path`` (same file system: a rename of it
    is atomic), with ``mode`` from the start; removed again if writing fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_write(
    path: Path, data: bytes, *, mode: int = 0o640, sync: bool = True, sync_dir: bool = True
) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half."""
    tmp = stage(path, data, mode=mode, sync=sync)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync and sync_dir:  # (a caller replacing several files syncs the directory once)
        fsync_dir(path.parent)


# Markers: empty files naming work in progress, so a start after a crash can
# tell what was half done (a container being created when the daemon died).


def mark(directory: Path, name: str) -> None:
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    (directory / name).touch()
    fsync_dir(directory)


def unmark(directory: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / name).unlink()


def marks(directory: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in directory.iterdir())
    except FileNotFoundError:
        return []


def first_since_boot(marker: Path) -> bool:
    """True the first time this is asked with ``marker`` since the machine booted.

    The marker holds the kernel's boot id; asking again before a reboot says False.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        if marker.read_text().strip() == boot:
            return False
    except OSError:
        pass
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(boot + "\n")
    return True
