"""The terminal's width, found as shutil finds it, without importing shutil.

shutil brings bz2, lzma and fnmatch with it (~2.5 ms): more than `opctl vm
list` spends on the bus, and every table on a terminal and every --help
asks for the width.
"""

from __future__ import annotations

import os
import sys


def columns(fallback: int = 80) -> int:
    """$COLUMNS, else the width of the terminal on stdout, else ``fallback``."""
    try:
        width = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        width = 0
    if width <= 0:
        try:
            width = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            width = 0
    return width or fallback
