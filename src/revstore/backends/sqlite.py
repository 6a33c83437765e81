"""SQLite: WAL, ``BEGIN IMMEDIATE``, busy timeout, ``UPDATE … RETURNING``.

SQLite has one writer at a time per database file. Taking the write lock at BEGIN
(``IMMEDIATE``) instead of at the first write (``DEFERRED``) means a writer waits in
the busy handler *before* it has read anything, so it can never hold a stale read
that forces ``SQLITE_BUSY`` on upgrade: the deferred style gets thousands of
"database is locked" errors under a few processes, this one gets none.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    Connection,
    Engine,
    LargeBinary,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    text,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from revstore import schema
from revstore.backends.dialect import Bumped, Dialect, counter_params, stream_counter_params
from revstore.backends.ops import Execute, Step
from revstore.backends.sql import SqlBackend
from revstore.config import (
    MAX_OVERFLOW,
    POOL_SIZE,
    SQLITE_BUSY_TIMEOUT_MS,
    DatabaseURL,
)
from revstore.errors import InvalidInput, RevstoreError, Unavailable
from revstore.failures import Duplicate, Failure, Transient, classify
from revstore.record import WriteIntent
from revstore.stream import AppendBatch

log = logging.getLogger(__name__)

SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_TOOBIG = 18
SQLITE_CONSTRAINT = 19
SQLITE_MISMATCH = 20
SQLITE_RANGE = 25

FAILURES: dict[int | str, Failure] = {
    SQLITE_BUSY: Failure(Transient, "database is busy"),
    SQLITE_LOCKED: Failure(Transient, "database table is locked"),
    "SQLITE_CONSTRAINT_PRIMARYKEY": Failure(Duplicate, "unique key violated"),
    "SQLITE_CONSTRAINT_UNIQUE": Failure(Duplicate, "unique key violated"),
}
"""Extended result code name, or primary result code → failure category."""

_UPDATE_HEAD = text(
    """
    UPDATE revstore_records
       SET revision = revision + 1,
           version = version + :bump,
           content = :content,
           content_hash = :hash,
           updated_at = :now
     WHERE namespace = :ns AND id = :id AND deleted = 0
       AND content_hash <> :hash
       AND (:exp IS NULL OR revision = :exp)
    RETURNING revision, version, created_at
    """
).bindparams(bindparam("now", type_=schema.Timestamp))

_BUMP_STREAM = text(
    """
    UPDATE revstore_streams
       SET last_sequence = last_sequence + :n,
           item_count = item_count + :n,
           updated_at = :now
     WHERE namespace = :ns AND id = :id
       AND (:exp IS NULL OR last_sequence = :exp)
    RETURNING last_sequence
    """
).bindparams(bindparam("now", type_=schema.Timestamp))


class SqliteDialect(Dialect):
    name: ClassVar[str] = "sqlite"
    default_strategy: ClassVar[str] = "counter"
    begin_write: ClassVar[str] = "BEGIN IMMEDIATE"
    begin_optimistic: ClassVar[str] = "BEGIN DEFERRED"
    # Takes the file's write lock: schema creation is serialised with every writer.
    begin_schema: ClassVar[str] = "BEGIN IMMEDIATE"
    counter_puts: ClassVar[bool] = True
    counter_appends: ClassVar[bool] = True
    async_in_threads: ClassVar[bool] = True
    point_reads_inline: ClassVar[bool] = True
    driver_cursor: ClassVar[bool] = True

    def __init__(self, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
        self.busy_timeout_ms = busy_timeout_ms
        self.gate: WriteGate | None = None

    @contextmanager
    def write_gate(self, begin: str) -> Iterator[None]:
        # Only the writers' BEGIN IMMEDIATE: a deferred (optimistic) transaction reads
        # first and takes the file lock later, if at all.
        if self.gate is None or begin != self.begin_write:
            yield
            return
        with self.gate.held(self.busy_timeout_ms / 1000):
            yield

    def create_engine(self, url: DatabaseURL, pool_size: int, max_overflow: int) -> Engine:
        options = self._engine_options(url, pool_size, max_overflow)
        self.gate = WriteGate.beside(url.rest.removeprefix("/"))
        engine = create_engine(url.sqlalchemy(), **options)
        event.listen(engine, "connect", self._on_connect)
        return engine

    def _engine_options(
        self, url: DatabaseURL, pool_size: int, max_overflow: int
    ) -> dict[str, Any]:
        if url.rest.startswith("/:memory:") or url.rest in ("", "/"):
            raise_memory()
        return {
            # Driver autocommit: the executor issues BEGIN IMMEDIATE / COMMIT itself.
            "isolation_level": "AUTOCOMMIT",
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_reset_on_return": None,  # see SqlBackend._release
            "connect_args": {"timeout": self.busy_timeout_ms / 1000, "check_same_thread": False},
        }

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        """Every new sqlite3 connection."""
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        # WAL: readers never block the writer and the writer never blocks readers.
        enable_wal(dbapi_conn, self.busy_timeout_ms / 1000)
        # FULL: an acknowledged write survives a power cut, not only a crash.
        cur.execute("PRAGMA synchronous=FULL")
        # list(prefix=…) uses LIKE, which must be case-sensitive as on the servers.
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.close()

    def insert_ignore(self, table: Any) -> Insert:
        return sqlite_insert(table).on_conflict_do_nothing()

    def content_bytes(self, column: Any) -> ColumnElement[int]:
        # octet_length() needs SQLite 3.43; length() of text counts characters, of a
        # blob bytes, and a text cast to blob is its UTF-8 bytes.
        return func.length(cast(column, LargeBinary))

    def translate(self, exc: DBAPIError) -> RevstoreError:
        orig = exc.orig
        code = getattr(orig, "sqlite_errorcode", None)
        name = getattr(orig, "sqlite_errorname", None) or str(code)
        primary = code & 0xFF if isinstance(code, int) else None
        constraint = str(orig) if primary == SQLITE_CONSTRAINT else None
        found = classify(FAILURES, (name, primary), orig, name, constraint)
        if found is not None:
            return found
        if primary in (SQLITE_TOOBIG, SQLITE_MISMATCH, SQLITE_RANGE) or isinstance(
            orig, sqlite3.DataError
        ):
            # A value SQLite cannot take (too big, wrong type): the caller's input.
            return InvalidInput(f"SQLite refused a value ({name}): {orig}")
        return Unavailable(f"SQLite error {name}: {orig}")

    def bump_head(self, intent: WriteIntent, ts: datetime) -> Step[Bumped | None]:
        # Under BEGIN IMMEDIATE this transaction is the only writer of the file, so the
        # UPDATE … RETURNING takes the next numbers with no possible race.
        result = yield Execute(
            _UPDATE_HEAD,
            counter_params(intent, ts),
        )
        row = result.first()
        return None if row is None else (int(row[0]), int(row[1]), row[2])

    def bump_stream(self, batch: AppendBatch, ts: datetime) -> Step[int | None]:
        # As bump_head: the only writer of the file takes the batch's sequences.
        result = yield Execute(_BUMP_STREAM, stream_counter_params(batch, ts))
        row = result.first()
        return None if row is None else int(row[0])

    def prepare_ddl(self, conn: Connection) -> None:
        # journal_mode cannot change inside a transaction: switched before BEGIN
        # IMMEDIATE (every new connection has done it already; this covers a file
        # switched back by someone else meanwhile).
        # The DBAPI connection: sqlite3's.
        driver = conn.connection.dbapi_connection
        if driver is None:
            return
        try:
            enable_wal(driver, self.busy_timeout_ms / 1000)
        except sqlite3.Error as exc:
            # Straight from the driver: wrapped as SQLAlchemy would, for translate().
            raise DBAPIError.instance("PRAGMA journal_mode=WAL", None, exc, sqlite3.Error) from exc

    def already_exists(self, exc: DBAPIError) -> bool:
        # SQLite has no error code for it (plain SQLITE_ERROR): the message is all
        # there is. Under BEGIN IMMEDIATE only a creator that skips it can cause this.
        return " already exists" in str(exc.orig)


def make_dialect(busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **_: Any) -> SqliteDialect:
    return SqliteDialect(busy_timeout_ms)


def open_backend(
    url: DatabaseURL,
    strategy: str | None = None,
    pool_size: int = POOL_SIZE,
    max_overflow: int = MAX_OVERFLOW,
    busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    group_commit: bool = True,
    **_: Any,
) -> SqlBackend:
    dialect = SqliteDialect(busy_timeout_ms)
    return SqlBackend(
        dialect, dialect.create_engine(url, pool_size, max_overflow), strategy, group_commit
    )


def enable_wal(dbapi_conn: Any, timeout_s: float) -> None:
    """Switch the file to WAL (kept in the file; a no-op once done).

    Processes opening a new file at the same moment all ask for the switch, which
    needs the file to themselves: a loser may get SQLITE_BUSY at once rather than
    through the busy handler (e.g. while the winner recovers the WAL). The switch is
    done when the file says WAL, whoever made it; until then, back off and ask again,
    for as long as the busy timeout.
    """
    deadline = time.monotonic() + timeout_s
    wait = 0.005
    while True:
        try:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            mode = cur.fetchone()[0]
            cur.close()
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (SQLITE_BUSY, SQLITE_LOCKED)
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0, wait))
            wait = min(wait * 2, 0.2)
            continue
        if mode != "wal":
            raise sqlite3.OperationalError(f"could not switch the database file to WAL: {mode!r}")
        return


def raise_memory() -> None:
    from revstore.errors import InvalidInput

    raise InvalidInput(
        "an in-memory SQLite database is private to one connection; use a file, "
        "e.g. sqlite:///revstore.db"
    )


class WriteGate:
    """A lock that the write transactions of every process on one SQLite file take
    before ``BEGIN IMMEDIATE``: an ``flock`` on a file beside the database (its name
    plus ``-revstore-gate``), behind a thread lock (an flock belongs to the open file,
    which the threads of a process share).

    Why: a writer that finds the file locked waits in SQLite's busy handler, which
    sleeps 1, 2, 5, 10 … ms between tries, so between two processes the lock sits idle
    while the waiter sleeps; the kernel wakes an flock waiter when it is released.
    Measured on records, 2 processes x 8 threads (``benchmarks/results/
    2026-12-01-sqlite-gate.md``). A waiter that cannot have the gate within the busy
    timeout (a holder stopped mid-transaction) goes on without it, to SQLite's own
    lock and timeout, exactly as without the gate: the gate only orders the queue."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.Lock()
        # The thread holding the gate: a transaction inside a batch whose leader took it
        # (``GroupCommit(lead_within=…)``) passes through.
        self._owner: int | None = None
        self._fd: int | None = None
        self._pid = 0
        self._requests: queue.SimpleQueue[tuple[int, Future[bool]]] | None = None
        self._waiter_pid = 0
        # Whoever decides the fate of a request the asker gave up on: the asker (took
        # it after all) or the waiter (lets go of it).
        self._deciding = threading.Lock()

    @classmethod
    def beside(cls, database: str) -> WriteGate | None:
        """The gate of the database file at ``database``; None where no file can be
        made beside it (a read-only directory): the busy handler alone then."""
        gate = cls(database + "-revstore-gate")
        try:
            gate._file()
        except OSError as exc:
            log.info("no write gate beside %s (%s): SQLite's busy handler only", database, exc)
            return None
        return gate

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # A forked child shares its parent's open file, and so its lock: its own.
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def held(self, timeout_s: float) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            yield  # taken by this thread's batch around this transaction
            return
        if not self._local.acquire(timeout=timeout_s):
            yield  # the threads ahead hold it that long: SQLite's lock decides
            return
        try:
            self._owner = me
            fd = self._file()
            locked = self._lock(fd, timeout_s)
            try:
                yield
            finally:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._owner = None
            self._local.release()

    def _lock(self, fd: int, timeout_s: float) -> bool:
        """Take the flock: at once when free, else waiting in the kernel, on the gate's
        own thread so that the wait is bounded (an flock has no timeout)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        got: Future[bool] = Future()
        self._waiter().put((fd, got))
        try:
            return got.result(timeout=timeout_s)
        except TimeoutError:
            with self._deciding:
                if got.done():
                    return True
                got.cancel()  # the waiter lets go of the lock when it gets it
            return False

    def _waiter(self) -> queue.SimpleQueue[tuple[int, Future[bool]]]:
        """The queue of the thread that waits for the flock (one per process: only the
        holder of ``_local`` asks, one request at a time)."""
        if self._requests is None or self._waiter_pid != os.getpid():
            self._requests = queue.SimpleQueue()
            self._waiter_pid = os.getpid()
            threading.Thread(
                target=self._wait_loop, args=(self._requests,), daemon=True, name="revstore-gate"
            ).start()
        return self._requests

    def _wait_loop(self, requests: queue.SimpleQueue[tuple[int, Future[bool]]]) -> None:
        while True:
            fd, got = requests.get()
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._deciding:
                if got.cancelled():
                    fcntl.flock(fd, fcntl.LOCK_UN)  # its asker went on without it
                else:
                    got.set_result(True)
