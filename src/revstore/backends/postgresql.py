"""PostgreSQL (psycopg 3): the atomic counter in one statement.

A record write is one data-modifying CTE: ``UPDATE … SET revision = revision + 1 …
RETURNING`` feeding the history ``INSERT``, sent in driver autocommit. The row lock
the UPDATE takes is held only while the server runs that one statement, never across
a client round trip, which is what keeps a hot record fast. Under READ COMMITTED a
writer that queued on the lock re-evaluates its ``WHERE`` on the newest row version
(EvalPlanQual), so ``revision + 1`` is always computed from the committed winner.

Group commit (``groupcommit``) sends concurrent writes to different records or streams
as one statement (``_PUT_MANY``, ``_APPEND_MANY``; ``_PUT_TRY``, ``_APPEND_TRY`` for a
lone one). Those never wait on a row lock: they take their rows with ``FOR UPDATE SKIP
LOCKED`` and report a row held elsewhere, whose write is then sent again by itself with
``_PUT`` / ``_APPEND``, which wait in the server's lock queue outside the group commit.
A batch statement that fails for one write's reason is split (``_shared_failure``).
Writes to a record or stream already in flight queue per key and go together as a chain
(``_PUT_CHAIN``, ``_APPEND_CHAIN``): one statement that applies them in order under one
row lock, each with its own conditions, so a hot record is no longer one commit per write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar, cast

import psycopg
from psycopg import Cursor, pq
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.psycopg import _log_notices
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from revstore.backends.dialect import (
    Appended,
    Dialect,
    Put,
    counter_params,
    stream_counter_params,
)
from revstore.backends.groupcommit import LOCKED, GroupCommit, Locked
from revstore.backends.ops import Raw, Step
from revstore.backends.pgaio import PsycopgPool, wrapped
from revstore.backends.protocol import appended, written_head
from revstore.backends.sql import SqlBackend, install_liveness_probe, now
from revstore.config import (
    ASYNC_DRIVERS,
    CONNECT_TIMEOUT,
    MAX_OVERFLOW,
    POOL_SIZE,
    PREPARE_AFTER,
    DatabaseURL,
    parse_url,
)
from revstore.config import AUTO as AUTO
from revstore.config import prepare_threshold as prepare_threshold
from revstore.errors import (
    AmbiguousCommit,
    InvalidInput,
    RevstoreError,
    Unavailable,
)
from revstore.failures import (
    Disconnected,
    Duplicate,
    Failure,
    Retryable,
    Transient,
    classify,
)
from revstore.record import Record, WriteIntent
from revstore.stream import AppendBatch, AppendResult

T = TypeVar("T")

FAILURES: dict[str, Failure] = {
    "40001": Failure(Transient, "serialization_failure"),
    "40P01": Failure(Transient, "deadlock_detected"),
    "55P03": Failure(Transient, "lock_not_available"),
    "53300": Failure(Transient, "too_many_connections"),
    "57014": Failure(Transient, "query_canceled"),
    "23505": Failure(Duplicate, "unique_violation"),
    # The session is gone (terminated, server restarting, network): the work of any
    # transaction not yet committed was rolled back.
    "57P01": Failure(Disconnected, "admin_shutdown"),
    "57P02": Failure(Disconnected, "crash_shutdown"),
    "57P03": Failure(Disconnected, "cannot_connect_now"),
    "08": Failure(Disconnected, "connection_exception"),  # the whole class 08
}
"""SQLSTATE (or its two-character class) → failure category."""

# The counter statements are sent straight through psycopg (see ``_statement``), in
# psycopg's ``%(name)s`` parameter style: exactly the text SQLAlchemy compiled from the
# former ``text()`` constructs, so the server receives byte-for-byte the same statement.
# psycopg prepares it server-side on a connection after ``prepare_threshold`` (5) runs.
# ``_PUT`` and ``_APPEND`` wait for a row held by another writer (the lock queue orders a
# hot record); they are sent only outside a group commit's leadership.
_PUT = """
    WITH head AS (
        UPDATE revstore_records
           SET revision = revision + 1,
               version = version + %(bump)s,
               content = %(content)s,
               content_hash = %(hash)s,
               updated_at = %(now)s
         WHERE namespace = %(ns)s AND id = %(id)s AND NOT deleted
           AND content_hash <> %(hash)s
           AND (CAST(%(exp)s AS bigint) IS NULL OR revision = CAST(%(exp)s AS bigint))
        RETURNING revision, version, created_at
    ), snapshot AS (
        INSERT INTO revstore_versions
            (namespace, record_id, version, revision, content, content_hash,
             author, summary, created_at)
        SELECT %(ns)s, %(id)s, head.version, head.revision, %(content)s, %(hash)s,
               %(author)s, %(summary)s, %(now)s
          FROM head
         WHERE %(bump)s = 1
    )
    SELECT revision, version, created_at FROM head
    """

# ``_PUT`` for a group-commit leader with nobody to batch with: the same write, but it
# never waits on a row that another client holds (see ``_PUT_MANY``): ``locked`` takes
# the row lock with SKIP LOCKED, the UPDATE runs only if it got it (an uncorrelated
# EXISTS: a one-time filter, checked before the row is touched), and a row that exists
# but was skipped is reported by one row of NULLs, apart from a row that does not exist
# (no row). One row of a simple statement costs the server a fraction of ``_PUT_MANY``.
_PUT_TRY = """
    WITH locked AS (
        SELECT 1
          FROM revstore_records
         WHERE namespace = %(ns)s AND id = %(id)s
           FOR UPDATE SKIP LOCKED
    ), head AS (
        UPDATE revstore_records
           SET revision = revision + 1,
               version = version + %(bump)s,
               content = %(content)s,
               content_hash = %(hash)s,
               updated_at = %(now)s
         WHERE namespace = %(ns)s AND id = %(id)s AND NOT deleted
           AND content_hash <> %(hash)s
           AND (CAST(%(exp)s AS bigint) IS NULL OR revision = CAST(%(exp)s AS bigint))
           AND EXISTS (SELECT FROM locked)
        RETURNING revision, version, created_at
    ), snapshot AS (
        INSERT INTO revstore_versions
            (namespace, record_id, version, revision, content, content_hash,
             author, summary, created_at)
        SELECT %(ns)s, %(id)s, head.version, head.revision, %(content)s, %(hash)s,
               %(author)s, %(summary)s, %(now)s
          FROM head
         WHERE %(bump)s = 1
    )
    SELECT revision, version, created_at FROM head
    UNION ALL
    SELECT NULL, NULL, NULL
     WHERE NOT EXISTS (SELECT FROM locked)
       AND EXISTS (SELECT FROM revstore_records WHERE namespace = %(ns)s AND id = %(id)s)
    """

# The same write for several records at once (group commit, see ``groupcommit``): one
# statement, one commit. ``locked`` takes the row locks first, with SKIP LOCKED: the
# leader of a group commit must never wait on a row that another client holds (a long
# transaction elsewhere), since every write queued behind it would wait too. A skipped
# row is reported (``revision`` NULL) apart from a row that does not exist (absent),
# and its write is sent again alone, blocking, outside the leadership; that last part
# of the statement runs only when some row was not locked (a one-time filter on the
# two counts), so the common batch pays nothing for it. Never waiting
# also means no lock order is needed: two batches cannot deadlock. The UPDATE then
# sees, under READ COMMITTED, the newest version of every row it holds.
_PUT_MANY = """
    WITH req AS (
        SELECT * FROM unnest(
            CAST(%(ns)s AS text[]), CAST(%(id)s AS text[]), CAST(%(bump)s AS int[]),
            CAST(%(content)s AS text[]), CAST(%(hash)s AS text[]), CAST(%(exp)s AS bigint[]),
            CAST(%(author)s AS text[]), CAST(%(summary)s AS text[])
        ) WITH ORDINALITY AS r(ns, id, bump, content, hash, exp, author, summary, ord)
    ), locked AS (
        SELECT t.namespace, t.id
          FROM revstore_records AS t JOIN req ON t.namespace = req.ns AND t.id = req.id
           FOR UPDATE OF t SKIP LOCKED
    ), head AS (
        UPDATE revstore_records AS t
           SET revision = t.revision + 1,
               version = t.version + r.bump,
               content = r.content,
               content_hash = r.hash,
               updated_at = %(now)s
          FROM req AS r, locked AS l
         WHERE l.namespace = r.ns AND l.id = r.id
           AND t.namespace = r.ns AND t.id = r.id AND NOT t.deleted
           AND t.content_hash <> r.hash
           AND (r.exp IS NULL OR t.revision = r.exp)
        RETURNING r.ord, r.ns, r.id, r.bump, r.content, r.hash, r.author, r.summary,
                  t.revision, t.version, t.created_at
    ), snapshot AS (
        INSERT INTO revstore_versions
            (namespace, record_id, version, revision, content, content_hash,
             author, summary, created_at)
        SELECT ns, id, version, revision, content, hash, author, summary, %(now)s
          FROM head
         WHERE bump = 1
    )
    SELECT ord, revision, version, created_at FROM head
    UNION ALL
    SELECT r.ord, NULL, NULL, NULL
      FROM req AS r
     WHERE (SELECT count(*) FROM locked) < (SELECT count(*) FROM req)
       AND NOT EXISTS (SELECT FROM locked AS l WHERE l.namespace = r.ns AND l.id = r.id)
       AND EXISTS (SELECT FROM revstore_records AS t WHERE t.namespace = r.ns AND t.id = r.id)
    """

_APPEND = """
    WITH stream AS (
        UPDATE revstore_streams
           SET last_sequence = last_sequence + %(n)s,
               item_count = item_count + %(n)s,
               updated_at = %(now)s
         WHERE namespace = %(ns)s AND id = %(id)s
           AND (CAST(%(exp)s AS bigint) IS NULL OR last_sequence = CAST(%(exp)s AS bigint))
        RETURNING last_sequence
    )
    INSERT INTO revstore_stream_items
        (namespace, stream_id, sequence, item_id, body, body_hash, created_at)
    SELECT %(ns)s, %(id)s, stream.last_sequence - %(n)s + b.ord, NULL, b.body, b.body_hash, %(now)s
      FROM stream,
           unnest(CAST(%(bodies)s AS text[]), CAST(%(hashes)s AS text[]))
               WITH ORDINALITY AS b(body, body_hash, ord)
    RETURNING sequence
    """

# ``_APPEND`` for a group-commit leader with nobody to batch with, never waiting on a
# stream row held elsewhere, as ``_PUT_TRY`` (a skipped row: one row holding NULL).
_APPEND_TRY = """
    WITH locked AS (
        SELECT 1
          FROM revstore_streams
         WHERE namespace = %(ns)s AND id = %(id)s
           FOR UPDATE SKIP LOCKED
    ), stream AS (
        UPDATE revstore_streams
           SET last_sequence = last_sequence + %(n)s,
               item_count = item_count + %(n)s,
               updated_at = %(now)s
         WHERE namespace = %(ns)s AND id = %(id)s
           AND (CAST(%(exp)s AS bigint) IS NULL OR last_sequence = CAST(%(exp)s AS bigint))
           AND EXISTS (SELECT FROM locked)
        RETURNING last_sequence
    ), items AS (
        INSERT INTO revstore_stream_items
            (namespace, stream_id, sequence, item_id, body, body_hash, created_at)
        SELECT %(ns)s, %(id)s, stream.last_sequence - %(n)s + b.ord, NULL, b.body, b.body_hash,
               %(now)s
          FROM stream,
               unnest(CAST(%(bodies)s AS text[]), CAST(%(hashes)s AS text[]))
                   WITH ORDINALITY AS b(body, body_hash, ord)
    )
    SELECT last_sequence - %(n)s + 1 FROM stream
    UNION ALL
    SELECT NULL
     WHERE NOT EXISTS (SELECT FROM locked)
       AND EXISTS (SELECT FROM revstore_streams WHERE namespace = %(ns)s AND id = %(id)s)
    """

# Appends to several streams at once (group commit), skipping stream rows held
# elsewhere as ``_PUT_MANY`` does (``first`` NULL). Each item names its request
# (``owner``, the ordinal in ``req``) and its place in that request's batch (``pos``).
_APPEND_MANY = """
    WITH req AS (
        SELECT * FROM unnest(
            CAST(%(ns)s AS text[]), CAST(%(id)s AS text[]), CAST(%(n)s AS bigint[]),
            CAST(%(exp)s AS bigint[])
        ) WITH ORDINALITY AS r(ns, id, n, exp, ord)
    ), locked AS (
        SELECT s.namespace, s.id
          FROM revstore_streams AS s JOIN req ON s.namespace = req.ns AND s.id = req.id
           FOR UPDATE OF s SKIP LOCKED
    ), stream AS (
        UPDATE revstore_streams AS s
           SET last_sequence = s.last_sequence + r.n,
               item_count = s.item_count + r.n,
               updated_at = %(now)s
          FROM req AS r, locked AS l
         WHERE l.namespace = r.ns AND l.id = r.id
           AND s.namespace = r.ns AND s.id = r.id
           AND (r.exp IS NULL OR s.last_sequence = r.exp)
        RETURNING r.ord, r.ns, r.id, r.n, s.last_sequence
    ), items AS (
        INSERT INTO revstore_stream_items
            (namespace, stream_id, sequence, item_id, body, body_hash, created_at)
        SELECT st.ns, st.id, st.last_sequence - st.n + b.pos, NULL, b.body, b.body_hash, %(now)s
          FROM stream AS st
          JOIN unnest(
                   CAST(%(owner)s AS bigint[]), CAST(%(pos)s AS bigint[]),
                   CAST(%(bodies)s AS text[]), CAST(%(hashes)s AS text[])
               ) AS b(owner, pos, body, body_hash)
            ON b.owner = st.ord
    )
    SELECT ord, last_sequence - n + 1 FROM stream
    UNION ALL
    SELECT r.ord, NULL
      FROM req AS r
     WHERE (SELECT count(*) FROM locked) < (SELECT count(*) FROM req)
       AND NOT EXISTS (SELECT FROM locked AS l WHERE l.namespace = r.ns AND l.id = r.id)
       AND EXISTS (SELECT FROM revstore_streams AS s WHERE s.namespace = r.ns AND s.id = r.id)
    """


# Several puts to one record (a group-commit chain, see ``groupcommit``): one
# statement, one commit, one row lock. ``locked`` waits for the row like ``_PUT`` and,
# under READ COMMITTED, returns its newest version. ``chain`` then walks the writes in
# their order (the recursive CTE), each seeing the head its predecessors left: it
# applies when its content differs from that head's and its expectation (if any) is
# that head's revision, exactly ``_PUT``'s conditions at its turn. The head takes the
# last applied write, the history one snapshot per applied write that makes one. A
# write that did not apply returns no row and goes the general way, as with ``_PUT``.
_PUT_CHAIN = """
    WITH RECURSIVE req AS (
        SELECT * FROM unnest(
            CAST(%(bump)s AS int[]), CAST(%(content)s AS text[]), CAST(%(hash)s AS text[]),
            CAST(%(exp)s AS bigint[]), CAST(%(author)s AS text[]), CAST(%(summary)s AS text[])
        ) WITH ORDINALITY AS r(bump, content, hash, exp, author, summary, ord)
    ), locked AS (
        SELECT revision, version, content_hash
          FROM revstore_records
         WHERE namespace = %(ns)s AND id = %(id)s AND NOT deleted
           FOR UPDATE
    ), chain (ord, revision, version, hash, applied) AS (
        SELECT CAST(0 AS bigint), revision, version, CAST(content_hash AS text), false
          FROM locked
        UNION ALL
        SELECT r.ord, c.revision + CAST(t.ok AS int),
               c.version + CAST(t.ok AND r.bump = 1 AS int),
               CASE WHEN t.ok THEN r.hash ELSE c.hash END, t.ok
          FROM chain AS c
          JOIN req AS r ON r.ord = c.ord + 1
         CROSS JOIN LATERAL (
             SELECT r.hash <> c.hash AND (r.exp IS NULL OR r.exp = c.revision) AS ok
         ) AS t
    ), last AS (
        SELECT c.revision, c.version, r.content, r.hash
          FROM chain AS c JOIN req AS r ON r.ord = c.ord
         WHERE c.applied
         ORDER BY c.ord DESC
         LIMIT 1
    ), head AS (
        UPDATE revstore_records AS t
           SET revision = l.revision,
               version = l.version,
               content = l.content,
               content_hash = l.hash,
               updated_at = %(now)s
          FROM last AS l
         WHERE t.namespace = %(ns)s AND t.id = %(id)s
        RETURNING t.created_at
    ), snapshot AS (
        INSERT INTO revstore_versions
            (namespace, record_id, version, revision, content, content_hash,
             author, summary, created_at)
        SELECT %(ns)s, %(id)s, c.version, c.revision, r.content, r.hash,
               r.author, r.summary, %(now)s
          FROM chain AS c JOIN req AS r ON r.ord = c.ord
         WHERE c.applied AND r.bump = 1
    )
    SELECT c.ord, c.revision, c.version, (SELECT created_at FROM head)
      FROM chain AS c
     WHERE c.applied
    """

# Several appends to one stream (a chain), as ``_PUT_CHAIN``: each batch applies when
# its expectation (if any) is the last sequence its predecessors left, and takes the
# sequences after it. Items name their batch (``owner``) and place in it (``pos``).
_APPEND_CHAIN = """
    WITH RECURSIVE req AS (
        SELECT * FROM unnest(CAST(%(n)s AS bigint[]), CAST(%(exp)s AS bigint[]))
            WITH ORDINALITY AS r(n, exp, ord)
    ), locked AS (
        SELECT last_sequence
          FROM revstore_streams
         WHERE namespace = %(ns)s AND id = %(id)s
           FOR UPDATE
    ), chain (ord, last, n, applied) AS (
        SELECT CAST(0 AS bigint), last_sequence, CAST(0 AS bigint), false FROM locked
        UNION ALL
        SELECT r.ord, c.last + CASE WHEN t.ok THEN r.n ELSE 0 END, r.n, t.ok
          FROM chain AS c
          JOIN req AS r ON r.ord = c.ord + 1
         CROSS JOIN LATERAL (SELECT r.exp IS NULL OR r.exp = c.last AS ok) AS t
    ), stream AS (
        UPDATE revstore_streams
           SET last_sequence = (SELECT max(last) FROM chain),
               item_count = item_count + (SELECT sum(n) FROM chain WHERE applied),
               updated_at = %(now)s
         WHERE namespace = %(ns)s AND id = %(id)s
           AND EXISTS (SELECT FROM chain WHERE applied)
    ), items AS (
        INSERT INTO revstore_stream_items
            (namespace, stream_id, sequence, item_id, body, body_hash, created_at)
        SELECT %(ns)s, %(id)s, c.last - c.n + b.pos, NULL, b.body, b.body_hash, %(now)s
          FROM chain AS c
          JOIN unnest(
                   CAST(%(owner)s AS bigint[]), CAST(%(pos)s AS bigint[]),
                   CAST(%(bodies)s AS text[]), CAST(%(hashes)s AS text[])
               ) AS b(owner, pos, body, body_hash)
            ON b.owner = c.ord
         WHERE c.applied
    )
    SELECT ord, last - n + 1 FROM chain WHERE applied
    """


def _shared_failure(exc: BaseException) -> bool:
    """Whether a failed group-commit statement failed for every write it carried.

    Shared, never split: a lost connection (``AmbiguousCommit``: the statement may
    have committed, so none of its writes is sent again), a retryable server condition
    (each caller's retry policy re-runs its write), and anything that did not come
    from the driver (a pool timeout, an error after the statement ran), whose effect on
    the database is unknown. Anything else the driver or the server refused (a data
    error, a constraint or a trigger, a value too large, ``Duplicate``) may be one
    write's fault; a statement sent in autocommit that failed applied nothing, so
    ``GroupCommit`` may split it and send the halves again.
    """
    if isinstance(exc, AmbiguousCommit) or not isinstance(exc, RevstoreError):
        return True
    if isinstance(exc, Retryable) and not isinstance(exc, Duplicate):
        return True
    cause = exc.__cause__
    return not isinstance(cause, DBAPIError) or bool(cause.connection_invalidated)


_CURSOR = "revstore.pg.cursor"
"""Key of the reusable psycopg cursor in a pooled connection's ``info``."""


def _int_array(values: Iterable[int | None]) -> str:
    """The ``bigint[]`` literal of ``values`` (``None`` is ``NULL``), like ``_text_array``."""
    return "{" + ",".join(["NULL" if v is None else str(int(v)) for v in values]) + "}"


def _text_array(values: Sequence[str | None]) -> str:
    """The ``text[]`` literal of ``values``, for ``CAST(%(…)s AS text[])``.

    psycopg adapts a Python list parameter element by element in Python: for a batch
    of ten bodies and their hashes that took about 390 µs of client CPU per append,
    against 70 µs with this literal, which the server parses in C (pgbench sends its
    arrays the same way, as text). Every element is quoted,
    so no content (``NULL``, braces, commas, spaces) is read as syntax, and inside
    quotes only the backslash and the double quote are escaped, as ``array_in`` reads.
    ``None`` is the unquoted ``NULL``.
    """
    return (
        "{"
        + ",".join(
            [
                "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                for v in values
            ]
        )
        + "}"
    )


def _prepare_after(threshold: int | str | None, auto: int | None) -> int | None:
    """psycopg's ``prepare_threshold`` for the URL's setting (``auto`` stands for ``auto``)."""
    return auto if isinstance(threshold, str) else threshold


def _behind_pooler(dbapi_conn: Any) -> bool:
    """True when this connection does not reach the PostgreSQL backend it reports.

    A server sends its process id at connection start (BackendKeyData); a pooler
    answers the client's start-up itself and sends an id of its own (PgBouncer: a
    random one), while ``pg_backend_pid()`` runs on the real backend. A direct
    connection always agrees with itself. One query per new pooled connection.
    """
    # psycopg's connection, or (asyncio engine) SQLAlchemy's adapter around psycopg's
    # AsyncConnection: the adapter runs the cursor synchronously in its greenlet.
    info = getattr(dbapi_conn, "driver_connection", dbapi_conn).info
    cur = dbapi_conn.cursor()
    try:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
    finally:
        cur.close()
    if info.transaction_status != pq.TransactionStatus.IDLE:
        # The driver may not be in autocommit yet when this runs.
        # Never leave a transaction open: behind a pooler it would pin a server connection.
        dbapi_conn.rollback()
    return _another_backend(row, info)


def _another_backend(row: Any, info: Any) -> bool:
    """``pg_backend_pid()`` (``row``) is not the id the connection start-up reported."""
    return row is None or int(row[0]) != int(info.backend_pid)


async def _behind_pooler_async(conn: psycopg.AsyncConnection[Any]) -> bool:
    """``_behind_pooler`` on a psycopg asyncio connection in autocommit (AsyncStore)."""
    cur = await conn.execute("SELECT pg_backend_pid()")
    return _another_backend(await cur.fetchone(), conn.info)


def _no_prepare_behind_a_pooler(dbapi_conn: Any, _record: Any) -> None:
    """Connect event of a ``prepare_threshold=auto`` engine. Decided per connection,
    before it runs any statement of ours: a transaction pooler would lend each
    transaction a different server connection, where psycopg's prepared statements
    do not exist."""
    if _behind_pooler(dbapi_conn):
        getattr(dbapi_conn, "driver_connection", dbapi_conn).prepare_threshold = None


class PostgresDialect(Dialect):
    name: ClassVar[str] = "postgresql"
    default_strategy: ClassVar[str] = "counter"
    batches_transactions: ClassVar[bool] = False
    one_statement_writes: ClassVar[bool] = True

    def __init__(self, connect_timeout: int = CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout

    def _engine_options(
        self, pool_size: int, max_overflow: int, threshold: int | None
    ) -> dict[str, Any]:
        return {
            # Driver autocommit: the executor issues BEGIN / COMMIT itself, and the
            # one-statement writes commit as they finish.
            "isolation_level": "AUTOCOMMIT",
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_reset_on_return": None,  # see SqlBackend._release
            "connect_args": {
                "connect_timeout": self.connect_timeout,
                "application_name": "revstore",
                # psycopg's own option (not libpq's): see ``prepare_threshold``.
                "prepare_threshold": threshold,
            },
        }

    async def create_async_engine(
        self, url: DatabaseURL, pool_size: int, max_overflow: int
    ) -> AsyncEngine:
        plain, threshold = prepare_threshold(url.url)
        options = self._engine_options(
            pool_size, max_overflow, _prepare_after(threshold, PREPARE_AFTER)
        )
        engine = create_async_engine(
            parse_url(plain).sqlalchemy(driver=ASYNC_DRIVERS["postgresql"]), **options
        )
        if threshold == AUTO:
            event.listen(engine.sync_engine, "connect", _no_prepare_behind_a_pooler)
        # psycopg's AsyncConnection waits on its socket only during an operation, so an
        # idle one is probed as in sync.
        install_liveness_probe(
            engine.sync_engine, lambda conn: int(conn.driver_connection.fileno())
        )
        return engine

    def create_async_links(
        self, url: DatabaseURL, pool_size: int, max_overflow: int, engine: AsyncEngine
    ) -> PsycopgPool:
        """AsyncStore's data connections: psycopg asyncio connections in revstore's own
        pool (``pgaio``), opened with exactly the arguments ``engine`` (from
        ``create_async_engine``, which keeps creating the schema) would use."""
        _, threshold = prepare_threshold(url.url)
        dialect = engine.sync_engine.dialect
        cargs, cparams = dialect.create_connect_args(engine.url)
        options = self._engine_options(
            pool_size, max_overflow, _prepare_after(threshold, PREPARE_AFTER)
        )
        cparams.update(options["connect_args"])
        # The engine's isolation_level AUTOCOMMIT: the executor issues BEGIN / COMMIT.
        cparams["autocommit"] = True

        async def connect() -> psycopg.AsyncConnection[Any]:
            try:
                conn = await psycopg.AsyncConnection.connect(*cargs, **cparams)
            except psycopg.Error as exc:
                raise wrapped(dialect, exc, None) from exc
            try:
                conn.add_notice_handler(_log_notices)  # as SQLAlchemy's on_connect
                if threshold == AUTO and await _behind_pooler_async(conn):
                    conn.prepare_threshold = None
            except BaseException as exc:
                await conn.close()
                if isinstance(exc, psycopg.Error):
                    raise wrapped(dialect, exc, None) from exc
                raise
            return conn

        return PsycopgPool(connect, engine, pool_size, max_overflow)

    def create_engine(self, url: DatabaseURL, pool_size: int, max_overflow: int) -> Engine:
        plain, threshold = prepare_threshold(url.url)
        options = self._engine_options(
            pool_size, max_overflow, _prepare_after(threshold, PREPARE_AFTER)
        )
        engine = create_engine(parse_url(plain).sqlalchemy(), **options)
        if threshold == AUTO:
            event.listen(engine, "connect", _no_prepare_behind_a_pooler)

        install_liveness_probe(engine, lambda conn: int(conn.fileno()))
        return engine

    # ---------------------------------------------------------------- schema

    schema_lock_key: ClassVar[int] = int.from_bytes(b"revstore", "big")
    """The advisory lock that serialises schema creation and migration (per database)."""

    def take_schema_lock(self, conn: Connection) -> None:
        # Transaction-scoped, released by the COMMIT / ROLLBACK that ends the DDL
        # transaction: a session-level lock would outlive the transaction on the
        # server connection PgBouncer (transaction mode) lends us, and could be taken
        # and released on two different server connections.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({self.schema_lock_key})")

    def already_exists(self, exc: DBAPIError) -> bool:
        state = getattr(exc.orig, "sqlstate", None)
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
        # 42P07 duplicate_table (tables and indexes), 42710 duplicate_object; two
        # unlocked CREATE TABLEs racing can also collide in the catalogue (23505).
        return state in ("42P07", "42710") or (
            state == "23505"
            and constraint in ("pg_type_typname_nsp_index", "pg_class_relname_nsp_index")
        )

    def insert_ignore(self, table: Any) -> Insert:
        return pg_insert(table).on_conflict_do_nothing()

    # The counter statements, as steps (results are read by iterating them, which a
    # SQLAlchemy result and the sync fast path's list of rows both allow). The sync
    # executor sends them on a psycopg cursor, the asyncio one through its links, both
    # with group commit.

    def put_one(self, intent: WriteIntent) -> Step[Put | None]:
        ts = now()
        rows = list((yield Raw(_PUT, _put_params(intent, ts))))
        return (int(rows[0][0]), int(rows[0][1]), rows[0][2], ts) if rows else None

    def put_many(self, intents: list[WriteIntent]) -> Step[list[Put | Locked | None]]:
        ts = now()
        if len(intents) == 1:
            rows = list((yield Raw(_PUT_TRY, _put_params(intents[0], ts))))
            if not rows:
                return [None]
            row = rows[0]
            return [LOCKED if row[0] is None else (int(row[0]), int(row[1]), row[2], ts)]
        params = {
            "ns": _text_array([i.namespace for i in intents]),
            "id": _text_array([i.id for i in intents]),
            **_puts_as_arrays(intents, ts),
        }
        out: list[Put | Locked | None] = [None] * len(intents)
        for ordinal, revision, version, created_at in (yield Raw(_PUT_MANY, params)):
            out[int(ordinal) - 1] = (
                LOCKED if revision is None else (int(revision), int(version), created_at, ts)
            )
        return out

    def put_chain(self, intents: list[WriteIntent]) -> Step[list[Put | None]]:
        ts = now()
        params = {"ns": intents[0].namespace, "id": intents[0].id, **_puts_as_arrays(intents, ts)}
        out: list[Put | None] = [None] * len(intents)
        for ordinal, revision, version, created_at in (yield Raw(_PUT_CHAIN, params)):
            out[int(ordinal) - 1] = (int(revision), int(version), created_at, ts)
        return out

    def append_one(self, batch: AppendBatch) -> Step[Appended | None]:
        ts = now()
        sequences = [int(r[0]) for r in (yield Raw(_APPEND, _append_params(batch, ts)))]
        return (min(sequences), ts) if sequences else None

    def append_many(self, batches: list[AppendBatch]) -> Step[list[Appended | Locked | None]]:
        ts = now()
        if len(batches) == 1:
            rows = list((yield Raw(_APPEND_TRY, _append_params(batches[0], ts))))
            if not rows:
                return [None]
            return [LOCKED if rows[0][0] is None else (int(rows[0][0]), ts)]
        params = {
            "ns": _text_array([b.namespace for b in batches]),
            "id": _text_array([b.stream_id for b in batches]),
            **_appends_as_arrays(batches, ts),
        }
        out: list[Appended | Locked | None] = [None] * len(batches)
        for ordinal, first in (yield Raw(_APPEND_MANY, params)):
            out[int(ordinal) - 1] = LOCKED if first is None else (int(first), ts)
        return out

    def append_chain(self, batches: list[AppendBatch]) -> Step[list[Appended | None]]:
        ts = now()
        params = {
            "ns": batches[0].namespace,
            "id": batches[0].stream_id,
            **_appends_as_arrays(batches, ts),
        }
        out: list[Appended | None] = [None] * len(batches)
        for ordinal, first in (yield Raw(_APPEND_CHAIN, params)):
            out[int(ordinal) - 1] = (int(first), ts)
        return out

    def shared_failure(self, exc: BaseException) -> bool:
        return _shared_failure(exc)

    def translate(self, exc: DBAPIError) -> RevstoreError:
        orig = exc.orig
        state = getattr(orig, "sqlstate", None)
        diag = getattr(orig, "diag", None)
        constraint = getattr(diag, "constraint_name", None)
        if state is None:
            # No SQLSTATE: no error reply from the server. A DataError or
            # ProgrammingError is psycopg refusing before it sends anything (a NUL in a
            # text value; an unknown connection option in the URL, as the statements
            # themselves are fixed): the caller's input, not a lost connection. Any
            # other class (OperationalError: the socket failed) may have happened after
            # the statement reached the server, so it stays a lost connection.
            if isinstance(orig, psycopg.DataError):
                return InvalidInput(f"PostgreSQL cannot take this value: {orig}")
            if isinstance(orig, psycopg.ProgrammingError):
                return InvalidInput(f"psycopg refused the request: {orig}")
            if isinstance(orig, psycopg.NotSupportedError):
                return Unavailable(f"psycopg refused the request: {orig}")
            return Disconnected(f"connection lost: {orig}")
        found = classify(FAILURES, (state, state[:2]), orig, state, constraint)
        if found is not None:
            return found
        if state.startswith("22"):
            # Class 22, data exception: a value the server refuses (too long, out of
            # range, untranslatable). The caller's input, not the database's state.
            return InvalidInput(f"PostgreSQL refused a value ({state}): {orig}")
        return Unavailable(f"PostgreSQL error {state}: {orig}")


def make_dialect(connect_timeout: int = CONNECT_TIMEOUT, **_: Any) -> PostgresDialect:
    return PostgresDialect(connect_timeout)


def open_backend(
    url: DatabaseURL,
    strategy: str | None = None,
    pool_size: int = POOL_SIZE,
    max_overflow: int = MAX_OVERFLOW,
    connect_timeout: int = CONNECT_TIMEOUT,
    group_commit: bool = True,
    **_: Any,
) -> PostgresBackend:
    dialect = PostgresDialect(connect_timeout)
    engine = dialect.create_engine(url, pool_size, max_overflow)
    return PostgresBackend(dialect, engine, strategy, group_commit=group_commit)


class PostgresBackend(SqlBackend):
    """The executor, plus PostgreSQL's counter writes: one self-committing statement
    each, sent straight through psycopg, with group commit."""

    dialect: PostgresDialect

    def __init__(
        self,
        dialect: PostgresDialect,
        engine: Engine,
        strategy: str | None = None,
        group_commit: bool = True,
    ) -> None:
        super().__init__(dialect, engine, strategy)
        # Concurrent counter puts on different records share one statement and commit.
        self._puts: GroupCommit[WriteIntent, Put | None] | None = (
            GroupCommit(
                self._put_one,
                self._put_many,
                key=lambda i: (i.namespace, i.id),
                run_chain=self._put_chain,
                shared=_shared_failure,
            )
            if group_commit
            else None
        )
        self._appends: GroupCommit[AppendBatch, Appended | None] | None = (
            GroupCommit(
                self._append_one,
                self._append_many,
                key=lambda b: (b.namespace, b.stream_id),
                run_chain=self._append_chain,
                shared=_shared_failure,
            )
            if group_commit
            else None
        )

    # ---------------------------------------------------------------- counter paths

    def _statement(self, sql: str, params: dict[str, Any], fetch: Callable[[Cursor[Any]], T]) -> T:
        """Run one self-committing statement on a pooled connection, straight through
        psycopg, under ``run_write_statement`` (same pool, same error translation, a
        lost connection is an AmbiguousCommit).

        Why not ``Connection.execute``: on this hot path SQLAlchemy's statement and
        result machinery (execution context, parameter processing, result metadata)
        cost about twice the CPU of psycopg itself, and on a small machine that CPU is
        taken from the server. The statement text, the parameter values and their
        types are the ones SQLAlchemy passed to psycopg, so the server sees the same
        thing. Errors go through SQLAlchemy's own handler, which wraps them in
        ``DBAPIError`` and invalidates the connection (and the pool) on a disconnect,
        exactly as ``Connection.execute`` does. Statement-level engine events
        (``before_cursor_execute``) do not fire for these statements.

        One psycopg cursor is kept per pooled DBAPI connection (in the pool record's
        ``info``) and reused: its adapters keep the dumpers already chosen for these
        parameter types. A cursor is only ever used by the thread that has its
        connection checked out; a closed one, or one of a replaced connection, is
        made anew.
        """

        def run(conn: Connection) -> T:
            pooled = conn.connection
            driver = pooled.driver_connection
            assert driver is not None  # checked out: never None
            cursor = pooled.info.get(_CURSOR)
            if cursor is None or cursor.closed or cursor.connection is not driver:
                cursor = pooled.info[_CURSOR] = driver.cursor()
            try:
                cursor.execute(sql, params)
                return fetch(cursor)
            except BaseException as exc:
                # Closes the cursor unless the connection is lost (then it is invalidated).
                conn._handle_dbapi_exception(exc, sql, params, cursor, None)

        return self.run_write_statement(run)

    def _send(self, step: Step[T]) -> T:
        """Drive a counter statement's step on the psycopg cursor (``_statement``)."""
        op = next(step)
        while True:
            assert isinstance(op, Raw) and op.params is not None
            rows = self._statement(op.sql, op.params, lambda cur: cur.fetchall())
            try:
                op = step.send(rows)
            except StopIteration as done:
                return cast(T, done.value)

    def one_statement_put(self, intent: WriteIntent) -> Record | None:
        done = self._puts.submit(intent) if self._puts is not None else self._put_one(intent)
        if done is None:
            # Absent, deleted, unchanged or conflicting: rare, decided under a row lock.
            return None
        return written_head(intent, *done)

    def _put_one(self, intent: WriteIntent) -> Put | None:
        """The write alone, waiting for its row: busy keys, skipped writes, no group commit."""
        return self._send(self.dialect.put_one(intent))

    def _put_many(self, intents: list[WriteIntent]) -> list[Put | Locked | None]:
        """What a group-commit leader sends: never waits on a row held elsewhere."""
        return self._send(self.dialect.put_many(intents))

    def _put_chain(self, intents: list[WriteIntent]) -> list[Put | None]:
        """Several puts to one record, in order, waiting for its row: a hot record."""
        return self._send(self.dialect.put_chain(intents))

    def one_statement_append(self, batch: AppendBatch) -> AppendResult | None:
        done = self._appends.submit(batch) if self._appends is not None else self._append_one(batch)
        if done is None:
            # New stream or expectation mismatch: the general path creates or reports.
            return None
        return appended(batch, *done)

    def _append_one(self, batch: AppendBatch) -> Appended | None:
        """The append alone, waiting for its stream row (as ``_put_one``)."""
        return self._send(self.dialect.append_one(batch))

    def _append_many(self, batches: list[AppendBatch]) -> list[Appended | Locked | None]:
        """What a group-commit leader sends: never waits on a stream row held elsewhere."""
        return self._send(self.dialect.append_many(batches))

    def _append_chain(self, batches: list[AppendBatch]) -> list[Appended | None]:
        """Several appends to one stream, in order, waiting for its row."""
        return self._send(self.dialect.append_chain(batches))


def _puts_as_arrays(intents: list[WriteIntent], ts: datetime) -> dict[str, Any]:
    """The per-write parameters of several puts (a batch or a chain), as arrays."""
    return {
        "bump": _int_array([1 if i.create_version else 0 for i in intents]),
        "content": _text_array([i.content_text for i in intents]),
        "hash": _text_array([i.content_hash for i in intents]),
        "exp": _int_array([i.expected_revision for i in intents]),
        "author": _text_array([i.author for i in intents]),
        "summary": _text_array([i.summary for i in intents]),
        "now": ts,
    }


def _appends_as_arrays(batches: list[AppendBatch], ts: datetime) -> dict[str, Any]:
    """The per-append parameters of several appends (a batch or a chain), as arrays;
    each item names its append (``owner``, its ordinal) and its place in it (``pos``)."""
    owners: list[int] = []
    positions: list[int] = []
    bodies: list[str] = []
    hashes: list[str] = []
    for ordinal, b in enumerate(batches, 1):
        for position, body in enumerate(b.bodies, 1):
            owners.append(ordinal)
            positions.append(position)
            bodies.append(body.text)
            hashes.append(body.hash)
    return {
        "n": _int_array([len(b.bodies) for b in batches]),
        "exp": _int_array([b.expected for b in batches]),
        "owner": _int_array(owners),
        "pos": _int_array(positions),
        "bodies": _text_array(bodies),
        "hashes": _text_array(hashes),
        "now": ts,
    }


def _put_params(intent: WriteIntent, ts: datetime) -> dict[str, Any]:
    # The snapshot rides in the same statement: it also takes author and summary.
    return {**counter_params(intent, ts), "author": intent.author, "summary": intent.summary}


def _append_params(batch: AppendBatch, ts: datetime) -> dict[str, Any]:
    return {
        **stream_counter_params(batch, ts),
        "bodies": _text_array([b.text for b in batch.bodies]),
        "hashes": _text_array([b.hash for b in batch.bodies]),
    }
