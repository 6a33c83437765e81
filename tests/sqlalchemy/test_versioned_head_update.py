"""revstore sends a changed object's head UPDATE itself (``before_update``): one statement
per model and shape, served from SQLAlchemy's compiled cache, and the ORM sends nothing
more for the object. The cases it does not cover go through the ORM's own UPDATE with the
numbers as SQL expressions; either way the numbers are the database's and the snapshot is
the row as stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from itertools import count
from typing import Any

import pytest
from sqlalchemy import DateTime, Integer, String, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.engine.default import CACHE_HIT
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.exc import StaleDataError
from versioned_models import Models, snapshots, tables_engine

import revstore
import revstore.sqlalchemy as rs
from revstore.content import canonical_json, content_hash
from revstore.sqlalchemy.versioned import content_of


class Base(DeclarativeBase):
    pass


_ticks = count(1)


def _tick() -> datetime:
    # A Python-side onupdate: a new value at every UPDATE, whole seconds (MySQL DATETIME).
    return datetime(2026, 1, 1, 0, 0, next(_ticks) % 60)


class Note(rs.Versioned, Base):
    __tablename__ = f"rsh_note_{uuid.uuid4().hex[:10]}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(String(100))
    n: Mapped[int] = mapped_column(Integer, default=0)
    stamp: Mapped[str | None] = mapped_column(String(40), default=None)


class Stamped(rs.Versioned, Base):
    __tablename__ = f"rsh_stamped_{uuid.uuid4().hex[:10]}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[datetime] = mapped_column(DateTime(), default=_tick, onupdate=_tick)


@pytest.fixture
def eng(backend_url: str) -> Iterator[Engine]:
    yield from tables_engine(backend_url, Base.metadata)


def stored(engine: Engine, model: Any, key: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(model.__table__).where(model.__table__.c.id == key)).one()
    return dict(row._mapping)


def same_as_head(engine: Engine, model: Any, key: int, names: list[str]) -> None:
    """The last snapshot is the stored head, and its hash is that of the head."""
    head, last = stored(engine, model, key), snapshots(engine, model, key)[-1]
    for name in [*names, "revision", "version"]:
        assert last[name] == head[name], name
    doc = content_of(model.__versioned__, head, {})
    assert last["content_hash"] == content_hash(canonical_json(doc))


def test_one_cached_update_per_shape(eng: Engine) -> None:
    """After the first flush of a shape, every head UPDATE is a compiled-cache hit, and
    the ORM sends no UPDATE of its own: one UPDATE per changed object (PostgreSQL: one
    statement that also inserts the snapshot, when no one wrote the row in between)."""
    with Session(eng) as s:
        s.add_all([Note(id=i, text="t") for i in range(1, 4)])
        s.commit()
    hits: list[tuple[str, object]] = []
    inserts: list[str] = []
    fused = eng.dialect.name == "postgresql"

    @event.listens_for(eng, "after_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: Any) -> None:
        word = statement.split(None, 1)[0].upper()
        if word in ("UPDATE", "WITH"):
            hits.append((word, context.cache_hit))
        elif word == "INSERT":
            inserts.append(statement)

    for round_ in range(3):
        with Session(eng) as s:
            for i in range(1, 4):
                note = s.get(Note, i)
                assert note is not None
                note.text = f"r{round_}"
            s.commit()
    event.remove(eng, "after_cursor_execute", seen)
    assert len(hits) == 9  # one per object and flush
    assert {h[0] for h in hits} == {"WITH" if fused else "UPDATE"}
    assert {h[1] for h in hits[1:]} == {CACHE_HIT}
    if fused:
        assert inserts == []  # the snapshots came with the UPDATEs
    for i in range(1, 4):
        head = stored(eng, Note, i)
        assert (head["revision"], head["version"], head["text"]) == (4, 4, "r2")
        same_as_head(eng, Note, i, ["text", "n"])


def test_several_objects_and_shapes_in_one_flush(eng: Engine) -> None:
    """Different changed columns, with and without a snapshot, in one flush: each
    object gets its own numbers and snapshot."""
    with Session(eng) as s:
        s.add_all([Note(id=i, text="t") for i in range(1, 4)])
        s.commit()
    with Session(eng) as s:
        a, b, c = (s.get(Note, i) for i in range(1, 4))
        assert a is not None and b is not None and c is not None
        a.text = "a2"
        b.n = 5
        c.text, c.n = "c2", 7
        c.create_version = False
        s.commit()
    assert [(h["version"], h["text"], h["n"]) for h in snapshots(eng, Note, 1)] == [
        (1, "t", 0),
        (2, "a2", 0),
    ]
    assert [(h["version"], h["n"]) for h in snapshots(eng, Note, 2)] == [(1, 0), (2, 5)]
    assert len(snapshots(eng, Note, 3)) == 1
    head = stored(eng, Note, 3)
    assert (head["revision"], head["version"], head["text"], head["n"]) == (2, 1, "c2", 7)


def test_a_sql_expression_value_goes_through_the_orm(eng: Engine) -> None:
    """``n = n + 1`` is the ORM's to send: the numbers still come from the database, and
    the snapshot holds the value the expression computed."""
    with Session(eng) as s:
        s.add(Note(id=1, text="t", n=10))
        s.commit()
    for expected in (11, 12):
        with Session(eng) as s:
            note = s.get(Note, 1)
            assert note is not None
            note.n = Note.n + 1
            note.text = f"n{expected}"
            s.flush()
            assert (note.revision, note.version) == (expected - 9, expected - 9)
            s.commit()
    head = stored(eng, Note, 1)
    assert (head["n"], head["revision"]) == (12, 3)
    same_as_head(eng, Note, 1, ["text", "n"])


def test_a_changed_primary_key_goes_through_the_orm(eng: Engine) -> None:
    with Session(eng) as s:
        s.add(Note(id=1, text="t"))
        s.commit()
    with Session(eng) as s:
        note = s.get(Note, 1)
        assert note is not None
        note.id = 2
        note.text = "moved"
        s.commit()
    head = stored(eng, Note, 2)
    assert (head["revision"], head["version"], head["text"]) == (2, 2, "moved")
    assert snapshots(eng, Note, 2)[-1]["text"] == "moved"


def test_a_later_before_update_listener_is_in_the_snapshot(eng: Engine) -> None:
    """A user's ``before_update`` that runs after revstore's and sets a column: the ORM
    writes it after revstore's UPDATE, and the snapshot (re-read) holds it."""

    def stamp(mapper: Any, connection: Any, target: Any) -> None:
        target.stamp = f"stamped {target.text}"

    with Session(eng) as s:
        s.add(Note(id=1, text="t"))
        s.commit()
    event.listen(Note, "before_update", stamp)
    try:
        with Session(eng) as s:
            note = s.get(Note, 1)
            assert note is not None
            note.text = "x"
            s.commit()
    finally:
        event.remove(Note, "before_update", stamp)
    head = stored(eng, Note, 1)
    assert (head["stamp"], head["revision"], head["version"]) == ("stamped x", 2, 2)
    same_as_head(eng, Note, 1, ["text", "stamp"])


def test_onupdate_columns_are_snapshotted_and_loaded_as_stored(eng: Engine) -> None:
    """A column the UPDATE sets by itself (``onupdate``): the snapshot and the object
    hold the value the row got."""
    with Session(eng, expire_on_commit=False) as s:
        item = Stamped(id=1, text="t")
        s.add(item)
        s.commit()
        first = item.changed_at
        for text in ("u1", "u2"):
            item.text = text
            s.commit()
            head = stored(eng, Stamped, 1)
            assert head["changed_at"] != first
            assert item.changed_at == head["changed_at"]
            first = head["changed_at"]
    same_as_head(eng, Stamped, 1, ["text", "changed_at"])
    assert [h["version"] for h in snapshots(eng, Stamped, 1)] == [1, 2, 3]


def test_a_row_deleted_underneath_is_stale_data(eng: Engine) -> None:
    """Another session deleted the row after this one loaded it: StaleDataError, as the
    ORM's own UPDATE says it (rs.transaction re-runs the unit on it)."""
    with Session(eng) as s:
        s.add(Note(id=1, text="t"))
        s.commit()
    with Session(eng) as mine, Session(eng) as theirs:
        note = mine.get(Note, 1)
        assert note is not None
        gone = theirs.get(Note, 1)
        theirs.delete(gone)
        theirs.commit()
        note.text = "late"
        with pytest.raises(StaleDataError):
            mine.flush()
        mine.rollback()


def test_collections_only_change_still_updates_the_head(engine: Engine, models: Models) -> None:
    """Only a many-to-many collection changes: revstore's UPDATE writes just the numbers,
    and the snapshot has the new keys."""
    with Session(engine) as s:
        tag = models.Tag(name="red")
        p = models.Prompt(title="a")
        s.add_all([tag, p])
        s.commit()
        pid = p.id
    with Session(engine) as s:
        p = s.get(models.Prompt, pid)
        p.tags.append(s.scalars(select(models.Tag)).one())
        s.commit()
    with Session(engine) as s:
        p = s.get(models.Prompt, pid)
        assert (p.revision, p.version) == (2, 2)
        snaps = rs.history(s, p)
    assert [len(h.tags) for h in snaps] == [0, 1]


def test_a_writer_in_between_gets_its_own_snapshot_and_ours_follows(eng: Engine) -> None:
    """Another session commits between this one's load and its UPDATE (PostgreSQL: the
    one-statement write sees a revision it did not expect and inserts no snapshot): the
    snapshot is still the row as stored, with the other writer's column, and the
    versions stay gapless."""
    with Session(eng) as s:
        s.add(Note(id=1, text="first", n=1))
        s.commit()
    with Session(eng) as mine, Session(eng) as theirs:
        note = mine.get(Note, 1)
        other = theirs.get(Note, 1)
        assert note is not None and other is not None
        other.n = 2
        theirs.commit()
        note.text = "mine"
        mine.commit()
    head = stored(eng, Note, 1)
    assert (head["revision"], head["version"], head["text"], head["n"]) == (3, 3, "mine", 2)
    assert [h["version"] for h in snapshots(eng, Note, 1)] == [1, 2, 3]
    same_as_head(eng, Note, 1, ["text", "n"])
    assert (snapshots(eng, Note, 1)[1]["text"], snapshots(eng, Note, 1)[1]["n"]) == ("first", 2)


def test_a_stale_expectation_leaves_no_snapshot(eng: Engine) -> None:
    """expected_revision no longer holds: the flush raises and rolls back, also the
    snapshot a one-statement write inserted."""
    with Session(eng) as s:
        s.add(Note(id=1, text="t"))
        s.commit()
    with Session(eng) as s:
        note = s.get(Note, 1)
        assert note is not None
        note.expected_revision = 5
        note.text = "x"
        with pytest.raises(revstore.VersionConflict) as info:
            s.flush()
        assert info.value.current_revision == 1
        s.rollback()
    assert [h["version"] for h in snapshots(eng, Note, 1)] == [1]
    assert stored(eng, Note, 1)["revision"] == 1
