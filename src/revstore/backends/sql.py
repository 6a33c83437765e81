"""The sync executor: a pool of connections to one database, explicit transactions,
schema creation, and every operation as its protocol (``protocol``) driven on a
``Connection``. What is particular to the database is the ``dialect``; how a write
takes its next number is the ``strategy``; the asyncio executor is ``aio``.

Connections run in driver autocommit and every transaction is opened and closed here
with explicit statements. That lets a backend choose its own ``BEGIN`` (SQLite needs
``BEGIN IMMEDIATE``), lets a one-statement write run without a transaction around it
(its row lock is then released the moment the statement ends, not one client round
trip later), and tells a failure *before* COMMIT (safe to re-run) from a failure
*during* COMMIT (ambiguous).
"""

from __future__ import annotations

import logging
import select as io_select
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from revstore.backends.batch import (
    Outcome,
    Pending,
    Tainted,
    append_pending,
    lock_wait,
    one_by_one,
    record_pending,
)
from revstore.backends.compiled import Shape, StatementCache, on_cursor
from revstore.backends.dialect import Dialect
from revstore.backends.executor import DB_ERRORS, ConnectWait, Stepper, translate_any
from revstore.backends.groupcommit import LOCKED, GroupCommit, Locked
from revstore.backends.ops import Execute, Op, Step
from revstore.backends.protocol import Protocol, Transform, in_transaction
from revstore.backends.protocol import now as now
from revstore.backends.protocol import page_cut as page_cut
from revstore.backends.protocol import prefix_upper_bound as prefix_upper_bound
from revstore.backends.protocol import utc as utc
from revstore.backends.strategy import Strategy, strategy_named
from revstore.errors import AmbiguousCommit, RevstoreError
from revstore.failures import Disconnected
from revstore.idempotency import Claim
from revstore.migrations import Migrator
from revstore.record import Record, WriteIntent
from revstore.stream import AppendBatch as AppendBatch
from revstore.stream import AppendResult

T = TypeVar("T")

log = logging.getLogger("revstore.backend")

SCHEMA_ATTEMPTS = 5
"""Looks under the schema lock before an "already exists" from an unlocked creator is
taken as an error after all."""


def ensure_schema(conn: Connection, dialect: Dialect, migrator: Migrator) -> int:
    """Create, migrate or check the schema on ``conn`` under the dialect's schema lock;
    the schema version. Sync SQLAlchemy code: the asyncio executor runs it on its
    connection through ``AsyncConnection.run_sync``."""
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            # Outside the lock and any transaction (SQLite's switch to WAL).
            dialect.prepare_ddl(conn)
            with dialect.schema_lock(conn, SqlBackend._rollback):
                return migrator.ensure(conn)
        except DBAPIError as exc:
            if attempt == SCHEMA_ATTEMPTS or not dialect.already_exists(exc):
                raise
            # A creator that does not take the lock (an older release, a DBA) made the
            # same table a moment ago: that counts as success, and the next look under
            # the lock sees the table and goes on from there.
            log.info("schema object created concurrently, looking again: %s", exc.orig)
    raise AssertionError("unreachable: the last attempt returns or raises")


def install_liveness_probe(engine: Engine, fileno: Callable[[Any], int]) -> None:
    """Drop a pooled connection the server has already closed, at checkout, without a
    round trip.

    An idle connection has nothing to read unless the server spoke first: a
    termination notice (pg_terminate_backend, KILL, restart) or EOF. Catching that
    here means a write is never sent on a dead connection, where its failure would be
    indistinguishable from a lost COMMIT (ambiguous). SQLAlchemy retries the checkout
    with a fresh connection on DisconnectionError.
    """

    @event.listens_for(engine, "checkout")
    def _probe(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        try:
            readable, _, _ = io_select.select([fileno(dbapi_conn)], [], [], 0)
        except (OSError, ValueError, AttributeError) as exc:
            raise DisconnectionError(f"pooled connection unusable: {exc}") from exc
        if readable:
            raise DisconnectionError("the server closed this pooled connection")


class SqlBackend:
    """The executor: a pool of connections to one database, explicit transactions,
    reads, and the portable write paths. What is particular to the database is its
    ``dialect``; how a write takes its next number is its ``strategy``. (PostgreSQL
    adds its one-statement counter writes and group commit: ``PostgresBackend``.)"""

    reconnect_seconds: float = 10.0
    """How long ``_connect`` keeps trying a server that cannot be reached."""

    def __init__(
        self,
        dialect: Dialect,
        engine: Engine,
        strategy: str | None = None,
        group_commit: bool = False,
    ) -> None:
        self.dialect = dialect
        self.engine = engine
        self.strategy: Strategy = strategy_named(strategy or dialect.default_strategy)
        self.protocol = Protocol(dialect)
        # Compiled for the engine's dialect, which its first connection initialises
        # (the server's version): every statement is sent after a connect.
        self.statements = StatementCache(engine.dialect)
        self.migrator = Migrator()
        """Creates and upgrades the tables under the schema lock (tests inject steps)."""
        self.schema_version: int | None = None
        # Concurrent write transactions of this process share one transaction and one
        # commit (``batch``). Every request gets its own key: writes to one record are
        # batched too, and take their revisions one after the other inside it.
        self.batches: GroupCommit[Pending[Any], Outcome[Any]] | None = (
            GroupCommit(
                self._commit_alone,
                self._commit_together,
                key=id,
                max_leaders=dialect.batch_leaders,
                lead_within=lambda: dialect.write_gate(dialect.begin_write),
            )
            if group_commit
            else None
        )

    # ---------------------------------------------------------------- plumbing

    @property
    def name(self) -> str:
        return self.dialect.name

    def _translate_any(self, exc: BaseException) -> RevstoreError:
        return translate_any(self.dialect, exc)

    def _connect(self, wait: bool = True) -> Connection:
        """A pooled connection. While the server cannot be reached (connection refused,
        starting up, shutting down: a restart or a failover), connecting is retried
        here with backoff for up to ``reconnect_seconds`` (unless ``wait`` is false),
        then it is Unavailable.

        Why here and not in the Store's retry policy: nothing has been sent yet, so
        waiting is always safe, and a restart lasts seconds, while the policy's
        attempts, milliseconds apart for lock races, would all be spent in well
        under one. Dead pooled connections never get this far: the liveness probe
        (``install_liveness_probe``) replaces them at checkout.
        """
        waiting = ConnectWait(self.reconnect_seconds, wait)
        while True:
            try:
                return self.engine.connect()
            except (TypeError, ValueError, SQLAlchemyError) as exc:
                time.sleep(waiting.after(self.dialect, exc))

    @staticmethod
    def _release(conn: Connection) -> None:
        """Return the connection to the pool. Engines are built with
        ``pool_reset_on_return=None``: every transaction here ends in its own COMMIT
        or ROLLBACK, so the pool's reset would only cost a round trip (PyMySQL sends a
        real ROLLBACK) and could fail *after* a write's outcome was decided."""
        try:
            conn.close()
        except SQLAlchemyError:
            log.warning("could not return a connection to the pool", exc_info=True)

    def drive(self, conn: Connection, step: Step[T]) -> T:
        """Run a protocol on ``conn``: send each statement it yields, send it back the
        result, or throw in the translated error (chained to the driver's)."""
        stepper = Stepper(self.dialect, step)
        op = stepper.feed()
        send = self._on_driver if self.dialect.driver_cursor else self._on_connection
        while op is not None:
            try:
                result = send(conn, op)
            except DB_ERRORS as exc:
                op = stepper.feed(error=exc)
            else:
                op = stepper.feed(result)
        return stepper.result()

    @staticmethod
    def _on_connection(conn: Connection, op: Op) -> Any:
        """One statement through SQLAlchemy's ``Connection``."""
        if isinstance(op, Execute):
            return conn.execute(op.statement, op.params)
        return conn.exec_driver_sql(op.sql, op.params)

    def _on_driver(self, conn: Connection, op: Op) -> Any:
        """One statement on the driver's own cursor (``compiled``): the text, values
        and rows SQLAlchemy's ``Connection.execute`` would produce, without its
        execution context and ``CursorResult``, which cost as much CPU as the driver on
        a small write. A failure goes through the ``Connection``'s own handling, so it
        is wrapped, and a lost connection invalidated (with the pool), exactly as there.
        """
        if conn.invalidated:
            # Whatever SQLAlchemy says of a statement on a dropped connection.
            return self._on_connection(conn, op)
        shape: Shape | None = None
        if isinstance(op, Execute):
            sql, params, many, shape = self.statements.prepare(op.statement, op.params)
        else:
            sql, params, many = op.sql, op.params, False
        return on_cursor(conn, sql, params, many, shape, self.statements.driver_shapes)

    def run(self, step: Step[T], wait: bool = True) -> T:
        """Run a protocol on a pooled connection with no transaction around it: reads,
        and statements that are safe to re-run. (``wait``: as in ``_connect``.)"""
        return self.run_on_connection(lambda conn: self.drive(conn, step), wait)

    def point_read(self, make: Callable[[], Step[T]]) -> T:
        """A read of one row by key (``operations.point_read_call``): here, a read."""
        return self.run(make())

    def run_on_connection(self, fn: Callable[[Connection], T], wait: bool = True) -> T:
        conn = self._connect(wait)
        try:
            self._lock_wait(conn, short=False)
            return fn(conn)
        except DB_ERRORS as exc:
            raise self._translate_any(exc) from exc
        finally:
            self._release(conn)

    def run_write_statement(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn``, a write that commits by itself, on a pooled connection: its lost
        connection may have committed, so it is an AmbiguousCommit, never retried."""

        def once(conn: Connection) -> T:
            try:
                return fn(conn)
            except DB_ERRORS as exc:
                err = self._translate_any(exc)
                if isinstance(err, Disconnected):
                    raise AmbiguousCommit(
                        f"connection lost during a one-statement write: {exc}"
                    ) from exc
                raise err from exc

        return self.run_on_connection(once)

    def transaction(
        self, step: Step[T], begin: str | None = None, short_lock_wait: bool = False
    ) -> T:
        """Run a protocol inside one explicit transaction (``protocol.in_transaction``).
        On any error (and on an interruption) the transaction is rolled back, or the
        connection dropped, before it goes back to the pool; retryable errors are
        re-run by the caller's retry policy. ``short_lock_wait``: a batch's (see
        ``batch.lock_wait``)."""
        begin = begin or self.dialect.begin_write
        # The gate before the connection, as a batch's leader takes them (it holds the
        # gate while it takes its batch): a writer holding a connection while it waits
        # for the gate could leave the leader none in a small pool.
        with self.dialect.write_gate(begin):
            conn = self._connect()
            try:
                self._lock_wait(conn, short_lock_wait)
                return self.drive(conn, in_transaction(step, begin))
            except BaseException:
                self._rollback(conn)
                raise
            finally:
                self._release(conn)

    def _lock_wait(self, conn: Connection, short: bool) -> None:
        setting = lock_wait(conn.info, self.dialect.batch_lock_wait, short)
        if setting is not None:
            self.drive(conn, setting)

    @staticmethod
    def _rollback(conn: Connection) -> None:
        if conn.invalidated:
            return
        try:
            conn.exec_driver_sql("ROLLBACK")
        except SQLAlchemyError:
            conn.invalidate()

    def create_schema(self) -> int:
        """Create the tables, or bring older ones to this release's schema version, or
        refuse a newer one (:class:`SchemaMismatch`); once per backend. Returns the
        schema version.

        Any number of processes may make their first call at the same instant on a
        fresh database: each takes the database-level schema lock of its backend
        (``_schema_lock``) and only then looks at what exists, so one of them creates
        or migrates and the others find the work done.
        """
        if self.schema_version is not None:
            return self.schema_version
        conn = self._connect()
        try:
            self._lock_wait(conn, short=False)
            version = ensure_schema(conn, self.dialect, self.migrator)
        except SQLAlchemyError as exc:
            raise self._translate_any(exc) from exc
        finally:
            self._release(conn)
        self.schema_version = version
        return version

    def ping(self) -> None:
        # A readiness probe answers at once: it never waits for a server that is down.
        self.run(self.protocol.ping(), wait=False)

    def dispose(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- writes
    # Reads and the idempotency-key statements are protocols run by ``run`` (see
    # ``revstore.operations``); a write picks its path by the strategy here.

    def write_record(
        self, intent: WriteIntent, transform: Transform | None = None, claim: Claim | None = None
    ) -> Record:
        """One attempt at a write with this backend's strategy (the Store retries).
        With a ``claim``, the idempotency key is applied in the same transaction."""
        if self.strategy.one_statement_put(intent, transform, claim):
            done = self.one_statement_put(intent)
            if done is not None:
                return done
        return self.commit(record_pending(self.strategy, self.protocol, intent, transform, claim))

    def append(self, batch: AppendBatch, claim: Claim | None = None) -> AppendResult:
        """One attempt at an append with this backend's strategy (the Store retries).
        With a ``claim``, the idempotency key is applied in the same transaction."""
        if batch.item_ids is not None and claim is None:
            # Stored items never change, so a complete re-send is answered from a plain
            # read without taking the stream lock (the common case of a retrying pod).
            resent = self.run(self.protocol.resent(batch))
            if resent is not None:
                return resent
        if self.strategy.one_statement_append(batch, claim):
            done = self.one_statement_append(batch)
            if done is not None:
                return done
        return self.commit(append_pending(self.strategy, self.protocol, batch, claim))

    def commit(self, pending: Pending[T]) -> T:
        """Run a write's transaction: alone, or with group commit in the transaction
        of a batch (``batch``)."""
        if self.batches is None or not self.strategy.batchable:
            return self._commit_alone(pending).get()
        outcome: Outcome[T] = self.batches.submit(pending)
        return outcome.get()

    def _commit_alone(self, pending: Pending[T]) -> Outcome[T]:
        tx = pending.make()
        return Outcome(self.transaction(tx.step, tx.begin))

    def _commit_together(
        self, batch: list[Pending[Any]], together: bool = True
    ) -> list[Outcome[Any] | Locked]:
        if not batch:
            return []
        if len(batch) == 1 and self.dialect.batch_lock_wait is None:
            # Nobody to share with, and no row lock to wait for briefly (SQLite): its
            # own transaction. On MariaDB a lone write too waits briefly for a row held
            # elsewhere, then alone (LOCKED), after the leadership is handed on: the
            # writes queueing behind it must not wait for that row with it.
            return [self._commit_alone(batch[0])]
        try:
            outcomes = self.transaction(
                one_by_one(batch, self.protocol.writes_together if together else None),
                short_lock_wait=True,
            )
        except Tainted as tainted:
            i = tainted.index
            if i is None:
                # Rolled back: again, each write on its own protocol.
                return self._commit_together(batch, together=False)
            # Rolled back: the others again, then the tainted write alone.
            results = self._commit_together([p for k, p in enumerate(batch) if k != i])
            alone: Outcome[Any] | Locked = LOCKED
            if not tainted.locked:  # else it waits for its row alone, as above
                try:
                    alone = self._commit_alone(batch[i])
                except Exception as exc:
                    alone = Outcome(error=exc)
            results.insert(i, alone)
            return results
        return [LOCKED if o.locked else o for o in outcomes]

    def one_statement_put(self, intent: WriteIntent) -> Record | None:
        """A put as one self-committing counter statement (PostgreSQL); None when this
        executor has none, or when it did not apply (the strategy's transaction then
        decides, under a row lock)."""
        return None

    def one_statement_append(self, batch: AppendBatch) -> AppendResult | None:
        """The same for an append without item ids."""
        return None
