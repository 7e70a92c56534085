"""A job's public record: what Job1 shows and what the state dir keeps."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel, Field


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


class JobRecord(BaseModel):
    """Times are microseconds since the epoch (systemd/UDisks convention); 0 = not yet."""

    id: int = Field(ge=1)
    operation: str
    state: JobState = JobState.QUEUED
    progress: float = Field(0.0, ge=0.0, le=1.0)
    progress_valid: bool = False
    targets: list[str] = Field(default_factory=list)
    started_by_uid: int = Field(ge=0)
    cancelable: bool = True
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    result: str = ""
    error_name: str = ""
    # Structured outcome, operation-specific (e.g. validation's checks).
    output: dict[str, Any] = Field(default_factory=dict)
    log_lines: int = 0


class LogLine(NamedTuple):
    number: int  # 1-based
    timestamp_us: int
    text: str
