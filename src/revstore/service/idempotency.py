"""Idempotency keys over HTTP: the request hash, the stored reply, and the calls to
the store's key table (``AsyncStore.keys``, see ``revstore.idempotency``).

A write carrying ``Idempotency-Key`` first *reserves* the key. Exactly one request
wins, whatever the number of processes racing; it runs its write with a *claim*, so
the write itself marks the key applied with its result, in its own transaction; then
it stores its reply (status, a few headers, body). A re-send with the same request
hash is answered from the stored reply, or, if the writer died (or lost its database
connection) before storing it, from a reply rebuilt out of the stored result: never by
writing again. One with a different request is refused (422); one arriving while the
winner still runs waits for it, then answers 409 after a bounded wait.

A 5xx outcome is not stored: a reservation whose write did not commit is released so
the client may retry; one whose write committed stays applied. Rows expire
(``expires_at``): answered and applied ones after the TTL (24 h), unapplied
reservations after a lease, so a process that died mid-request does not block its key
for a day.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from revstore.async_store import AsyncStore
from revstore.idempotency import MAX_KEY, Applied, Claim, KeyRow, KeyState, Outcome, lease_for

log = logging.getLogger("revstore.idempotency")

__all__ = [
    "MAX_KEY",
    "Applied",
    "IdempotencyStore",
    "Outcome",
    "Reservation",
    "StoredResponse",
]

STORED_HEADERS = ("content-type", "etag", "location", "retry-after", "allow", "accept-patch")
PURGE_EVERY = 60.0
CALLS_PER_REQUEST = 2 + 2 * 5
"""Store calls a request makes in sequence while it holds its key: the reservation,
the reply, and up to five read-then-write rounds (``If-Match: *`` in conditions.py)."""


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


@dataclass(frozen=True, slots=True)
class Reservation:
    outcome: Outcome
    stored: StoredResponse | None = None
    """The reply to send again (ANSWERED)."""
    applied: Applied | None = None
    """The result to rebuild the reply from (APPLIED)."""


def _reservation(state: KeyState) -> Reservation:
    # The service uses the key states of ``revstore.idempotency`` as they are.
    outcome = state.outcome
    if outcome is Outcome.ANSWERED:
        assert state.row is not None
        return Reservation(outcome, stored=_stored(state.row))
    if outcome is Outcome.APPLIED:
        return Reservation(outcome, applied=state.applied)
    return Reservation(outcome)


class IdempotencyStore:
    """The service's view of ``AsyncStore.keys``: replies in, replies out.

    ``lease`` defaults to one computed from the store's retry policy
    (``revstore.idempotency.lease_for``): a live request never loses its key to a
    re-send, and one that somehow did would only see its write roll back."""

    def __init__(self, store: AsyncStore, *, ttl: float, lease: float | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.lease = lease if lease is not None else lease_for(store.retry, CALLS_PER_REQUEST)
        self._last_purge = 0.0

    async def reserve(self, key: str, req_hash: str, owner: str) -> Reservation:
        """Try to become the one request that runs for ``key``."""
        await self._maybe_purge()
        return _reservation(await self.store.keys.reserve(key, req_hash, owner, lease=self.lease))

    async def lookup(self, key: str, req_hash: str) -> Reservation | None:
        """The state of a key another request holds (None: gone, the caller may reserve)."""
        state = await self.store.keys.lookup(key, req_hash)
        return None if state is None else _reservation(state)

    def claim(self, key: str, owner: str, req_hash: str) -> Claim:
        """What the reserving request passes to its write."""
        return self.store.keys.claim(key, owner, req_hash, keep_for=self.ttl)

    async def complete(self, key: str, owner: str, response: StoredResponse) -> bool:
        """Store the response of the reserving request (False: it lost its lease)."""
        return await self.store.keys.answer(
            key,
            owner,
            response.status,
            json.dumps(response.headers),
            response.body.decode("utf-8"),
            keep_for=self.ttl,
        )

    async def complete_applied(self, key: str, req_hash: str, response: StoredResponse) -> bool:
        """Store a response rebuilt from an applied result (any re-send may)."""
        return await self.store.keys.answer_applied(
            key, req_hash, response.status, json.dumps(response.headers), response.body.decode()
        )

    async def release(self, key: str, owner: str) -> None:
        """Forget a reservation whose write did not commit (5xx), so a retry can run."""
        await self.store.keys.release(key, owner)

    async def purge_expired(self) -> int:
        return await self.store.keys.purge_expired()

    async def _maybe_purge(self) -> None:
        # Expired rows are also ignored when read; deleting them keeps the table small.
        mono = time.monotonic()
        if mono - self._last_purge < PURGE_EVERY:
            return
        # Set before the first await: the requests arriving meanwhile on this loop see it
        # and do not purge too (one purge at a time, as the lock did with threads).
        self._last_purge = mono
        try:
            await self.purge_expired()
        except Exception:
            log.warning("could not purge expired idempotency keys", exc_info=True)


def new_owner() -> str:
    return uuid.uuid4().hex


def _stored(row: KeyRow) -> StoredResponse:
    headers = json.loads(row.headers or "{}")
    return StoredResponse(row.status, dict(headers), row.body.encode("utf-8"))


def pick_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: headers[k] for k in STORED_HEADERS if k in headers}
