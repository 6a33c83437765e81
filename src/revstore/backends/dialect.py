"""What one database is: its engine set-up, ``BEGIN``, insert-if-absent, error table,
schema lock and counter statements. Each database module (``sqlite``, ``postgresql``,
``mysql``) defines one ``Dialect``; the executor (``sql.SqlBackend``) and the
strategies (``strategy``) use it and never test which database they are on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, bindparam, func, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from revstore import schema
from revstore.backends.groupcommit import Locked
from revstore.backends.ops import Execute, Step
from revstore.config import DatabaseURL
from revstore.errors import RevstoreError
from revstore.record import WriteIntent
from revstore.stream import AppendBatch

Put = tuple[int, int, Any, datetime]
"""What a one-statement put took: revision, version, the record's ``created_at`` (as
the driver returns it) and the write's time."""
Appended = tuple[int, datetime]
"""What a one-statement append took: its first sequence and the write's time."""
Bumped = tuple[int, int, datetime | str]
"""What a counter statement took for a record: revision, version and the record's
``created_at`` (as the driver returns it)."""

HEAD_COLUMNS = {
    "revstore_records": ("revision", "version", "content", "content_hash", "updated_at"),
    "revstore_streams": ("last_sequence", "item_count", "updated_at"),
}
"""What a batch's shared statements change in a head row (``Dialect.write_heads``)."""


def _update_heads(table: Any) -> Any:
    # Bind names differ from the column names, which an UPDATE's SET reserves.
    return (
        update(table)
        .where(table.c.namespace == bindparam("h_namespace"), table.c.id == bindparam("h_id"))
        .values({c: bindparam(f"h_{c}") for c in HEAD_COLUMNS[table.name]})
    )


_UPDATE_HEADS = {t.name: _update_heads(t) for t in (schema.records, schema.streams)}


def stream_counter_params(batch: AppendBatch, ts: datetime) -> dict[str, Any]:
    """The bind parameters every dialect's stream counter statement shares
    (``bump_stream``, PostgreSQL's append): how many items, the time, the key and the
    expectation."""
    return {
        "n": len(batch.bodies),
        "now": ts,
        "ns": batch.namespace,
        "id": batch.stream_id,
        "exp": batch.expected,
    }


def counter_params(intent: WriteIntent, ts: datetime) -> dict[str, Any]:
    """The bind parameters of every dialect's counter statement for a put (``bump_head``,
    PostgreSQL's ``put_one``): the bump, the new content, the time, the key and the
    expectation."""
    return {
        "bump": 1 if intent.create_version else 0,
        "content": intent.content_text,
        "hash": intent.content_hash,
        "now": ts,
        "ns": intent.namespace,
        "id": intent.id,
        "exp": intent.expected_revision,
    }


class Dialect:
    """Base of the three dialects: the portable defaults."""

    name: ClassVar[str] = "sql"
    default_strategy: ClassVar[str] = "lock"
    begin_write: ClassVar[str] = "BEGIN"
    """Opens a write transaction (SQLite: BEGIN IMMEDIATE takes the write lock up front)."""
    begin_optimistic: ClassVar[str] = "BEGIN"
    begin_schema: ClassVar[str] = "BEGIN"
    """Opens the transaction that schema creation and migration run in."""
    counter_puts: ClassVar[bool] = False
    """Whether ``bump_head`` exists (a put takes its numbers in one statement)."""
    counter_appends: ClassVar[bool] = False
    """Whether ``bump_stream`` exists (an append takes its sequences in one statement)."""
    batches_transactions: ClassVar[bool] = True
    """Whether group commit runs concurrent write transactions in one (``batch``).
    PostgreSQL batches its one-statement writes instead (``PostgresBackend``)."""
    async_in_threads: ClassVar[bool] = False
    """Whether ``AsyncStore`` runs this database's sync executor in threads
    (``threaded``) rather than an asyncio driver (SQLite: it has no I/O to wait on)."""
    point_reads_inline: ClassVar[bool] = False
    """Whether, with ``async_in_threads``, a read of one row by key runs on the event
    loop's thread, on a connection that never waits for a lock (SQLite in WAL)."""
    batch_lock_wait: ClassVar[tuple[str, str] | None] = None
    """Statements that shorten, and restore, how long a connection's statements wait for
    a row lock: short in a batch (``batch.lock_wait``). None: the database has no row
    locks, or no such setting."""
    driver_cursor: ClassVar[bool] = False
    """Whether the sync executor sends the protocols' statements on the driver's cursor
    (``SqlBackend._on_driver``) rather than through SQLAlchemy's ``Connection``: the
    databases whose whole write path is a transaction of such statements (SQLite,
    MariaDB/MySQL). PostgreSQL's hot writes are its one-statement counter writes, sent
    on psycopg's cursor already."""
    batch_leaders: ClassVar[int] = 1
    """How many batches of one process may be in flight at once (SQLite: one, it has
    one writer at a time anyway)."""

    def create_engine(self, url: DatabaseURL, pool_size: int, max_overflow: int) -> Engine:
        """The engine: driver autocommit (the executor issues BEGIN / COMMIT itself)."""
        raise NotImplementedError

    async def create_async_engine(
        self, url: DatabaseURL, pool_size: int, max_overflow: int
    ) -> AsyncEngine:
        """The same engine on the dialect's native asyncio driver (``ASYNC_DRIVERS``)."""
        raise NotImplementedError

    def insert_ignore(self, table: Any) -> Insert:
        """INSERT that does nothing when the primary key exists."""
        raise NotImplementedError

    def translate(self, exc: DBAPIError) -> RevstoreError:
        """Map a driver error to revstore's categories, from this dialect's error table."""
        raise NotImplementedError

    def content_bytes(self, column: Any) -> ColumnElement[int]:
        """Size in bytes (UTF-8) of a stored JSON text column, computed in the
        database so that a page can be cut before its rows are fetched."""
        return func.octet_length(column)

    # ---------------------------------------------------------------- schema

    def prepare_ddl(self, conn: Connection) -> None:
        """Hook run before the schema lock is taken (SQLite switches the file to WAL)."""

    @contextmanager
    def write_gate(self, begin: str) -> Iterator[None]:
        """Held around a transaction opened with ``begin`` (SQLite: the writers of every
        process queue here rather than in the file lock's busy handler). Nothing here."""
        yield

    @contextmanager
    def schema_lock(
        self, conn: Connection, rollback: Callable[[Connection], None]
    ) -> Iterator[None]:
        """Hold the database-wide schema lock, in one transaction where DDL is
        transactional (PostgreSQL, SQLite): the checks, the DDL and the version bump
        commit together, so a waiter that gets the lock sees all of it or none."""
        conn.exec_driver_sql(self.begin_schema)
        try:
            self.take_schema_lock(conn)
            yield
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            # Nothing half-done stays: the next look under the lock starts clean.
            rollback(conn)
            raise

    def take_schema_lock(self, conn: Connection) -> None:
        """Hook run right after ``begin_schema`` (PostgreSQL: the advisory lock)."""

    def already_exists(self, exc: DBAPIError) -> bool:
        """The statement failed because the table / index it creates exists."""
        return False

    # ---------------------------------------------------------------- counter statements

    def bump_head(self, intent: WriteIntent, ts: datetime) -> Step[Bumped | None]:
        """Take the record's next numbers in one statement, inside the caller's write
        transaction, and store the intent's content; None when the statement did not
        apply (absent, deleted, unchanged or a failed expectation: the general path
        decides, in the same transaction). Only where ``counter_puts``."""
        raise NotImplementedError

    def write_heads(self, table: Any, heads: list[dict[str, Any]]) -> Execute:
        """The statement that sets the head rows of ``table`` (records or streams) a
        batch decided (``Protocol.writes_together``): rows that exist and that this
        transaction holds, each given as all its columns. Here an executemany of one
        UPDATE (a loop in the driver's C code on SQLite)."""
        keys = ("namespace", "id", *HEAD_COLUMNS[table.name])
        return Execute(_UPDATE_HEADS[table.name], [{f"h_{k}": h[k] for k in keys} for h in heads])

    one_statement_writes: ClassVar[bool] = False
    """Whether the dialect has self-committing counter statements (``put_one`` …),
    sent with no transaction around them, with group commit (PostgreSQL)."""

    def put_one(self, intent: WriteIntent) -> Step[Put | None]:
        """A put as one self-committing statement, waiting for its row: its numbers, or
        None when it did not apply (absent, deleted, unchanged, a failed expectation:
        the strategy's transaction then decides). Only where ``one_statement_writes``."""
        raise NotImplementedError

    def put_many(self, intents: list[WriteIntent]) -> Step[list[Put | Locked | None]]:
        """Puts to distinct records as one self-committing statement that never waits
        for a row held elsewhere (``LOCKED``): a group-commit batch."""
        raise NotImplementedError

    def put_chain(self, intents: list[WriteIntent]) -> Step[list[Put | None]]:
        """Several puts to one record as one self-committing statement, waiting for its
        row, applied in order, each at its turn as ``put_one`` would (a group-commit
        chain): each one's numbers, or None when it did not apply."""
        raise NotImplementedError

    def append_one(self, batch: AppendBatch) -> Step[Appended | None]:
        """The same as ``put_one`` for an append without item ids."""
        raise NotImplementedError

    def append_many(self, batches: list[AppendBatch]) -> Step[list[Appended | Locked | None]]:
        """The same as ``put_many`` for appends to distinct streams."""
        raise NotImplementedError

    def append_chain(self, batches: list[AppendBatch]) -> Step[list[Appended | None]]:
        """The same as ``put_chain`` for appends to one stream."""
        raise NotImplementedError

    def shared_failure(self, exc: BaseException) -> bool:
        """Whether a failed ``put_many`` / ``append_many`` failed for every write of it
        (else it is split: ``groupcommit``)."""
        return True

    def bump_stream(self, batch: AppendBatch, ts: datetime) -> Step[int | None]:
        """Take the batch's sequences of a stream in one statement, inside the caller's
        write transaction; the stream's new last sequence, or None when it did not
        apply. Only where ``counter_appends``."""
        raise NotImplementedError
