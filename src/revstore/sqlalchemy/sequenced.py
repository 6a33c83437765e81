"""Sequenced child rows for your own SQLAlchemy models (chat messages, prompt versions).

``class Message(Sequenced, Base)`` with ``__sequence_scope__ = "session_id"`` gives the
model a ``sequence`` column (BigInteger, not null, unique together with the scope) and a
counter table ``<table>_sequences`` (one row per scope value: the last sequence taken)
on the model's own MetaData, so ``create_all`` and Alembic autogenerate see it.

At flush, the new rows of each scope take their numbers with ONE statement on the
counter row (an upsert that adds ``n`` and hands back the new last sequence). The row
lock that statement takes is held until the transaction ends, so:

- numbers are unique and gapless per scope for the rows that commit (a rolled-back
  transaction rolls its counter bump back with its rows);
- all the rows one transaction adds to a scope are contiguous, however many processes
  insert into that scope: another writer of the scope waits for the commit.

An optional item id (a column ``item_id``, or the attribute named by
``__sequence_item_id__``) is unique per scope: a re-sent row whose item id is stored is
dropped from the flush, and :func:`append` returns the stored row instead.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Table,
    UniqueConstraint,
    bindparam,
    event,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    Mapped,
    Mapper,
    ORMExecuteState,
    RelationshipDirection,
    Session,
    UOWTransaction,
    mapped_column,
)
from sqlalchemy.orm import object_mapper as _object_mapper
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.types import NullType

from revstore.errors import InvalidInput

M = TypeVar("M", bound="Sequenced")

SEQUENCE = "sequence"
LAST = "last_sequence"
"""The counter table's column holding the last sequence taken for its scope."""


class Sequenced:
    """Mixin: gapless, unique, contiguous-per-transaction ``sequence`` numbers per scope.

    Set ``__sequence_scope__`` to the attribute name of the column the numbers are
    counted per (``"session_id"``). A model attribute ``item_id`` (or the one named by
    ``__sequence_item_id__``) makes re-sent rows idempotent; ``__sequence_item_id__ =
    None`` (the default) means "``item_id`` if the model has it".

    ``sequence`` is assigned at flush: a value set before is overwritten. Sequences
    are never reused: deleting a row leaves its number unused.
    """

    __sequence_scope__: ClassVar[str]
    __sequence_item_id__: ClassVar[str | None] = None
    __revstore_sequence__: ClassVar[SequencePlan]

    sequence: Mapped[int] = mapped_column(BigInteger, nullable=False)


@dataclass(eq=False)
class SequencePlan:
    """What a Sequenced model's flushes need: its tables and attribute names."""

    table: Table
    counter: Table
    scope_attr: str
    scope_column: Column[Any]
    item_attr: str | None
    item_column: Column[Any] | None
    _bumps: dict[str, Any] = field(default_factory=dict)

    def bump(self, conn: Connection, scope: object, n: int) -> int:
        """Add ``n`` to the scope's counter (creating it at 0) and return the new last
        sequence. The statement takes the counter row's write lock, held until the
        transaction ends: that is what serialises every writer of one scope."""
        name = conn.dialect.name
        stmt = self._bumps.get(name)
        if stmt is None:
            stmt = self._bumps[name] = self._bump_statement(name)
        result = conn.execute(stmt, {"scope": scope, "n": n})
        if name in ("mysql", "mariadb"):
            # No RETURNING on UPDATE: LAST_INSERT_ID(expr) in the statement hands the
            # new value back in the OK packet (the insert path sets it to n too).
            last = result.lastrowid
            if last is None:
                raise InvalidInput(
                    f"the MySQL driver of {conn.dialect.driver} did not return the "
                    "statement's LAST_INSERT_ID; Sequenced needs a driver that does "
                    "(PyMySQL, asyncmy, mysqlclient)"
                )
            return int(last)
        return int(result.scalar_one())

    def _bump_statement(self, dialect: str) -> Any:
        scope_key = self.counter.c[self.scope_column.name]
        values: dict[str, Any] = {scope_key.key: bindparam("scope"), LAST: bindparam("n")}
        if dialect in ("postgresql", "sqlite"):
            # One upsert: INSERT … ON CONFLICT DO UPDATE is atomic on PostgreSQL (the
            # conflicting row is locked, then updated) and SQLite has one writer.
            ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(self.counter)
            ins = ins.values(values)
            return ins.on_conflict_do_update(
                index_elements=[scope_key],
                set_={LAST: self.counter.c[LAST] + ins.excluded[LAST]},
            ).returning(self.counter.c[LAST])
        if dialect in ("mysql", "mariadb"):
            # ON DUPLICATE KEY UPDATE takes the row's exclusive lock at once; an
            # INSERT IGNORE first would take a shared lock, and two writers both
            # holding it and asking for the exclusive one deadlock.
            my = mysql_insert(self.counter)
            my = my.values(
                {scope_key.key: bindparam("scope"), LAST: func.last_insert_id(bindparam("n"))}
            )
            return my.on_duplicate_key_update(
                {LAST: func.last_insert_id(self.counter.c[LAST] + my.inserted[LAST])}
            )
        raise InvalidInput(
            f"Sequenced supports SQLite, PostgreSQL and MySQL/MariaDB, not {dialect!r}"
        )

    def stored_items(self, conn: Connection, scope: object, items: Sequence[object]) -> set[object]:
        """The item ids among ``items`` already stored in the scope. Called while this
        transaction holds the scope's counter lock, so every row of the scope that
        another writer made has committed, or waits behind us."""
        assert self.item_column is not None
        query = select(self.item_column).where(
            self.scope_column == scope, self.item_column.in_(list(items))
        )
        if conn.dialect.name in ("mysql", "mariadb"):
            # A locking read sees the newest committed rows; InnoDB's plain SELECT
            # (REPEATABLE READ) would read the snapshot of the transaction's first read.
            query = query.with_for_update()
        return set(conn.execute(query).scalars())


# ---------------------------------------------------------------- set-up at class creation


_mapped: weakref.WeakSet[type[Sequenced]] = weakref.WeakSet()
"""The Sequenced models of this process: while there are none, the flush and statement
hooks have nothing to look for (applications that only use ``Versioned``)."""


@event.listens_for(Sequenced, "after_mapper_constructed", propagate=True)
def _set_up(mapper: Mapper[Any], cls: type[Sequenced]) -> None:
    """Add the unique constraints and the counter table, once per mapped table."""
    inherited = mapper.inherits
    if inherited is not None and isinstance(
        inherited.class_.__dict__.get("__revstore_sequence__"), SequencePlan
    ):
        return  # a subclass: the base's table holds the sequences
    cls.__revstore_sequence__ = _plan(mapper, cls)
    _mapped.add(cls)


def _plan(mapper: Mapper[Any], cls: type[Sequenced]) -> SequencePlan:
    name = cls.__name__
    scope_attr = getattr(cls, "__sequence_scope__", None)
    if not isinstance(scope_attr, str) or not scope_attr:
        raise InvalidInput(
            f"{name}: a Sequenced model needs __sequence_scope__, the name of the "
            "column its sequences are counted per (e.g. 'session_id')"
        )
    scope_column = _column(mapper, name, scope_attr, "__sequence_scope__")
    item_attr = cls.__sequence_item_id__
    if item_attr is None and "item_id" in mapper.attrs:
        item_attr = "item_id"
    item_column = (
        None if item_attr is None else _column(mapper, name, item_attr, "__sequence_item_id__")
    )
    table = scope_column.table
    if not isinstance(table, Table):
        raise InvalidInput(f"{name}: a Sequenced model must be mapped to a table")
    sequence_column = _column(mapper, name, SEQUENCE, "the sequence column")
    scope_type: TypeEngine[Any] = scope_column.type
    if isinstance(scope_type, NullType):
        raise InvalidInput(
            f"{name}.{scope_attr}: give the scope column an explicit type (the counter "
            f"table {table.name}_sequences copies it)"
        )
    metadata = table.metadata
    named = "uq" not in metadata.naming_convention
    table.append_constraint(
        UniqueConstraint(
            scope_column,
            sequence_column,
            name=_name(f"uq_{table.name}_{SEQUENCE}") if named else None,
        )
    )
    if item_column is not None:
        table.append_constraint(
            UniqueConstraint(
                scope_column,
                item_column,
                name=_name(f"uq_{table.name}_{item_column.name}") if named else None,
            )
        )
    counter_name = f"{table.name}_sequences"
    key = f"{table.schema}.{counter_name}" if table.schema else counter_name
    if key in metadata.tables:
        raise InvalidInput(
            f"{name}: the table {key} already exists in this MetaData; Sequenced keeps "
            f"the counters of {table.name} there"
        )
    counter = Table(
        counter_name,
        metadata,
        Column(scope_column.name, scope_type, primary_key=True, autoincrement=False),
        Column(LAST, BigInteger, nullable=False),
        schema=table.schema,
        comment=f"revstore: the last sequence taken per {scope_column.name} in {table.name}",
    )
    return SequencePlan(table, counter, scope_attr, scope_column, item_attr, item_column)


def _column(mapper: Mapper[Any], model: str, attr: str, what: str) -> Column[Any]:
    prop = mapper.attrs.get(attr) if attr in mapper.attrs else None
    columns = getattr(prop, "columns", None)
    if not columns or len(columns) != 1 or not isinstance(columns[0], Column):
        raise InvalidInput(f"{model}: {what} names {attr!r}, which is not a column of the model")
    column: Column[Any] = columns[0]
    return column


def _name(name: str) -> str:
    # PostgreSQL cuts identifiers at 63 bytes, MySQL refuses more than 64.
    return name[:60]


# ---------------------------------------------------------------- the flush


def _plan_of(obj: object) -> SequencePlan | None:
    plan = getattr(type(obj), "__revstore_sequence__", None)
    return plan if isinstance(plan, SequencePlan) else None


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    if not _mapped:
        return
    groups: dict[tuple[SequencePlan, object], list[Sequenced]] = {}
    for obj in session.new:
        plan = _plan_of(obj)
        if plan is None:
            continue
        assert isinstance(obj, Sequenced)
        scope = _scope_of(obj, plan)
        if scope is None:
            # The scope is not known before the flush (a parent new in this flush):
            # numbered row by row in before_insert, still under the counter lock.
            obj.sequence = None  # type: ignore[assignment]
            continue
        groups.setdefault((plan, scope), []).append(obj)
    for obj in session.dirty:
        plan = _plan_of(obj)
        if plan is not None:
            _refuse_renumbering(obj, plan)
    if not groups:
        return
    # Counter rows are locked in one global order (table, then scope), so two flushes
    # touching the same scopes wait for each other instead of deadlocking.
    for (plan, scope), rows in sorted(groups.items(), key=_lock_order):
        rows.sort(key=lambda o: instance_state(o).insert_order or 0)
        conn = session.connection(bind_arguments={"mapper": _object_mapper(rows[0])})
        rows = _drop_resent(session, conn, plan, scope, rows)
        if rows:
            last = plan.bump(conn, scope, len(rows))
            for k, obj in enumerate(rows):
                obj.sequence = last - len(rows) + 1 + k


def _lock_order(item: tuple[tuple[SequencePlan, object], list[Sequenced]]) -> tuple[str, str, str]:
    (plan, scope), _ = item
    # repr, not the value: one total order across types, the same in every process.
    return (str(plan.table.schema), plan.table.name, repr(scope))


def _scope_of(obj: Sequenced, plan: SequencePlan) -> object:
    scope = getattr(obj, plan.scope_attr)
    if scope is not None:
        return scope
    # Set through a many-to-one relationship to a stored parent: the foreign key is
    # only copied at flush, but the parent's key is known now.
    mapper = _object_mapper(obj)
    for rel in mapper.relationships:
        if rel.direction is not RelationshipDirection.MANYTOONE:
            continue
        for local, remote in rel.local_remote_pairs or ():
            if local is plan.scope_column:
                parent = getattr(obj, rel.key)
                if parent is None:
                    continue
                state = instance_state(parent)
                if state.key is None:
                    continue  # a new parent: its key may come from the database
                value = _object_mapper(parent).get_property_by_column(remote)
                return getattr(parent, value.key)
    return None


def _drop_resent(
    session: Session, conn: Connection, plan: SequencePlan, scope: object, rows: list[Sequenced]
) -> list[Sequenced]:
    """The rows to insert: without those whose item id is stored, or repeated in the
    flush (the first one stays). The re-sent rows are expunged: nothing is written."""
    if plan.item_attr is None:
        return rows
    items = [getattr(o, plan.item_attr) for o in rows]
    wanted = [i for i in items if i is not None]
    if not wanted:
        return rows
    # Lock the scope first (a bump of 0): from here on no other writer of the scope
    # can commit a row, so an item id not stored now cannot appear before our commit.
    plan.bump(conn, scope, 0)
    stored = plan.stored_items(conn, scope, wanted)
    keep: list[Sequenced] = []
    for obj, item in zip(rows, items, strict=True):
        if item is not None and item in stored:
            session.expunge(obj)
            continue
        if item is not None:
            stored.add(item)
        keep.append(obj)
    return keep


def _refuse_renumbering(obj: object, plan: SequencePlan) -> None:
    state = instance_state(obj)
    for attr in (SEQUENCE, plan.scope_attr):
        if state.attrs[attr].history.added:
            raise InvalidInput(
                f"{type(obj).__name__}.{attr} of a stored row cannot change: sequences "
                "are assigned once, at insert, per scope"
            )


@event.listens_for(Sequenced, "before_insert", propagate=True)
def _before_insert(mapper: Mapper[Any], conn: Connection, obj: Sequenced) -> None:
    if obj.sequence is not None:
        return
    plan = _plan_of(obj)
    assert plan is not None
    scope = getattr(obj, plan.scope_attr)
    if scope is None:
        raise InvalidInput(
            f"{type(obj).__name__}.{plan.scope_attr} is not set: a Sequenced row needs "
            "its scope to take a sequence"
        )
    # One at a time, but contiguous all the same: the first bump locked the counter.
    obj.sequence = plan.bump(conn, scope, 1)


@event.listens_for(Session, "do_orm_execute")
def _refuse_bulk(state: ORMExecuteState) -> None:
    """An ORM bulk INSERT / UPDATE statement bypasses the flush: refused with a clear
    error rather than rows without a sequence (or renumbered rows)."""
    if not _mapped or not (state.is_insert or state.is_update):
        return
    mapper = state.bind_mapper
    if mapper is not None and isinstance(
        getattr(mapper.class_, "__revstore_sequence__", None), SequencePlan
    ):
        what = "INSERT" if state.is_insert else "UPDATE"
        if state.is_update and not _touches_numbers(state, mapper.class_.__revstore_sequence__):
            return
        raise InvalidInput(
            f"a bulk {what} statement on the Sequenced model {mapper.class_.__name__} "
            "would bypass its sequence counter: add the rows to the session (or use "
            "revstore.sqlalchemy.append)"
        )


def _touches_numbers(state: ORMExecuteState, plan: SequencePlan) -> bool:
    stmt: Any = state.statement
    names = {SEQUENCE, plan.scope_attr, plan.scope_column.name, plan.scope_column.key}
    values = getattr(stmt, "_values", None) or {}
    keys = {getattr(k, "key", k) for k in values}
    params = state.parameters
    rows = params if isinstance(params, list) else [params] if params else []
    for row in rows:
        keys.update(row)
    return bool(names & {str(k) for k in keys})


# ---------------------------------------------------------------- appending


def append(session: Session, rows: Iterable[M]) -> list[M]:
    """Add ``rows`` and flush; return the stored rows in the order given.

    A row whose item id is stored in its scope (committed before, by any process, or
    flushed earlier in this transaction) is not written: the stored row comes back in
    its place, with its sequence. The re-send's other values are not compared: the
    first row stored under an item id wins. Commit is the caller's (see
    :func:`revstore.sqlalchemy.transaction`)."""
    given = list(rows)
    for obj in given:
        if _plan_of(obj) is None:
            raise InvalidInput(f"{type(obj).__name__} is not a Sequenced model")
    session.add_all(given)
    session.flush()
    out: list[M] = []
    missing: dict[type[Any], list[tuple[int, M]]] = {}
    for k, obj in enumerate(given):
        if obj in session:
            out.append(obj)
        else:
            out.append(obj)  # replaced below by the stored row
            missing.setdefault(type(obj), []).append((k, obj))
    for cls, pairs in missing.items():
        plan = _plan_of(pairs[0][1])
        assert plan is not None and plan.item_attr is not None
        scope_attr, item_attr = plan.scope_attr, plan.item_attr
        keys = {(getattr(o, scope_attr), getattr(o, item_attr)) for _, o in pairs}
        key_of: ColumnElement[Any] = tuple_(getattr(cls, scope_attr), getattr(cls, item_attr))
        query = select(cls).where(key_of.in_(list(keys)))
        conn = session.connection(bind_arguments={"mapper": _object_mapper(pairs[0][1])})
        if conn.dialect.name in ("mysql", "mariadb"):
            # As in stored_items: the stored row may have committed after this
            # transaction's REPEATABLE READ snapshot; a locking read sees it.
            query = query.with_for_update()
        found = {(getattr(s, scope_attr), getattr(s, item_attr)): s for s in session.scalars(query)}
        for k, obj in pairs:
            out[k] = found[(getattr(obj, scope_attr), getattr(obj, item_attr))]
    return out


def add_sequenced(session: Session, obj: M) -> M:
    """:func:`append` for one row: the row as stored (``obj``, or the stored row its
    item id names)."""
    return append(session, [obj])[0]


async def async_append(session: AsyncSession, rows: Iterable[M]) -> list[M]:
    """:func:`append` for an ``AsyncSession``."""
    given = list(rows)
    return await session.run_sync(lambda s: append(s, given))


async def async_add_sequenced(session: AsyncSession, obj: M) -> M:
    """:func:`add_sequenced` for an ``AsyncSession``."""
    return (await async_append(session, [obj]))[0]


__all__ = [
    "SequencePlan",
    "Sequenced",
    "add_sequenced",
    "append",
    "async_add_sequenced",
    "async_append",
]
