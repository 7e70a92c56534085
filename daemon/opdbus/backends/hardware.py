"""What the machine is made of, in a few lines for the install log (seed 001, step 4).

Read from /proc and /sys (the machine's own, whatever root the accounts are
read from). Blocking: call from a thread.
"""

from __future__ import annotations

import os
from pathlib import Path

# Not disks: loop devices, RAM disks, zram, device-mapper and software RAID views.
_VIRTUAL_BLOCK = ("loop", "ram", "zram", "dm-", "md", "sr", "nbd")


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _driver(device: Path) -> str:
    try:
        return os.path.basename(os.readlink(device / "driver"))
    except OSError:
        return "no driver"


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes //= 1024
    raise AssertionError("unreachable")


def summary(proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> list[str]:
    lines = []
    cpuinfo = _text(proc / "cpuinfo")
    rows = cpuinfo.splitlines()
    models = [row.split(":", 1)[1].strip() for row in rows if row.startswith("model name")]
    flags = next((row for row in rows if row.startswith("flags")), "").split()
    virt = "VT-x" if "vmx" in flags else "AMD-V" if "svm" in flags else "no hardware virtualization"
    lines.append(f"CPU: {models[0] if models else 'unknown'} x{len(models) or '?'} ({virt})")

    for card in sorted((sys / "class" / "drm").glob("card[0-9]*")):
        if "-" in card.name:  # card0-HDMI-A-1: a connector, not a GPU
            continue
        device = card / "device"
        ids = f"{_text(device / 'vendor')}:{_text(device / 'device')}"
        lines.append(f"GPU: {card.name} {ids} ({_driver(device)})")

    for block in sorted((sys / "block").iterdir() if (sys / "block").is_dir() else []):
        if block.name.startswith(_VIRTUAL_BLOCK):
            continue
        sectors = _text(block / "size")
        size = _size(int(sectors) * 512) if sectors.isdigit() else "? B"
        kind = "rotational" if _text(block / "queue" / "rotational") == "1" else "solid state"
        model = _text(block / "device" / "model")
        lines.append(f"storage: {block.name} {size} {kind}{' ' + model if model else ''}")

    nets = sys / "class" / "net"
    for nic in sorted(nets.iterdir() if nets.is_dir() else []):
        if not (nic / "device").exists():  # lo, bridges, veths: not hardware
            continue
        lines.append(f"network: {nic.name} {_text(nic / 'address')} ({_driver(nic / 'device')})")
    if len(lines) == 1:
        lines.append("no GPU, disk or network card found in /sys")
    return lines
