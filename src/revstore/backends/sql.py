"""What every SQL backend shares: the engine, explicit transactions, reads, and the
portable ``lock`` and ``optimistic`` write paths.

Connections run in driver autocommit and every transaction is opened and closed here
with explicit statements. That lets a backend choose its own ``BEGIN`` (SQLite needs
``BEGIN IMMEDIATE``), lets a one-statement write run without a transaction around it
(its row lock is then released the moment the statement ends, not one client round
trip later), and tells a failure *before* COMMIT (safe to re-run) from a failure
*during* COMMIT (ambiguous).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import select as io_select
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Row, and_, delete, event, insert, select, update
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from revstore import schema
from revstore.backends.dialect import Dialect
from revstore.backends.strategy import Strategy, strategy_named
from revstore.config import LIST_SCAN_ROWS
from revstore.content import Canonical
from revstore.errors import (
    AmbiguousCommit,
    ClaimLost,
    NotFound,
    RevstoreError,
    Unavailable,
)
from revstore.failures import Disconnected, LostRace
from revstore.idempotency import IN_PROGRESS, Applied, Claim, KeyRow
from revstore.migrations import Migrator
from revstore.record import (
    Action,
    Head,
    HistoryPage,
    Plan,
    Record,
    RecordPage,
    Version,
    WriteIntent,
    plan_write,
)
from revstore.stream import AppendBatch as AppendBatch
from revstore.stream import (
    AppendResult,
    ReadPage,
    StoredItem,
    StreamInfo,
    StreamItem,
    check_expected,
    classify_resend,
)

T = TypeVar("T")

log = logging.getLogger("revstore.backend")

R = schema.records
V = schema.versions
S = schema.streams
I = schema.stream_items  # noqa: E741
K = schema.idempotency

SCHEMA_ATTEMPTS = 5
"""Looks under the schema lock before an "already exists" from an unlocked creator is
taken as an error after all."""

Transform = Callable[[Any], Canonical]
"""Computes the new content from the current one, under the record's lock (merge-patch)."""


def utc(value: datetime | str) -> datetime:
    """Timestamps come back naive from SQLite and MySQL; they are always stored in UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


def page_cut(sizes: Sequence[int], limit: int, max_bytes: int) -> tuple[int, bool]:
    """How many of ``sizes`` (the rows after the cursor, in order, up to limit + 1)
    one page takes, and whether more rows follow it.

    A page holds at most ``limit`` rows and ``max_bytes`` of content, but always at
    least one row, so a row larger than the budget still comes (alone) and a reader
    following ``next_after`` always moves on."""
    total = 0
    for count, size in enumerate(sizes[:limit]):
        if count and total + size > max_bytes:
            return count, True
        total += size
    return min(len(sizes), limit), len(sizes) > limit


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``, in code
    point order (the order of every backend's id collation), or None if there is none.

    ``prefix <= id < upper`` selects exactly the ids starting with ``prefix``, as an
    index range on every backend, without relying on each planner turning
    ``LIKE 'prefix%' ESCAPE …`` into one."""
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return None
    code = ord(stem[-1]) + 1
    if 0xD800 <= code <= 0xDFFF:
        code = 0xE000  # surrogates are not characters: skip to the next one
    return stem[:-1] + chr(code)


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

    def __init__(self, dialect: Dialect, engine: Engine, strategy: str | None = None) -> None:
        self.dialect = dialect
        self.engine = engine
        self.strategy: Strategy = strategy_named(strategy or dialect.default_strategy)
        self._schema_ready = False
        self.migrator = Migrator()
        """Creates and upgrades the tables under the schema lock (tests inject steps)."""
        self.schema_version: int | None = None

    # ---------------------------------------------------------------- plumbing

    @property
    def name(self) -> str:
        return self.dialect.name

    def _translate_any(self, exc: BaseException) -> RevstoreError:
        if isinstance(exc, DBAPIError):
            if exc.connection_invalidated:
                return Disconnected(f"connection lost: {exc.orig}")
            return self.dialect.translate(exc)
        return Unavailable(f"database error: {exc}")

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
        deadline: float | None = None
        delay = 0.02
        while True:
            try:
                return self.engine.connect()
            except SQLAlchemyError as exc:
                err = self._translate_any(exc)
                if not (wait and isinstance(err, Disconnected)):
                    raise err from exc
                now_ = time.monotonic()
                if deadline is None:
                    deadline = now_ + self.reconnect_seconds
                if now_ >= deadline:
                    # Chained to the classified error, so logs keep its db code.
                    err.__cause__ = exc
                    raise Unavailable(
                        f"the database could not be reached for {self.reconnect_seconds:g}s: "
                        f"{exc.orig if isinstance(exc, DBAPIError) else exc}"
                    ) from err
                # Jitter: writers that lost the server together must not all come back
                # at the same instant when it accepts connections again.
                time.sleep(min(delay * random.uniform(0.5, 1.5), deadline - now_))
                delay = min(delay * 2, 0.5)

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

    def run(self, fn: Callable[[Connection], T], *, commits: bool = False) -> T:
        """Run ``fn`` on a pooled connection with no transaction around it: reads, or
        (``commits=True``) a write that commits by itself, whose lost connection may
        have committed and so is an AmbiguousCommit, never retried."""
        conn = self._connect()
        try:
            return fn(conn)
        except SQLAlchemyError as exc:
            err = self._translate_any(exc)
            if commits and isinstance(err, Disconnected):
                raise AmbiguousCommit(
                    f"connection lost during a one-statement write: {exc}"
                ) from exc
            raise err from exc
        finally:
            self._release(conn)

    def run_write_statement(self, fn: Callable[[Connection], T]) -> T:
        return self.run(fn, commits=True)

    def transaction(self, fn: Callable[[Connection], T], begin: str | None = None) -> T:
        """Run ``fn`` inside one explicit transaction; any error before COMMIT rolls back
        and is translated (retryable ones are re-run by the caller's retry policy)."""
        conn = self._connect()
        try:
            try:
                conn.exec_driver_sql(begin or self.dialect.begin_write)
                result = fn(conn)
            except BaseException as exc:
                self._rollback(conn)
                if isinstance(exc, SQLAlchemyError):
                    raise self._translate_any(exc) from exc
                raise
            try:
                conn.exec_driver_sql("COMMIT")
            except SQLAlchemyError as exc:
                err = self._translate_any(exc)
                if isinstance(err, Disconnected):
                    # The COMMIT may have reached the server before the connection died.
                    raise AmbiguousCommit(f"connection lost during COMMIT: {exc}") from exc
                self._rollback(conn)
                raise err from exc
            return result
        finally:
            self._release(conn)

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
        if self._schema_ready and self.schema_version is not None:
            return self.schema_version
        conn = self._connect()
        try:
            for attempt in range(1, SCHEMA_ATTEMPTS + 1):
                try:
                    # Outside the lock and any transaction (SQLite's switch to WAL).
                    self.dialect.prepare_ddl(conn)
                    with self.dialect.schema_lock(conn, self._rollback):
                        version = self.migrator.ensure(conn)
                    break
                except DBAPIError as exc:
                    if attempt == SCHEMA_ATTEMPTS or not self.dialect.already_exists(exc):
                        raise
                    # A creator that does not take the lock (an older release, a DBA)
                    # made the same table a moment ago: that counts as success, and the
                    # next look under the lock sees the table and goes on from there.
                    log.info("schema object created concurrently, looking again: %s", exc.orig)
        except SQLAlchemyError as exc:
            raise self._translate_any(exc) from exc
        finally:
            self._release(conn)
        self.schema_version = version
        self._schema_ready = True
        return version

    def ping(self) -> None:
        # A readiness probe answers at once: it never waits for a server that is down.
        conn = self._connect(wait=False)
        try:
            conn.exec_driver_sql("SELECT 1").scalar()
        except SQLAlchemyError as exc:
            raise self._translate_any(exc) from exc
        finally:
            self._release(conn)

    def dispose(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- records: reads

    @staticmethod
    def _record(row: Row[Any], unchanged: bool = False) -> Record:
        m = row._mapping
        return Record(
            namespace=m["namespace"],
            id=m["id"],
            revision=int(m["revision"]),
            version=int(m["version"]),
            content=json.loads(m["content"]),
            content_hash=m["content_hash"],
            created_at=utc(m["created_at"]),
            updated_at=utc(m["updated_at"]),
            unchanged=unchanged,
        )

    @staticmethod
    def _version(row: Row[Any]) -> Version:
        m = row._mapping
        return Version(
            version=int(m["version"]),
            revision=int(m["revision"]),
            content=json.loads(m["content"]),
            content_hash=m["content_hash"],
            author=m["author"],
            summary=m["summary"],
            created_at=utc(m["created_at"]),
        )

    @staticmethod
    def _pk(namespace: str, record_id: str) -> Any:
        return and_(R.c.namespace == namespace, R.c.id == record_id)

    def get_record(self, namespace: str, record_id: str) -> Record:
        row = self.run(lambda c: c.execute(select(R).where(self._pk(namespace, record_id))).first())
        if row is None or row._mapping["deleted"]:
            raise NotFound(f"record {record_id!r} does not exist in namespace {namespace!r}")
        return self._record(row)

    def history(
        self, namespace: str, record_id: str, after: int, limit: int, max_bytes: int
    ) -> HistoryPage:
        where = (V.c.namespace == namespace, V.c.record_id == record_id, V.c.version > after)

        def read(conn: Connection) -> tuple[list[Row[Any]], bool, bool]:
            # Sizes first, contents second: a page over the byte budget is cut before
            # its contents leave the database. Versions never change, so the second
            # read returns exactly the rows the first one measured.
            sizes = list(
                conn.execute(
                    select(V.c.version, self.dialect.content_bytes(V.c.content))
                    .where(*where)
                    .order_by(V.c.version)
                    .limit(limit + 1)
                )
            )
            if not sizes:
                exists = (
                    conn.execute(select(R.c.revision).where(self._pk(namespace, record_id))).first()
                    is not None
                )
                return [], False, exists
            count, more = page_cut([int(r[1]) for r in sizes], limit, max_bytes)
            last = int(sizes[count - 1][0])
            rows = list(
                conn.execute(select(V).where(*where, V.c.version <= last).order_by(V.c.version))
            )
            return rows, more, True

        rows, more, exists = self.run(read)
        if not exists:
            raise NotFound(f"record {record_id!r} does not exist in namespace {namespace!r}")
        versions = [self._version(r) for r in rows]
        return HistoryPage(versions, versions[-1].version if more and versions else None)

    def get_version(self, namespace: str, record_id: str, number: int) -> Version:
        def read(conn: Connection) -> tuple[Row[Any] | None, Row[Any] | None]:
            head = conn.execute(select(R.c.deleted).where(self._pk(namespace, record_id))).first()
            row = conn.execute(
                select(V).where(
                    V.c.namespace == namespace, V.c.record_id == record_id, V.c.version == number
                )
            ).first()
            return head, row

        head, row = self.run(read)
        if head is None or head._mapping["deleted"]:
            raise NotFound(f"record {record_id!r} does not exist in namespace {namespace!r}")
        if row is None:
            raise NotFound(f"record {record_id!r} has no version {number}")
        return self._version(row)

    def list_records(
        self, namespace: str, prefix: str | None, after: str | None, limit: int, max_bytes: int
    ) -> RecordPage:
        span = [R.c.namespace == namespace]
        if prefix:
            upper = prefix_upper_bound(prefix)
            if upper is None:
                span.append(R.c.id.startswith(prefix, autoescape=True))
            else:
                span.append(R.c.id < upper)
            span.append(R.c.id >= prefix)
        if after is not None:
            span.append(R.c.id > after)
        # Deleted records keep their rows: a page looks at no more than LIST_SCAN_ROWS
        # ids, live or deleted, so a namespace full of tombstones cannot make one call
        # scan all of them. ``edge``, the last id of that window (None when the range
        # holds fewer ids), comes from the primary key index alone, and is sent as a
        # plain value so that every planner uses it as the end of the index range.
        window = max(LIST_SCAN_ROWS, limit + 1)
        find_edge = select(R.c.id).where(*span).order_by(R.c.id).offset(window - 1).limit(1)

        def read(conn: Connection) -> tuple[list[Row[Any]], str | None]:
            """The page's rows and its next_after."""
            edge: str | None = conn.execute(find_edge).scalar()
            where = [*span, R.c.deleted.is_(False)]
            if edge is not None:
                where.append(R.c.id <= edge)
            # Sizes first, contents second (see history). Records change between the
            # two reads: the second one takes at most as many rows as were measured,
            # from the same range, and the cursor is the last row it returned.
            sizes = list(
                conn.execute(
                    select(R.c.id, self.dialect.content_bytes(R.c.content))
                    .where(*where)
                    .order_by(R.c.id)
                    .limit(limit + 1)
                )
            )
            if not sizes:
                # Nothing live in the window: the next page starts after it, if the
                # range goes on.
                return [], edge
            count, more = page_cut([int(r[1]) for r in sizes], limit, max_bytes)
            last: str = sizes[count - 1][0]
            rows = list(
                conn.execute(select(R).where(*where, R.c.id <= last).order_by(R.c.id).limit(count))
            )
            if len(rows) == count and rows[-1]._mapping["id"] != last:
                more = True  # a record created meanwhile took a place in this page
            if more:
                # Every measured row may have been deleted meanwhile: carry on after them.
                return rows, rows[-1]._mapping["id"] if rows else last
            # The page did not fill: the range ends here, or the window did.
            return rows, edge

        rows, cursor = self.run(read)
        records = [self._record(r) for r in rows]
        return RecordPage(records, cursor)

    # ---------------------------------------------------------------- records: writes

    def write_record(
        self, intent: WriteIntent, transform: Transform | None = None, claim: Claim | None = None
    ) -> Record:
        """One attempt at a write with this backend's strategy (the Store retries).
        With a ``claim``, the idempotency key is applied in the same transaction."""
        return self.strategy.write_record(self, intent, transform, claim)

    def counter_put(self, intent: WriteIntent, claim: Claim | None) -> Record | None:
        """A put by the dialect's counter statement (``Counter``); None when the dialect
        has none, and the write goes the ``Lock`` way."""
        if not self.dialect.counter_puts:
            return None
        return self.transaction(
            lambda c: self.settle_record(c, claim, intent, self._counter_put(c, intent))
        )

    def _counter_put(self, conn: Connection, intent: WriteIntent) -> Record:
        ts = now()
        bumped = self.dialect.bump_head(conn, intent, ts)
        if bumped is None:
            # Absent, deleted, unchanged or conflicting: the general path decides, still
            # in the same transaction (SQLite: under the same write lock).
            return self.write_from_head(conn, intent, None, lock=True)
        revision, version, created_at = bumped
        return self._finish_counter_put(conn, intent, revision, version, created_at, ts)

    def counter_append(self, batch: AppendBatch, claim: Claim | None) -> AppendResult | None:
        """An append by the dialect's counter statement (``Counter``, no item ids); None
        when the dialect has none."""
        if not self.dialect.counter_appends:
            return None
        return self.transaction(
            lambda c: self.settle_append(c, claim, batch, self._counter_append(c, batch))
        )

    def _counter_append(self, conn: Connection, batch: AppendBatch) -> AppendResult:
        ts = now()
        last = self.dialect.bump_stream(conn, batch, ts)
        if last is None:
            # New stream or failed expectation: the locked path creates or reports.
            return self.append_locked(conn, batch)
        first = last - len(batch.bodies) + 1
        # The range first … last is ours: the row lock is held until COMMIT.
        self._insert_items(conn, batch, first, ts)
        return self._appended(batch, first, ts)

    def _read_head(self, conn: Connection, intent: WriteIntent, lock: bool) -> Row[Any] | None:
        query = select(R).where(self._pk(intent.namespace, intent.id))
        if lock:
            # Row lock until COMMIT: every other writer of this record waits here, so
            # the numbers computed below cannot be taken twice.
            query = query.with_for_update()
        return conn.execute(query).first()

    def write_from_head(
        self,
        conn: Connection,
        intent: WriteIntent,
        transform: Transform | None,
        lock: bool,
    ) -> Record:
        """The portable write: read the head (locked or not), let the core plan, apply."""
        row = self._read_head(conn, intent, lock)
        head = None
        if row is not None:
            m = row._mapping
            head = Head(
                int(m["revision"]), int(m["version"]), m["content_hash"], bool(m["deleted"])
            )
        if transform is not None and head is not None and not head.deleted:
            assert row is not None
            new = transform(json.loads(row._mapping["content"]))
            intent = dataclasses.replace(
                intent, content_text=new.text, content_hash=new.hash, content_value=new.value
            )
        plan = plan_write(head, intent, lambda: self._record(row) if row is not None else None)
        if plan.action is Action.UNCHANGED:
            assert row is not None
            return self._record(row, unchanged=True)
        ts = now()
        if plan.action is Action.INSERT:
            return self._insert_record(conn, intent, plan, ts, ignore=lock)
        assert row is not None and head is not None
        return self._update_record(conn, intent, plan, row, ts, cas=None if lock else head.revision)

    def _insert_record(
        self, conn: Connection, intent: WriteIntent, plan: Plan, ts: datetime, ignore: bool
    ) -> Record:
        values = {
            "namespace": intent.namespace,
            "id": intent.id,
            "revision": plan.revision,
            "version": plan.version,
            "content": intent.content_text,
            "content_hash": intent.content_hash,
            "deleted": False,
            "created_at": ts,
            "updated_at": ts,
        }
        if ignore:
            # Another creator may be inserting the same id right now: insert-if-absent
            # waits for it, and a lost race is re-run (reading the winner's row).
            result = conn.execute(
                self.dialect.insert_ignore(R)
                .values(**values)
                .execution_options(preserve_rowcount=True)
            )
            if result.rowcount != 1:
                raise LostRace(f"record {intent.id!r} was created concurrently")
        else:
            conn.execute(insert(R).values(**values))
        if plan.snapshot:
            self._insert_version(conn, intent, plan, ts)
        return Record(
            intent.namespace,
            intent.id,
            plan.revision,
            plan.version,
            intent.content_value,
            intent.content_hash,
            ts,
            ts,
            created=True,
        )

    def _finish_counter_put(
        self,
        conn: Connection,
        intent: WriteIntent,
        revision: int,
        version: int,
        created_at: datetime | str,
        ts: datetime,
    ) -> Record:
        """After a counter UPDATE took (revision, version): add the snapshot, build the head."""
        if intent.create_version:
            plan = Plan(Action.UPDATE, revision=revision, version=version, snapshot=True)
            self._insert_version(conn, intent, plan, ts)
        return self._written_head(intent, revision, version, created_at, ts)

    @staticmethod
    def _written_head(
        intent: WriteIntent, revision: int, version: int, created_at: datetime | str, ts: datetime
    ) -> Record:
        """The head a counter write left: the intent's content at the numbers it took."""
        return Record(
            intent.namespace,
            intent.id,
            revision,
            version,
            intent.content_value,
            intent.content_hash,
            utc(created_at),
            ts,
        )

    def _insert_version(
        self, conn: Connection, intent: WriteIntent, plan: Plan, ts: datetime
    ) -> None:
        conn.execute(
            insert(V).values(
                namespace=intent.namespace,
                record_id=intent.id,
                version=plan.version,
                revision=plan.revision,
                content=intent.content_text,
                content_hash=intent.content_hash,
                author=intent.author,
                summary=intent.summary,
                created_at=ts,
            )
        )

    def _update_record(
        self,
        conn: Connection,
        intent: WriteIntent,
        plan: Plan,
        row: Row[Any],
        ts: datetime,
        cas: int | None,
    ) -> Record:
        m = row._mapping
        if plan.deleted:
            values: dict[str, Any] = {"revision": plan.revision, "deleted": True, "updated_at": ts}
            content, content_hash = json.loads(m["content"]), m["content_hash"]
        else:
            values = {
                "revision": plan.revision,
                "version": plan.version,
                "content": intent.content_text,
                "content_hash": intent.content_hash,
                "deleted": False,
                "updated_at": ts,
            }
            content, content_hash = intent.content_value, intent.content_hash
        if plan.snapshot:
            # Optimistic: the history key (record, version) is the race detector here; a
            # writer that read the same head fails on it and re-runs.
            self._insert_version(conn, intent, plan, ts)
        stmt = update(R).where(self._pk(intent.namespace, intent.id)).values(**values)
        if cas is not None:
            # Compare-and-set on the revision read without a lock (optimistic strategy).
            stmt = stmt.where(R.c.revision == cas)
        result = conn.execute(stmt)
        if result.rowcount != 1:
            raise LostRace(f"record {intent.id!r} changed concurrently")
        return Record(
            intent.namespace,
            intent.id,
            plan.revision,
            plan.version,
            content,
            content_hash,
            utc(m["created_at"]),
            ts,
            created=bool(m["deleted"]) and not plan.deleted,
        )

    # ---------------------------------------------------------------- streams

    @staticmethod
    def _item(row: Row[Any]) -> StreamItem:
        m = row._mapping
        return StreamItem(
            sequence=int(m["sequence"]),
            item_id=m["item_id"],
            body=json.loads(m["body"]),
            created_at=utc(m["created_at"]),
        )

    def read_stream(
        self, namespace: str, stream_id: str, after: int, limit: int, max_bytes: int
    ) -> ReadPage:
        where = (I.c.namespace == namespace, I.c.stream_id == stream_id, I.c.sequence > after)

        def read(conn: Connection) -> tuple[list[Row[Any]], bool, bool]:
            # Sizes first, bodies second (see history); stored items never change.
            sizes = list(
                conn.execute(
                    select(I.c.sequence, self.dialect.content_bytes(I.c.body))
                    .where(*where)
                    .order_by(I.c.sequence)
                    .limit(limit + 1)
                )
            )
            if not sizes:
                exists = (
                    conn.execute(
                        select(S.c.last_sequence).where(
                            S.c.namespace == namespace, S.c.id == stream_id
                        )
                    ).first()
                    is not None
                )
                return [], False, exists
            count, more = page_cut([int(r[1]) for r in sizes], limit, max_bytes)
            last = int(sizes[count - 1][0])
            rows = list(
                conn.execute(select(I).where(*where, I.c.sequence <= last).order_by(I.c.sequence))
            )
            return rows, more, True

        rows, more, exists = self.run(read)
        if not exists:
            raise NotFound(f"stream {stream_id!r} does not exist in namespace {namespace!r}")
        items = [self._item(r) for r in rows]
        return ReadPage(items, items[-1].sequence if more and items else None)

    def stream_info(self, namespace: str, stream_id: str) -> StreamInfo:
        row = self.run(
            lambda c: c.execute(
                select(S).where(S.c.namespace == namespace, S.c.id == stream_id)
            ).first()
        )
        if row is None:
            raise NotFound(f"stream {stream_id!r} does not exist in namespace {namespace!r}")
        m = row._mapping
        return StreamInfo(
            namespace,
            stream_id,
            int(m["last_sequence"]),
            int(m["item_count"]),
            utc(m["created_at"]),
            utc(m["updated_at"]),
        )

    def append(self, batch: AppendBatch, claim: Claim | None = None) -> AppendResult:
        """One attempt at an append with this backend's strategy (the Store retries).
        With a ``claim``, the idempotency key is applied in the same transaction."""
        if batch.item_ids is not None and claim is None:
            # Stored items never change, so a complete re-send is answered from a plain
            # read without taking the stream lock (the common case of a retrying pod).
            found = self.run(lambda c: self._stored_items(c, batch))
            resent = classify_resend(
                batch.stream_id, batch.item_ids, [b.hash for b in batch.bodies], found
            )
            if resent is not None:
                return resent
        return self.strategy.append(self, batch, claim)

    def _stored_items(self, conn: Connection, batch: AppendBatch) -> dict[str, StoredItem]:
        assert batch.item_ids is not None
        # Not the stored bodies: up to 1000 ids could name items of 1 MiB each. A stored
        # item with the same hash has this batch's body (the hash is of the canonical
        # text); one with another hash is refused as DuplicateItem without its body.
        sent = {i: b for i, b in zip(batch.item_ids, batch.bodies, strict=True)}
        rows = conn.execute(
            select(I.c.sequence, I.c.item_id, I.c.body_hash, I.c.created_at).where(
                I.c.namespace == batch.namespace,
                I.c.stream_id == batch.stream_id,
                I.c.item_id.in_(batch.item_ids),
            )
        )
        return {
            r.item_id: StoredItem(
                int(r.sequence),
                r.item_id,
                r.body_hash,
                sent[r.item_id].value if sent[r.item_id].hash == r.body_hash else None,
                utc(r.created_at),
            )
            for r in rows
        }

    def _lock_stream(self, conn: Connection, batch: AppendBatch, ts: datetime) -> int:
        """Lock the stream row (creating it if absent) and return its last sequence."""
        query = (
            select(S.c.last_sequence)
            .where(S.c.namespace == batch.namespace, S.c.id == batch.stream_id)
            # Row lock until COMMIT: appenders to this stream queue here, one at a time.
            .with_for_update()
        )
        last = conn.execute(query).scalar()
        if last is None:
            # First append: create the row if absent (a concurrent creator makes this a
            # no-op), then lock it like any other.
            conn.execute(
                self.dialect.insert_ignore(S).values(
                    namespace=batch.namespace,
                    id=batch.stream_id,
                    last_sequence=0,
                    item_count=0,
                    created_at=ts,
                    updated_at=ts,
                )
            )
            last = conn.execute(query).scalar()
        return int(last or 0)

    def append_locked(self, conn: Connection, batch: AppendBatch) -> AppendResult:
        ts = now()
        last = self._lock_stream(conn, batch, ts)
        return self._append_after(conn, batch, last, ts, cas=False)

    def append_optimistic(self, conn: Connection, batch: AppendBatch) -> AppendResult:
        ts = now()
        last = conn.execute(
            select(S.c.last_sequence).where(
                S.c.namespace == batch.namespace, S.c.id == batch.stream_id
            )
        ).scalar()
        if last is None:
            conn.execute(
                insert(S).values(
                    namespace=batch.namespace,
                    id=batch.stream_id,
                    last_sequence=0,
                    item_count=0,
                    created_at=ts,
                    updated_at=ts,
                )
            )
            last = 0
        return self._append_after(conn, batch, int(last), ts, cas=True)

    def _append_after(
        self, conn: Connection, batch: AppendBatch, last: int, ts: datetime, cas: bool
    ) -> AppendResult:
        """Check the rules against ``last`` (read under the lock, or to be CAS-checked)
        and write the items at last+1 … last+n."""
        if batch.item_ids is not None:
            # Re-checked under the lock: a pod re-sending this batch may have just
            # committed. A re-send is answered before expected_sequence is checked: it
            # was accepted once, with the expectation that held then.
            resent = classify_resend(
                batch.stream_id,
                batch.item_ids,
                [b.hash for b in batch.bodies],
                self._stored_items(conn, batch),
            )
            if resent is not None:
                return resent
        check_expected(batch.stream_id, batch.expected, last)
        n = len(batch.bodies)
        self._insert_items(conn, batch, last + 1, ts)
        stmt = (
            update(S)
            .where(S.c.namespace == batch.namespace, S.c.id == batch.stream_id)
            .values(last_sequence=last + n, item_count=S.c.item_count + n, updated_at=ts)
        )
        if cas:
            stmt = stmt.where(S.c.last_sequence == last)
        if conn.execute(stmt).rowcount != 1:
            raise LostRace(f"stream {batch.stream_id!r} changed concurrently")
        return self._appended(batch, last + 1, ts)

    def _insert_items(self, conn: Connection, batch: AppendBatch, first: int, ts: datetime) -> None:
        ids: Sequence[str | None] = batch.item_ids or [None] * len(batch.bodies)
        conn.execute(
            insert(I),
            [
                {
                    "namespace": batch.namespace,
                    "stream_id": batch.stream_id,
                    "sequence": first + k,
                    "item_id": item_id,
                    "body": body.text,
                    "body_hash": body.hash,
                    "created_at": ts,
                }
                for k, (item_id, body) in enumerate(zip(ids, batch.bodies, strict=True))
            ],
        )

    @staticmethod
    def _appended(batch: AppendBatch, first: int, ts: datetime) -> AppendResult:
        ids: Sequence[str | None] = batch.item_ids or [None] * len(batch.bodies)
        items = [
            StreamItem(first + k, item_id, body.value, ts)
            for k, (item_id, body) in enumerate(zip(ids, batch.bodies, strict=True))
        ]
        return AppendResult(first, first + len(items) - 1, items)

    # ---------------------------------------------------------------- idempotency keys

    def settle_record(
        self, conn: Connection, claim: Claim | None, intent: WriteIntent, rec: Record
    ) -> Record:
        if claim is not None:
            self._settle(conn, claim, Applied.of_record(intent.mode, rec))
        return rec

    def settle_append(
        self, conn: Connection, claim: Claim | None, batch: AppendBatch, res: AppendResult
    ) -> AppendResult:
        if claim is not None:
            self._settle(conn, claim, Applied.of_append(batch.namespace, batch.stream_id, res))
        return res

    def _settle(self, conn: Connection, claim: Claim, applied: Applied) -> None:
        """Mark the claimed key applied, with the write's result, in the write's own
        transaction: the key and the write commit together or not at all.

        Done last, after the write took its record or stream lock: nothing that locks a
        key row first ever waits for a record lock, so the order cannot deadlock. The
        ``WHERE`` is the ownership check: if the reservation expired and was taken over
        (or released), no row matches and the whole write rolls back. A competing
        takeover that deletes the expired row waits for this row lock and, seeing the
        new expiry once this commits, deletes nothing (READ COMMITTED re-check;
        SQLite has a single writer).
        """
        ts = now()
        result = conn.execute(
            update(K)
            .where(
                K.c.key == claim.key,
                K.c.status == IN_PROGRESS,
                K.c.headers == claim.marker,
                K.c.body == "",
                K.c.request_hash == claim.request_hash,
            )
            .values(body=applied.to_text(), expires_at=ts + timedelta(seconds=claim.keep_for))
            .execution_options(preserve_rowcount=True)
        )
        if result.rowcount != 1:
            raise ClaimLost(
                f"idempotency key {claim.key!r} is no longer held by this request "
                "(its lease expired or it was released); nothing was written"
            )

    def key_insert(
        self, key: str, request_hash: str, marker: str, ts: datetime, until: datetime
    ) -> bool:
        """Reserve ``key`` if absent (True when this call inserted it)."""
        stmt = (
            self.dialect.insert_ignore(K)
            .values(
                key=key,
                request_hash=request_hash,
                status=IN_PROGRESS,
                headers=marker,
                body="",
                created_at=ts,
                expires_at=until,
            )
            .execution_options(preserve_rowcount=True)
        )
        # Safe to re-run after a lost connection: a landed insert is recognised by its
        # owner marker.
        return bool(self.run(lambda c: c.execute(stmt).rowcount == 1))

    def key_get(self, key: str) -> KeyRow | None:
        row = self.run(lambda c: c.execute(select(K).where(K.c.key == key)).first())
        if row is None:
            return None
        m = row._mapping
        return KeyRow(
            m["key"],
            m["request_hash"],
            int(m["status"]),
            m["headers"] or "",
            m["body"] or "",
            utc(m["expires_at"]),
        )

    def key_expire(self, key: str, ts: datetime) -> int:
        """Delete ``key`` if it has expired by ``ts``."""
        stmt = (
            delete(K)
            .where(K.c.key == key, K.c.expires_at <= ts)
            .execution_options(preserve_rowcount=True)
        )
        return int(self.run(lambda c: c.execute(stmt).rowcount))

    def key_answer(
        self,
        key: str,
        status: int,
        headers: str,
        body: str,
        until: datetime | None,
        *,
        marker: str | None = None,
        request_hash: str | None = None,
    ) -> bool:
        """Store the reply for ``key``: as its holder (``marker``; reserved or applied),
        or as a re-send that rebuilt it from the applied result (``request_hash``)."""
        stmt = update(K).where(K.c.key == key, K.c.status == IN_PROGRESS)
        if marker is not None:
            stmt = stmt.where(K.c.headers == marker)
        if request_hash is not None:
            stmt = stmt.where(K.c.request_hash == request_hash, K.c.body != "")
        values: dict[str, Any] = {"status": status, "headers": headers, "body": body}
        if until is not None:
            values["expires_at"] = until
        final = stmt.values(**values).execution_options(preserve_rowcount=True)
        return bool(self.run(lambda c: c.execute(final).rowcount == 1))

    def key_release(self, key: str, marker: str) -> int:
        """Delete a reservation of ``marker`` that was never applied."""
        stmt = (
            delete(K)
            .where(
                K.c.key == key,
                K.c.status == IN_PROGRESS,
                K.c.headers == marker,
                # An applied key stays: its write committed. A release racing with a
                # write still committing waits for its row lock, then re-checks.
                K.c.body == "",
            )
            .execution_options(preserve_rowcount=True)
        )
        return int(self.run(lambda c: c.execute(stmt).rowcount))

    def key_purge(self, ts: datetime) -> int:
        stmt = delete(K).where(K.c.expires_at <= ts).execution_options(preserve_rowcount=True)
        return int(self.run(lambda c: c.execute(stmt).rowcount))
