"""How a Versioned flush learns the row it wrote, on every backend: from the UPDATE's own
RETURNING (PostgreSQL, SQLite >= 3.35), from ``LAST_INSERT_ID(revision + 1)`` and the
loaded values when no one wrote in between (MariaDB), else by re-reading it. Whatever
the path, the snapshot and the object's numbers are those the database stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import CHAR, DateTime, Numeric, String, Text, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, deferred, mapped_column
from versioned_models import Models, make_engine

import revstore
import revstore.sqlalchemy as rs
from revstore.content import canonical_json, content_hash
from revstore.sqlalchemy.versioned import content_of


class Statements:
    """The statements an engine sends, by their first word, while ``recording``."""

    def __init__(self, engine: Engine) -> None:
        self.sent: list[str] = []
        self.recording = False
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.recording:
            self.sent.append(statement.split(None, 1)[0].upper())

    def __enter__(self) -> list[str]:
        self.sent.clear()
        self.recording = True
        return self.sent

    def __exit__(self, *exc: object) -> None:
        self.recording = False


def head(engine: Engine, models: Models, pid: int) -> tuple[int, int, str, str | None]:
    table = models.Prompt.__table__
    with engine.connect() as conn:
        row = conn.execute(
            select(table.c.revision, table.c.version, table.c.title, table.c.body_text).where(
                table.c.id == pid
            )
        ).one()
    return int(row[0]), int(row[1]), row[2], row[3]


def last_snapshot(engine: Engine, models: Models, pid: int) -> tuple[int, int, str, str | None]:
    hist = models.Prompt.__versioned__.history
    with engine.connect() as conn:
        row = conn.execute(
            select(hist.c.revision, hist.c.version, hist.c.title, hist.c.body_text)
            .where(hist.c.id == pid)
            .order_by(hist.c.version.desc())
            .limit(1)
        ).one()
    return int(row[0]), int(row[1]), row[2], row[3]


def test_an_update_sends_no_select(engine: Engine, models: Models) -> None:
    """The flush of one changed object is its UPDATE, a read of its tags (the
    snapshot records the collection as stored) and the snapshot's INSERT: the new numbers
    and the row come back with the UPDATE."""
    if engine.dialect.name == "sqlite" and not engine.dialect.update_returning:
        pytest.skip("SQLite older than 3.35 has no UPDATE ... RETURNING: the row is re-read")
    with Session(engine, expire_on_commit=False) as s:
        p = models.Prompt(title="a", body="x")
        s.add(p)
        s.commit()
        statements = Statements(engine)
        for i, title in enumerate(["b", "c", "d"], start=2):
            p.title = title
            with statements as sent:
                s.flush()
            assert sent == ["UPDATE", "SELECT", "INSERT"], sent
            s.commit()
            assert (p.revision, p.version) == (i, i)
    assert head(engine, models, p.id) == (4, 4, "d", "x")
    assert last_snapshot(engine, models, p.id) == (4, 4, "d", "x")


def test_a_writer_in_between_is_in_the_snapshot(engine: Engine, models: Models) -> None:
    """Another session commits between this one's load and its UPDATE: the snapshot
    holds that writer's column too, and the numbers follow its write (MariaDB: the
    revision is not the loaded one + 1, so the row is re-read under the lock)."""
    with Session(engine) as s:
        p = models.Prompt(title="first", body="old body")
        s.add(p)
        s.commit()
        pid = p.id
    statements = Statements(engine)
    with Session(engine) as mine, Session(engine) as theirs:
        p = mine.get(models.Prompt, pid)
        assert (p.revision, p.body) == (1, "old body")
        q = theirs.get(models.Prompt, pid)
        q.body = "their body"
        q.create_version = False  # the head moves, no snapshot: version stays 1
        theirs.commit()
        p.title = "my title"
        with statements as sent:
            mine.flush()
        # The tags are read in any case; the row is read back on MariaDB only.
        assert sent.count("SELECT") == (2 if engine.dialect.name in ("mysql", "mariadb") else 1)
        assert (p.revision, p.version) == (3, 2)
        mine.commit()
    assert head(engine, models, pid) == (3, 2, "my title", "their body")
    assert last_snapshot(engine, models, pid) == (3, 2, "my title", "their body")


def test_numbers_match_the_stored_head_across_interleaved_sessions(
    engine: Engine, models: Models
) -> None:
    """Sessions that keep their objects across commits (no expiry) take turns, some
    without a snapshot: after each flush the object's numbers are the stored head's,
    and each snapshot is the head at its version."""
    with Session(engine) as s:
        p = models.Prompt(title="t0", body="b0")
        s.add(p)
        s.commit()
        pid = p.id
    sessions = [Session(engine, expire_on_commit=False) for _ in range(3)]
    try:
        objs = [s.get(models.Prompt, pid) for s in sessions]
        for step in range(1, 10):
            s, obj = sessions[step % 3], objs[step % 3]
            obj.title = f"t{step}"
            snapshot = step % 4 != 0
            obj.create_version = snapshot
            s.commit()
            rev, ver, title, body = head(engine, models, pid)
            assert (rev, title) == (step + 1, f"t{step}")
            assert (obj.revision, obj.version, obj.title) == (rev, ver, title)
            if snapshot:
                assert last_snapshot(engine, models, pid) == (rev, ver, title, body)
    finally:
        for s in sessions:
            s.close()
    with Session(engine) as s:
        snaps = rs.history(s, s.get(models.Prompt, pid))
    assert [h.version for h in snaps] == list(range(1, len(snaps) + 1))
    assert len(snaps) == 1 + sum(1 for step in range(1, 10) if step % 4)


def test_a_stale_expectation_still_conflicts(engine: Engine, models: Models) -> None:
    """The UPDATE runs, and returns (or reports) the head it replaced: an expectation
    of the loaded revision fails after another writer's commit, and nothing lands."""
    with Session(engine) as s:
        p = models.Prompt(title="first")
        s.add(p)
        s.commit()
        pid = p.id
    with Session(engine, expire_on_commit=False) as mine, Session(engine) as theirs:
        p = mine.get(models.Prompt, pid)
        q = theirs.get(models.Prompt, pid)
        q.title = "theirs"
        theirs.commit()
        p.expected_revision = p.revision
        p.title = "mine"
        with pytest.raises(revstore.VersionConflict) as info:
            mine.flush()
        assert (info.value.current_revision, info.value.current_version) == (2, 2)
        mine.rollback()
    assert head(engine, models, pid) == (2, 2, "theirs", None)
    assert last_snapshot(engine, models, pid) == (2, 2, "theirs", None)


def test_values_the_database_changes_are_snapshotted_as_stored(backend_url: str) -> None:
    """CHAR drops or pads trailing spaces, NUMERIC sets its scale, DATETIME may drop
    microseconds, a deferred column is not loaded: the snapshot holds what the row
    holds, never the value as the session had it (MariaDB re-reads such rows)."""
    suffix = uuid.uuid4().hex[:10]

    class Base(DeclarativeBase):
        pass

    class Item(rs.Versioned, Base):
        __tablename__ = f"rsa_item_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        code: Mapped[str] = mapped_column(CHAR(6))
        price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
        at: Mapped[datetime] = mapped_column(DateTime())
        note: Mapped[str] = mapped_column(String(20))
        blob: Mapped[str] = mapped_column(Text)

    class Lazy(rs.Versioned, Base):
        __tablename__ = f"rsa_lazy_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        note: Mapped[str] = mapped_column(String(20))
        blob: Mapped[str] = deferred(mapped_column(Text))

    eng = make_engine(backend_url)
    Base.metadata.create_all(eng)
    try:
        with Session(eng) as s:
            s.add(
                Item(
                    id=1, code="a", price=Decimal("1"), at=datetime(2026, 1, 1), note="n", blob="b"
                )
            )
            s.commit()
        hist = Item.__versioned__.history
        cases: list[dict[str, Any]] = [
            {"code": "ab  "},
            {"price": Decimal("2.5")},
            {"at": datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC).replace(tzinfo=None)},
            {"note": "plain"},
        ]
        for change in cases:
            with Session(eng) as s:
                item = s.get(Item, 1)
                for key, value in change.items():
                    setattr(item, key, value)
                s.commit()
            with eng.connect() as conn:
                stored = conn.execute(select(Item.__table__).where(Item.__table__.c.id == 1)).one()
                snap = conn.execute(
                    select(hist).where(hist.c.id == 1).order_by(hist.c.version.desc()).limit(1)
                ).one()
            for name in ("code", "price", "at", "note", "blob", "revision", "version"):
                # repr: Decimal("2.5") == Decimal("2.50"), but the content hash differs.
                assert repr(snap._mapping[name]) == repr(stored._mapping[name]), (change, name)
            # The history's columns have the row's types, so they would read back alike
            # even from the session's values: the hash tells which values it was made of.
            doc = content_of(Item.__versioned__, dict(stored._mapping), {})
            assert snap._mapping["content_hash"] == content_hash(canonical_json(doc)), change
            with Session(eng) as s:
                latest = rs.history(s, s.get(Item, 1))[-1]
            assert (
                latest.version
                == stored._mapping["version"]
                == 1 + len(cases[: cases.index(change) + 1])
            )
        # A column the session never loaded comes from the database (RETURNING or a
        # re-read), not from nothing.
        with Session(eng) as s:
            s.add(Lazy(id=1, note="n", blob="the blob"))
            s.commit()
        with Session(eng) as s:
            lazy = s.get(Lazy, 1)
            assert "blob" not in lazy.__dict__
            lazy.note = "changed"
            s.commit()
            snaps = rs.history(s, lazy)
        assert [(h.version, h.note, h.blob) for h in snaps] == [
            (1, "n", "the blob"),
            (2, "changed", "the blob"),
        ]
    finally:
        Base.metadata.drop_all(eng)
        eng.dispose()
