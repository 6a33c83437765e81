"""Idempotency keys, kept in the database so every service process sees them.

A write carrying ``Idempotency-Key`` first *reserves* the key: an insert-if-absent of
a row with status 0 (in progress) and an owner token. Exactly one request wins the
insert, whatever the number of processes racing; it runs and then stores its
response (status, a few headers, body) in the row. A re-send with the same request
hash is answered from the row without writing again; one with a different request is
refused (422); one arriving while the winner still runs waits for its response, then
answers 409 after a bounded wait.

A 5xx outcome is not stored: the row is deleted so the client may retry. Rows expire
(``expires_at``): finished ones after the TTL (24 h), unfinished ones after a lease, so
a process that died mid-request does not block its key for a day.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TypeVar

from sqlalchemy import Connection, Executable, RowMapping, delete, select, update

from revstore.backends.sql import utc
from revstore.schema import idempotency as T
from revstore.store import Store

T_ = TypeVar("T_")

log = logging.getLogger("revstore.idempotency")

MAX_KEY = 255
IN_PROGRESS = 0
STORED_HEADERS = ("content-type", "etag", "location", "retry-after", "allow", "accept-patch")
PURGE_EVERY = 60.0


def valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY and all(0x20 <= ord(c) <= 0x7E for c in key)


def request_hash(method: str, path: str, query: str, conditions: str, body: bytes) -> str:
    """What makes two requests "the same": method, path, query (namespace and PATCH
    options live there), the precondition headers and the exact body bytes."""
    h = hashlib.sha256()
    for part in (method.upper(), path, query, conditions):
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class Outcome(Enum):
    RESERVED = "reserved"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True, slots=True)
class Reservation:
    outcome: Outcome
    stored: StoredResponse | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class IdempotencyStore:
    """The ``revstore_idempotency`` table, through the Store's backend (its error
    translation and its retry policy)."""

    def __init__(self, store: Store, *, ttl: float, lease: float) -> None:
        self.store = store
        self.ttl = timedelta(seconds=ttl)
        self.lease = timedelta(seconds=lease)
        self._schema_ok = False
        self._last_purge = 0.0
        self._purge_lock = threading.Lock()

    def _call(self, op: str, key: str, fn: Callable[[Connection], T_]) -> T_:
        if not self._schema_ok:
            self.store.create_schema()
            self._schema_ok = True
        backend = self.store.backend
        return self.store.retry.run(
            lambda: backend.run(fn), op=f"idempotency.{op}", key=key, stats=self.store.stats
        )

    def reserve(self, key: str, req_hash: str, owner: str) -> Reservation:
        """Try to become the one request that runs for ``key``."""
        self._maybe_purge()
        marker = json.dumps({"owner": owner})
        for _ in range(5):
            now = _now()
            values = {
                "key": key,
                "request_hash": req_hash,
                "status": IN_PROGRESS,
                "headers": marker,
                "body": "",
                "created_at": now,
                "expires_at": now + self.lease,
            }
            stmt = (
                self.store.backend.insert_ignore(T)
                .values(**values)
                .execution_options(preserve_rowcount=True)
            )
            if self._call("reserve", key, _rowcount(stmt)) == 1:
                return Reservation(Outcome.RESERVED)
            row = self._call(
                "lookup", key, lambda c: c.execute(select(T).where(T.c.key == key)).first()
            )
            if row is None:
                continue  # released or purged in between: try again
            m = row._mapping
            if utc(m["expires_at"]) <= now:
                # An expired answer, or the lease of a process that died: free the key.
                expired = delete(T).where(T.c.key == key, T.c.expires_at <= now)
                self._call("expire", key, _rowcount(expired))
                continue
            if m["request_hash"] != req_hash:
                return Reservation(Outcome.MISMATCH)
            if int(m["status"]) == IN_PROGRESS:
                if m["headers"] == marker:
                    # Our own insert landed although its reply was lost (then retried).
                    return Reservation(Outcome.RESERVED)
                return Reservation(Outcome.IN_PROGRESS)
            return Reservation(Outcome.REPLAY, _stored(m))
        return Reservation(Outcome.IN_PROGRESS)

    def lookup(self, key: str, req_hash: str) -> Reservation | None:
        """The state of a key another request holds (None: gone, the caller may reserve)."""
        row = self._call(
            "lookup", key, lambda c: c.execute(select(T).where(T.c.key == key)).first()
        )
        if row is None:
            return None
        m = row._mapping
        if utc(m["expires_at"]) <= _now():
            return None
        if m["request_hash"] != req_hash:
            return Reservation(Outcome.MISMATCH)
        if int(m["status"]) == IN_PROGRESS:
            return Reservation(Outcome.IN_PROGRESS)
        return Reservation(Outcome.REPLAY, _stored(m))

    def complete(self, key: str, owner: str, response: StoredResponse) -> bool:
        """Store the response of the reserving request (False: it lost its lease)."""
        marker = json.dumps({"owner": owner})
        now = _now()
        stmt = (
            update(T)
            .where(T.c.key == key, T.c.status == IN_PROGRESS, T.c.headers == marker)
            .values(
                status=response.status,
                headers=json.dumps(response.headers),
                body=response.body.decode("utf-8"),
                expires_at=now + self.ttl,
            )
            .execution_options(preserve_rowcount=True)
        )
        return bool(self._call("complete", key, lambda c: c.execute(stmt).rowcount == 1))

    def release(self, key: str, owner: str) -> None:
        """Forget a reservation whose request failed (5xx), so a retry can run."""
        marker = json.dumps({"owner": owner})
        self._call(
            "release",
            key,
            lambda c: c.execute(
                delete(T).where(T.c.key == key, T.c.status == IN_PROGRESS, T.c.headers == marker)
            ),
        )

    def purge_expired(self) -> int:
        now = _now()
        return int(
            self._call(
                "purge",
                "*",
                lambda c: (
                    c.execute(
                        delete(T)
                        .where(T.c.expires_at <= now)
                        .execution_options(preserve_rowcount=True)
                    ).rowcount
                ),
            )
        )

    def _maybe_purge(self) -> None:
        # Expired rows are also ignored when read; deleting them keeps the table small.
        mono = time.monotonic()
        if mono - self._last_purge < PURGE_EVERY or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._last_purge = mono
            self.purge_expired()
        except Exception:
            log.warning("could not purge expired idempotency keys", exc_info=True)
        finally:
            self._purge_lock.release()


def _rowcount(stmt: Executable) -> Callable[[Connection], int]:
    def run(conn: Connection) -> int:
        return int(conn.execute(stmt).rowcount)

    return run


def new_owner() -> str:
    return uuid.uuid4().hex


def _stored(m: RowMapping) -> StoredResponse:
    headers = json.loads(m["headers"] or "{}")
    return StoredResponse(int(m["status"]), dict(headers), str(m["body"] or "").encode("utf-8"))


def pick_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: headers[k] for k in STORED_HEADERS if k in headers}
