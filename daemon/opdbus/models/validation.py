"""Host validation: options in, one result per check out."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from opdbus.models.base import Model


class ValidateOptions(Model):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    quick: bool = False  # essential checks only (dirs, config, disk, memory, virtualization)
    fix: bool = False  # repair what is safe to repair


class CheckStatus(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


class CheckResult(Model):
    name: str = ""
    status: CheckStatus
    message: str
    fixed: list[str] = Field(default_factory=list)  # what --fix changed, one line each


class ValidationReport(Model):
    checks: list[CheckResult] = Field(default_factory=list)

    def count(self, status: CheckStatus) -> int:
        return sum(1 for check in self.checks if check.status is status)

    def summary(self) -> str:
        parts = [
            f"{self.count(CheckStatus.PASS)} passed",
            f"{self.count(CheckStatus.WARN)} warnings",
            f"{self.count(CheckStatus.FAIL)} failed",
        ]
        if skipped := self.count(CheckStatus.SKIP):
            parts.append(f"{skipped} skipped")
        fixed = sum(len(check.fixed) for check in self.checks)
        if fixed:
            parts.append(f"{fixed} fixed")
        return ", ".join(parts)
