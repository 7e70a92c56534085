"""One entry of the hash-chained audit log."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GENESIS_HASH = "0" * 64

AuditKind = Literal["call", "job"]


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1)
    time: str  # RFC 3339, UTC, microseconds
    uid: int = Field(ge=0)
    kind: AuditKind
    method: str  # interface.Member for calls, the operation for job outcomes
    object: str
    args_digest: str  # sha256 of the canonical JSON of the arguments ("" for job outcomes)
    job: str  # job object path, or ""
    result: str
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """Every field but the hash: what the hash covers."""
        return self.model_dump(exclude={"hash"})

    @staticmethod
    def compute_hash(prev_hash: str, body: dict[str, Any]) -> str:
        return hashlib.sha256(prev_hash.encode() + canonical_json(body)).hexdigest()


def canonical_json(value: object) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_args(args: object) -> str:
    return hashlib.sha256(canonical_json(args)).hexdigest()


class AuditVerdict(BaseModel):
    ok: bool
    first_bad_seq: int = 0  # 0 when ok
    reason: str = ""
    entries: int = 0
