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
import select as io_select
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Connection, Engine, Row, and_, event, insert, select, update
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError, StatementError
from sqlalchemy.sql.dml import Insert

from revstore import schema
from revstore.content import Canonical
from revstore.errors import (
    AmbiguousCommit,
    InvalidInput,
    NotFound,
    Retryable,
    RevstoreError,
    Unavailable,
)
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

DRIVER_DATA_ERRORS = (UnicodeError, OverflowError)
"""What a driver raises while converting a parameter, before sending anything (PyMySQL
and sqlite3 encoding a lone surrogate, an int too large for the column's type)."""
DB_ERRORS = (SQLAlchemyError, *DRIVER_DATA_ERRORS)
"""Everything that ``_translate_any`` maps: caught around every database call."""

Transform = Callable[[Any], Canonical]
"""Computes the new content from the current one, under the record's lock (merge-patch)."""


def utc(value: datetime | str) -> datetime:
    """Timestamps come back naive from SQLite and MySQL; they are always stored in UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


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


class AppendBatch:
    """A validated batch for ``append``."""

    __slots__ = ("bodies", "expected", "item_ids", "namespace", "stream_id")

    def __init__(
        self,
        namespace: str,
        stream_id: str,
        bodies: list[Canonical],
        item_ids: list[str] | None,
        expected: int | None,
    ) -> None:
        self.namespace = namespace
        self.stream_id = stream_id
        self.bodies = bodies
        self.item_ids = item_ids
        self.expected = expected


class SqlBackend:
    """Base of the three backends. Subclasses build the engine, translate errors and
    add their fast ``counter`` paths."""

    name: ClassVar[str] = "sql"
    default_strategy: ClassVar[str] = "lock"
    begin_write: ClassVar[str] = "BEGIN"
    """Opens a write transaction (SQLite: BEGIN IMMEDIATE takes the write lock up front)."""
    begin_optimistic: ClassVar[str] = "BEGIN"

    def __init__(self, engine: Engine, strategy: str | None = None) -> None:
        self.engine = engine
        self.strategy = strategy or self.default_strategy
        self._schema_ready = False

    # ---------------------------------------------------------------- plumbing

    def translate(self, exc: DBAPIError) -> RevstoreError:
        """Map a driver error to the revstore hierarchy (by SQLSTATE / error number)."""
        raise NotImplementedError

    def _translate_any(self, exc: BaseException) -> RevstoreError:
        if isinstance(exc, DBAPIError):
            if exc.connection_invalidated:
                return Retryable(f"connection lost: {exc.orig}", code="disconnect")
            return self.translate(exc)
        # A value the driver could not convert: refused before anything was sent, so
        # neither a lost connection nor the database's fault.
        cause = exc.orig if isinstance(exc, StatementError) else exc
        if isinstance(cause, DRIVER_DATA_ERRORS):
            # Not str(cause): PyMySQL's UnicodeEncodeError holds the whole statement.
            why = getattr(cause, "reason", None) or str(cause)[:200]
            return InvalidInput(f"a value cannot be sent to the database: {why}")
        return Unavailable(f"database error: {exc}")

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise self._translate_any(exc) from exc
        except (TypeError, ValueError) as exc:
            # The driver's connect() refused an argument taken from the URL's query
            # string (PyMySQL: an unknown keyword) or its path (sqlite3: a NUL byte).
            raise InvalidInput(f"the database URL has an option the driver refuses: {exc}") from exc

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
        except DB_ERRORS as exc:
            err = self._translate_any(exc)
            if commits and isinstance(err, Retryable) and err.code == "disconnect":
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
                conn.exec_driver_sql(begin or self.begin_write)
                result = fn(conn)
            except BaseException as exc:
                self._rollback(conn)
                if isinstance(exc, DB_ERRORS):
                    raise self._translate_any(exc) from exc
                raise
            try:
                conn.exec_driver_sql("COMMIT")
            except SQLAlchemyError as exc:
                err = self._translate_any(exc)
                if isinstance(err, Retryable) and err.code == "disconnect":
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

    def insert_ignore(self, table: Any) -> Insert:
        """INSERT that does nothing when the primary key exists (dialect-specific)."""
        raise NotImplementedError

    def create_schema(self) -> None:
        if self._schema_ready:
            return

        def create(conn: Connection) -> None:
            schema.metadata.create_all(conn, checkfirst=True)

        try:
            # Each DDL statement commits by itself (driver autocommit).
            with self.engine.connect() as conn:
                self._prepare_ddl(conn)
                create(conn)
        except SQLAlchemyError as exc:
            # A concurrent process may have created the same table a moment earlier.
            try:
                with self.engine.connect() as conn:
                    create(conn)
            except SQLAlchemyError:
                raise self._translate_any(exc) from exc
        self._schema_ready = True

    def _prepare_ddl(self, conn: Connection) -> None:
        """Hook run before create_all (SQLite switches the file to WAL)."""

    def ping(self) -> None:
        self.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())

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

    def history(self, namespace: str, record_id: str, after: int, limit: int) -> HistoryPage:
        def read(conn: Connection) -> tuple[list[Row[Any]], bool]:
            rows = list(
                conn.execute(
                    select(V)
                    .where(
                        V.c.namespace == namespace, V.c.record_id == record_id, V.c.version > after
                    )
                    .order_by(V.c.version)
                    .limit(limit + 1)
                )
            )
            exists = (
                bool(rows)
                or conn.execute(select(R.c.revision).where(self._pk(namespace, record_id))).first()
                is not None
            )
            return rows, exists

        rows, exists = self.run(read)
        if not exists:
            raise NotFound(f"record {record_id!r} does not exist in namespace {namespace!r}")
        more = len(rows) > limit
        versions = [self._version(r) for r in rows[:limit]]
        return HistoryPage(versions, versions[-1].version if more else None)

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
        self, namespace: str, prefix: str | None, after: str | None, limit: int
    ) -> RecordPage:
        query = select(R).where(R.c.namespace == namespace, R.c.deleted.is_(False))
        if prefix:
            query = query.where(R.c.id.startswith(prefix, autoescape=True))
        if after is not None:
            query = query.where(R.c.id > after)
        query = query.order_by(R.c.id).limit(limit + 1)
        rows = self.run(lambda c: list(c.execute(query)))
        more = len(rows) > limit
        records = [self._record(r) for r in rows[:limit]]
        return RecordPage(records, records[-1].id if more else None)

    # ---------------------------------------------------------------- records: writes

    def write_record(self, intent: WriteIntent, transform: Transform | None = None) -> Record:
        """One attempt at a write with this backend's strategy (the Store retries)."""
        if self.strategy == "optimistic":
            return self.transaction(
                lambda c: self._write_from_head(c, intent, transform, lock=False),
                self.begin_optimistic,
            )
        return self.transaction(lambda c: self._write_from_head(c, intent, transform, lock=True))

    def _read_head(self, conn: Connection, intent: WriteIntent, lock: bool) -> Row[Any] | None:
        query = select(R).where(self._pk(intent.namespace, intent.id))
        if lock:
            # Row lock until COMMIT: every other writer of this record waits here, so
            # the numbers computed below cannot be taken twice.
            query = query.with_for_update()
        return conn.execute(query).first()

    def _write_from_head(
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
                self.insert_ignore(R).values(**values).execution_options(preserve_rowcount=True)
            )
            if result.rowcount != 1:
                raise Retryable(f"record {intent.id!r} was created concurrently", code="lost-race")
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
            raise Retryable(f"record {intent.id!r} changed concurrently", code="lost-race")
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

    def read_stream(self, namespace: str, stream_id: str, after: int, limit: int) -> ReadPage:
        def read(conn: Connection) -> tuple[list[Row[Any]], bool]:
            rows = list(
                conn.execute(
                    select(I)
                    .where(
                        I.c.namespace == namespace, I.c.stream_id == stream_id, I.c.sequence > after
                    )
                    .order_by(I.c.sequence)
                    .limit(limit + 1)
                )
            )
            exists = (
                bool(rows)
                or conn.execute(
                    select(S.c.last_sequence).where(S.c.namespace == namespace, S.c.id == stream_id)
                ).first()
                is not None
            )
            return rows, exists

        rows, exists = self.run(read)
        if not exists:
            raise NotFound(f"stream {stream_id!r} does not exist in namespace {namespace!r}")
        more = len(rows) > limit
        items = [self._item(r) for r in rows[:limit]]
        return ReadPage(items, items[-1].sequence if more else None)

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

    def append(self, batch: AppendBatch) -> AppendResult:
        """One attempt at an append with this backend's strategy (the Store retries)."""
        if batch.item_ids is not None:
            # Stored items never change, so a complete re-send is answered from a plain
            # read without taking the stream lock (the common case of a retrying pod).
            found = self.run(lambda c: self._stored_items(c, batch))
            resent = classify_resend(
                batch.stream_id, batch.item_ids, [b.hash for b in batch.bodies], found
            )
            if resent is not None:
                return resent
        if self.strategy == "optimistic":
            return self.transaction(
                lambda c: self._append_optimistic(c, batch), self.begin_optimistic
            )
        return self.transaction(lambda c: self._append_locked(c, batch))

    def _stored_items(self, conn: Connection, batch: AppendBatch) -> dict[str, StoredItem]:
        assert batch.item_ids is not None
        rows = conn.execute(
            select(I.c.sequence, I.c.item_id, I.c.body_hash, I.c.body, I.c.created_at).where(
                I.c.namespace == batch.namespace,
                I.c.stream_id == batch.stream_id,
                I.c.item_id.in_(batch.item_ids),
            )
        )
        return {
            r.item_id: StoredItem(
                int(r.sequence), r.item_id, r.body_hash, json.loads(r.body), utc(r.created_at)
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
                self.insert_ignore(S).values(
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

    def _append_locked(self, conn: Connection, batch: AppendBatch) -> AppendResult:
        ts = now()
        last = self._lock_stream(conn, batch, ts)
        return self._append_after(conn, batch, last, ts, cas=False)

    def _append_optimistic(self, conn: Connection, batch: AppendBatch) -> AppendResult:
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
            raise Retryable(f"stream {batch.stream_id!r} changed concurrently", code="lost-race")
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
