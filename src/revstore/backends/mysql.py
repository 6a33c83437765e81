"""MySQL / MariaDB (PyMySQL): the atomic counter with ``LAST_INSERT_ID(n + 1)``.

``UPDATE … SET revision = LAST_INSERT_ID(revision + 1)`` takes the InnoDB row lock and
hands the new number back in the statement's OK packet, without a second query (a put
packs its revision and version in that one number, ``PACKED``).
Sessions run READ COMMITTED: no gap locks (two first writers of a new id do not
deadlock on a gap), and each statement sees every commit made before it, which is
what the re-check of item ids under the stream lock relies on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

import pymysql
from sqlalchemy import Connection, bindparam, create_engine, event, text
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from revstore import schema
from revstore.backends.dialect import (
    HEAD_COLUMNS,
    Bumped,
    Dialect,
    counter_params,
    stream_counter_params,
)
from revstore.backends.ops import Execute, Step
from revstore.backends.sql import SqlBackend, install_liveness_probe
from revstore.config import (
    ASYNC_DRIVERS,
    CONNECT_TIMEOUT,
    MAX_OVERFLOW,
    POOL_SIZE,
    DatabaseURL,
    with_query,
)
from revstore.errors import InvalidInput, RevstoreError, Unavailable
from revstore.failures import (
    Disconnected,
    Duplicate,
    Failure,
    LockWaitTimedOut,
    Transient,
    classify,
)
from revstore.record import WriteIntent
from revstore.stream import AppendBatch

FAILURES: dict[int, Failure] = {
    1213: Failure(Transient, "deadlock"),
    1205: Failure(LockWaitTimedOut, "lock wait timeout"),
    1040: Failure(Transient, "too many connections"),
    1062: Failure(Duplicate, "unique key violated"),
    # The session is gone: the work of any transaction not yet committed was rolled back.
    2003: Failure(Disconnected, "can't connect"),
    2006: Failure(Disconnected, "server has gone away"),
    2013: Failure(Disconnected, "lost connection during query"),
    2055: Failure(Disconnected, "lost connection"),
    1053: Failure(Disconnected, "server shutdown in progress"),
    1927: Failure(Disconnected, "connection killed"),
    4031: Failure(Disconnected, "disconnected for inactivity"),
}
"""Server / client error number → failure category."""
# Values the server refuses (strict mode): too long, out of range, bad string, NULL in a
# NOT NULL column, truncated. The caller's input, not the database's state.
DATA_ERRORS = {1048, 1264, 1265, 1292, 1366, 1406, 1690, 3140}

PACKED = 1 << 32
"""``_BUMP_HEAD`` hands back both new numbers in the one value of ``LAST_INSERT_ID``:
``revision * PACKED + version``, while revision < 2**31 and version < 2**32 (so that
it fits a signed BIGINT); else 0, and the numbers are read back."""

# Both numbers come back in the OK packet (``PACKED``), without a second query. The
# CASE reads the old revision and version only (the first assignment of the statement),
# so it means the same whatever order the server evaluates the SET list in
# (SIMULTANEOUS_ASSIGNMENT or not). ``{created}``: the check that the row's created_at
# is the one this process saw (``MysqlDialect.created``): then it is the record's.
_BUMP_HEAD_SQL = """
    UPDATE revstore_records
       SET revision = CASE
             WHEN revision < 2147483647 AND version + :bump < 4294967296
             THEN LAST_INSERT_ID((revision + 1) * 4294967296 + version + :bump) DIV 4294967296
             ELSE revision + 1 + 0 * LAST_INSERT_ID(0)
           END,
           version = version + :bump,
           content = :content,
           content_hash = :hash,
           updated_at = :now
     WHERE namespace = :ns AND id = :id AND deleted = 0
       AND content_hash <> :hash
       AND (:exp IS NULL OR revision = :exp){created}
    """
_BUMP_HEAD = text(_BUMP_HEAD_SQL.format(created="")).bindparams(
    bindparam("now", type_=schema.Timestamp)
)
_BUMP_HEAD_SEEN = text(
    _BUMP_HEAD_SQL.format(created="\n       AND created_at = :created")
).bindparams(bindparam("now", type_=schema.Timestamp), bindparam("created", type_=schema.Timestamp))

_HEAD_AFTER_BUMP = text(
    "SELECT revision, version, created_at FROM revstore_records WHERE namespace = :ns AND id = :id"
)


def _heads_upsert(table: Any) -> Any:
    # Every row it names exists and is locked by the batch's transaction, so this always
    # takes the UPDATE branch; as an INSERT, PyMySQL sends an executemany of it as one
    # multi-row statement (an UPDATE would be one round trip per row).
    upsert = mysql_insert(table)
    return upsert.on_duplicate_key_update({c: upsert.inserted[c] for c in HEAD_COLUMNS[table.name]})


_WRITE_HEADS = {t.name: _heads_upsert(t) for t in (schema.records, schema.streams)}

CREATED_KEYS = 8192
"""Bound on the records whose created_at a dialect remembers (cleared when reached)."""

_BUMP_STREAM = text(
    """
    UPDATE revstore_streams
       SET last_sequence = LAST_INSERT_ID(last_sequence + :n),
           item_count = item_count + :n,
           updated_at = :now
     WHERE namespace = :ns AND id = :id
       AND (:exp IS NULL OR last_sequence = :exp)
    """
).bindparams(bindparam("now", type_=schema.Timestamp))


def _url(url: DatabaseURL, dialect: str, driver: str | None = None) -> str:
    charset = make_url(url.url).query.get("charset")
    if charset not in (None, "utf8mb4"):
        # Another connection charset would transcode (or mangle) text on the way.
        raise InvalidInput(f"charset={charset} in the URL: revstore needs utf8mb4 (or no charset)")
    # utf8mb4: every code point, not MySQL's three-byte "utf8".
    return with_query(url.sqlalchemy(dialect, driver), "charset", "utf8mb4")


def _options(pool_size: int, max_overflow: int, connect_timeout: int) -> dict[str, Any]:
    return {
        # Driver autocommit: the executor issues BEGIN / COMMIT itself.
        "isolation_level": "AUTOCOMMIT",
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_reset_on_return": None,  # see SqlBackend._release
        "pool_recycle": 3600,
        "connect_args": {"connect_timeout": connect_timeout},
    }


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cur.close()


def _engine(
    url: DatabaseURL, dialect: str, pool_size: int, max_overflow: int, connect_timeout: int
) -> Engine:
    engine = create_engine(_url(url, dialect), **_options(pool_size, max_overflow, connect_timeout))
    event.listen(engine, "connect", _on_connect)
    install_liveness_probe(engine, lambda conn: int(conn._sock.fileno()))
    return engine


def _async_engine(
    url: DatabaseURL, dialect: str, pool_size: int, max_overflow: int, connect_timeout: int
) -> AsyncEngine:
    engine = create_async_engine(
        _url(url, dialect, ASYNC_DRIVERS["mysql"]),
        **_options(pool_size, max_overflow, connect_timeout),
    )
    event.listen(engine.sync_engine, "connect", _on_connect)
    install_liveness_probe(engine.sync_engine, lambda conn: _asyncmy_fileno(conn.driver_connection))
    return engine


def _asyncmy_fileno(conn: Any) -> int:
    """The socket of an asyncmy connection, for the liveness probe; -1 (dead) when its
    transport is closing: the event loop reads an idle asyncio socket itself, so a
    server's EOF shows there rather than as a readable socket."""
    transport = conn._transport
    if transport is None or transport.is_closing():
        return -1
    return int(transport.get_extra_info("socket").fileno())


class MysqlDialect(Dialect):
    name: ClassVar[str] = "mysql"
    default_strategy: ClassVar[str] = "counter"
    counter_puts: ClassVar[bool] = True
    counter_appends: ClassVar[bool] = True
    # One batch of a process in flight, as on SQLite: the writes queued meanwhile make
    # the next batch larger, so fewer round trips (BEGIN, the lock-wait settings,
    # COMMIT) per write. In-process, 16 threads, 2 cores: on a loaded machine 1 leader
    # ran 1.3-1.5x as fast as 4 (hot and spread, records and streams); on a quiet one
    # (spread records) as fast, at 0.65x the client CPU per write
    # (``benchmarks/results/2026-11-30-batched-cpu.md``).
    batch_leaders: ClassVar[int] = 1
    driver_cursor: ClassVar[bool] = True
    # A batch waits at most 1 s for a row another client holds (a long transaction
    # elsewhere), then hands that write back to its writer to wait alone: one busy
    # record must not stall the unrelated writes batched with it for the server's
    # default 50 s. The session's default is restored before the connection is used
    # for anything but a batch (``batch.lock_wait``).
    batch_lock_wait: ClassVar[tuple[str, str] | None] = (
        "SET SESSION innodb_lock_wait_timeout = 1",
        "SET SESSION innodb_lock_wait_timeout = DEFAULT",
    )

    def __init__(self, connect_timeout: int = CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        self.created: dict[tuple[str, str], Any] = {}
        """The created_at of records this process bumped (as the driver returned it):
        a put sends it as a condition of its counter statement, so that a match
        proves it and no read is needed. Never trusted otherwise."""

    def create_engine(self, url: DatabaseURL, pool_size: int, max_overflow: int) -> Engine:
        engine = _engine(url, "mysql", pool_size, max_overflow, self.connect_timeout)
        try:
            with engine.connect():
                mariadb = bool(getattr(engine.dialect, "is_mariadb", False))
        except SQLAlchemyError:
            mariadb = False  # unreachable now; errors surface on first use
        except (TypeError, ValueError) as exc:
            engine.dispose()
            raise InvalidInput(f"the database URL has an option PyMySQL refuses: {exc}") from exc
        if mariadb:
            # The "mariadb" dialect name selects MariaDB's no-pad binary collation.
            engine.dispose()
            engine = _engine(url, "mariadb", pool_size, max_overflow, self.connect_timeout)
        return engine

    async def create_async_engine(
        self, url: DatabaseURL, pool_size: int, max_overflow: int
    ) -> AsyncEngine:
        engine = _async_engine(url, "mysql", pool_size, max_overflow, self.connect_timeout)
        try:
            async with engine.connect():
                mariadb = bool(getattr(engine.dialect, "is_mariadb", False))
        except SQLAlchemyError:
            mariadb = False  # unreachable now; errors surface on first use
        if mariadb:
            # The "mariadb" dialect name selects MariaDB's no-pad binary collation.
            await engine.dispose()
            engine = _async_engine(url, "mariadb", pool_size, max_overflow, self.connect_timeout)
        return engine

    # ---------------------------------------------------------------- schema

    schema_lock_timeout: ClassVar[int] = 300
    """Seconds to wait for another process's schema creation or migration."""

    @contextmanager
    def schema_lock(
        self, conn: Connection, rollback: Callable[[Connection], None]
    ) -> Iterator[None]:
        # DDL commits by itself here, so no transaction can hold the work together: a
        # named server lock does, taken and released on this one connection (the server
        # drops it too if the connection dies). The name is server-wide, hence the
        # database in it; at most 64 characters.
        name = "LEFT(CONCAT('revstore_schema.', COALESCE(DATABASE(), '')), 64)"
        got = conn.exec_driver_sql(f"SELECT GET_LOCK({name}, {self.schema_lock_timeout})").scalar()
        if got != 1:
            # 0: timed out; NULL: the server refused (e.g. killed while waiting).
            raise Unavailable(
                f"could not take the schema lock within {self.schema_lock_timeout} s "
                f"(GET_LOCK returned {got}): another process is creating or upgrading "
                "the tables"
            )
        try:
            yield
        finally:
            try:
                conn.exec_driver_sql(f"DO RELEASE_LOCK({name})")
            except SQLAlchemyError:
                # Never hand a connection that may still hold the lock back to the pool.
                logging.getLogger("revstore.backend").warning(
                    "could not release the schema lock", exc_info=True
                )
                conn.invalidate()

    def already_exists(self, exc: DBAPIError) -> bool:
        args: tuple[Any, ...] = getattr(exc.orig, "args", ())
        # 1050 table exists, 1061 duplicate index name, 1060 duplicate column.
        return bool(args) and args[0] in (1050, 1060, 1061)

    def insert_ignore(self, table: Any) -> Insert:
        return mysql_insert(table).prefix_with("IGNORE")

    def translate(self, exc: DBAPIError) -> RevstoreError:
        orig = exc.orig
        args: tuple[Any, ...] = getattr(orig, "args", ())
        errno = args[0] if args and isinstance(args[0], int) else None
        message = str(args[1]) if len(args) > 1 else str(orig)
        constraint = message.rsplit("for key ", 1)[-1].strip("'") if "for key" in message else None
        found = classify(FAILURES, (errno,), message, str(errno), constraint)
        if found is not None:
            return found
        if errno in DATA_ERRORS or isinstance(orig, pymysql.err.DataError):
            return InvalidInput(f"MySQL refused a value ({errno}): {orig}")
        if errno is None and isinstance(
            orig, (pymysql.err.ProgrammingError, pymysql.err.NotSupportedError)
        ):
            # Raised by PyMySQL before sending (a closed cursor, a bad argument): no
            # error number, and nothing reached the server. Not a lost connection.
            return Unavailable(f"PyMySQL refused the request: {orig}")
        if errno is None:
            # No error number from the server: PyMySQL lost the socket or the protocol
            # (a reply out of sequence) after sending, so the statement may have run.
            return Disconnected(f"connection lost: {orig}")
        return Unavailable(f"MySQL error {errno}: {orig}")

    # ---------------------------------------------------------------- counter statements

    def bump_head(self, intent: WriteIntent, ts: datetime) -> Step[Bumped | None]:
        key = (intent.namespace, intent.id)
        params = counter_params(intent, ts)
        created = self.created.get(key)
        if created is not None:
            params["created"] = created
        result = yield Execute(_BUMP_HEAD if created is None else _BUMP_HEAD_SEEN, params)
        if result.rowcount != 1:
            # Absent, deleted, unchanged, a failed expectation, or (seen) a record
            # deleted and created again since: the general path reads the row.
            self.created.pop(key, None)
            return None
        packed = int(result.lastrowid or 0)
        if created is not None and packed >= PACKED:
            # The statement matched this created_at: it is the record's.
            return packed // PACKED, packed % PACKED, created
        # This transaction holds the row lock taken by the UPDATE: the row read here is
        # the one it just wrote.
        head = (yield Execute(_HEAD_AFTER_BUMP, {"ns": intent.namespace, "id": intent.id})).one()
        if len(self.created) >= CREATED_KEYS:
            self.created.clear()
        self.created[key] = head[2]
        return int(head[0]), int(head[1]), head[2]

    def write_heads(self, table: Any, heads: list[dict[str, Any]]) -> Execute:
        return Execute(_WRITE_HEADS[table.name], heads)

    def bump_stream(self, batch: AppendBatch, ts: datetime) -> Step[int | None]:
        result = yield Execute(_BUMP_STREAM, stream_counter_params(batch, ts))
        return int(result.lastrowid) if result.rowcount == 1 else None


def make_dialect(connect_timeout: int = CONNECT_TIMEOUT, **_: Any) -> MysqlDialect:
    return MysqlDialect(connect_timeout)


def open_backend(
    url: DatabaseURL,
    strategy: str | None = None,
    pool_size: int = POOL_SIZE,
    max_overflow: int = MAX_OVERFLOW,
    connect_timeout: int = CONNECT_TIMEOUT,
    group_commit: bool = True,
    **_: Any,
) -> SqlBackend:
    dialect = MysqlDialect(connect_timeout)
    return SqlBackend(
        dialect, dialect.create_engine(url, pool_size, max_overflow), strategy, group_commit
    )
