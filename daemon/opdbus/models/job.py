"""A job's public record: what Job1 shows and what the state dir keeps."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator, Field

from opdbus.models.base import Model

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
_OBJECT_PATH = re.compile(r"/|(/[A-Za-z0-9_]+)+")


def _check_object_path(text: str) -> str:
    if not _OBJECT_PATH.fullmatch(text):
        raise ValueError(f"{text!r} is not a D-Bus object path")
    return text


# What Job1 sends as 'o', 'u' and 't': a record that does not fit them (a
# damaged or hand-edited file) is refused when loaded, not when sent.
ObjectPath = Annotated[str, AfterValidator(_check_object_path)]
UInt32 = Annotated[int, Field(ge=0, le=UINT32_MAX)]
UInt64 = Annotated[int, Field(ge=0, le=UINT64_MAX)]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The daemon stopped (or died) while the job was queued or running.
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class JobRecord(Model):
    """Times are microseconds since the epoch (systemd/UDisks convention); 0 = not yet."""

    id: int = Field(ge=1, le=UINT32_MAX)
    operation: str
    state: JobState = JobState.QUEUED
    progress: float = Field(0.0, ge=0.0, le=1.0)
    progress_valid: bool = False
    targets: list[ObjectPath] = Field(default_factory=list)
    started_by_uid: UInt32
    cancelable: bool = True
    created_at: UInt64 = 0
    started_at: UInt64 = 0
    finished_at: UInt64 = 0
    result: str = ""
    error_name: str = ""
    # Structured outcome, operation-specific (e.g. validation's checks).
    output: dict[str, Any] = Field(default_factory=dict)
    log_lines: UInt32 = 0


class LogLine(NamedTuple):
    number: int  # 1-based
    timestamp_us: int
    text: str
