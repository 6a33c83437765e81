"""How a write takes its next number: ``Counter``, ``Lock`` or ``Optimistic``.

A strategy is an object, free of I/O, that picks the protocol of a write (and the
``BEGIN`` it runs under) from the dialect's abilities: nothing else in revstore tests a
strategy's name, and the sync and asyncio executors run what it picks.

- ``Lock``: read the head ``FOR UPDATE`` in a write transaction; every other writer of
  the record (or stream) waits on the row lock, so a number is never taken twice.
- ``Optimistic``: read the head without a lock, write with a compare-and-set on the
  revision (and the history key); a writer that lost the race re-runs (``LostRace``,
  ``Duplicate``).
- ``Counter``: the dialect's counter statement takes the numbers atomically (PostgreSQL:
  one self-committing statement, see ``one_statement``); the rare cases it does not
  cover (first write, deleted record, failed expectation, patch) go the ``Lock`` way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from revstore.config import STRATEGIES
from revstore.errors import InvalidInput
from revstore.record import Mode

if TYPE_CHECKING:
    from revstore.backends.ops import Step
    from revstore.backends.protocol import Protocol, Transform
    from revstore.idempotency import Claim
    from revstore.record import Record, WriteIntent
    from revstore.stream import AppendBatch, AppendResult

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Tx(Generic[T]):
    """A protocol to run in one transaction opened with ``begin`` (None: the
    dialect's write ``BEGIN``)."""

    step: Step[T]
    begin: str | None = None


class Strategy:
    """One attempt at a write; the Store's retry policy re-runs it on a Retryable.
    With a ``claim``, the idempotency key is applied in the write's own transaction."""

    name: ClassVar[str]
    batchable: ClassVar[bool] = True
    """Whether group commit may run this strategy's writes in one transaction with
    others (``batch``): not the optimistic one, which reads without locks so that it can
    race, and whose compare-and-set must see other commits."""

    def record_write(
        self, p: Protocol, intent: WriteIntent, transform: Transform | None, claim: Claim | None
    ) -> Tx[Record]:
        raise NotImplementedError

    def stream_append(
        self, p: Protocol, batch: AppendBatch, claim: Claim | None
    ) -> Tx[AppendResult]:
        raise NotImplementedError

    def one_statement_put(
        self, intent: WriteIntent, transform: Transform | None, claim: Claim | None
    ) -> bool:
        """Whether this write may first try the executor's self-committing counter
        statement (PostgreSQL), before ``record_write``."""
        return False

    def one_statement_append(self, batch: AppendBatch, claim: Claim | None) -> bool:
        """The same for an append."""
        return False

    def put_together(
        self, p: Protocol, intent: WriteIntent, transform: Transform | None, claim: Claim | None
    ) -> bool:
        """Whether this write, in a batch of such writes only, may go in the batch's
        shared statements (``Protocol.writes_together``) instead of its own
        ``record_write``: the same rules, applied to the same heads, in the same order."""
        return False

    def append_together(self, p: Protocol, batch: AppendBatch, claim: Claim | None) -> bool:
        """The same for an append, instead of its own ``stream_append``."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Lock(Strategy):
    name: ClassVar[str] = "lock"

    def record_write(
        self, p: Protocol, intent: WriteIntent, transform: Transform | None, claim: Claim | None
    ) -> Tx[Record]:
        return Tx(p.settle_record(claim, intent, p.write_from_head(intent, transform, lock=True)))

    def stream_append(
        self, p: Protocol, batch: AppendBatch, claim: Claim | None
    ) -> Tx[AppendResult]:
        return Tx(p.settle_append(claim, batch, p.append_locked(batch)))


class Optimistic(Strategy):
    name: ClassVar[str] = "optimistic"
    batchable: ClassVar[bool] = False

    def record_write(
        self, p: Protocol, intent: WriteIntent, transform: Transform | None, claim: Claim | None
    ) -> Tx[Record]:
        return Tx(
            p.settle_record(claim, intent, p.write_from_head(intent, transform, lock=False)),
            p.dialect.begin_optimistic,
        )

    def stream_append(
        self, p: Protocol, batch: AppendBatch, claim: Claim | None
    ) -> Tx[AppendResult]:
        return Tx(
            p.settle_append(claim, batch, p.append_optimistic(batch)),
            p.dialect.begin_optimistic,
        )


class Counter(Lock):
    name: ClassVar[str] = "counter"

    def record_write(
        self, p: Protocol, intent: WriteIntent, transform: Transform | None, claim: Claim | None
    ) -> Tx[Record]:
        # A patch computes its content from the current one: it needs the head read
        # under the lock, which the one-statement bump does not give.
        if p.dialect.counter_puts and transform is None and intent.mode is Mode.PUT:
            return Tx(p.settle_record(claim, intent, p.counter_put(intent)))
        return super().record_write(p, intent, transform, claim)

    def stream_append(
        self, p: Protocol, batch: AppendBatch, claim: Claim | None
    ) -> Tx[AppendResult]:
        # Client item ids must be checked under the stream lock: the Lock way.
        if p.dialect.counter_appends and batch.item_ids is None:
            return Tx(p.settle_append(claim, batch, p.counter_append(batch)))
        return super().stream_append(p, batch, claim)

    def one_statement_put(
        self, intent: WriteIntent, transform: Transform | None, claim: Claim | None
    ) -> bool:
        # A claimed write applies its idempotency key in its own transaction, which a
        # self-committing statement does not have.
        return claim is None and transform is None and intent.mode is Mode.PUT

    def one_statement_append(self, batch: AppendBatch, claim: Claim | None) -> bool:
        return claim is None and batch.item_ids is None

    def put_together(
        self, p: Protocol, intent: WriteIntent, transform: Transform | None, claim: Claim | None
    ) -> bool:
        # Exactly the puts that take counter_put in record_write, less the claimed ones
        # (whose key is settled in their own statements).
        return (
            p.dialect.counter_puts
            and claim is None
            and transform is None
            and intent.mode is Mode.PUT
        )

    def append_together(self, p: Protocol, batch: AppendBatch, claim: Claim | None) -> bool:
        # Those that take counter_append in stream_append, less the claimed ones.
        return p.dialect.counter_appends and claim is None and batch.item_ids is None


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
