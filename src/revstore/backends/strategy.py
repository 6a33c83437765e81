"""How a write takes its next number: ``Counter``, ``Lock`` or ``Optimistic``.

A strategy is an object that uses the executor (``sql.SqlBackend``) and, through it,
the dialect: nothing else in revstore tests a strategy's name.

- ``Lock``: read the head ``FOR UPDATE`` in a write transaction; every other writer of
  the record (or stream) waits on the row lock, so a number is never taken twice.
- ``Optimistic``: read the head without a lock, write with a compare-and-set on the
  revision (and the history key); a writer that lost the race re-runs (``LostRace``,
  ``Duplicate``).
- ``Counter``: the dialect's one-statement bump takes the numbers atomically; the rare
  cases it does not cover (first write, deleted record, failed expectation, patch) go
  the ``Lock`` way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from revstore.config import STRATEGIES
from revstore.errors import InvalidInput
from revstore.record import Mode

if TYPE_CHECKING:
    from revstore.backends.protocol import Transform
    from revstore.backends.sql import SqlBackend
    from revstore.idempotency import Claim
    from revstore.record import Record, WriteIntent
    from revstore.stream import AppendBatch, AppendResult


class Strategy:
    """One attempt at a write; the Store's retry policy re-runs it on a Retryable.
    With a ``claim``, the idempotency key is applied in the write's own transaction."""

    name: ClassVar[str]

    def write_record(
        self,
        backend: SqlBackend,
        intent: WriteIntent,
        transform: Transform | None,
        claim: Claim | None,
    ) -> Record:
        raise NotImplementedError

    def append(self, backend: SqlBackend, batch: AppendBatch, claim: Claim | None) -> AppendResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Lock(Strategy):
    name: ClassVar[str] = "lock"

    def write_record(
        self,
        backend: SqlBackend,
        intent: WriteIntent,
        transform: Transform | None,
        claim: Claim | None,
    ) -> Record:
        p = backend.protocol
        return backend.transaction(
            p.settle_record(claim, intent, p.write_from_head(intent, transform, lock=True))
        )

    def append(self, backend: SqlBackend, batch: AppendBatch, claim: Claim | None) -> AppendResult:
        p = backend.protocol
        return backend.transaction(p.settle_append(claim, batch, p.append_locked(batch)))


class Optimistic(Strategy):
    name: ClassVar[str] = "optimistic"

    def write_record(
        self,
        backend: SqlBackend,
        intent: WriteIntent,
        transform: Transform | None,
        claim: Claim | None,
    ) -> Record:
        p = backend.protocol
        return backend.transaction(
            p.settle_record(claim, intent, p.write_from_head(intent, transform, lock=False)),
            backend.dialect.begin_optimistic,
        )

    def append(self, backend: SqlBackend, batch: AppendBatch, claim: Claim | None) -> AppendResult:
        p = backend.protocol
        return backend.transaction(
            p.settle_append(claim, batch, p.append_optimistic(batch)),
            backend.dialect.begin_optimistic,
        )


class Counter(Lock):
    name: ClassVar[str] = "counter"

    def write_record(
        self,
        backend: SqlBackend,
        intent: WriteIntent,
        transform: Transform | None,
        claim: Claim | None,
    ) -> Record:
        # A patch computes its content from the current one: it needs the head read
        # under the lock, which the one-statement bump does not give.
        if transform is None and intent.mode is Mode.PUT:
            done = backend.counter_put(intent, claim)
            if done is not None:
                return done
        return super().write_record(backend, intent, transform, claim)

    def append(self, backend: SqlBackend, batch: AppendBatch, claim: Claim | None) -> AppendResult:
        # Client item ids must be checked under the stream lock: the Lock way.
        if batch.item_ids is None:
            done = backend.counter_append(batch, claim)
            if done is not None:
                return done
        return super().append(backend, batch, claim)


_BY_NAME: dict[str, Strategy] = {s.name: s for s in (Counter(), Lock(), Optimistic())}
assert tuple(_BY_NAME) == STRATEGIES


def strategy_named(name: str) -> Strategy:
    """The strategy called ``name`` (one of ``revstore.config.STRATEGIES``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise InvalidInput(
            f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}"
        ) from None
