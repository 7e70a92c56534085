"""The audit log's format: entries, the hash chain, and forward-secure seals.

Pure functions only (no I/O): the daemon uses them to write and verify its
log, and ``opctl audit verify --key`` uses the same ones to check a log with
the sealing key the daemon must never see again.

The chain: ``hash = sha256(prev_hash || canonical JSON of the entry)``, so an
edited, deleted, inserted or reordered entry breaks it at a nameable seq.

The seals (the idea of journald's Forward Secure Sealing): at ``seal-init``
the daemon draws a random key k0, gives it (with the epoch length) to the
administrator once, and keeps only the key of the current epoch. When an
epoch ends it appends a seal entry -- an HMAC under that epoch's key over the
chain's head -- then replaces the key by ``k(i+1) = sha256(tag || k(i))`` and
forgets k(i). Someone who takes the host later finds only the current key:
they cannot forge a seal of an earlier epoch, so every entry sealed before
they came cannot be changed, removed or inserted without the verifier (who
derives every k(i) from k0) noticing. What it does not protect: entries of
the epoch in which the host was taken, anything after, and a log deleted
whole (the verifier then finds no seals where it expects them -- which it
reports).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from opdbus.models.base import Model

GENESIS_HASH = "0" * 64
# An entry never takes more than this on disk (results are cut to RESULT_MAX):
# what the daemon reserves per entry before it acts.
ENTRY_MAX_BYTES = 2048
RESULT_MAX = 512

# call: an accepted mutating call; job: a job's outcome; daemon: something the
# daemon itself noted (sealing started, damage found at start); seal: an epoch's seal.
AuditKind = Literal["call", "job", "daemon", "seal"]

SEAL_METHOD = "AuditSeal"
SEAL_INIT_METHOD = "AuditSealInit"
NOTICE_METHOD = "AuditNotice"


class AuditEntry(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1)
    time: str  # RFC 3339, UTC, microseconds
    uid: int = Field(ge=0)
    kind: AuditKind
    method: str  # interface.Member for calls, the operation for job outcomes
    object: str
    args_digest: str  # sha256 of the arguments' canonical JSON; a seal's MAC; "" otherwise
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

    @property
    def epoch(self) -> int | None:
        """The epoch a seal or seal-init entry is about."""
        if self.method in (SEAL_METHOD, SEAL_INIT_METHOD) and self.object.startswith("epoch:"):
            tail = self.object.removeprefix("epoch:")
            return int(tail) if tail.isdigit() else None
        return None


def canonical_json(value: object) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_args(args: object) -> str:
    return hashlib.sha256(canonical_json(args)).hexdigest()


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def rfc3339_to_us(text: str) -> int:
    """An entry's time as the bus carries it: µs since the epoch (exact, both ways)."""
    return (datetime.fromisoformat(text) - _EPOCH) // _US


def us_to_rfc3339(us: int) -> str:
    """Back to the text the chain hashes (``now_rfc3339``'s form)."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds")


def make_entry(seq: int, prev_hash: str, **fields: Any) -> AuditEntry:
    """Entry ``seq`` chained after ``prev_hash`` (result cut to RESULT_MAX characters)."""
    body: dict[str, Any] = {
        "seq": seq,
        "time": now_rfc3339(),
        "uid": 0,
        "args_digest": "",
        "job": "",
        **fields,
        "prev_hash": prev_hash,
    }
    if len(body["result"]) > RESULT_MAX:
        body["result"] = body["result"][: RESULT_MAX - 1] + "…"
    return AuditEntry.model_validate({**body, "hash": AuditEntry.compute_hash(prev_hash, body)})


class SealOptions(Model):
    """InitAuditSealing's options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epoch_seconds: int = Field(900, ge=1, le=86400)  # 15 min, journald's default
    force: bool = False  # start over with a new key although sealing is on


class AuditVerdict(Model):
    ok: bool
    first_bad_seq: int = 0  # 0 when the chain itself is intact
    reason: str = ""  # every problem found, joined with "; " (empty when ok)
    entries: int = 0
    problems: list[str] = Field(default_factory=list)
    sealed_through: int = 0  # the last entry a seal covers (0: none)


# -- the chain ---------------------------------------------------------------------


@dataclass
class ChainState:
    """How far a walk along the log got: where to go on from, and what broke."""

    seq: int = 0  # the last entry that checked out
    hash: str = GENESIS_HASH  # its hash
    offset: int = 0  # bytes of the log those entries take
    first_bad: int = 0  # 0: nothing broken yet
    reason: str = ""
    seals: list[AuditEntry] = field(default_factory=list)
    notices: list[AuditEntry] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return self.first_bad != 0


def check_entry(raw: bytes, expected: int, prev: str) -> AuditEntry | str:
    """One line of the log: the entry, or why it is not entry ``expected``."""
    if not raw.endswith(b"\n"):
        return f"entry {expected} is cut off"
    try:
        entry = AuditEntry.model_validate_json(raw)
    except ValidationError:
        return f"entry {expected} is not a valid entry"
    if entry.seq != expected:
        return f"expected entry {expected}, found entry {entry.seq}: deleted or reordered"
    if entry.prev_hash != prev:
        return f"entry {expected} does not chain to entry {expected - 1}"
    if AuditEntry.compute_hash(prev, entry.body()) != entry.hash:
        return f"entry {expected} was altered: its hash does not match its content"
    return entry


def walk(lines: Iterable[bytes], state: ChainState) -> ChainState:
    """Check lines following ``state``; stops at the first broken one (recorded in the state)."""
    for raw in lines:
        found = check_entry(raw, state.seq + 1, state.hash)
        if isinstance(found, str):
            state.first_bad, state.reason = state.seq + 1, found
            return state
        state.seq, state.hash = found.seq, found.hash
        state.offset += len(raw)
        if found.kind == "seal":
            state.seals.append(found)
        elif found.kind == "daemon" and found.method == NOTICE_METHOD:
            state.notices.append(found)
    return state


# -- forward-secure sealing ---------------------------------------------------------------

SEAL_KEY_PREFIX = "opdbus-seal-v1"
_EVOLVE_TAG = b"opdbus-audit-seal-evolve\0"
_ID_TAG = b"opdbus-audit-seal-id\0"


def evolve(key: bytes) -> bytes:
    """The next epoch's key; the previous one cannot be found from it."""
    return hashlib.sha256(_EVOLVE_TAG + key).digest()


def seal_mac(key: bytes, epoch: int, seq: int, prev_hash: str) -> str:
    """What seal entry ``seq`` of ``epoch`` must carry: an HMAC over the chain's head."""
    message = f"opdbus-audit-seal\0{epoch}\0{seq}\0{prev_hash}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def key_id(first_key: bytes) -> str:
    """Names a sealing (in its init entry) without revealing its key."""
    return hashlib.sha256(_ID_TAG + first_key).hexdigest()


@dataclass(frozen=True)
class SealKey:
    """A sealing key: k(epoch), with the epochs' start and length (seconds)."""

    key: bytes
    epoch: int
    start: int  # unix time epoch 0 began
    length: int  # seconds per epoch

    def verification_text(self) -> str:
        """What the administrator keeps off the host (only for the first key, epoch 0)."""
        assert self.epoch == 0
        return f"{SEAL_KEY_PREFIX}:{self.key.hex()}:{self.start}:{self.length}"

    @classmethod
    def parse(cls, text: str) -> SealKey:
        parts = text.strip().split(":")
        if len(parts) != 4 or parts[0] != SEAL_KEY_PREFIX:
            raise ValueError(
                f"not an op-dbus sealing key (expected {SEAL_KEY_PREFIX}:KEY:START:LEN)"
            )
        try:
            key, start, length = bytes.fromhex(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            raise ValueError("the sealing key is garbled") from None
        if len(key) != 32 or length <= 0:
            raise ValueError("the sealing key is garbled")
        return cls(key, 0, start, length)

    def epoch_at(self, unix: float) -> int:
        return max(int((unix - self.start) // self.length), 0)

    def epoch_end(self, epoch: int) -> int:
        return self.start + (epoch + 1) * self.length

    def advanced_to(self, epoch: int) -> SealKey:
        key = self.key
        for _ in range(epoch - self.epoch):
            key = evolve(key)
        return SealKey(key, epoch, self.start, self.length)


def _when(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class SealReport:
    ok: bool
    problems: list[str]
    sealed_through: int  # the last entry the last good seal covers
    last_epoch: int  # the last epoch with a good seal (-1: none)
    unsealed: int  # entries after it


# Seals are written when an epoch ends; a verifier allows this long for one to land.
SEAL_GRACE_SECONDS = 120


class SealVerifier:
    """Checks a log, entry by entry (``feed``), against the first sealing key (k0)."""

    def __init__(self, key: SealKey) -> None:
        self.key = key
        self._id = key_id(key.key)
        self._current = key
        self.problems: list[str] = []
        self._chain_problem = ""
        self._started = self._stopped = False
        self._expected = 0  # the epoch the next seal must be of
        self.sealed_through, self.last_epoch, self._last_seq = 0, -1, 0
        self._prev_hash = GENESIS_HASH

    def feed(self, entry: AuditEntry) -> None:
        self._check_chain(entry)
        if self._stopped:
            return
        if entry.method == SEAL_INIT_METHOD:
            if entry.args_digest != self._id:
                if self._started:
                    self.problems.append(
                        f"entry {entry.seq}: sealing restarted with a key you do not hold; "
                        "nothing after it can be proven with this one"
                    )
                    self._stopped = True
            elif self._started:
                self.problems.append(f"entry {entry.seq}: this sealing was started a second time")
            self._started = True
        elif self._started and entry.kind == "seal":
            self._check_seal(entry)

    def _check_chain(self, entry: AuditEntry) -> None:
        if not self._chain_problem:
            if entry.seq != self._last_seq + 1:
                self._chain_problem = (
                    f"expected entry {self._last_seq + 1}, found entry {entry.seq}"
                )
            elif entry.prev_hash != self._prev_hash or (
                AuditEntry.compute_hash(self._prev_hash, entry.body()) != entry.hash
            ):
                self._chain_problem = (
                    f"entry {entry.seq} was altered or does not chain to its predecessor"
                )
        self._last_seq, self._prev_hash = entry.seq, entry.hash

    def _check_seal(self, entry: AuditEntry) -> None:
        epoch = entry.epoch
        if epoch is None or epoch < self._expected:
            self.problems.append(f"entry {entry.seq}: a seal out of order (epoch {epoch})")
            return
        if epoch > self._expected:
            since, until = self.key.epoch_end(self._expected - 1), self.key.epoch_end(epoch - 1)
            self.problems.append(
                f"no seal for epochs {self._expected}-{epoch - 1} ({_when(since)} to "
                f"{_when(until)}): entries between {self.sealed_through} and {entry.seq} "
                "were removed or rewritten"
            )
        self._current = self._current.advanced_to(epoch)
        mac = seal_mac(self._current.key, epoch, entry.seq, entry.prev_hash)
        if hmac.compare_digest(mac, entry.args_digest):
            self.sealed_through, self.last_epoch = entry.seq - 1, epoch
        else:
            self.problems.append(
                f"the seal of epoch {epoch} (entry {entry.seq}) does not verify: "
                f"entries up to {entry.seq - 1} were changed, removed or inserted"
            )
        self._expected = epoch + 1

    def finish(self, now: float) -> SealReport:
        problems = list(self.problems)
        if not self._started:
            problems.append(
                "no sealing started with this key in the log: it was replaced or cut, "
                "or sealing was never started with this key"
            )
        elif not self._stopped:
            grace = min(SEAL_GRACE_SECONDS, self.key.length)
            due = self.key.epoch_at(now - grace)  # every epoch before it has its seal
            if self._expected < due:
                problems.append(
                    f"the last seal is of epoch {self._expected - 1}, but epochs up to "
                    f"{due - 1} have ended (by {_when(self.key.epoch_end(due - 1))}): the log "
                    f"after entry {self.sealed_through} was cut, or sealing stopped"
                )
        if self._chain_problem:
            problems.insert(0, self._chain_problem)
        return SealReport(
            ok=not problems,
            problems=problems,
            sealed_through=self.sealed_through,
            last_epoch=self.last_epoch,
            unsealed=max(self._last_seq - self.sealed_through, 0),
        )


def verify_seals(entries: Iterable[AuditEntry], key: SealKey, now: float) -> SealReport:
    """Check a whole log against the first sealing key (k0); name every problem found."""
    verifier = SealVerifier(key)
    for entry in entries:
        verifier.feed(entry)
    return verifier.finish(now)
