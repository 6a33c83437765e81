"""Idempotency keys kept in the database, applied in the write's own transaction.

A key goes through three states in one row of ``revstore_idempotency``:

1. **reserved** — ``status`` 0, ``body`` empty, ``headers`` names the owner: one caller
   (whatever the number of processes racing) won the insert-if-absent and may write;
2. **applied** — ``status`` 0, ``body`` holds the write's *result* (a serialised
   :class:`Record` or :class:`AppendResult`). The write sets this itself, inside its own
   transaction, and only while the owner still holds the reservation: the write and
   the key commit together or not at all;
3. **answered** — ``status`` is the reply's status (e.g. an HTTP status), ``headers``
   and ``body`` are the reply, stored by the caller after the write.

A re-send finds the key applied or answered and never writes again: from an applied
row the caller rebuilds its reply from the stored result. Only a reservation that was
never applied can be released (its write failed) or taken over once its lease has
expired (its owner died): then no write of it can ever commit, because the write
re-checks the ownership in its transaction.

The applied state keeps ``status`` 0 so that a process of an older release, which knows
only "in progress" and "answered", waits instead of replaying a result as a reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from revstore.config import MAX_IDEMPOTENCY_KEY
from revstore.errors import InvalidInput
from revstore.record import Mode, Record
from revstore.retry import RetryPolicy
from revstore.stream import AppendResult, StreamItem

MAX_KEY = MAX_IDEMPOTENCY_KEY
IN_PROGRESS = 0
"""``status`` of a reserved or applied key (no reply stored yet)."""


def owner_marker(owner: str) -> str:
    """What ``headers`` holds while a key is reserved or applied: its owner."""
    return json.dumps({"owner": owner})


def lease_for(policy: RetryPolicy, calls: int = 1) -> float:
    """The lease of a reservation whose holder makes ``calls`` Store calls in sequence.

    Each call may keep re-running for the policy's whole budget (``RetryPolicy.budget``),
    plus the time of its attempts, which no policy bounds (a lock wait): twice the sum
    of the budgets leaves that room. The lease only decides *liveness*: a holder that
    outlives it loses the key (its write then rolls back, see :class:`Claim`), never
    writes twice.
    """
    if calls < 1:
        raise InvalidInput(f"calls must be 1 or more, got {calls}")
    return 2.0 * calls * policy.budget


@dataclass(frozen=True, slots=True)
class Claim:
    """Passed to a write (``Store.put(..., claim=…)``): the write also marks ``key``
    applied with its result, in its own transaction, if ``owner`` still holds the
    reservation; if not, it rolls back and raises :class:`revstore.errors.ClaimLost`.
    The applied result answers re-sends for ``keep_for`` seconds."""

    key: str
    owner: str
    request_hash: str
    keep_for: float

    def __post_init__(self) -> None:
        validate_key(self.key)
        if not isinstance(self.keep_for, (int, float)) or not self.keep_for > 0:
            raise InvalidInput(f"keep_for must be a positive number of seconds: {self.keep_for!r}")

    @property
    def marker(self) -> str:
        return owner_marker(self.owner)


@dataclass(frozen=True, slots=True)
class Applied:
    """The result of a write, as stored with its key: enough to rebuild any reply."""

    mode: str
    """``put``, ``update`` (patch, restore), ``delete`` or ``append``."""
    record: Record | None = None
    append: AppendResult | None = None
    namespace: str = ""
    stream: str = ""

    @classmethod
    def of_record(cls, mode: Mode, rec: Record) -> Applied:
        return cls(mode.value, record=rec, namespace=rec.namespace)

    @classmethod
    def of_append(cls, namespace: str, stream: str, res: AppendResult) -> Applied:
        return cls("append", append=res, namespace=namespace, stream=stream)

    def to_text(self) -> str:
        out: dict[str, Any] = {"mode": self.mode, "namespace": self.namespace}
        if self.record is not None:
            r = self.record
            out["record"] = {
                "id": r.id,
                "revision": r.revision,
                "version": r.version,
                "content": r.content,
                "content_hash": r.content_hash,
                "created_at": r.created_at.isoformat(),
                "updated_at": r.updated_at.isoformat(),
                "unchanged": r.unchanged,
                "created": r.created,
            }
        if self.append is not None:
            a = self.append
            out["stream"] = self.stream
            out["append"] = {
                "first_sequence": a.first_sequence,
                "last_sequence": a.last_sequence,
                "duplicate": a.duplicate,
                "items": [
                    [i.sequence, i.item_id, i.body, i.created_at.isoformat()] for i in a.items
                ],
            }
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> Applied:
        d = json.loads(text)
        record = None
        if "record" in d:
            r = d["record"]
            record = Record(
                d["namespace"],
                r["id"],
                r["revision"],
                r["version"],
                r["content"],
                r["content_hash"],
                datetime.fromisoformat(r["created_at"]),
                datetime.fromisoformat(r["updated_at"]),
                unchanged=r["unchanged"],
                created=r["created"],
            )
        append = None
        if "append" in d:
            a = d["append"]
            append = AppendResult(
                a["first_sequence"],
                a["last_sequence"],
                [StreamItem(s, i, b, datetime.fromisoformat(t)) for s, i, b, t in a["items"]],
                duplicate=a["duplicate"],
            )
        return cls(d["mode"], record, append, d["namespace"], d.get("stream", ""))


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One row of the key table, as read."""

    key: str
    request_hash: str
    status: int
    headers: str
    body: str
    expires_at: datetime


class Outcome(Enum):
    RESERVED = "reserved"
    """The caller holds the key: it may write (with a :class:`Claim`)."""
    APPLIED = "applied"
    """The write of an earlier request committed; its reply was not stored: rebuild it."""
    ANSWERED = "answered"
    """The reply of an earlier request is stored: send it again."""
    MISMATCH = "mismatch"
    """The key was used for a different request."""
    IN_PROGRESS = "in_progress"
    """Another caller holds the key and has not written yet."""


@dataclass(frozen=True, slots=True)
class KeyState:
    outcome: Outcome
    row: KeyRow | None = None

    @property
    def applied(self) -> Applied:
        assert self.outcome is Outcome.APPLIED and self.row is not None
        return Applied.from_text(self.row.body)


def state_of(row: KeyRow, request_hash: str, marker: str | None = None) -> KeyState:
    """Classify a live (unexpired) row for a caller with ``request_hash``."""
    if row.request_hash != request_hash:
        return KeyState(Outcome.MISMATCH, row)
    if row.status != IN_PROGRESS:
        return KeyState(Outcome.ANSWERED, row)
    if row.body:
        return KeyState(Outcome.APPLIED, row)
    if marker is not None and row.headers == marker:
        # Our own insert landed although its reply was lost (then retried).
        return KeyState(Outcome.RESERVED, row)
    return KeyState(Outcome.IN_PROGRESS, row)


def validate_key(key: object) -> str:
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= MAX_KEY
        or not all(0x20 <= ord(c) <= 0x7E for c in key)
    ):
        raise InvalidInput(f"an idempotency key is 1 to {MAX_KEY} printable ASCII characters")
    return key
