"""The asyncio executor: drives the same protocols (``protocol``) and strategies as
the sync ``SqlBackend``, on each dialect's native async driver (``config.ASYNC_DRIVERS``).
It only sends statements and waits.

Its connections (``Link``) come from ``Links``: SQLAlchemy's asyncio engine
(``EngineLinks``: SQLite, MariaDB), or, where the dialect offers its own
(``create_async_links``: PostgreSQL, ``pgaio``), driver connections running the
statements directly. The schema is created through the engine in both cases.

Cancellation: a caller cancelled while its connection is inside a transaction (or
while a statement runs) never hands that connection back to the pool as it is: the
connection is invalidated, so the server ends the session and rolls the transaction
back. A COMMIT whose outcome is unknown (the connection was lost) is AmbiguousCommit,
decided by the protocol as in sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, runtime_checkable
from typing import Protocol as Interface

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from revstore.backends.batch import (
    Outcome,
    Pending,
    Tainted,
    append_pending,
    lock_wait,
    one_by_one,
    record_pending,
)
from revstore.backends.dialect import Appended, Dialect, Put
from revstore.backends.executor import DB_ERRORS, ConnectWait, Stepper, translate_any
from revstore.backends.groupcommit import LOCKED, AsyncGroupCommit, Locked
from revstore.backends.ops import Execute, Op, Step
from revstore.backends.protocol import (
    Protocol,
    Transform,
    appended,
    in_transaction,
    self_committing,
    written_head,
)
from revstore.backends.sql import ensure_schema
from revstore.backends.strategy import Strategy, strategy_named
from revstore.config import MAX_OVERFLOW, POOL_SIZE, DatabaseURL
from revstore.idempotency import Claim
from revstore.migrations import Migrator
from revstore.record import Record, WriteIntent
from revstore.stream import AppendBatch, AppendResult

T = TypeVar("T")
L = TypeVar("L", bound="Link")

log = logging.getLogger("revstore.backend")


class Link(Interface):
    """One checked-out connection, in driver autocommit."""

    @property
    def invalidated(self) -> bool: ...

    @property
    def info(self) -> dict[Any, Any]:
        """What the executor notes of the connection (its session settings), kept with
        the driver connection and dropped with it."""

    async def send(self, op: Op) -> Any:
        """Run one statement; its buffered result (the ``Result`` API the protocols
        use). Raises what ``translate_any`` maps (SQLAlchemy's errors)."""

    async def rollback(self) -> None: ...

    async def invalidate(self) -> None:
        """Close the connection for good: the server ends its session."""

    async def release(self) -> None:
        """Back to the pool (pool_reset_on_return=None, as in sync: every transaction
        here ends in its own COMMIT or ROLLBACK)."""


class Links(Interface):
    """Where a backend's connections come from."""

    async def checkout(self) -> Link: ...

    async def schema_done(self) -> None:
        """The schema exists: the engine's connections may go if they are not used."""

    async def close(self) -> None: ...


@runtime_checkable
class OwnAsyncLinks(Interface):
    """A dialect with asyncio connections of its own (PostgreSQL)."""

    def create_async_links(
        self, url: DatabaseURL, pool_size: int, max_overflow: int, engine: AsyncEngine
    ) -> Links: ...


class EngineLink:
    """A connection of SQLAlchemy's asyncio engine."""

    __slots__ = ("conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    @property
    def invalidated(self) -> bool:
        return self.conn.invalidated

    @property
    def info(self) -> dict[Any, Any]:
        return self.conn.info

    async def send(self, op: Op) -> Any:
        if isinstance(op, Execute):
            return await self.conn.execute(op.statement, op.params)
        return await self.conn.exec_driver_sql(op.sql, op.params)

    async def rollback(self) -> None:
        await self.conn.exec_driver_sql("ROLLBACK")

    async def invalidate(self) -> None:
        await self.conn.invalidate()

    async def release(self) -> None:
        await self.conn.close()


class EngineLinks:
    __slots__ = ("engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def checkout(self) -> EngineLink:
        return EngineLink(await self.engine.connect())

    async def schema_done(self) -> None:
        pass

    async def close(self) -> None:
        await self.engine.dispose()


class AsyncSqlBackend:
    """A pool of asyncio connections to one database, running protocols."""

    reconnect_seconds: float = 10.0

    def __init__(
        self,
        url: DatabaseURL,
        dialect: Dialect,
        strategy: str | None = None,
        pool_size: int = POOL_SIZE,
        max_overflow: int = MAX_OVERFLOW,
        group_commit: bool = True,
    ) -> None:
        self.url = url
        self.dialect = dialect
        self.strategy: Strategy = strategy_named(strategy or dialect.default_strategy)
        self.protocol = Protocol(dialect)
        self._pool = (pool_size, max_overflow)
        self._engine: AsyncEngine | None = None
        self._links: Links | None = None
        self._engine_lock = asyncio.Lock()
        self.migrator = Migrator()
        self.schema_version: int | None = None
        # As in PostgresBackend: concurrent one-statement writes to distinct records
        # (streams) of this event loop share one statement and one commit.
        one = group_commit and dialect.one_statement_writes
        self._puts: AsyncGroupCommit[WriteIntent, Put | None] | None = (
            AsyncGroupCommit(
                self._put_one,
                self._put_many,
                key=lambda i: (i.namespace, i.id),
                run_chain=self._put_chain,
                shared=dialect.shared_failure,
            )
            if one
            else None
        )
        self._appends: AsyncGroupCommit[AppendBatch, Appended | None] | None = (
            AsyncGroupCommit(
                self._append_one,
                self._append_many,
                key=lambda b: (b.namespace, b.stream_id),
                run_chain=self._append_chain,
                shared=dialect.shared_failure,
            )
            if one
            else None
        )
        # As in SqlBackend: concurrent write transactions of this event loop share one.
        self.batches: AsyncGroupCommit[Pending[Any], Outcome[Any]] | None = (
            AsyncGroupCommit(
                self._commit_alone,
                self._commit_together,
                key=id,
                max_leaders=dialect.batch_leaders,
            )
            if group_commit and dialect.batches_transactions
            else None
        )

    @property
    def name(self) -> str:
        return self.dialect.name

    async def engine(self) -> AsyncEngine:
        """Built on first use: some dialects look at the server first (MariaDB)."""
        if self._engine is None:
            async with self._engine_lock:
                if self._engine is None:
                    self._engine = await self.dialect.create_async_engine(self.url, *self._pool)
        return self._engine

    async def links(self) -> Links:
        if self._links is None:
            engine = await self.engine()
            if self._links is None:
                own = self.dialect
                self._links = (
                    own.create_async_links(self.url, *self._pool, engine)
                    if isinstance(own, OwnAsyncLinks)
                    else EngineLinks(engine)
                )
        return self._links

    async def dispose(self) -> None:
        if self._links is not None:
            await self._links.close()
        if self._engine is not None:
            await self._engine.dispose()

    # ---------------------------------------------------------------- plumbing

    async def _connect(self, checkout: Callable[[], Awaitable[L]], wait: bool = True) -> L:
        waiting = ConnectWait(self.reconnect_seconds, wait)
        while True:
            try:
                return await checkout()
            except (TypeError, ValueError, SQLAlchemyError) as exc:
                await asyncio.sleep(waiting.after(self.dialect, exc))

    async def _checkout(self) -> Link:
        return await (await self.links()).checkout()

    async def _engine_checkout(self) -> EngineLink:
        return EngineLink(await (await self.engine()).connect())

    async def _lock_wait(self, link: Link, short: bool) -> None:
        setting = lock_wait(link.info, self.dialect.batch_lock_wait, short)
        if setting is not None:
            await self.drive(link, setting)

    @staticmethod
    async def _release(link: Link) -> None:
        try:
            await link.release()
        except SQLAlchemyError:
            log.warning("could not return a connection to the pool", exc_info=True)

    @staticmethod
    async def _abandon(link: Link, exc: BaseException) -> None:
        """End whatever ``link`` is in after ``exc``: roll back, or, when the caller was
        cancelled (the statement may still run) or the rollback fails, invalidate the
        connection so that the server ends the session and its transaction."""
        if link.invalidated:
            return
        if not isinstance(exc, asyncio.CancelledError):
            try:
                await link.rollback()
                return
            except (SQLAlchemyError, OSError):
                pass
        try:
            await link.invalidate()
        except BaseException:
            log.warning("could not drop a connection", exc_info=True)

    async def drive(self, link: Link, step: Step[T]) -> T:
        """As ``SqlBackend.drive``, awaiting each statement."""
        stepper = Stepper(self.dialect, step)
        op = stepper.feed()
        while op is not None:
            try:
                result = await link.send(op)
            except DB_ERRORS as exc:
                op = stepper.feed(error=exc)
            else:
                op = stepper.feed(result)
        return stepper.result()

    async def run(self, step: Step[T], wait: bool = True) -> T:
        """A protocol with no transaction around it (reads, re-runnable statements)."""
        link = await self._connect(self._checkout, wait)
        try:
            await self._lock_wait(link, short=False)
            return await self.drive(link, step)
        except asyncio.CancelledError as exc:
            # The statement may still be running on this connection: never reuse it.
            await self._abandon(link, exc)
            raise
        finally:
            await self._release(link)

    async def point_read(self, make: Callable[[], Step[T]]) -> T:
        """A read of one row by key (``operations.point_read_call``): here, a read."""
        return await self.run(make())

    async def transaction(
        self, step: Step[T], begin: str | None = None, short_lock_wait: bool = False
    ) -> T:
        link = await self._connect(self._checkout)
        try:
            await self._lock_wait(link, short_lock_wait)
            return await self.drive(link, in_transaction(step, begin or self.dialect.begin_write))
        except BaseException as exc:
            await self._abandon(link, exc)
            raise
        finally:
            await self._release(link)

    async def ping(self) -> None:
        # A readiness probe answers at once: it never waits for a server that is down.
        await self.run(self.protocol.ping(), wait=False)

    async def create_schema(self) -> int:
        """As ``SqlBackend.create_schema``: the same sync schema code, run on an asyncio
        engine connection (``AsyncConnection.run_sync``)."""
        if self.schema_version is not None:
            return self.schema_version
        link = await self._connect(self._engine_checkout)
        try:
            await self._lock_wait(link, short=False)
            version = await link.conn.run_sync(ensure_schema, self.dialect, self.migrator)
        except DB_ERRORS as exc:
            raise translate_any(self.dialect, exc) from exc
        except asyncio.CancelledError as exc:
            await self._abandon(link, exc)
            raise
        finally:
            await self._release(link)
        self.schema_version = version
        await (await self.links()).schema_done()
        return version

    # ---------------------------------------------------------------- writes

    async def write_record(
        self, intent: WriteIntent, transform: Transform | None = None, claim: Claim | None = None
    ) -> Record:
        if self.dialect.one_statement_writes and self.strategy.one_statement_put(
            intent, transform, claim
        ):
            # One round trip and no transaction around it: its row lock is held only
            # while the statement runs. A lost connection is ambiguous.
            put = await (self._puts.submit(intent) if self._puts else self._put_one(intent))
            if put is not None:
                return written_head(intent, *put)
        return await self.commit(
            record_pending(self.strategy, self.protocol, intent, transform, claim)
        )

    async def append(self, batch: AppendBatch, claim: Claim | None = None) -> AppendResult:
        if batch.item_ids is not None and claim is None:
            # A complete re-send is answered from a plain read (see SqlBackend.append).
            resent = await self.run(self.protocol.resent(batch))
            if resent is not None:
                return resent
        if self.dialect.one_statement_writes and self.strategy.one_statement_append(batch, claim):
            done = await (self._appends.submit(batch) if self._appends else self._append_one(batch))
            if done is not None:
                return appended(batch, *done)
        return await self.commit(append_pending(self.strategy, self.protocol, batch, claim))

    async def _put_one(self, intent: WriteIntent) -> Put | None:
        return await self.run(self_committing(self.dialect.put_one(intent)))

    async def _put_many(self, intents: list[WriteIntent]) -> list[Put | Locked | None]:
        return await self.run(self_committing(self.dialect.put_many(intents)))

    async def _put_chain(self, intents: list[WriteIntent]) -> list[Put | None]:
        return await self.run(self_committing(self.dialect.put_chain(intents)))

    async def _append_one(self, batch: AppendBatch) -> Appended | None:
        return await self.run(self_committing(self.dialect.append_one(batch)))

    async def _append_many(self, batches: list[AppendBatch]) -> list[Appended | Locked | None]:
        return await self.run(self_committing(self.dialect.append_many(batches)))

    async def _append_chain(self, batches: list[AppendBatch]) -> list[Appended | None]:
        return await self.run(self_committing(self.dialect.append_chain(batches)))

    async def commit(self, pending: Pending[T]) -> T:
        """As ``SqlBackend.commit``."""
        if self.batches is None or not self.strategy.batchable:
            return (await self._commit_alone(pending)).get()
        outcome: Outcome[T] = await self.batches.submit(pending)
        return outcome.get()

    async def _commit_alone(self, pending: Pending[T]) -> Outcome[T]:
        tx = pending.make()
        return Outcome(await self.transaction(tx.step, tx.begin))

    async def _commit_together(
        self, batch: list[Pending[Any]], together: bool = True
    ) -> list[Outcome[Any] | Locked]:
        if not batch:
            return []
        if len(batch) == 1 and self.dialect.batch_lock_wait is None:
            # Nobody to share with, and no row lock to wait for briefly (SQLite): its
            # own transaction. On MariaDB a lone write too waits briefly for a row held
            # elsewhere, then alone (LOCKED), after the leadership is handed on: the
            # writes queueing behind it must not wait for that row with it.
            return [await self._commit_alone(batch[0])]
        try:
            outcomes = await self.transaction(
                one_by_one(batch, self.protocol.writes_together if together else None),
                short_lock_wait=True,
            )
        except Tainted as tainted:
            i = tainted.index
            if i is None:
                # Rolled back: again, each write on its own protocol.
                return await self._commit_together(batch, together=False)
            # Rolled back: the others again, then the tainted write alone.
            results = await self._commit_together([p for k, p in enumerate(batch) if k != i])
            alone: Outcome[Any] | Locked = LOCKED
            if not tainted.locked:  # else it waits for its row alone, as above
                try:
                    alone = await self._commit_alone(batch[i])
                except Exception as exc:
                    alone = Outcome(error=exc)
            results.insert(i, alone)
            return results
        return [LOCKED if o.locked else o for o in outcomes]
