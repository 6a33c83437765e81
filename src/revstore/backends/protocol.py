"""The I/O-free protocols of every operation: reads, record writes from the head, the
counter paths, appends, idempotency keys and the transaction around a write.

Each protocol is a generator (in the style of psycopg's ``generators``): it yields the
statement to run (:class:`Execute`, a SQLAlchemy Core construct, or :class:`Raw`
driver SQL such as ``BEGIN``) and is sent back its result, a buffered SQLAlchemy
``Result``. A driver error is thrown into it, already translated into revstore's
categories (``revstore.failures``), at the statement that failed. It returns the
operation's value or raises its error. It never touches a connection, a clock for
waiting, or a thread: the sync executor (``sql.SqlBackend``) drives it with a
``Connection``; an asyncio executor drives the same generator with an
``AsyncConnection``. So the rules, the statements and the failure decisions exist
once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from revstore import config, schema
from revstore.apikeys import ApiKey
from revstore.backends.dialect import Dialect
from revstore.backends.ops import COMMIT, Execute, Raw, Step
from revstore.content import Canonical
from revstore.errors import (
    AmbiguousCommit,
    ClaimLost,
    Conflict,
    NotFound,
    SequenceConflict,
    VersionCompacted,
    VersionConflict,
)
from revstore.failures import Disconnected, LostRace
from revstore.idempotency import IN_PROGRESS, Applied, Claim, KeyRow
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
from revstore.retention import Policy
from revstore.stream import (
    AppendBatch,
    AppendResult,
    ReadPage,
    StoredItem,
    StreamInfo,
    StreamItem,
    StreamPage,
    check_expected,
    classify_resend,
)

T = TypeVar("T")

R = schema.records
V = schema.versions
RP = schema.retention
CP = schema.compacted
S = schema.streams
I = schema.stream_items  # noqa: E741
K = schema.idempotency
A = schema.api_keys

Transform = Callable[[Any], Canonical]
"""Computes the new content from the current one, under the record's lock (merge-patch)."""


# ---------------------------------------------------------------- values


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


def id_range(
    table: Any, namespace: str, prefix: str | None, after: str | None
) -> list[ColumnElement[bool]]:
    """The ids of ``namespace`` in ``table`` that start with ``prefix`` and come after
    ``after``, as a range on the primary key (a LIKE only when the prefix has no upper
    bound), so that every planner walks the index."""
    span: list[ColumnElement[bool]] = [table.c.namespace == namespace]
    if prefix:
        upper = prefix_upper_bound(prefix)
        if upper is None:
            span.append(table.c.id.startswith(prefix, autoescape=True))
        else:
            span.append(table.c.id < upper)
        span.append(table.c.id >= prefix)
    if after is not None:
        span.append(table.c.id > after)
    return span


def record_of(row: Row[Any], unchanged: bool = False) -> Record:
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


def version_of(row: Row[Any]) -> Version:
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


def item_of(row: Row[Any]) -> StreamItem:
    m = row._mapping
    return StreamItem(
        sequence=int(m["sequence"]),
        item_id=m["item_id"],
        body=json.loads(m["body"]),
        created_at=utc(m["created_at"]),
    )


def written_head(
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


def appended(batch: AppendBatch, first: int, ts: datetime) -> AppendResult:
    ids: Sequence[str | None] = batch.item_ids or [None] * len(batch.bodies)
    items = [
        StreamItem(first + k, item_id, body.value, ts)
        for k, (item_id, body) in enumerate(zip(ids, batch.bodies, strict=True))
    ]
    return AppendResult(first, first + len(items) - 1, items)


_INSERT_VERSION = insert(V)
_INSERT_ITEMS = insert(I)


def _version_params(intent: WriteIntent, plan: Plan, ts: datetime) -> dict[str, Any]:
    """A snapshot row of the write ``intent`` at the numbers of ``plan``."""
    return {
        "namespace": intent.namespace,
        "record_id": intent.id,
        "version": plan.version,
        "revision": plan.revision,
        "content": intent.content_text,
        "content_hash": intent.content_hash,
        "author": intent.author,
        "summary": intent.summary,
        "created_at": ts,
    }


def _item_rows(batch: AppendBatch, first: int, ts: datetime) -> list[dict[str, Any]]:
    """The rows of ``batch``'s items, from sequence ``first``."""
    ids: Sequence[str | None] = batch.item_ids or [None] * len(batch.bodies)
    return [
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
    ]


_HEADS_LOCKED: dict[tuple[str, int], Select[Any]] = {}


def _heads_locked(table: Any, keys: Sequence[tuple[str, str]]) -> Execute:
    """A read of the rows of ``table`` (records or streams) at ``keys``, locked: an OR
    of primary keys, which SQLite and InnoDB both read as point lookups (InnoDB locks
    them in key order, as ``batch.ordered`` does). One statement per table and number
    of keys, built once."""
    unique = list(dict.fromkeys(keys))
    n = len(unique)
    stmt = _HEADS_LOCKED.get((table.name, n))
    if stmt is None:
        match = [
            and_(table.c.namespace == bindparam(f"ns{k}"), table.c.id == bindparam(f"id{k}"))
            for k in range(n)
        ]
        stmt = _HEADS_LOCKED[(table.name, n)] = select(table).where(or_(*match)).with_for_update()
    params: dict[str, Any] = {}
    for k, (namespace, key) in enumerate(unique):
        params[f"ns{k}"], params[f"id{k}"] = namespace, key
    return Execute(stmt, params)


class _BatchHead:
    """A head as ``Protocol._puts_together`` moves it along its puts: as read, then as
    the last put that changed it left it (``written_head``)."""

    __slots__ = ("created_at", "hash", "key", "last", "revision", "row", "ts", "version")

    def __init__(self, row: Row[Any]) -> None:
        m = row._mapping
        self.row = row
        self.key = (m["namespace"], m["id"])
        self.revision, self.version = int(m["revision"]), int(m["version"])
        self.hash: str = m["content_hash"]
        self.created_at = m["created_at"]
        self.ts = utc(m["updated_at"])
        self.last: WriteIntent | None = None  # the last put that changed it

    def head(self) -> Head:
        return Head(self.revision, self.version, self.hash, False)

    def apply(self, intent: WriteIntent, plan: Plan, ts: datetime) -> None:
        self.revision, self.version, self.hash, self.ts = (
            plan.revision,
            plan.version,
            intent.content_hash,
            ts,
        )
        self.last = intent

    def record(self, unchanged: bool = False) -> Record:
        if self.last is None:
            return record_of(self.row, unchanged)
        head = written_head(self.last, self.revision, self.version, self.created_at, self.ts)
        return dataclasses.replace(head, unchanged=True) if unchanged else head

    def values(self) -> dict[str, Any]:
        """The head row's new values, keyed by column (``Dialect.write_heads``)."""
        assert self.last is not None
        return {
            "namespace": self.key[0],
            "id": self.key[1],
            "revision": self.revision,
            "version": self.version,
            "content": self.last.content_text,
            "content_hash": self.hash,
            "deleted": False,
            "created_at": self.created_at,
            "updated_at": self.ts,
        }


# ---------------------------------------------------------------- prebuilt statements
# The hot reads are built once, with bind parameters, and executed with a dict of values:
# building a statement costs more than running it through a warm compiled cache, and a
# reused statement object keeps its cache key (SQLAlchemy memoizes it), so the sync and
# the asyncio executors find the compiled form without walking the statement again.


def _pk(table: Any, id_column: str = "id") -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """``namespace = :ns AND <id_column> = :id``."""
    return (table.c.namespace == bindparam("ns"), table.c[id_column] == bindparam("id"))


_RECORD = select(R).where(*_pk(R))
_RECORD_LOCKED = _RECORD.with_for_update()
_RECORD_REVISION = select(R.c.revision).where(*_pk(R))
_RECORD_DELETED = select(R.c.deleted).where(*_pk(R))
_VERSION = select(V).where(*_pk(V, "record_id"), V.c.version == bindparam("number"))
_FIRST_KEPT = select(CP.c.first_version).where(*_pk(CP, "record_id"))
_STREAM = select(S).where(*_pk(S))
_STREAM_LAST = select(S.c.last_sequence).where(*_pk(S))
_STREAM_LAST_LOCKED = _STREAM_LAST.with_for_update()
# An append moves the stream's last sequence (``_append_after``); the optimistic
# strategy's compare-and-set also requires the last sequence it read.
# (An UPDATE's bind parameters may not be named after its columns: not ``_pk``.)
_STREAM_ADVANCE = (
    update(S)
    .where(S.c.namespace == bindparam("s_ns"), S.c.id == bindparam("s_id"))
    .values(
        last_sequence=bindparam("new_last"),
        item_count=S.c.item_count + bindparam("added"),
        updated_at=bindparam("now"),
    )
)
_STREAM_ADVANCE_FROM = _STREAM_ADVANCE.where(S.c.last_sequence == bindparam("read_last"))
_STORED_ITEMS = select(I.c.sequence, I.c.item_id, I.c.body_hash, I.c.created_at).where(
    *_pk(I, "stream_id"), I.c.item_id.in_(bindparam("ids", expanding=True))
)
_KEY = select(K).where(K.c.key == bindparam("key"))
_API_KEY = select(A).where(A.c.id == bindparam("id"))


def _pk_of(namespace: str, record_id: str) -> dict[str, Any]:
    return {"ns": namespace, "id": record_id}


class _Pages:
    """A history or stream page's two reads (see ``Protocol._measured_page``), built
    once per dialect (the size of a content is the dialect's expression): the sizes
    after the cursor, and the rows up to the last one that fits."""

    __slots__ = ("rows", "sizes")

    def __init__(self, table: Any, owner: str, position: str, content: ColumnElement[int]) -> None:
        where = (*_pk(table, owner), table.c[position] > bindparam("after"))
        order = table.c[position]
        self.sizes = (
            select(order, content)
            .where(*where)
            .order_by(order)
            .limit(bindparam("n", type_=Integer))
        )
        self.rows = select(table).where(*where, order <= bindparam("last")).order_by(order)


# ---------------------------------------------------------------- transactions


def in_transaction(body: Step[T], begin: str) -> Step[T]:
    """``body`` inside one explicit transaction. The executor rolls back (or drops the
    connection) on any error, the caller's cancellation included; here is only the
    decision a failed COMMIT needs: a lost connection may have committed."""
    yield Raw(begin)
    result = yield from body
    try:
        yield COMMIT
    except Disconnected as exc:
        # The COMMIT may have reached the server before the connection died.
        raise AmbiguousCommit(f"connection lost during COMMIT: {exc}") from exc
    return result


def self_committing(body: Step[T]) -> Step[T]:
    """``body``: statements that commit by themselves (driver autocommit, no BEGIN). A
    lost connection may have committed the write: AmbiguousCommit, never re-run."""
    try:
        return (yield from body)
    except Disconnected as exc:
        raise AmbiguousCommit(f"connection lost during a one-statement write: {exc}") from exc


class Protocol:
    """Every operation's protocol, with the statements of one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._history = _Pages(V, "record_id", "version", dialect.content_bytes(V.c.content))
        self._items = _Pages(I, "stream_id", "sequence", dialect.content_bytes(I.c.body))

    # ---------------------------------------------------------------- records: reads

    def ping(self) -> Step[None]:
        yield Raw("SELECT 1")

    def get_record(self, namespace: str, record_id: str) -> Step[Record]:
        row = (yield Execute(_RECORD, _pk_of(namespace, record_id))).first()
        if row is None or row._mapping["deleted"]:
            raise NotFound(f"record {record_id!r} does not exist in namespace {namespace!r}")
        return record_of(row)

    def history(
        self, namespace: str, record_id: str, after: int, limit: int, max_bytes: int
    ) -> Step[HistoryPage]:
        # Versions never change: the rows read are exactly the ones measured.
        page = yield from self._measured_page(
            self._history, {**_pk_of(namespace, record_id), "after": after}, limit, max_bytes
        )
        if page is None:
            head = (yield Execute(_RECORD_REVISION, _pk_of(namespace, record_id))).first()
            if head is None:
                raise NotFound(f"record {record_id!r} does not exist in namespace {namespace!r}")
            return HistoryPage([], None)
        rows, more = page
        versions = [version_of(r) for r in rows]
        return HistoryPage(versions, versions[-1].version if more and versions else None)

    @staticmethod
    def _measured_page(
        pages: _Pages, where: dict[str, Any], limit: int, max_bytes: int
    ) -> Step[tuple[list[Row[Any]], bool] | None]:
        """Sizes first, contents second: a page over the byte budget is cut before its
        contents leave the database. ``pages.sizes`` gives (position, size) rows after
        the cursor (limit + 1 of them); ``pages.rows`` the page's rows up to ``last``.
        None when nothing follows the cursor."""
        measured = list((yield Execute(pages.sizes, {**where, "n": limit + 1})))
        if not measured:
            return None
        count, more = page_cut([int(r[1]) for r in measured], limit, max_bytes)
        last = int(measured[count - 1][0])
        return list((yield Execute(pages.rows, {**where, "last": last}))), more

    def get_version(self, namespace: str, record_id: str, number: int) -> Step[Version]:
        head = (yield Execute(_RECORD_DELETED, _pk_of(namespace, record_id))).first()
        row = (yield Execute(_VERSION, {**_pk_of(namespace, record_id), "number": number})).first()
        if head is None or head._mapping["deleted"]:
            raise NotFound(f"record {record_id!r} does not exist in namespace {namespace!r}")
        if row is None:
            first = (yield Execute(_FIRST_KEPT, _pk_of(namespace, record_id))).scalar()
            if first is not None and number < first:
                raise VersionCompacted(
                    f"version {number} of record {record_id!r} was removed by the retention "
                    f"policy of namespace {namespace!r}; the oldest kept is {first}",
                    int(first),
                )
            raise NotFound(f"record {record_id!r} has no version {number}")
        return version_of(row)

    def list_records(
        self, namespace: str, prefix: str | None, after: str | None, limit: int, max_bytes: int
    ) -> Step[RecordPage]:
        span = id_range(R, namespace, prefix, after)
        # Deleted records keep their rows: a page looks at no more than LIST_SCAN_ROWS
        # ids, live or deleted, so a namespace full of tombstones cannot make one call
        # scan all of them. ``edge``, the last id of that window (None when the range
        # holds fewer ids), comes from the primary key index alone, and is sent as a
        # plain value so that every planner uses it as the end of the index range.
        window = max(config.LIST_SCAN_ROWS, limit + 1)
        find_edge = select(R.c.id).where(*span).order_by(R.c.id).offset(window - 1).limit(1)
        edge: str | None = (yield Execute(find_edge)).scalar()
        where = [*span, R.c.deleted.is_(False)]
        if edge is not None:
            where.append(R.c.id <= edge)
        # Sizes first, contents second (see history). Records change between the two
        # reads: the second one takes at most as many rows as were measured, from the
        # same range, and the cursor is the last row it returned.
        sizes = list(
            (
                yield Execute(
                    select(R.c.id, self.dialect.content_bytes(R.c.content))
                    .where(*where)
                    .order_by(R.c.id)
                    .limit(limit + 1)
                )
            )
        )
        if not sizes:
            # Nothing live in the window: the next page starts after it, if the range
            # goes on.
            return RecordPage([], edge)
        count, more = page_cut([int(r[1]) for r in sizes], limit, max_bytes)
        last: str = sizes[count - 1][0]
        rows = list(
            (yield Execute(select(R).where(*where, R.c.id <= last).order_by(R.c.id).limit(count)))
        )
        if len(rows) == count and rows[-1]._mapping["id"] != last:
            more = True  # a record created meanwhile took a place in this page
        records = [record_of(r) for r in rows]
        if more:
            # Every measured row may have been deleted meanwhile: carry on after them.
            return RecordPage(records, records[-1].id if records else last)
        # The page did not fill: the range ends here, or the window did.
        return RecordPage(records, edge)

    # ---------------------------------------------------------------- records: writes

    def write_from_head(
        self, intent: WriteIntent, transform: Transform | None, lock: bool
    ) -> Step[Record]:
        """The portable write: read the head (locked or not), let the core plan, apply."""
        # Locked: a row lock until COMMIT; every other writer of this record waits
        # here, so the numbers computed below cannot be taken twice.
        query = _RECORD_LOCKED if lock else _RECORD
        row: Row[Any] | None = (yield Execute(query, _pk_of(intent.namespace, intent.id))).first()
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
        plan = plan_write(head, intent, lambda: record_of(row) if row is not None else None)
        if plan.action is Action.UNCHANGED:
            assert row is not None
            return record_of(row, unchanged=True)
        ts = now()
        if plan.action is Action.INSERT:
            return (yield from self._insert_record(intent, plan, ts, ignore=lock))
        assert row is not None and head is not None
        cas = None if lock else head.revision
        return (yield from self._update_record(intent, plan, row, ts, cas))

    def _insert_record(
        self, intent: WriteIntent, plan: Plan, ts: datetime, ignore: bool
    ) -> Step[Record]:
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
            result = yield Execute(
                self.dialect.insert_ignore(R)
                .values(**values)
                .execution_options(preserve_rowcount=True)
            )
            if result.rowcount != 1:
                raise LostRace(f"record {intent.id!r} was created concurrently")
        else:
            yield Execute(insert(R).values(**values))
        if plan.snapshot:
            yield self._insert_version(intent, plan, ts)
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

    @staticmethod
    def _insert_version(intent: WriteIntent, plan: Plan, ts: datetime) -> Execute:
        # One statement object with the values as parameters: SQLAlchemy compiles it
        # once, where ``.values(...)`` would build (and key) a new statement per write.
        return Execute(_INSERT_VERSION, _version_params(intent, plan, ts))

    def _update_record(
        self, intent: WriteIntent, plan: Plan, row: Row[Any], ts: datetime, cas: int | None
    ) -> Step[Record]:
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
            yield self._insert_version(intent, plan, ts)
        stmt = (
            update(R).where(R.c.namespace == intent.namespace, R.c.id == intent.id).values(**values)
        )
        if cas is not None:
            # Compare-and-set on the revision read without a lock (optimistic strategy).
            stmt = stmt.where(R.c.revision == cas)
        result = yield Execute(stmt)
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

    def counter_put(self, intent: WriteIntent) -> Step[Record]:
        """A put by the dialect's counter statement, inside a write transaction."""
        ts = now()
        bumped = yield from self.dialect.bump_head(intent, ts)
        if bumped is None:
            # Absent, deleted, unchanged or conflicting: the general path decides, still
            # in the same transaction (SQLite: under the same write lock).
            return (yield from self.write_from_head(intent, None, lock=True))
        revision, version, created_at = bumped
        if intent.create_version:
            plan = Plan(Action.UPDATE, revision=revision, version=version, snapshot=True)
            yield self._insert_version(intent, plan, ts)
        return written_head(intent, revision, version, created_at, ts)

    def writes_together(
        self, writes: Sequence[WriteIntent | AppendBatch]
    ) -> Step[list[Record | AppendResult | Conflict | None]]:
        """Plain puts and appends of one batch (``batch.one_by_one``) in a few shared
        statements, whatever their number: read the heads they write (locked), decide
        each write in order with the core's rules (``plan_write``, ``check_expected``)
        on the head the writes before it left, then write the final heads, every
        snapshot and every item.

        Each write's result, in order: its head or its append, its conflict, or None
        when the general path must decide it (an absent or deleted record, a new stream,
        and every later write to it, which must come after it). Runs inside the batch's
        write transaction: SQLite's write lock, or the row locks taken here (MariaDB),
        keep every head read here unchanged until COMMIT. Records first, then streams:
        every batch of every process takes its row locks in that order."""
        results: list[Record | AppendResult | Conflict | None] = [None] * len(writes)
        puts = [(k, w) for k, w in enumerate(writes) if isinstance(w, WriteIntent)]
        appends = [(k, w) for k, w in enumerate(writes) if isinstance(w, AppendBatch)]
        if puts:
            yield from self._puts_together(puts, results)
        if appends:
            yield from self._appends_together(appends, results)
        return results

    def _puts_together(
        self,
        puts: list[tuple[int, WriteIntent]],
        results: list[Record | AppendResult | Conflict | None],
    ) -> Step[None]:
        rows = yield _heads_locked(R, [(i.namespace, i.id) for _, i in puts])
        heads: dict[tuple[str, str], _BatchHead] = {}
        for row in rows:
            if not row._mapping["deleted"]:
                live = _BatchHead(row)
                heads[live.key] = live
        ts = now()
        snapshots: list[dict[str, Any]] = []
        for k, intent in puts:
            head = heads.get((intent.namespace, intent.id))
            if head is None:
                # Absent or deleted (creation, revival): this record's puts go the
                # general way, in their order.
                continue
            try:
                plan = plan_write(head.head(), intent, head.record)
            except VersionConflict as conflict:
                results[k] = conflict
                continue
            if plan.action is Action.UNCHANGED:
                results[k] = head.record(unchanged=True)
                continue
            head.apply(intent, plan, ts)
            if plan.snapshot:
                snapshots.append(_version_params(intent, plan, ts))
            results[k] = head.record()
        changed = [h.values() for h in heads.values() if h.last is not None]
        if changed:
            yield self.dialect.write_heads(R, changed)
        if snapshots:
            yield Execute(_INSERT_VERSION, snapshots)

    def _appends_together(
        self,
        appends: list[tuple[int, AppendBatch]],
        results: list[Record | AppendResult | Conflict | None],
    ) -> Step[None]:
        rows = yield _heads_locked(S, [(b.namespace, b.stream_id) for _, b in appends])
        streams: dict[tuple[str, str], dict[str, Any]] = {
            (m["namespace"], m["id"]): dict(m) for m in (row._mapping for row in rows)
        }
        ts = now()
        items: list[dict[str, Any]] = []
        moved: dict[tuple[str, str], dict[str, Any]] = {}  # the streams appended to
        for k, batch in appends:
            key = (batch.namespace, batch.stream_id)
            stream = streams.get(key)
            if stream is None:
                continue  # a new stream: created the general way, with what follows
            try:
                check_expected(batch.stream_id, batch.expected, stream["last_sequence"])
            except SequenceConflict as conflict:
                results[k] = conflict
                continue
            first = stream["last_sequence"] + 1
            items.extend(_item_rows(batch, first, ts))
            stream["last_sequence"] += len(batch.bodies)
            stream["item_count"] += len(batch.bodies)
            stream["updated_at"] = ts
            moved[key] = stream
            results[k] = appended(batch, first, ts)
        if moved:
            yield self.dialect.write_heads(S, list(moved.values()))
        if items:
            yield Execute(_INSERT_ITEMS, items)

    # ---------------------------------------------------------------- streams

    def read_stream(
        self, namespace: str, stream_id: str, after: int, limit: int, max_bytes: int
    ) -> Step[ReadPage]:
        # Stored items never change (see history).
        page = yield from self._measured_page(
            self._items, {**_pk_of(namespace, stream_id), "after": after}, limit, max_bytes
        )
        if page is None:
            found = (yield Execute(_STREAM_LAST, _pk_of(namespace, stream_id))).first()
            if found is None:
                raise NotFound(f"stream {stream_id!r} does not exist in namespace {namespace!r}")
            return ReadPage([], None)
        rows, more = page
        items = [item_of(r) for r in rows]
        return ReadPage(items, items[-1].sequence if more and items else None)

    def stream_info(self, namespace: str, stream_id: str) -> Step[StreamInfo]:
        row = (yield Execute(_STREAM, _pk_of(namespace, stream_id))).first()
        if row is None:
            raise NotFound(f"stream {stream_id!r} does not exist in namespace {namespace!r}")
        return stream_info_of(row)

    def list_streams(
        self, namespace: str, prefix: str | None, after: str | None, limit: int
    ) -> Step[StreamPage]:
        """Streams in id order (their info rows only: a page is small)."""
        where = id_range(S, namespace, prefix, after)
        rows = list((yield Execute(select(S).where(*where).order_by(S.c.id).limit(limit + 1))))
        streams = [stream_info_of(r) for r in rows[:limit]]
        return StreamPage(streams, streams[-1].id if len(rows) > limit else None)

    def resent(self, batch: AppendBatch) -> Step[AppendResult | None]:
        """The stored answer when ``batch`` (with item ids) was appended before, else
        None; DuplicateItem when it mixes stored and new ids or changed a body."""
        assert batch.item_ids is not None
        found = yield from self._stored_items(batch)
        return classify_resend(
            batch.stream_id, batch.item_ids, [b.hash for b in batch.bodies], found
        )

    def _stored_items(self, batch: AppendBatch) -> Step[dict[str, StoredItem]]:
        assert batch.item_ids is not None
        # Not the stored bodies: up to 1000 ids could name items of 1 MiB each. A stored
        # item with the same hash has this batch's body (the hash is of the canonical
        # text); one with another hash is refused as DuplicateItem without its body.
        sent = {i: b for i, b in zip(batch.item_ids, batch.bodies, strict=True)}
        rows = yield Execute(
            _STORED_ITEMS, {**_pk_of(batch.namespace, batch.stream_id), "ids": batch.item_ids}
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

    def append_locked(self, batch: AppendBatch) -> Step[AppendResult]:
        """Lock the stream row (creating it if absent), then write after its last sequence."""
        ts = now()
        # Row lock until COMMIT: appenders to this stream queue here, one at a time.
        stream = _pk_of(batch.namespace, batch.stream_id)
        last = (yield Execute(_STREAM_LAST_LOCKED, stream)).scalar()
        if last is None:
            # First append: create the row if absent (a concurrent creator makes this a
            # no-op), then lock it like any other.
            yield Execute(
                self.dialect.insert_ignore(S).values(
                    namespace=batch.namespace,
                    id=batch.stream_id,
                    last_sequence=0,
                    item_count=0,
                    created_at=ts,
                    updated_at=ts,
                )
            )
            last = (yield Execute(_STREAM_LAST_LOCKED, stream)).scalar()
        return (yield from self._append_after(batch, int(last or 0), ts, cas=False))

    def append_optimistic(self, batch: AppendBatch) -> Step[AppendResult]:
        ts = now()
        last = (yield Execute(_STREAM_LAST, _pk_of(batch.namespace, batch.stream_id))).scalar()
        if last is None:
            yield Execute(
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
        return (yield from self._append_after(batch, int(last), ts, cas=True))

    def _append_after(
        self, batch: AppendBatch, last: int, ts: datetime, cas: bool
    ) -> Step[AppendResult]:
        """Check the rules against ``last`` (read under the lock, or to be CAS-checked)
        and write the items at last+1 … last+n."""
        if batch.item_ids is not None:
            # Re-checked under the lock: a pod re-sending this batch may have just
            # committed. A re-send is answered before expected_sequence is checked: it
            # was accepted once, with the expectation that held then.
            resent = yield from self.resent(batch)
            if resent is not None:
                return resent
        check_expected(batch.stream_id, batch.expected, last)
        n = len(batch.bodies)
        yield self._insert_items(batch, last + 1, ts)
        advanced = yield Execute(
            _STREAM_ADVANCE_FROM if cas else _STREAM_ADVANCE,
            {
                "s_ns": batch.namespace,
                "s_id": batch.stream_id,
                "new_last": last + n,
                "added": n,
                "now": ts,
                "read_last": last,
            },
        )
        if advanced.rowcount != 1:
            raise LostRace(f"stream {batch.stream_id!r} changed concurrently")
        return appended(batch, last + 1, ts)

    @staticmethod
    def _insert_items(batch: AppendBatch, first: int, ts: datetime) -> Execute:
        return Execute(_INSERT_ITEMS, _item_rows(batch, first, ts))

    def counter_append(self, batch: AppendBatch) -> Step[AppendResult]:
        """An append by the dialect's counter statement, inside a write transaction."""
        ts = now()
        last = yield from self.dialect.bump_stream(batch, ts)
        if last is None:
            # New stream or failed expectation: the locked path creates or reports.
            return (yield from self.append_locked(batch))
        first = last - len(batch.bodies) + 1
        # The range first … last is ours: the row lock is held until COMMIT.
        yield self._insert_items(batch, first, ts)
        return appended(batch, first, ts)

    # ---------------------------------------------------------------- idempotency keys

    def settle_record(
        self, claim: Claim | None, intent: WriteIntent, write: Step[Record]
    ) -> Step[Record]:
        rec = yield from write
        if claim is not None:
            yield from self._settle(claim, Applied.of_record(intent.mode, rec))
        return rec

    def settle_append(
        self, claim: Claim | None, batch: AppendBatch, write: Step[AppendResult]
    ) -> Step[AppendResult]:
        res = yield from write
        if claim is not None:
            yield from self._settle(claim, Applied.of_append(batch.namespace, batch.stream_id, res))
        return res

    def _settle(self, claim: Claim, applied: Applied) -> Step[None]:
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
        result = yield Execute(
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
    ) -> Step[bool]:
        """Reserve ``key`` if absent (True when this call inserted it). Safe to re-run
        after a lost connection: a landed insert is recognised by its owner marker."""
        result = yield Execute(
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
        return bool(result.rowcount == 1)

    def key_get(self, key: str) -> Step[KeyRow | None]:
        row = (yield Execute(_KEY, {"key": key})).first()
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

    def key_expire(self, key: str, ts: datetime) -> Step[int]:
        """Delete ``key`` if it has expired by ``ts``."""
        result = yield Execute(
            delete(K)
            .where(K.c.key == key, K.c.expires_at <= ts)
            .execution_options(preserve_rowcount=True)
        )
        return int(result.rowcount)

    def key_answer(
        self,
        key: str,
        status: int,
        headers: str,
        body: str,
        until: datetime | None,
        marker: str | None,
        request_hash: str | None,
    ) -> Step[bool]:
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
        result = yield Execute(stmt.values(**values).execution_options(preserve_rowcount=True))
        return bool(result.rowcount == 1)

    def key_release(self, key: str, marker: str) -> Step[int]:
        """Delete a reservation of ``marker`` that was never applied."""
        result = yield Execute(
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
        return int(result.rowcount)

    def key_purge(self, ts: datetime) -> Step[int]:
        result = yield Execute(
            delete(K).where(K.c.expires_at <= ts).execution_options(preserve_rowcount=True)
        )
        return int(result.rowcount)

    # ---------------------------------------------------------------- API keys

    def apikey_insert(self, key: ApiKey, token_hash: str) -> Step[None]:
        """Store a new key. Self-committing: a lost connection may have stored it, so
        it is an AmbiguousCommit, never re-run (the caller shows no token then)."""
        yield from self_committing(self._apikey_insert(key, token_hash))

    @staticmethod
    def _apikey_insert(key: ApiKey, token_hash: str) -> Step[None]:
        yield Execute(
            insert(A).values(
                id=key.id,
                token_hash=token_hash,
                name=key.name,
                namespace=key.namespace,
                role=key.role,
                created_at=key.created_at,
                revoked_at=None,
            )
        )

    def apikey_get(self, key_id: str) -> Step[tuple[ApiKey, str] | None]:
        """A key and its token hash, revoked or not."""
        row = (yield Execute(_API_KEY, {"id": key_id})).first()
        if row is None:
            return None
        return apikey_of(row), str(row._mapping["token_hash"])

    def apikey_list(self, namespace: str | None) -> Step[list[ApiKey]]:
        stmt = select(A).order_by(A.c.created_at, A.c.id)
        if namespace is not None:
            stmt = stmt.where(A.c.namespace == namespace)
        return [apikey_of(row) for row in (yield Execute(stmt)).all()]

    def apikey_revoke(self, key_id: str, ts: datetime) -> Step[int]:
        """Mark a live key revoked (0: absent or revoked already). Safe to re-run."""
        result = yield Execute(
            update(A)
            .where(A.c.id == key_id, A.c.revoked_at.is_(None))
            .values(revoked_at=ts)
            .execution_options(preserve_rowcount=True)
        )
        return int(result.rowcount)

    # ---------------------------------------------------------------- retention

    def retention_set(
        self, namespace: str, keep_last: int | None, max_age: int | None, ts: datetime
    ) -> Step[None]:
        """Replace the namespace's policy (both None: remove it), in one transaction."""
        yield Execute(delete(RP).where(RP.c.namespace == namespace))
        if keep_last is not None or max_age is not None:
            yield Execute(
                insert(RP).values(
                    namespace=namespace, keep_last=keep_last, max_age_seconds=max_age, updated_at=ts
                )
            )

    def retention_policies(self, namespace: str | None) -> Step[list[Policy]]:
        stmt = select(RP).order_by(RP.c.namespace)
        if namespace is not None:
            stmt = stmt.where(RP.c.namespace == namespace)
        return [
            Policy(
                r._mapping["namespace"],
                r._mapping["keep_last"],
                r._mapping["max_age_seconds"],
                utc(r._mapping["updated_at"]),
            )
            for r in (yield Execute(stmt)).all()
        ]

    def retention_candidates(
        self,
        namespace: str,
        after: str,
        limit: int,
        young: datetime,
        only: Sequence[str] | None = None,
    ) -> Step[list[tuple[str, int, int, int | None]]]:
        """Per record after ``after`` (id order, ``limit`` records; only those of
        ``only`` when given): its oldest and newest stored version and its oldest
        version created at or after ``young``."""
        first_young = func.min(case((V.c.created_at >= young, V.c.version), else_=None))
        stmt = (
            select(V.c.record_id, func.min(V.c.version), func.max(V.c.version), first_young)
            .where(V.c.namespace == namespace, V.c.record_id > after)
            .group_by(V.c.record_id)
            .order_by(V.c.record_id)
            .limit(limit)
        )
        if only is not None:
            stmt = stmt.where(V.c.record_id.in_(only))
        return [
            (str(r[0]), int(r[1]), int(r[2]), None if r[3] is None else int(r[3]))
            for r in (yield Execute(stmt)).all()
        ]

    def compact(self, namespace: str, record_id: str, below: int) -> Step[int]:
        """Remove the record's versions below ``below`` and remember it as its oldest
        (in the caller's transaction: readers see both or neither). The versions'
        rows are only ever deleted here; the head row is not touched, so writers of
        the record do not wait for this."""
        yield Execute(
            self.dialect.insert_ignore(CP).values(
                namespace=namespace, record_id=record_id, first_version=below
            )
        )
        yield Execute(
            update(CP)
            .where(
                CP.c.namespace == namespace,
                CP.c.record_id == record_id,
                CP.c.first_version < below,
            )
            .values(first_version=below)
        )
        result = yield Execute(
            delete(V)
            .where(V.c.namespace == namespace, V.c.record_id == record_id, V.c.version < below)
            .execution_options(preserve_rowcount=True)
        )
        return int(result.rowcount)


def stream_info_of(row: Row[Any]) -> StreamInfo:
    m = row._mapping
    return StreamInfo(
        m["namespace"],
        m["id"],
        int(m["last_sequence"]),
        int(m["item_count"]),
        utc(m["created_at"]),
        utc(m["updated_at"]),
    )


def apikey_of(row: Row[Any]) -> ApiKey:
    m = row._mapping
    revoked = m["revoked_at"]
    return ApiKey(
        id=m["id"],
        name=m["name"],
        namespace=m["namespace"],
        role=m["role"],
        created_at=utc(m["created_at"]),
        revoked_at=None if revoked is None else utc(revoked),
    )
