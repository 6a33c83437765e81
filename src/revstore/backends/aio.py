"""The asyncio executor: drives the same protocols (``protocol``) and strategies as
the sync ``SqlBackend``, on SQLAlchemy's asyncio engine over each dialect's native
async driver (``config.ASYNC_DRIVERS``). It only sends statements and waits.

Cancellation: a caller cancelled while its connection is inside a transaction (or
while a statement runs) never hands that connection back to the pool as it is: the
connection is invalidated, so the server ends the session and rolls the transaction
back. A COMMIT whose outcome is unknown (the connection was lost) is AmbiguousCommit,
decided by the protocol as in sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from revstore.backends.batch import Outcome, Pending, Tainted, batch_begin, one_by_one
from revstore.backends.dialect import Dialect
from revstore.backends.executor import DB_ERRORS, ConnectWait, Stepper, translate_any
from revstore.backends.groupcommit import LOCKED, AsyncGroupCommit, Locked
from revstore.backends.ops import Execute, Step
from revstore.backends.protocol import Protocol, Transform, in_transaction, self_committing
from revstore.backends.sql import ensure_schema
from revstore.backends.strategy import Strategy, Tx, strategy_named
from revstore.config import MAX_OVERFLOW, POOL_SIZE, DatabaseURL
from revstore.idempotency import Claim
from revstore.migrations import Migrator
from revstore.record import Record, WriteIntent
from revstore.stream import AppendBatch, AppendResult

T = TypeVar("T")

log = logging.getLogger("revstore.backend")


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
        self._engine_lock = asyncio.Lock()
        self.migrator = Migrator()
        self.schema_version: int | None = None
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

    async def dispose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    # ---------------------------------------------------------------- plumbing

    async def _connect(self, wait: bool = True) -> AsyncConnection:
        engine = await self.engine()
        waiting = ConnectWait(self.reconnect_seconds, wait)
        while True:
            try:
                return await engine.connect()
            except (TypeError, ValueError, SQLAlchemyError) as exc:
                await asyncio.sleep(waiting.after(self.dialect, exc))

    @staticmethod
    async def _release(conn: AsyncConnection) -> None:
        # pool_reset_on_return=None, as in sync: every transaction ends in its own
        # COMMIT or ROLLBACK here.
        try:
            await conn.close()
        except SQLAlchemyError:
            log.warning("could not return a connection to the pool", exc_info=True)

    @staticmethod
    async def _abandon(conn: AsyncConnection, exc: BaseException) -> None:
        """End whatever ``conn`` is in after ``exc``: roll back, or, when the caller was
        cancelled (the statement may still run) or the rollback fails, invalidate the
        connection so that the server ends the session and its transaction."""
        if conn.invalidated:
            return
        if not isinstance(exc, asyncio.CancelledError):
            try:
                await conn.exec_driver_sql("ROLLBACK")
                return
            except (SQLAlchemyError, OSError):
                pass
        try:
            await conn.invalidate()
        except BaseException:
            log.warning("could not drop a connection", exc_info=True)

    async def drive(self, conn: AsyncConnection, step: Step[T]) -> T:
        """As ``SqlBackend.drive``, awaiting each statement."""
        stepper = Stepper(self.dialect, step)
        op = stepper.feed()
        while op is not None:
            try:
                if isinstance(op, Execute):
                    result: Any = await conn.execute(op.statement, op.params)
                else:
                    result = await conn.exec_driver_sql(op.sql, op.params)
            except DB_ERRORS as exc:
                op = stepper.feed(error=exc)
            else:
                op = stepper.feed(result)
        return stepper.result()

    async def run(self, step: Step[T], wait: bool = True) -> T:
        """A protocol with no transaction around it (reads, re-runnable statements)."""
        conn = await self._connect(wait)
        try:
            return await self.drive(conn, step)
        except asyncio.CancelledError as exc:
            # The statement may still be running on this connection: never reuse it.
            await self._abandon(conn, exc)
            raise
        finally:
            await self._release(conn)

    async def transaction(self, step: Step[T], begin: str | None = None) -> T:
        conn = await self._connect()
        try:
            return await self.drive(conn, in_transaction(step, begin or self.dialect.begin_write))
        except BaseException as exc:
            await self._abandon(conn, exc)
            raise
        finally:
            await self._release(conn)

    async def ping(self) -> None:
        # A readiness probe answers at once: it never waits for a server that is down.
        await self.run(self.protocol.ping(), wait=False)

    async def create_schema(self) -> int:
        """As ``SqlBackend.create_schema``: the same sync schema code, run on an asyncio
        connection (``AsyncConnection.run_sync``)."""
        if self.schema_version is not None:
            return self.schema_version
        conn = await self._connect()
        try:
            version = await conn.run_sync(ensure_schema, self.dialect, self.migrator)
        except DB_ERRORS as exc:
            raise translate_any(self.dialect, exc) from exc
        except asyncio.CancelledError as exc:
            await self._abandon(conn, exc)
            raise
        finally:
            await self._release(conn)
        self.schema_version = version
        return version

    # ---------------------------------------------------------------- writes

    async def write_record(
        self, intent: WriteIntent, transform: Transform | None = None, claim: Claim | None = None
    ) -> Record:
        if self.strategy.one_statement_put(intent, transform, claim):
            statement = self.dialect.put_statement(intent)
            if statement is not None:
                # One round trip and no transaction around it: its row lock is held
                # only while the statement runs. A lost connection is ambiguous.
                done = await self.run(self_committing(statement))
                if done is not None:
                    return done
        return await self.commit(
            lambda: self.strategy.record_write(self.protocol, intent, transform, claim),
            (intent.namespace, intent.id),
        )

    async def append(self, batch: AppendBatch, claim: Claim | None = None) -> AppendResult:
        if batch.item_ids is not None and claim is None:
            # A complete re-send is answered from a plain read (see SqlBackend.append).
            resent = await self.run(self.protocol.resent(batch))
            if resent is not None:
                return resent
        if self.strategy.one_statement_append(batch, claim):
            statement = self.dialect.append_statement(batch)
            if statement is not None:
                done_append = await self.run(self_committing(statement))
                if done_append is not None:
                    return done_append
        return await self.commit(
            lambda: self.strategy.stream_append(self.protocol, batch, claim),
            (batch.namespace, batch.stream_id),
        )

    async def commit(self, make: Callable[[], Tx[T]], key: tuple[str, str]) -> T:
        """As ``SqlBackend.commit``."""
        tx = make()
        begin = batch_begin(tx, self.dialect.begin_write)
        if self.batches is None or begin is None:
            return await self.transaction(tx.step, tx.begin)
        outcome: Outcome[T] = await self.batches.submit(Pending(key, make, begin))
        return outcome.get()

    async def _commit_alone(self, pending: Pending[T]) -> Outcome[T]:
        return Outcome(await self.transaction(pending.make().step, pending.begin))

    async def _commit_together(self, batch: list[Pending[Any]]) -> list[Outcome[Any] | Locked]:
        if len(batch) == 1:
            return [await self._commit_alone(batch[0])]
        try:
            outcomes = await self.transaction(
                one_by_one(batch, self.dialect.batch_lock_wait), batch[0].begin
            )
        except Tainted as tainted:
            # Rolled back: the others again, then the tainted write alone.
            i = tainted.index
            results = await self._commit_together([p for k, p in enumerate(batch) if k != i])
            try:
                alone: Outcome[Any] | Locked = await self._commit_alone(batch[i])
            except Exception as exc:
                alone = Outcome(error=exc)
            results.insert(i, alone)
            return results
        return [LOCKED if o.locked else o for o in outcomes]
