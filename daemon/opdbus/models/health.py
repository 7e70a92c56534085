"""What a backend's health check found (Manager1.Backends shows one per backend)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    available: bool
    detail: str
