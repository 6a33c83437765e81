"""Many writes in one transaction: the I/O-free core of group commit on SQLite and
MariaDB/MySQL, writers of one record included. (PostgreSQL batches its one-statement
writes instead: ``postgresql``.)

A leader takes the write transactions queued behind it (each one the protocol its
strategy picked, the same one it would run alone) and runs them one after the other
inside a single ``BEGIN … COMMIT``: one lock acquisition, one commit, one WAL sync for
all of them. Each write keeps its own outcome:

- Its rules are evaluated at its turn, on the state the writes before it left:
  writes to the same record take consecutive revisions in queue order, and an
  ``expected_revision`` that is not the head at its turn is a ``VersionConflict``
  carrying that head, exactly as if it had run alone just after them.
- A write that fails for its own reason (a conflict, an absent record, a value the
  database refuses) gets its error; the writes around it still commit. Failing before
  it changed anything, it leaves nothing to undo; failing after (rare), it is taken
  out and the batch is sent again without it (``one_by_one``).
- A failure that belongs to the whole transaction (a lost connection, a deadlock, a
  busy database: every ``Retryable``, and anything that is not revstore's) ends the
  batch: nothing of it committed, and every write gets that error, which its caller's
  retry policy handles as for its own transaction. A lost COMMIT is an
  ``AmbiguousCommit`` for every write, as for one.

A batch of plain puts and appends only (``Pending.shared``) first goes through
``Together`` (``Protocol.writes_together``): a few statements for all of them (per
table: a locked read, the new heads, the new rows), the same rules applied in the same
order. What it hands back (creations, revivals) runs one by one
after it; a refusal of its shared statements (which may be any one put's) sends the
batch again one by one, which finds the guilty write.

The executor's shell only queues the writes (``groupcommit``) and runs ``one_by_one``
as the body of one transaction on one connection.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from sqlalchemy import TextClause

from revstore.backends.ops import Op, Raw, Step
from revstore.backends.strategy import Tx
from revstore.errors import (
    Conflict,
    DuplicateItem,
    NotFound,
    RevstoreError,
    SequenceConflict,
    VersionConflict,
)
from revstore.failures import LockWaitTimedOut, Retryable
from revstore.record import Record, WriteIntent
from revstore.stream import AppendBatch, AppendResult

if TYPE_CHECKING:
    from revstore.backends.protocol import Protocol, Transform
    from revstore.backends.strategy import Strategy
    from revstore.idempotency import Claim

T = TypeVar("T")


@dataclass(slots=True)
class Pending(Generic[T]):
    """One write waiting for a batch: its key (the record or stream it writes, which
    orders the batch) and its transaction as its strategy makes it (made anew for each
    send: a protocol runs once). A batch runs under the dialect's write ``BEGIN``, as
    every batchable strategy's transaction does."""

    key: Hashable
    make: Callable[[], Tx[T]]
    shared: WriteIntent | AppendBatch | None = None
    """Set for a plain counter put or append (no claim, no patch, no item ids): what
    ``Together`` needs to send it with the batch's other writes in shared statements."""


def record_pending(
    strategy: Strategy,
    p: Protocol,
    intent: WriteIntent,
    transform: Transform | None,
    claim: Claim | None,
) -> Pending[Record]:
    """A record write's transaction, ready to commit alone or in a batch."""
    together = strategy.put_together(p, intent, transform, claim)
    return Pending(
        (intent.namespace, intent.id),
        lambda: strategy.record_write(p, intent, transform, claim),
        intent if together else None,
    )


def append_pending(
    strategy: Strategy, p: Protocol, batch: AppendBatch, claim: Claim | None
) -> Pending[AppendResult]:
    """The same for an append."""
    together = strategy.append_together(p, batch, claim)
    return Pending(
        (batch.namespace, batch.stream_id),
        lambda: strategy.stream_append(p, batch, claim),
        batch if together else None,
    )


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one write of a batch got: its value, or its own error, or ``locked``: it
    waited too long for a row another client holds, and was rolled back to be sent
    alone (``groupcommit.LOCKED``)."""

    value: T | None = None
    error: BaseException | None = None
    locked: bool = False

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # set whenever error is None


def own_failure(exc: BaseException) -> bool:
    """Whether ``exc`` belongs to the one write that raised it, so that the others may
    still commit: revstore's verdicts on that write (conflicts, absent records, refused
    values). A ``Retryable`` is the transaction's (a deadlock rolls it all back; a busy
    or lost database fails every write alike), and so is anything unexpected."""
    return isinstance(exc, RevstoreError) and not isinstance(exc, Retryable)


def ordered(batch: Sequence[Pending[Any]]) -> list[int]:
    """The order a batch runs in: by key, and in arrival order within a key.

    Why by key: two processes' leaders then take the row locks of their batches in the
    same order, so they wait for each other instead of deadlocking (which would roll
    back a whole batch). Arrival order within a key is the "definite order" in which
    concurrent writes to one record take their revisions."""
    return sorted(range(len(batch)), key=lambda i: (str(batch[i].key), i))


DECIDED_ON_READS = (VersionConflict, SequenceConflict, DuplicateItem, NotFound)
"""Failures decided on what a write read (``plan_write``, the stream rules), before it
sends any change: the only statements it sent before are reads, or a counter bump
that matched no row. Any other failure after a statement that may change rows
taints the batch."""


class Tainted(Exception):
    """Write ``index`` of a batch failed for its own reason after it had changed rows:
    the batch's transaction must be rolled back and sent again without it. ``locked``:
    that reason was a row held elsewhere, which the write then waits for alone
    (``groupcommit.LOCKED``), not inside the batch's leadership. ``index`` None: a
    statement shared by several puts (``Together``) failed for a reason that may be any
    one of theirs; the batch must be sent again with each write on its own protocol,
    which finds the guilty one."""

    def __init__(self, index: int | None, locked: bool = False) -> None:
        what = "the puts' shared statements" if index is None else f"write {index}"
        super().__init__(f"{what} of the batch failed after changing rows")
        self.index = index
        self.locked = locked


Together = Callable[
    [Sequence[WriteIntent | AppendBatch]],
    Step[list[Record | AppendResult | Conflict | None]],
]
"""Plain puts and appends of a batch in shared statements (``Protocol.writes_together``)."""


def one_by_one(
    batch: Sequence[Pending[Any]], together: Together | None = None
) -> Step[list[Outcome[Any]]]:
    """The body of the batch's transaction: every write of ``batch``, in ``ordered``
    order; each one's outcome, in the batch's order. The executor runs it on a
    connection whose row lock waits are short (``lock_wait``).

    No savepoints (each would cost two round trips per write): a write that fails for
    its own reason before it changed anything (a conflict, an absent record: the
    common failures, decided on what it read) just gets its error; one that fails
    after it changed rows (rare: a refused value, a lost idempotency claim) raises
    ``Tainted``, and the executor's shell sends the batch again without it.

    ``together``: when every write of the batch is a plain put or append, they go first
    in a few shared statements (``Together``); those it hands back run one by one after
    them."""
    return (yield from _one_by_one(batch, together))


SHORT_LOCK_WAIT = "revstore.short_lock_wait"
"""Key, in a connection's ``info`` (kept with the driver connection, dropped with it),
that is present while its session waits briefly for row locks (``lock_wait``)."""


def lock_wait(
    info: dict[Any, Any], settings: tuple[str, str] | None, short: bool
) -> Step[None] | None:
    """The statement that sets how long a connection waits for a row lock, when this
    use of it needs another wait than the one it has (None: it has the right one).

    A batch's statements wait ``short`` (``Dialect.batch_lock_wait``): one busy record
    must not stall the unrelated writes batched with it. Everything else waits the
    session's default. The setting stays with the connection after its transaction,
    and is changed only when a use needs the other one: a connection that goes from
    batch to batch costs no statement, where shortening and restoring around every
    batch cost two round trips."""
    if settings is None or (SHORT_LOCK_WAIT in info) is short:
        return None
    return _set_lock_wait(info, settings[0] if short else settings[1], short)


def _set_lock_wait(info: dict[Any, Any], sql: str, short: bool) -> Step[None]:
    # Noted once the server has answered: a statement that failed changed nothing, or
    # its connection is dropped (and its info with it).
    yield Raw(sql)
    if short:
        info[SHORT_LOCK_WAIT] = True
    else:
        info.pop(SHORT_LOCK_WAIT, None)


def _one_by_one(
    batch: Sequence[Pending[Any]], together: Together | None
) -> Step[list[Outcome[Any]]]:
    outcomes: list[Outcome[Any] | None] = [None] * len(batch)
    order = ordered(batch)
    shared = [p.shared for p in batch]
    if together is not None and len(batch) > 1 and all(w is not None for w in shared):
        writes = [cast(WriteIntent | AppendBatch, shared[i]) for i in order]
        order = yield from _together(together, writes, order, outcomes)
    for i in order:
        watch = _Watch(batch[i].make().step)
        try:
            value = yield from watch.run()
        except LockWaitTimedOut:
            # A row held elsewhere: the database rolled back only the waiting
            # statement. The write leaves the batch and waits alone (``Outcome``).
            if watch.changed:
                raise Tainted(i, locked=True) from None
            outcomes[i] = Outcome(locked=True)
        except BaseException as exc:
            if not own_failure(exc):
                raise  # the whole batch: the executor rolls back, every write gets it
            if watch.changed and not isinstance(exc, DECIDED_ON_READS):
                raise Tainted(i) from exc
            outcomes[i] = Outcome(error=exc)
        else:
            outcomes[i] = Outcome(value)
    return [o for o in outcomes if o is not None]


def _together(
    together: Together,
    writes: list[WriteIntent | AppendBatch],
    order: list[int],
    outcomes: list[Outcome[Any] | None],
) -> Step[list[int]]:
    """Send ``writes`` (the batch's, in ``order``) through ``together``, filling
    ``outcomes``; the indexes it handed back, still in order."""
    try:
        results = yield from together(writes)
    except LockWaitTimedOut:
        # A row held elsewhere: the one-by-one way tells which write waits alone.
        raise Tainted(None) from None
    except BaseException as exc:
        if not own_failure(exc):
            raise  # the whole batch's, as for any write
        raise Tainted(None) from exc
    rest = []
    for i, result in zip(order, results, strict=True):
        if result is None:
            rest.append(i)
        elif isinstance(result, Conflict):
            outcomes[i] = Outcome(error=result)
        else:
            outcomes[i] = Outcome(result)
    return rest


class _Watch(Generic[T]):
    """Runs a write's protocol, noting whether a statement that changes rows (an
    INSERT, UPDATE or DELETE; a locking read does not count) succeeded."""

    __slots__ = ("_step", "changed")

    def __init__(self, step: Step[T]) -> None:
        self._step = step
        self.changed = False

    def run(self) -> Step[T]:
        step = self._step
        try:
            op = next(step)
            while True:
                try:
                    result = yield op
                except BaseException as exc:  # the statement's error, thrown in
                    # A failed statement changed nothing: the database rolls back the
                    # statement alone (SQLite, InnoDB), the transaction goes on.
                    op = step.throw(exc)
                else:
                    self.changed = self.changed or _changes_rows(op)
                    op = step.send(result)
        except StopIteration as done:
            return cast(T, done.value)


_DML = ("INSERT", "UPDATE", "DELETE", "REPLACE", "WITH")


def _changes_rows(op: Op) -> bool:
    if isinstance(op, Raw):
        return op.sql.lstrip()[:7].upper().startswith(_DML)
    statement = op.statement
    if isinstance(statement, TextClause):
        return statement.text.lstrip()[:7].upper().startswith(_DML)
    return bool(getattr(statement, "is_dml", False))
