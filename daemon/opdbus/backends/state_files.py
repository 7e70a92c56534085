"""The declarative state's files in the state directory (blocking: call from a thread).

``state/desired.json``     the document last applied, with its digest
``state/checkpoint.json``  what the host was before an apply that is not
                           finished or not confirmed yet (restored after a crash,
                           or when its confirm time runs out)
Both are replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from opdbus.backends.files import atomic_write

DESIRED = "desired.json"
CHECKPOINT = "checkpoint.json"


class StateFiles:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise OSError(f"{self.dir / name} is unreadable: {e}") from None
        return data if isinstance(data, dict) else None

    def _write(self, name: str, data: dict[str, Any]) -> None:
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        atomic_write(self.dir / name, json.dumps(data, sort_keys=True).encode(), mode=0o640)

    def read_desired(self) -> dict[str, Any] | None:
        return self._read(DESIRED)

    def write_desired(self, data: dict[str, Any]) -> None:
        self._write(DESIRED, data)

    def read_checkpoint(self) -> dict[str, Any] | None:
        return self._read(CHECKPOINT)

    def write_checkpoint(self, data: dict[str, Any]) -> None:
        self._write(CHECKPOINT, data)

    def remove_checkpoint(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / CHECKPOINT).unlink()


def read_text(path: Path) -> str | None:
    """A state file given by the configuration (None when there is none)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
