"""``Versioned``: revisions, versions and a history table for the user's own models.

How a revision is taken (docs/sqlalchemy.md): ``before_flush`` finds the changed objects,
and when the unit of work comes to each one's UPDATE (``before_update``, in the flush's own
order), revstore sends that UPDATE itself: the changed columns, ``revision = revision +
1`` (and ``version = version + 1``), so the database computes the number under the row
lock that UPDATE takes (SQLite: the writer lock); the ORM then has nothing left to write
for the object. That UPDATE is one statement per model and shape, built once, so
SQLAlchemy's compiled cache serves it without building or cache-keying a statement per
object, and no engine-wide event hook is needed (they cost every statement of every
connection); on SQLite and MariaDB/MySQL it and the snapshot's INSERT go on the driver's
cursor when nothing would notice (``direct``). An object the fast path does not cover
(a SQL expression among its values, a changed primary key, ``version_id_col``,
``onupdate`` columns without RETURNING) gets
``revision = revision + 1`` as a value instead, and the ORM's own UPDATE. ``after_flush``
then writes the snapshots in the same transaction, from the row as that UPDATE left it:
returned by the UPDATE itself where the database has ``UPDATE … RETURNING`` (PostgreSQL,
SQLite ≥ 3.35), else re-read under the lock — except on MariaDB/MySQL when the UPDATE's
``LAST_INSERT_ID(revision + 1)`` shows that no one wrote the row since this session
loaded it, so the loaded values are the row. On PostgreSQL, when the row is known before
the UPDATE, the snapshot's INSERT goes in the UPDATE's own statement (CTEs), taken only if
the revision is the loaded one + 1. No number is ever computed from a value
read earlier in Python, so any number of sessions writing one row get consecutive
revisions without a conflict.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar
from typing import cast as typed

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    event,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import (
    InstanceState,
    Mapped,
    Mapper,
    ORMExecuteState,
    RelationshipProperty,
    Session,
    UOWTransaction,
    attributes,
    mapped_column,
)
from sqlalchemy.orm import object_mapper as _object_mapper
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.types import CHAR, NCHAR

from revstore.config import MAX_AUTHOR, MAX_SUMMARY
from revstore.content import canonical_json, content_hash, optional_text
from revstore.errors import InvalidInput, RevstoreError, VersionConflict
from revstore.sqlalchemy.direct import execute as send

HISTORY_SUFFIX = "_versions"
META_COLUMNS = ("version", "revision", "author", "summary", "created_at", "content_hash")
COLLECTIONS = "collections"
"""The history column that records the keys of the model's many-to-many collections."""
_CHUNK = 500
"""Primary keys per ``IN (…)`` when rows are re-read after a flush."""
_CHANGE = "_revstore_change"
_PENDING = "revstore.versioned.pending"
_PLAIN, _RETURNING, _LAST_ID = 0, 1, 2
"""How a head UPDATE learns the row it left: not at all (re-read after it), RETURNING the
whole row, or MariaDB/MySQL's ``LAST_INSERT_ID(revision + 1)``."""


class BulkWriteRefused(RevstoreError, TypeError):
    """A bulk ``update()``/``delete()``/``insert()`` statement named a ``Versioned``
    model: it would change rows behind the history's back, so it is refused."""


class ObjectVersionConflict(VersionConflict):
    """``expected_revision`` did not hold for a ``Versioned`` object at flush.

    ``current_revision`` / ``current_version`` are the row's head as the database had it
    when the flush took the row lock (0 when the row did not exist); the flush and its
    transaction are rolled back."""

    def __init__(self, message: str, current_revision: int, current_version: int) -> None:
        super().__init__(message, None)
        self._revision = current_revision
        self._version = current_version

    @property
    def current_revision(self) -> int:
        return self._revision

    @property
    def current_version(self) -> int:
        return self._version


@dataclass(slots=True)
class Change:
    """What the caller says about the next change of one object; reset by the flush
    that writes it (transient, never stored on the model's table)."""

    create_version: bool = True
    expected_revision: int | None = None
    author: str | None = None
    summary: str | None = None


def _change(obj: object) -> Change:
    found = obj.__dict__.get(_CHANGE)
    if found is None:
        found = obj.__dict__[_CHANGE] = Change()
    assert isinstance(found, Change)
    return found


def set_change(
    obj: Versioned,
    *,
    author: str | None = None,
    summary: str | None = None,
    create_version: bool = True,
    expected_revision: int | None = None,
) -> None:
    """Describe the next change of ``obj`` in one call; the same as setting
    ``obj.author``, ``obj.summary``, ``obj.create_version`` and ``obj.expected_revision``
    (and the way to do it when the model maps a column named like one of them)."""
    if not isinstance(obj, Versioned):
        raise InvalidInput(f"{type(obj).__name__} is not a Versioned model")
    change = _change(obj)
    change.author = optional_text(author, "author", MAX_AUTHOR)
    change.summary = optional_text(summary, "summary", MAX_SUMMARY)
    change.create_version = _flag(create_version)
    _expect(obj, expected_revision)


def _expect(obj: Versioned, value: object) -> None:
    _change(obj).expected_revision = _expected(value)
    if value is not None and attributes.instance_state(obj).has_identity:
        # Checked at the next flush even when nothing else changes: a flush skips a
        # session with no dirty object, and marking it dirty writes no column.
        attributes.flag_dirty(obj)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"create_version must be True or False, got {value!r}")
    return value


def _expected(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"expected_revision must be None or an integer >= 0, got {value!r}")
    return value


@dataclass(slots=True)
class VersionedInfo:
    """What the history needs to know about one ``Versioned`` model."""

    table: Table
    history: Table
    meta: dict[str, str]
    """Meta column (``version``, ``revision``, …, ``collections``) → its name in ``history``."""
    _columns: list[tuple[str, Column[Any]]] | None = None
    _plain: list[tuple[str, str | None, Column[Any]]] | None = None
    _m2m: list[RelationshipProperty[Any]] | None = None
    _mapper: Mapper[Any] | None = field(default=None)
    _tracked: frozenset[str] | None = None
    _own: list[str] | None = None
    _meta_names: tuple[str, ...] | None = None
    _given: list[tuple[str, str | None, type | None, int | None]] | None = None
    _insert: Insert | None = None
    _heads: dict[tuple[int, bool], Update] = field(default_factory=dict)
    _onupdate: frozenset[str] | None = None
    _keys: dict[str, Column[Any]] | None = None
    _pk_keys: list[tuple[str, str]] | None = None
    _fused: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def bind(self, mapper: Mapper[Any]) -> None:
        self._mapper = mapper

    @property
    def mapper(self) -> Mapper[Any]:
        assert self._mapper is not None
        return self._mapper

    @property
    def pk(self) -> list[Column[Any]]:
        return [c for c in self.table.primary_key.columns]

    @property
    def columns(self) -> list[tuple[str, Column[Any]]]:
        """(attribute key, table column) of every mapped column but revision/version."""
        if self._columns is None:
            found: list[tuple[str, Column[Any]]] = []
            for prop in self.mapper.column_attrs:
                if prop.key in ("revision", "version"):
                    continue
                for col in prop.columns:
                    if isinstance(col, Column) and col.table is self.table:
                        found.append((prop.key, col))
                        break
            self._columns = found
        return self._columns

    @property
    def plain(self) -> list[tuple[str, str | None, Column[Any]]]:
        """(column name, attribute key or None when unmapped, column) of every column of
        the table but revision/version."""
        if self._plain is None:
            found: list[tuple[str, str | None, Column[Any]]] = []
            for col in self.table.columns:
                if col.name in ("revision", "version"):
                    continue
                try:
                    key: str | None = self.mapper.get_property_by_column(col).key
                except Exception:  # an unmapped (excluded) column
                    key = None
                found.append((col.name, key, col))
            self._plain = found
        return self._plain

    @property
    def m2m(self) -> list[RelationshipProperty[Any]]:
        """The many-to-many collections, which count as the object's state."""
        if self._m2m is None:
            self._m2m = [
                rel
                for rel in self.mapper.relationships
                if rel.secondary is not None and rel.uselist and not rel.viewonly
            ]
        return self._m2m

    @property
    def keys(self) -> dict[str, Column[Any]]:
        """Attribute key → table column of the mapped columns but revision/version."""
        if self._keys is None:
            self._keys = dict(self.columns)
        return self._keys

    @property
    def tracked(self) -> frozenset[str]:
        """The attribute keys whose changes make a new revision (columns, collections)."""
        if self._tracked is None:
            self._tracked = frozenset(
                [key for key, _ in self.columns] + [rel.key for rel in self.m2m]
            )
        return self._tracked

    @property
    def own(self) -> list[str]:
        """The names of the columns a snapshot copies from the row (all of the table's
        but revision/version: the history has a column of each)."""
        if self._own is None:
            self._own = [name for name, _, _ in self.plain]
        return self._own

    @property
    def meta_names(self) -> tuple[str, ...]:
        """The history's names of ``META_COLUMNS`` then ``COLLECTIONS``, in that order."""
        if self._meta_names is None:
            self._meta_names = tuple(self.meta[name] for name in (*META_COLUMNS, COLLECTIONS))
        return self._meta_names

    @property
    def given(self) -> list[tuple[str, str | None, type | None, int | None]]:
        """Per column of ``plain``: its name, attribute key, and the one Python type
        (with the longest length for text) the server reads back as given
        (``_stored_as_given``), or None: a value of it is read back."""
        if self._given is None:
            self._given = [(name, key, *_stored_as_given(col)) for name, key, col in self.plain]
        return self._given

    @property
    def history_insert(self) -> Insert:
        """One INSERT object for every snapshot: its cache key is computed once."""
        if self._insert is None:
            self._insert = self.history.insert()
        return self._insert

    @property
    def onupdate(self) -> frozenset[str]:
        """Attribute keys of the columns the database or Core sets on UPDATE by itself
        (``onupdate`` / ``server_onupdate``)."""
        if self._onupdate is None:
            self._onupdate = frozenset(
                key
                for key, col in self.columns
                if col.onupdate is not None or col.server_onupdate is not None
            )
        return self._onupdate

    @property
    def pk_keys(self) -> list[tuple[str, str]]:
        """(attribute key, bound parameter name) of each primary key column."""
        if self._pk_keys is None:
            self._pk_keys = [
                (self.mapper.get_property_by_column(col).key, f"revstore_pk_{i}")
                for i, col in enumerate(self.pk)
            ]
        return self._pk_keys

    def head_update(self, how: int, snapshot: bool) -> Update:
        """The head UPDATE: ``revision = revision + 1`` (and ``version = version + 1``
        with a snapshot), the changed columns from the parameters' keys (SQLAlchemy
        compiles, and caches, one form per set of keys), WHERE on the primary key,
        returning the row when ``how`` says. Built once per shape: its cache key is
        memoized on it."""
        stmt = self._heads.get((how, snapshot))
        if stmt is not None:
            return stmt
        table = self.table
        # The 1 in the SQL text, not a bound parameter: every value of a call is then
        # one of its parameters (``direct`` sends them as they are).
        one = literal_column("1", BigInteger)
        bump: ColumnElement[Any] = table.c.revision + one
        if how == _LAST_ID:
            # LAST_INSERT_ID(expr) is expr, and the server sends it back in the UPDATE's
            # own reply (cursor.lastrowid): the new revision without another statement.
            bump = func.last_insert_id(bump)
        values: dict[Any, Any] = {table.c.revision: bump}
        if snapshot:
            values[table.c.version] = table.c.version + one
        pk_binds = zip(self.pk, self.pk_keys, strict=True)
        where = and_(*(col == bindparam(name, type_=col.type) for col, (_, name) in pk_binds))
        stmt = update(table).where(where).values(values)
        if how == _RETURNING:
            # The whole row as this UPDATE leaves it, in the UPDATE's own round trip:
            # the snapshot needs no re-read.
            stmt = stmt.returning(*table.columns)
        self._heads[(how, snapshot)] = stmt
        return stmt

    def fused_update(self, written: tuple[str, ...]) -> Any:
        """PostgreSQL: the head UPDATE (``written``: the column keys it sets, from
        ``rs_set_<i>``) and the snapshot's INSERT in one statement, through data-modifying
        CTEs. The INSERT takes the row the UPDATE returned, only when its revision is
        ``rs_expect`` (the loaded one + 1: no one wrote in between, so the values and hash
        computed beforehand are the row's); the statement returns the row and whether
        the snapshot was inserted."""
        stmt = self._fused.get(written)
        if stmt is not None:
            return stmt
        table, hist, meta = self.table, self.history, self.meta
        values: dict[Any, Any] = {
            table.c[key]: bindparam(f"rs_set_{i}", type_=table.c[key].type)
            for i, key in enumerate(written)
        }
        values[table.c.revision] = table.c.revision + 1
        values[table.c.version] = table.c.version + 1
        pk_binds = zip(self.pk, self.pk_keys, strict=True)
        where = and_(*(col == bindparam(name, type_=col.type) for col, (_, name) in pk_binds))
        head = update(table).where(where).values(values).returning(*table.columns).cte("rs_head")
        own = [c.name for c in table.columns if c.name not in ("revision", "version")]

        def given(name: str, column: str) -> Any:
            # Typed: PostgreSQL infers no type for a parameter in a SELECT list.
            kind = hist.c[column].type
            return cast(bindparam(name, type_=kind), kind)

        snap = (
            insert(hist)
            .from_select(
                [
                    *own,
                    meta["version"],
                    meta["revision"],
                    meta["author"],
                    meta["summary"],
                    meta["created_at"],
                    meta["content_hash"],
                    meta[COLLECTIONS],
                ],
                select(
                    *(head.c[name] for name in own),
                    head.c.version,
                    head.c.revision,
                    given("rs_author", meta["author"]),
                    given("rs_summary", meta["summary"]),
                    given("rs_created_at", meta["created_at"]),
                    given("rs_hash", meta["content_hash"]),
                    given("rs_colls", meta[COLLECTIONS]),
                ).where(head.c.revision == bindparam("rs_expect", type_=BigInteger)),
            )
            .returning(hist.c[meta["version"]])
            .cte("rs_snap")
        )
        stmt = select(
            *head.c,
            select(func.count()).select_from(snap).scalar_subquery().label("rs_snapped"),
        )
        if len(self._fused) >= 64:
            self._fused.clear()  # many shapes of change: keep the cache bounded
        self._fused[written] = stmt
        return stmt


class Versioned:
    """Mixin for a declarative model: ``class Prompt(Versioned, Base)``.

    Adds ``revision`` and ``version`` (BIGINT NOT NULL) and the history table
    ``<table>_versions`` on the model's own MetaData. Per change (reset by the flush):
    ``obj.create_version = False`` (head only, no snapshot), ``obj.expected_revision =
    n`` (optimistic check: the flush raises :class:`ObjectVersionConflict`, a
    ``revstore.VersionConflict``), ``obj.author`` / ``obj.summary`` (into the snapshot).

    ``__versioned_meta_prefix__`` (default ``""``) prefixes the history's own column
    names, for models that map a column called ``created_at``, ``author``, ….
    """

    __versioned_meta_prefix__: ClassVar[str] = ""
    __versioned__: ClassVar[VersionedInfo]

    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    """Increases by exactly 1 at every flush that changes the object (the ETag)."""
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    """The number of the latest snapshot in the history table."""

    @property
    def create_version(self) -> bool:
        return _change(self).create_version

    @create_version.setter
    def create_version(self, value: bool) -> None:
        _change(self).create_version = _flag(value)

    @property
    def expected_revision(self) -> int | None:
        return _change(self).expected_revision

    @expected_revision.setter
    def expected_revision(self, value: int | None) -> None:
        _expect(self, value)

    @property
    def author(self) -> str | None:
        return _change(self).author

    @author.setter
    def author(self, value: str | None) -> None:
        _change(self).author = optional_text(value, "author", MAX_AUTHOR)

    @property
    def summary(self) -> str | None:
        return _change(self).summary

    @summary.setter
    def summary(self, value: str | None) -> None:
        _change(self).summary = optional_text(value, "summary", MAX_SUMMARY)


def versioned_info(cls: type[Any]) -> VersionedInfo:
    """The history set-up of a ``Versioned`` model class (clear error otherwise)."""
    info = cls.__dict__.get("__versioned__") if isinstance(cls, type) else None
    if not isinstance(info, VersionedInfo):
        raise InvalidInput(f"{getattr(cls, '__name__', cls)!r} is not a mapped Versioned model")
    return info


@event.listens_for(Versioned, "after_mapper_constructed", propagate=True)
def _add_history_table(mapper: Mapper[Any], cls: type[Any]) -> None:
    # Runs while the class statement completes, so the history table is on the
    # model's MetaData before anyone calls create_all (or Alembic autogenerate).
    local = mapper.local_table
    if not isinstance(local, Table) or mapper.inherits is not None:
        raise InvalidInput(
            f"Versioned model {cls.__name__} must map its own table (inheritance is not supported)"
        )
    prefix = cls.__versioned_meta_prefix__
    meta = {name: prefix + name for name in (*META_COLUMNS, COLLECTIONS)}
    own = {c.name for c in local.columns if c.name not in ("revision", "version")}
    clash = sorted(own & set(meta.values()))
    if clash:
        raise InvalidInput(
            f"Versioned model {cls.__name__} maps column(s) {', '.join(clash)}, which its "
            f"history table {local.name}{HISTORY_SUFFIX} uses for itself: set "
            '__versioned_meta_prefix__ = "v_" (or another prefix) on the model'
        )
    metadata: MetaData = local.metadata
    columns: list[Column[Any]] = [
        # Only the values: no defaults, foreign keys or unique constraints, and no
        # autoincrement (a history row takes the model row's key as it is).
        Column(c.name, c.type, primary_key=c.primary_key, autoincrement=False, nullable=True)
        for c in local.columns
        if c.name in own
    ]
    history = Table(
        local.name + HISTORY_SUFFIX,
        metadata,
        *columns,
        Column(meta["version"], BigInteger, primary_key=True, autoincrement=False),
        Column(meta["revision"], BigInteger, nullable=False),
        Column(meta["author"], String(MAX_AUTHOR), nullable=True),
        Column(meta["summary"], String(MAX_SUMMARY), nullable=True),
        Column(meta["created_at"], DateTime(timezone=True), nullable=False),
        Column(meta["content_hash"], String(64), nullable=False),
        Column(meta[COLLECTIONS], JSON, nullable=True),
        schema=local.schema,
        comment=f"revstore history of {local.name}",
    )
    info = VersionedInfo(table=local, history=history, meta=meta)
    info.bind(mapper)
    cls.__versioned__ = info


# ----------------------------------------------------------------- values as JSON


_AS_IS = frozenset({str, int, bool, type(None)})


def jsonable(value: Any) -> Any:
    """A column value as plain JSON, for the content hash, the diff and collections."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=canonical_json) if isinstance(value, (set, frozenset)) else items
    return str(value)


def content_of(
    info: VersionedInfo, values: Mapping[str, Any], collections: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON document of one state: attribute key → value, plus each collection."""
    doc: dict[str, Any] = {}
    for key, col in info.columns:
        value = values[col.name]
        # Text, numbers, booleans and None are JSON as they are (most columns).
        doc[key] = value if type(value) in _AS_IS else jsonable(value)
    doc.update(collections)
    return doc


# ----------------------------------------------------------------- flush hooks


@dataclass(slots=True, eq=False)
class _Pending:
    """One Versioned object of a flush."""

    obj: Versioned
    state: InstanceState[Any]
    insert: bool
    snapshot: bool
    change: Change
    info: VersionedInfo
    loaded: tuple[int, int] | None = None
    """The (revision, version) this session held before the flush (used on MariaDB/MySQL)."""
    conn: Connection | None = None
    """The connection the object's UPDATE ran on (revstore's own UPDATE)."""
    returned: dict[str, Any] | None = None
    """The row as this object's UPDATE left it (RETURNING), by column name."""
    fused: bool = False
    """PostgreSQL: the snapshot was inserted by the UPDATE's own statement."""
    bumped: int | None = None
    """MariaDB/MySQL: the revision the UPDATE set, from its ``LAST_INSERT_ID(…)``."""
    key: tuple[Any, ...] | None = None
    """The primary key revstore's UPDATE named (it never changes one)."""


def _is_mysql(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def _has_changes(state: InstanceState[Any], info: VersionedInfo) -> bool:
    """True when a mapped column or a many-to-many collection has a net change
    (SQLAlchemy's own history: setting a loaded value to itself is no change). Only
    attributes in ``committed_state`` can have history: the others are not looked at."""
    committed = state.committed_state
    if not committed:
        return False
    tracked = info.tracked
    return any(
        key in tracked and state.get_history(key, PASSIVE_NO_INITIALIZE).has_changes()
        for key in list(committed)
    )


def _pk_clause(cols: Sequence[ColumnElement[Any]], keys: Sequence[tuple[Any, ...]]) -> Any:
    if len(cols) == 1:
        return cols[0].in_([k[0] for k in keys])
    return or_(*(and_(*(c == v for c, v in zip(cols, k, strict=True))) for k in keys))


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    pending: list[_Pending] = []
    session.info.pop(_PENDING, None)
    for obj in session.new:
        if not isinstance(obj, Versioned):
            continue
        change = _change(obj)
        # A new row: its primary key is unique, so numbering it 1 races with nobody
        # (a concurrent insert of the same key fails on the key). A key that had
        # history before (deleted, then added again) continues it in after_flush.
        obj.revision = 1
        obj.version = 1 if change.create_version else 0
        pending.append(
            _Pending(
                obj,
                attributes.instance_state(obj),
                True,
                change.create_version,
                change,
                versioned_info(type(obj)),
            )
        )
    dirty: list[tuple[Versioned, InstanceState[Any], VersionedInfo]] = []
    for obj in session.dirty:  # never the deleted ones
        if not isinstance(obj, Versioned):
            continue
        state = attributes.instance_state(obj)
        committed = state.committed_state
        if ("revision" in committed or "version" in committed) and any(
            state.get_history(k, PASSIVE_NO_INITIALIZE).has_changes()
            for k in ("revision", "version")
        ):
            # The session would write the value it was given: a number from Python.
            raise InvalidInput(
                f"{type(obj).__name__}.revision and .version are taken by the flush; "
                "do not set them (use expected_revision for an optimistic check)"
            )
        dirty.append((obj, state, versioned_info(type(obj))))
    if len(dirty) > 1:
        # Rows are locked in one order (table, key), so two flushes never wait on each
        # other crosswise here.
        dirty.sort(key=lambda d: (d[2].table.name, repr(d[1].identity)))
    unchanged: list[Versioned] = []
    for obj, state, info in dirty:
        change = _change(obj)
        if not _has_changes(state, info):
            unchanged.append(obj)
            continue
        if info.m2m:
            moved = [
                rel
                for rel in info.m2m
                if state.get_history(rel.key, PASSIVE_NO_INITIALIZE).has_changes()
            ]
            if moved and state.identity is not None:
                _rebase_collections(session, obj, state, info, moved)
                if not _has_changes(state, info):  # another writer had set the same already
                    unchanged.append(obj)
                    continue
        state_dict = state.dict
        revision, version = state_dict.get("revision"), state_dict.get("version")
        p = _Pending(obj, state, False, change.create_version, change, info)
        if type(revision) is int and type(version) is int:
            p.loaded = (revision, version)
        pending.append(p)
    for obj in unchanged:
        exp = _change(obj).expected_revision
        if exp is not None:
            _check_unchanged(session, obj, versioned_info(type(obj)), exp)
    if pending:
        session.info[_PENDING] = {p.state: p for p in pending}


@event.listens_for(Versioned, "before_update", propagate=True)
def _before_update(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    """Write the head of a changed object: revstore's UPDATE, or the ORM's with the
    numbers as SQL expressions. Called by the unit of work for every dirty object just
    before it collects their UPDATEs, in its own (dependency) order, on the connection
    it would use."""
    state = attributes.instance_state(target)
    session = state.session
    found = session.info.get(_PENDING) if session is not None else None
    p = found.get(state) if found else None
    if p is None or p.insert:
        return
    # The number is computed by the UPDATE itself, under its row lock: never from the
    # revision this session loaded, which another writer may have passed.
    if not _write_head(connection, p):
        table = p.info.table
        attributes.set_attribute(target, "revision", table.c.revision + 1)
        if p.snapshot:
            attributes.set_attribute(target, "version", table.c.version + 1)


def _write_head(conn: Connection, p: _Pending) -> bool:
    """Send the object's UPDATE (its changed columns and the new numbers) and mark the
    columns as written, so the ORM sends nothing more for it; False when the object
    needs the ORM's own UPDATE."""
    info, state = p.info, p.state
    mapper = state.mapper
    if mapper.version_id_col is not None:
        return False
    dialect = conn.dialect
    returning = dialect.update_returning and info.table.implicit_returning
    if info.onupdate and not returning:
        return False  # values computed by the UPDATE: let the ORM handle them, re-read
    params: dict[str, Any] = {}
    written: list[tuple[str, Any]] = []
    committed = state.committed_state
    keys = info.keys
    for key in list(committed):
        col = keys.get(key)
        if col is None:
            continue  # a collection, or revision/version (refused in before_flush)
        added = state.get_history(key, PASSIVE_NO_INITIALIZE).added
        if not added:
            continue
        value = added[0]
        if (
            col.primary_key
            or hasattr(value, "__clause_element__")
            or isinstance(value, ColumnElement)
        ):
            return False  # a new key, or a SQL expression: the ORM knows how
        params[col.key] = value
        written.append((key, value))
    state_dict = state.dict
    pk: list[Any] = []
    for key, name in info.pk_keys:
        value = state_dict.get(key)
        if value is None:
            return False
        params[name] = value
        pk.append(value)
    how = _RETURNING if returning else _PLAIN
    if not returning and p.loaded is not None and dialect.name in ("mysql", "mariadb"):
        how = _LAST_ID
    fused = _fused_params(p, written) if returning and dialect.name == "postgresql" else None
    if fused is not None:
        params.update(fused)
        for i, (key, _) in enumerate(written):
            params[f"rs_set_{i}"] = params.pop(keys[key].key)
        stmt = info.fused_update(tuple(key for key, _ in written))
    else:
        stmt = info.head_update(how, p.snapshot)
    result = send(conn, stmt, params)
    if fused is not None or how == _RETURNING:
        row = result.first()  # the WHERE names the whole primary key: one row at most
        matched = 0 if row is None else 1
        if row is not None:
            returned = dict(row._mapping)
            if fused is not None:
                p.fused = bool(returned.pop("rs_snapped"))
            p.returned = returned
    else:
        matched = result.rowcount
        if how == _LAST_ID:
            bumped = result.lastrowid
            if type(bumped) is int and bumped > 0:
                p.bumped = bumped
    if matched != 1:
        # As the ORM says it: the row is gone (or was never there); a retry reloads.
        raise StaleDataError(
            f"UPDATE statement on table '{info.table.description}' expected to update 1 "
            f"row(s); {matched} were matched."
        )
    # Written: the ORM's UPDATE of this object has nothing left to send.
    for key, value in written:
        _set_committed(state, key, value)
    if info.onupdate and p.returned is not None:
        # Columns the UPDATE set by itself: what the row holds now.
        for key, col in info.columns:
            if key in info.onupdate and col.name in p.returned:
                _set_committed(state, key, p.returned[col.name])
    p.conn = conn
    p.key = tuple(pk)
    return True


def _fused_params(p: _Pending, written: list[tuple[str, Any]]) -> dict[str, Any] | None:
    """The snapshot's values for PostgreSQL's one-statement write, computed before it
    from the values this session holds: the row as the UPDATE will leave it when no one
    wrote it in between (the statement checks that: revision = loaded + 1). None when
    that row cannot be known beforehand (no snapshot, collections, a column not loaded
    or of a type the server may store otherwise, columns set by the UPDATE itself)."""
    info = p.info
    if not p.snapshot or p.loaded is None or info.m2m or info.onupdate:
        return None
    row = _row_as_written(p)
    if row is None:
        return None
    doc = content_of(info, row, {})
    return {
        "rs_expect": p.loaded[0] + 1,
        "rs_author": p.change.author,
        "rs_summary": p.change.summary,
        "rs_created_at": datetime.now(UTC),
        "rs_hash": content_hash(canonical_json(doc)),
        "rs_colls": None,
    }


def _rebase_collections(
    session: Session,
    obj: Versioned,
    state: InstanceState[Any],
    info: VersionedInfo,
    rels: list[RelationshipProperty[Any]],
) -> None:
    """Lock the row, re-read the collections that changed, and re-apply the caller's
    new contents on top of what the database has now.

    SQLAlchemy writes a collection change as INSERTs and DELETEs of association rows,
    computed against the collection this session loaded. Another writer may have
    changed it since: the INSERT of a pair it added meets the primary key
    (IntegrityError 1062 / 23505) and the DELETE of a pair it removed matches nothing
    (StaleDataError). The row lock is the one the flush's UPDATE takes anyway (taken
    earlier, so the association rows read now stay as read until COMMIT: every writer
    of the collection goes through this lock), and the diff is computed against them."""
    conn = session.connection(bind_arguments={"mapper": info.mapper})
    key = tuple(state.identity or ())
    table = info.table
    where = _pk_clause(info.pk, [key])
    if conn.dialect.name == "sqlite":
        # SQLite has no row locks: a no-op UPDATE takes the database's writer lock (the
        # driver begins the transaction at the first write), after which every read sees
        # the latest commit and no one else can write until ours.
        conn.execute(update(table).where(where).values(revision=table.c.revision))
    else:
        conn.execute(select(table.c.revision).where(where).with_for_update())
    by_name = dict(zip((c.name for c in info.pk), key, strict=True))
    for rel in rels:
        secondary = rel.secondary
        assert secondary is not None
        wanted = list(getattr(obj, rel.key))
        link = and_(*(rc == sc for rc, sc in rel.secondary_synchronize_pairs or []))
        owner = and_(*(sc == by_name[mc.name] for mc, sc in rel.synchronize_pairs))
        stmt = select(rel.mapper).join(secondary, link).where(owner)
        if _is_mysql(conn):
            # A locking read: InnoDB's plain SELECT would read the transaction's snapshot.
            stmt = stmt.with_for_update(read=True)
        current = list(session.execute(stmt).scalars().unique())
        attributes.set_committed_value(obj, rel.key, current)
        setattr(obj, rel.key, wanted)


def _check_unchanged(session: Session, obj: Versioned, info: VersionedInfo, exp: int) -> None:
    """An unchanged object writes nothing, but its expectation still holds or fails
    (as a record's no-op write does)."""
    key = attributes.instance_state(obj).identity
    if key is None:
        return
    conn = session.connection(bind_arguments={"mapper": info.mapper})
    row = conn.execute(
        select(info.table.c.revision, info.table.c.version).where(_pk_clause(info.pk, [key]))
    ).one_or_none()
    revision, version = (0, 0) if row is None else (row[0], row[1])
    if revision != exp:
        raise ObjectVersionConflict(
            f"{type(obj).__name__} {key!r}: expected revision {exp}, current revision is "
            f"{revision}",
            revision,
            version,
        )
    _change(obj).expected_revision = None


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    found: dict[InstanceState[Any], _Pending] | None = session.info.pop(_PENDING, None)
    if not found:
        return
    pending = list(found.values())
    by_info: dict[int, list[_Pending]] = {}
    for p in pending:
        if p.state.deleted or p.state.detached:
            continue
        by_info.setdefault(id(p.info), []).append(p)
    for items in by_info.values():
        _write_snapshots(session, items[0].info, items)
    # Only when every object of the flush passed: the change descriptions are spent.
    for p in pending:
        p.obj.__dict__.pop(_CHANGE, None)


def _write_snapshots(session: Session, info: VersionedInfo, items: list[_Pending]) -> None:
    conn = items[0].conn
    if conn is None or any(p.conn is not conn for p in items):
        conn = session.connection(bind_arguments={"mapper": info.mapper})
    now = datetime.now(UTC)
    found = [_row_of(info, p) for p in items]  # before the keys: it may unset p.key
    keys = [_identity(p) for p in items]
    if any(p.insert for p in items):
        _continue_history(conn, info, [p for p in items if p.insert])
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for p, key, known in zip(items, keys, found, strict=True):
        if known is not None:
            rows[key] = known
        elif p.fused and p.returned is not None:
            # The ORM wrote the row again after the one-statement write: its snapshot
            # is not the row any more; it is taken again from the re-read row.
            p.fused = False
            hist = info.history
            conn.execute(
                delete(hist).where(
                    _pk_clause([hist.c[c.name] for c in info.pk], [key]),
                    hist.c[info.meta["version"]] == p.returned["version"],
                )
            )
    if len(rows) < len(keys):
        rows.update(_reread(conn, info, [k for k in keys if k not in rows]))
    collections = _read_collections(conn, info, keys) if info.m2m else {}
    own = info.own
    m_version, m_revision, m_author, m_summary, m_created, m_hash, m_colls = info.meta_names
    snapshots: list[dict[str, Any]] = []
    for p, key in zip(items, keys, strict=True):
        row = rows[key]
        revision, version = row["revision"], row["version"]
        exp = p.change.expected_revision
        if exp is not None:
            # The UPDATE above took revision + 1 under the row lock, so the head
            # this write replaced had revision - 1; a new row replaced nothing.
            current = 0 if p.insert else revision - 1
            if exp != current:
                current_version = 0 if p.insert else version - (1 if p.snapshot else 0)
                raise ObjectVersionConflict(
                    f"{type(p.obj).__name__} {key!r}: expected revision {exp}, current "
                    f"revision is {current}",
                    current,
                    current_version,
                )
        _set_committed(p.state, "revision", revision)
        _set_committed(p.state, "version", version)
        if not p.snapshot or p.fused:
            continue
        colls = collections.get(key) or {rel.key: [] for rel in info.m2m}
        doc = content_of(info, row, colls)
        values = {name: row[name] for name in own}
        values[m_version] = version
        values[m_revision] = revision
        values[m_author] = p.change.author
        values[m_summary] = p.change.summary
        values[m_created] = now
        values[m_hash] = content_hash(canonical_json(doc))
        values[m_colls] = colls or None
        snapshots.append(values)
    if snapshots:
        send(conn, info.history_insert, snapshots)


def _row_of(info: VersionedInfo, p: _Pending) -> dict[str, Any] | None:
    """The row as this flush's UPDATE left it, when known without reading it again;
    None: re-read it (still under the UPDATE's lock)."""
    if p.insert or p.conn is None:
        return None
    if _changed_since(p):
        # The ORM wrote more after revstore's UPDATE: the row has moved on (its key too,
        # maybe: read it from the object again).
        p.key = None
        return None
    if p.returned is not None:
        return p.returned
    if p.bumped is None or p.loaded is None:
        return None
    revision, version = p.loaded
    if p.bumped != revision + 1:
        return None  # another writer came in between: its values are not ours to know
    # The row had the revision this session loaded when the UPDATE locked it, and every
    # change of it takes a new revision: its other columns are the ones loaded, and ours
    # are the ones just written, as long as the server stores them as given.
    row = _row_as_written(p)
    if row is None:
        return None
    row["revision"] = p.bumped
    row["version"] = version + (1 if p.snapshot else 0)
    return row


def _changed_since(p: _Pending) -> bool:
    """Whether a column of the object changed after revstore's UPDATE wrote it (a
    ``before_update`` listener that ran after revstore's, then the ORM's UPDATE)."""
    keys = p.info.keys
    return any(
        key in keys and p.state.get_history(key, PASSIVE_NO_INITIALIZE).has_changes()
        for key in list(p.state.committed_state)
    )


def _row_as_written(p: _Pending) -> dict[str, Any] | None:
    """The mapped columns' values as this session holds them, or None when one is not
    loaded or is of a type the server may store otherwise (then the row is read)."""
    state_dict = p.state.dict
    row: dict[str, Any] = {}
    for name, key, kind, length in p.info.given:
        if key is None or key not in state_dict:
            return None
        value: Any = state_dict[key]
        if value is not None and (
            type(value) is not kind or (length is not None and len(typed(str, value)) > length)
        ):
            return None
        row[name] = value
    return row


def _stored_as_given(col: Column[Any]) -> tuple[type | None, int | None]:
    """The type of the values MariaDB/MySQL reads back unchanged from ``col`` (in strict
    mode, its default), so the snapshot and its hash are what a re-read would give, and
    for text the longest such value; (None, None) when none is (dates, decimals, floats,
    JSON, CHAR, enums, custom types: re-read). None itself always is."""
    kind = col.type
    if isinstance(kind, Boolean):
        return bool, None
    if isinstance(kind, Integer):
        return int, None
    if isinstance(kind, String) and not isinstance(kind, (CHAR, NCHAR, SAEnum)):
        # CHAR drops trailing spaces; a longer value than the column is an error in
        # strict mode, but cut short without it.
        return str, kind.length
    return None, None


def _set_committed(state: InstanceState[Any], key: str, value: Any) -> None:
    """``attributes.set_committed_value`` on a state at hand: the value as loaded, no
    change to flush."""
    impl: Any = state.manager[key].impl  # typed loosely by SQLAlchemy
    impl.set_committed_value(state, state.dict, value)


def _identity(p: _Pending) -> tuple[Any, ...]:
    if p.key is not None:
        return p.key
    # The identity key is only assigned after after_flush: read the flushed key values.
    key = p.state.mapper.primary_key_from_instance(p.obj)
    if any(v is None for v in key):
        raise InvalidInput(f"{type(p.obj).__name__} has no primary key after the flush")
    return tuple(key)


def _reread(
    conn: Connection, info: VersionedInfo, keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows as this transaction left them. Read after the flush's own UPDATE/INSERT,
    so under its row lock: the values (and numbers) are the committed ones plus this
    write, never the stale ones this session loaded before."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    pk_names = [c.name for c in info.pk]
    for chunk in _chunks(keys):
        stmt = select(*info.table.columns).where(_pk_clause(info.pk, chunk))
        if _is_mysql(conn):
            # InnoDB's plain SELECT reads the transaction's snapshot; a locking read
            # sees the latest rows (we already hold their locks: no new waits).
            stmt = stmt.with_for_update()
        for row in conn.execute(stmt):
            # By column name (a mapped column's key may differ from it).
            values = {c.name: v for c, v in zip(info.table.columns, row, strict=True)}
            found[tuple(values[n] for n in pk_names)] = values
    missing = [k for k in keys if k not in found]
    if missing:
        raise InvalidInput(f"{info.table.name}: rows {missing!r} vanished during the flush")
    return found


def _continue_history(conn: Connection, info: VersionedInfo, inserted: list[_Pending]) -> None:
    """A key added again after its row was deleted keeps its history: its numbers
    continue after the last snapshot instead of colliding with version 1."""
    hist = info.history
    pk = [hist.c[c.name] for c in info.pk]
    keys = [_identity(p) for p in inserted]
    prior: dict[tuple[Any, ...], tuple[int, int]] = {}
    for chunk in _chunks(keys):
        stmt = (
            select(
                *pk,
                func.max(hist.c[info.meta["version"]]),
                func.max(hist.c[info.meta["revision"]]),
            )
            .where(_pk_clause(pk, chunk))
            .group_by(*pk)
        )
        for row in conn.execute(stmt):
            prior[tuple(row[: len(pk)])] = (int(row[-2]), int(row[-1]))
    for p, key in zip(inserted, keys, strict=True):
        if key not in prior:
            continue
        last_version, last_revision = prior[key]
        conn.execute(
            update(info.table)
            .where(_pk_clause(info.pk, [key]))
            .values(
                revision=last_revision + 1,
                version=last_version + (1 if p.change.create_version else 0),
            )
        )


def _read_collections(
    conn: Connection, info: VersionedInfo, keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, list[Any]]]:
    """Each object's many-to-many keys as the database has them after this flush
    (sorted), read under the same lock as the row."""
    out: dict[tuple[Any, ...], dict[str, list[Any]]] = {
        k: {rel.key: [] for rel in info.m2m} for k in keys
    }
    for rel in info.m2m:
        secondary = rel.secondary
        assert secondary is not None
        local = rel.synchronize_pairs  # (model column, secondary column)
        remote = rel.secondary_synchronize_pairs or []  # (related column, secondary column)
        by_name = {model_col.name: sec_col for model_col, sec_col in local}
        local_sec = [by_name[c.name] for c in info.pk if c.name in by_name]
        if len(local_sec) != len(info.pk):
            raise InvalidInput(
                f"{info.table.name}.{rel.key}: a many-to-many collection must join on the "
                "model's primary key to be versioned"
            )
        remote_sec = [sec_col for _, sec_col in remote]
        for chunk in _chunks(keys):
            stmt = select(*local_sec, *remote_sec).where(_pk_clause(local_sec, chunk))
            if _is_mysql(conn):
                stmt = stmt.with_for_update(read=True)
            for row in conn.execute(stmt):
                owner = tuple(row[: len(local_sec)])
                related = [jsonable(v) for v in row[len(local_sec) :]]
                if owner in out:
                    out[owner][rel.key].append(related[0] if len(related) == 1 else related)
    for colls in out.values():
        for k in colls:
            colls[k].sort(key=canonical_json)
    return out


# ----------------------------------------------------------------- bulk statements


@event.listens_for(Session, "do_orm_execute")
def _refuse_bulk(state: ORMExecuteState) -> None:
    # Every ORM statement comes here (session.get too): a SELECT leaves at once.
    if not state.statement.is_dml:
        return
    names = [m.class_.__name__ for m in state.all_mappers if issubclass(m.class_, Versioned)]
    table = getattr(state.statement, "table", None)
    if not names and table is not None:
        names = [
            m.class_.__name__
            for m in _versioned_mappers()
            if versioned_info(m.class_).table is getattr(table, "_deannotate", lambda: table)()
        ]
    if names:
        kind = "update" if state.is_update else "delete" if state.is_delete else "insert"
        raise BulkWriteRefused(
            f"a bulk {kind}() statement on the Versioned model {names[0]} would change rows "
            "without recording their history, so revstore refuses it: load the objects "
            "and change them through the session (session.add_all() for many new rows), "
            "then flush"
        )


def _versioned_mappers() -> list[Mapper[Any]]:
    from sqlalchemy.orm import class_mapper

    found: list[Mapper[Any]] = []
    stack = list(Versioned.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if isinstance(cls.__dict__.get("__versioned__"), VersionedInfo):
            found.append(class_mapper(cls))
    return found


def object_info(obj: object) -> tuple[VersionedInfo, tuple[Any, ...]]:
    """The history set-up and primary key of a persistent ``Versioned`` object."""
    if not isinstance(obj, Versioned):
        raise InvalidInput(f"{type(obj).__name__} is not a Versioned model")
    _object_mapper(obj)
    state = attributes.instance_state(obj)
    if state.identity is None:
        raise InvalidInput(
            f"{type(obj).__name__} has no history yet: add it to a session and flush first"
        )
    return versioned_info(type(obj)), tuple(state.identity)


__all__ = [
    "BulkWriteRefused",
    "Change",
    "ObjectVersionConflict",
    "Versioned",
    "VersionedInfo",
    "content_of",
    "jsonable",
    "object_info",
    "set_change",
    "versioned_info",
]
