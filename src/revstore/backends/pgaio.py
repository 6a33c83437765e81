"""AsyncStore's connections to PostgreSQL: psycopg ``AsyncConnection`` objects in a pool
of revstore's own, running the protocols' statements on them directly.

Why not SQLAlchemy's asyncio engine (which the other databases use, ``aio.EngineLinks``):
each statement through ``AsyncConnection.execute`` costs greenlet switches and
SQLAlchemy's execution context and result objects, together about twice the CPU of
psycopg's own work on a one-row read; on a small machine that CPU is taken from the
server. SQLAlchemy still compiles every statement (``compiled.StatementCache``) and
still creates and migrates the schema (through its asyncio engine, which also
initialises the dialect the statements are compiled for).

What stays as through the engine:

- connecting: the same arguments (SQLAlchemy's ``create_connect_args`` of the URL, plus
  the dialect's ``connect_args``), driver autocommit, ``prepare_threshold`` and its
  pooler detection; a failure to connect is wrapped in SQLAlchemy's ``DBAPIError``, so
  ``ConnectWait`` waits for a restarting server as before;
- errors: every psycopg error is wrapped with ``DBAPIError.instance`` (the class
  SQLAlchemy would pick), ``connection_invalidated`` set by the dialect's
  ``is_disconnect``, and goes through the dialect's translation;
- the pool: at most ``pool_size + max_overflow`` connections, ``pool_size`` kept idle,
  a checkout waits up to ``timeout`` seconds (then SQLAlchemy's ``TimeoutError``);
  a connection the server closed while it was idle is dropped at checkout without a
  round trip (the liveness probe); after a lost connection, every connection opened
  before it is dropped at its next checkout (as SQLAlchemy invalidates its pool).
"""

from __future__ import annotations

import asyncio
import logging
import select as io_select
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from revstore.backends.compiled import Rows, StatementCache, driver_rows
from revstore.backends.ops import Execute, Op, Raw

log = logging.getLogger("revstore.backend")

Connect = Callable[[], Awaitable["psycopg.AsyncConnection[Any]"]]
ROLLBACK = Raw("ROLLBACK")
OVERFLOW_IDLE_SECONDS = 10.0
"""How long a connection beyond ``pool_size`` stays idle in the pool before it closes."""
TUPLES_OK = pq.ExecStatus.TUPLES_OK


def wrapped(
    dialect: SADialect,
    exc: psycopg.Error,
    conn: psycopg.AsyncConnection[Any] | None,
    sql: str | None = None,
    params: Any = None,
    many: bool = False,
) -> BaseException:
    """``exc`` as SQLAlchemy raises it from ``Connection.execute`` (or from connecting,
    ``conn`` None): a ``DBAPIError`` of the matching class, with ``connection_invalidated``
    when the connection is lost."""
    lost = conn is not None and dialect.is_disconnect(exc, conn, None)  # type: ignore[arg-type]
    return DBAPIError.instance(
        sql, params, exc, psycopg.Error, connection_invalidated=lost, dialect=dialect, ismulti=many
    )


class PsycopgLink:
    """One pooled connection, checked out by one caller at a time (``aio.Link``)."""

    __slots__ = ("born", "conn", "cursor", "idle_since", "info", "invalidated", "pool")

    def __init__(self, pool: PsycopgPool, conn: psycopg.AsyncConnection[Any]) -> None:
        self.pool = pool
        self.conn = conn
        # One cursor per connection, reused: its adapters keep the dumpers already
        # chosen for these parameter types (as the sync executor's ``_statement``).
        self.cursor = conn.cursor()
        self.born = time.monotonic()
        self.idle_since = self.born
        self.invalidated = False
        self.info: dict[Any, Any] = {}

    async def send(self, op: Op) -> Rows:
        pool = self.pool
        shape = None
        if isinstance(op, Execute):
            sql, params, many, shape = pool.statements.prepare(op.statement, op.params)
        else:
            sql, params, many = op.sql, op.params, False
        cur = self.cursor
        try:
            if many:
                await cur.executemany(sql, params)
            else:
                await cur.execute(sql, params)
            # Not ``cur.description``: it builds a column object per column each time.
            result = cur.pgresult
            rows = result is not None and result.status == TUPLES_OK
            data = await cur.fetchall() if rows else None
        except psycopg.Error as exc:
            err = wrapped(pool.dialect, exc, self.conn, sql, params, many)
            if isinstance(err, DBAPIError) and err.connection_invalidated:
                # As SQLAlchemy: the connection is dropped, and so are all the pooled
                # connections opened before it (the server may have restarted).
                await self.invalidate()
                pool.invalidate_older_than(time.monotonic())
            raise err from exc
        if data is None:
            return Rows(None, cur.rowcount)
        if shape is not None:
            return Rows(shape.rows(pool.dialect, cur, data), cur.rowcount)
        return Rows(driver_rows(sql, cur, data, pool.statements.driver_shapes), cur.rowcount)

    async def rollback(self) -> None:
        await self.send(ROLLBACK)

    async def invalidate(self) -> None:
        """Close the connection: the server ends the session and rolls back whatever
        transaction it was in (a statement still running there is cancelled with it)."""
        if self.invalidated:
            return
        self.invalidated = True
        await self.conn.close()

    async def release(self) -> None:
        self.pool.give_back(self)


class PsycopgPool:
    """A pool of psycopg asyncio connections (``aio.Links``) for one event loop."""

    def __init__(
        self,
        connect: Connect,
        engine: AsyncEngine,
        pool_size: int,
        max_overflow: int,
        timeout: float = 30.0,
    ) -> None:
        self._connect = connect
        self._engine = engine
        self.dialect: SADialect = engine.sync_engine.dialect
        self.statements = StatementCache(self.dialect)
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        # SQLAlchemy's QueuePool: a negative max_overflow means no limit.
        self._limit = None if max_overflow < 0 else pool_size + max_overflow
        self.timeout = timeout
        self._idle: deque[PsycopgLink] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[PsycopgLink | None]] = deque()
        self._invalid_before = 0.0
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False

    # ---------------------------------------------------------------- checkout

    async def checkout(self) -> PsycopgLink:
        if not self._ready:
            await self._initialise()
        deadline: float | None = None
        while True:
            while self._idle:
                link = self._idle.pop()
                if self._alive(link):
                    return link
                await self._drop(link)
            if self._limit is None or self._open < self._limit:
                return await self._new()
            # At the limit: wait for a connection to come back, or for a place.
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.timeout
            waiter: asyncio.Future[PsycopgLink | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    # Handed a connection just as this caller gave up: pass it on.
                    late = waiter.result()
                    if late is not None:
                        self.give_back(late)
                    else:
                        self._wake(None)
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout(
                        f"QueuePool limit of size {self.pool_size} overflow "
                        f"{self.max_overflow} reached, connection timed out, timeout "
                        f"{self.timeout:g}"
                    ) from None
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if handed is not None:
                if self._alive(handed):
                    return handed
                await self._drop(handed)

    async def _initialise(self) -> None:
        """Statements are compiled for the engine's dialect, which SQLAlchemy sets up
        (server version, hstore, …) on its first connection: make one if the schema
        creation has not, and close it."""
        async with self._ready_lock:
            if self._ready:
                return
            if self.dialect.server_version_info is None:
                async with self._engine.connect():
                    pass
                await self._engine.dispose()
            self._ready = True

    async def _new(self) -> PsycopgLink:
        self._open += 1
        try:
            conn = await self._connect()
        except BaseException:
            self._open -= 1
            self._wake(None)
            raise
        return PsycopgLink(self, conn)

    def _alive(self, link: PsycopgLink) -> bool:
        """Whether an idle connection may be used: not lost or invalidated, and the server
        has not spoken since it came back. An idle connection has nothing to read unless
        the server sent a termination notice or closed it (pg_terminate_backend, a
        restart); catching that here means a write is never sent on a dead connection,
        where its failure would be indistinguishable from a lost COMMIT."""
        conn = link.conn
        if link.invalidated or conn.closed or conn.broken or link.born < self._invalid_before:
            return False
        try:
            readable, _, _ = io_select.select([conn.pgconn.socket], [], [], 0)
        except (OSError, ValueError, psycopg.Error):
            return False
        return not readable

    # ---------------------------------------------------------------- return

    def give_back(self, link: PsycopgLink) -> None:
        conn = link.conn
        reusable = (
            not link.invalidated
            and not conn.closed
            and not conn.broken
            # Every transaction ends in its own COMMIT or ROLLBACK: one still open here
            # is never lent to another caller.
            and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        )
        if self._closed:
            reusable = False
        if reusable and self._wake(link):
            return
        if reusable:
            # Kept even beyond pool_size: closing an overflow connection at every
            # return (as SQLAlchemy's QueuePool does) makes a busy service open and
            # close server connections all the time, each a process forked on
            # PostgreSQL (measured: GET throughput halved under 64 clients). Overflow
            # connections idle for OVERFLOW_IDLE_SECONDS are closed instead.
            link.idle_since = time.monotonic()
            self._idle.append(link)
            self._retire_idle_overflow(link.idle_since)
            return
        # Lost, or the pool is closed.
        self._close_now(link)
        self._open -= 1
        self._wake(None)

    def _retire_idle_overflow(self, now: float) -> None:
        """Close the connections beyond pool_size that nobody used for a while. Checkouts
        take the most recently returned connection (the right end), so the oldest idle
        ones are at the left."""
        idle = self._idle
        while len(idle) > self.pool_size and now - idle[0].idle_since > OVERFLOW_IDLE_SECONDS:
            link = idle.popleft()
            self._close_now(link)
            self._open -= 1

    def _wake(self, link: PsycopgLink | None) -> bool:
        """Hand ``link`` (or, None, a free place) to the first caller still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(link)
                return True
        return False

    async def _drop(self, link: PsycopgLink) -> None:
        await link.invalidate()
        self._open -= 1
        self._wake(None)

    @staticmethod
    def _close_now(link: PsycopgLink) -> None:
        link.invalidated = True
        if not link.conn.closed:
            # psycopg's close() only finishes the libpq connection: nothing to await.
            link.conn.pgconn.finish()

    def invalidate_older_than(self, moment: float) -> None:
        self._invalid_before = moment

    # ---------------------------------------------------------------- closing

    async def schema_done(self) -> None:
        """The engine's connection for the schema is not kept: data goes through here."""
        await self._engine.dispose()

    async def close(self) -> None:
        # Connections still checked out are closed when they come back.
        self._closed = True
        while self._idle:
            link = self._idle.pop()
            self._close_now(link)
            self._open -= 1
        await self._engine.dispose()
