"""The asyncio face of a sync backend, for SQLite: each operation runs whole on the
sync executor (``sql.SqlBackend``) in a thread of a pool of this backend's own.

Why not an async driver: SQLite has no network I/O to wait on, and its async drivers
(aiosqlite) run sqlite3 in a thread anyway, with one thread hop per statement. Here an
operation (a read, a whole write transaction, or a whole batch of them) costs one hop,
on SQLAlchemy's sync engine, which is also cheaper per statement than its asyncio
layer. Measured in-process: see the closing note of issue 9
and ``benchmarks/results``.

Group commit: the write transactions of the loop's tasks queue on the loop
(``ThreadedGroupCommit``), and a batch's leader runs the whole batch in one thread, on
the sync executor's batch (``SqlBackend._commit_together``): one hop per batch, not per
write.

Point reads (one row by key: a record's head, a stream's info) run on the event loop's
own thread instead, on a connection of the loop's that never waits for a lock: in WAL a
reader is never blocked by writers, and one indexed row costs less than the hop to a
thread (measured: 85 µs for ``Store.get`` against 150 µs through the pool). Should it
find the database locked anyway (a WAL recovery, a checkpoint that needs it, a
database not in WAL), it does not wait there, stalling every request of the loop: it
goes to a thread like any other read.

Cancellation: a cancelled caller stops waiting; its operation runs to its end in its
thread (it commits or rolls back there), so no connection is ever left inside a
transaction, and a write may land after its caller was cancelled, as a statement
already sent may.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection

from revstore.backends.batch import Outcome, Pending, append_pending, record_pending
from revstore.backends.dialect import Dialect
from revstore.backends.executor import DB_ERRORS
from revstore.backends.groupcommit import ThreadedGroupCommit
from revstore.backends.ops import Step
from revstore.backends.protocol import Protocol, Transform
from revstore.backends.sql import SqlBackend
from revstore.backends.strategy import Strategy
from revstore.failures import Retryable
from revstore.idempotency import Claim
from revstore.record import Record, WriteIntent
from revstore.stream import AppendBatch, AppendResult

T = TypeVar("T")


class ThreadedBackend:
    """``AsyncSqlBackend``'s methods, each one call of ``sync``'s in a thread."""

    def __init__(self, sync: SqlBackend, threads: int) -> None:
        self.sync = sync
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="revstore")
        # The sync executor's batching (its batch, gate and limits), queued on the loop.
        self.batches: ThreadedGroupCommit[Pending[Any], Outcome[Any]] | None = (
            ThreadedGroupCommit.beside(sync.batches, self._in_thread)
            if sync.batches is not None and sync.strategy.batchable
            else None
        )
        self._inline: Connection | None = None
        """The loop's connection for point reads (busy timeout 0); opened on first use."""

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        # The caller's context (the request's log fields) goes with the call.
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    @property
    def name(self) -> str:
        return self.sync.name

    @property
    def dialect(self) -> Dialect:
        return self.sync.dialect

    @property
    def strategy(self) -> Strategy:
        return self.sync.strategy

    @property
    def protocol(self) -> Protocol:
        return self.sync.protocol

    @property
    def schema_version(self) -> int | None:
        return self.sync.schema_version

    @property
    def reconnect_seconds(self) -> float:
        return self.sync.reconnect_seconds

    @reconnect_seconds.setter
    def reconnect_seconds(self, seconds: float) -> None:
        self.sync.reconnect_seconds = seconds

    async def run(self, step: Step[T], wait: bool = True) -> T:
        return await self._in_thread(self.sync.run, step, wait)

    async def point_read(self, make: Callable[[], Step[T]]) -> T:
        conn = self._inline_connection()
        if conn is not None:
            try:
                return self.sync.drive(conn, make())
            except Retryable:
                # Locked, or the connection broke: never wait on the loop. A thread runs
                # it afresh below, waiting and reconnecting as every read does.
                self._drop_inline()
            finally:
                if self._inline is not None:
                    # Ends the read (SQLAlchemy's implicit transaction), so the next one
                    # sees every write committed by then.
                    self._end_inline_read()
        return await self._in_thread(self.sync.run, make(), True)

    def _inline_connection(self) -> Connection | None:
        if self._inline is None and self.sync.dialect.point_reads_inline:
            try:
                conn = self.sync.engine.connect()
                # Waiting for a lock would stall the whole loop: fail at once instead.
                conn.exec_driver_sql("PRAGMA busy_timeout = 0")
                conn.rollback()
            except DB_ERRORS:
                return None  # the thread path reconnects, with its wait and backoff
            self._inline = conn
        return self._inline

    def _end_inline_read(self) -> None:
        assert self._inline is not None
        try:
            self._inline.rollback()
        except DB_ERRORS:
            self._drop_inline()

    def _drop_inline(self) -> None:
        conn, self._inline = self._inline, None
        if conn is not None:
            conn.invalidate()  # never back to the pool with busy timeout 0
            conn.close()

    async def transaction(self, step: Step[T], begin: str | None = None) -> T:
        return await self._in_thread(self.sync.transaction, step, begin)

    async def write_record(
        self, intent: WriteIntent, transform: Transform | None = None, claim: Claim | None = None
    ) -> Record:
        if self.batches is None or self.dialect.one_statement_writes:
            return await self._in_thread(self.sync.write_record, intent, transform, claim)
        pending = record_pending(self.strategy, self.protocol, intent, transform, claim)
        outcome: Outcome[Record] = await self.batches.submit(pending)
        return outcome.get()

    async def append(self, batch: AppendBatch, claim: Claim | None = None) -> AppendResult:
        if self.batches is None or self.dialect.one_statement_writes:
            return await self._in_thread(self.sync.append, batch, claim)
        if batch.item_ids is not None and claim is None:
            # A complete re-send is answered from a plain read (as in SqlBackend.append),
            # here on the loop's own connection.
            resent = await self.point_read(lambda: self.protocol.resent(batch))
            if resent is not None:
                return resent
        pending = append_pending(self.strategy, self.protocol, batch, claim)
        done: Outcome[AppendResult] = await self.batches.submit(pending)
        return done.get()

    async def ping(self) -> None:
        await self._in_thread(self.sync.ping)

    async def create_schema(self) -> int:
        return await self._in_thread(self.sync.create_schema)

    async def dispose(self) -> None:
        self._drop_inline()
        # Operations still running in the pool finish first (none are cut off mid-way).
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
        self.sync.dispose()
