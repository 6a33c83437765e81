"""revstore's head UPDATE and snapshot INSERT go on the driver's cursor (sqlite3, PyMySQL)
when nothing would notice (``revstore.sqlalchemy.direct``): the same rows as through
``Connection.execute``, the same wrapped errors, and ``Connection.execute`` whenever a
listener, echo or a schema translation is in place."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Integer, String, event, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from versioned_models import snapshots, tables_engine

import revstore.sqlalchemy as rs
from revstore.content import canonical_json, content_hash
from revstore.sqlalchemy.direct import direct
from revstore.sqlalchemy.versioned import content_of


class Base(DeclarativeBase):
    pass


class Page(rs.Versioned, Base):
    __tablename__ = f"rsd_page_{uuid.uuid4().hex[:10]}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(String(100))
    n: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(String(40), default=None)


@pytest.fixture
def eng(backend_url: str) -> Iterator[Engine]:
    yield from tables_engine(backend_url, Base.metadata)


def edit(engine: Engine, key: int, text: str) -> None:
    with Session(engine) as s:
        page = s.get(Page, key)
        assert page is not None
        page.text = text
        page.author = "ann"
        s.commit()


def test_direct_only_where_nothing_would_notice(eng: Engine) -> None:
    expected = eng.dialect.name in ("sqlite", "mysql")
    with eng.connect() as conn:
        assert not direct(conn)  # no transaction yet
        conn.begin()
        assert direct(conn) is expected
        translated = conn.execution_options(schema_translate_map={None: None})
        assert not direct(translated)
        conn.rollback()

    def heard(*_: Any) -> None:
        pass

    event.listen(eng, "before_cursor_execute", heard)
    try:
        with eng.begin() as conn:
            assert not direct(conn)
    finally:
        event.remove(eng, "before_cursor_execute", heard)
    eng.echo = True
    try:
        with eng.begin() as conn:
            assert not direct(conn)
    finally:
        eng.echo = False


def test_same_snapshot_on_the_cursor_and_through_execute(eng: Engine) -> None:
    """Two rows edited alike, one with a listener on the engine (Connection.execute),
    one without (the driver's cursor where the driver allows): the same numbers,
    values and content hashes."""
    with Session(eng) as s:
        s.add_all([Page(id=1, text="a", n=3), Page(id=2, text="a", n=3)])
        s.commit()
    edit(eng, 1, "b")
    sent: list[str] = []

    def heard(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement.split(None, 1)[0].upper())

    event.listen(eng, "before_cursor_execute", heard)
    try:
        edit(eng, 2, "b")
    finally:
        event.remove(eng, "before_cursor_execute", heard)
    # The listener heard revstore's own statements too (or PostgreSQL's one statement).
    assert "UPDATE" in sent or "WITH" in sent
    info = Page.__versioned__
    ones, twos = snapshots(eng, Page, 1), snapshots(eng, Page, 2)
    assert len(ones) == len(twos) == 2
    for one, two in zip(ones, twos, strict=True):
        for name in ("version", "revision", "text", "n", "note", "author", "collections"):
            assert one[name] == two[name], name
        for snap in (one, two):  # the hash of the row's own values (the key differs)
            assert snap["content_hash"] == content_hash(canonical_json(content_of(info, snap, {})))


def test_a_failure_on_the_cursor_is_sqlalchemys_and_rolls_back(eng: Engine) -> None:
    """The snapshot INSERT meets a history row already there: SQLAlchemy's IntegrityError
    (not the driver's own), and the session rolls the head UPDATE back."""
    with Session(eng) as s:
        s.add(Page(id=1, text="a"))
        s.commit()
    hist = Page.__versioned__.history
    with eng.begin() as conn:
        # The number the next snapshot takes, taken already behind revstore's back.
        row = {c.name: None for c in hist.columns}
        row.update(id=1, text="x", n=0, version=2, revision=2, content_hash="0" * 64)
        row["created_at"] = snapshots(eng, Page, 1)[0]["created_at"]
        conn.execute(insert(hist), row)
    with Session(eng) as s:
        page = s.get(Page, 1)
        assert page is not None
        page.text = "b"
        with pytest.raises(IntegrityError):
            s.flush()
        s.rollback()
    with Session(eng) as s:
        page = s.get(Page, 1)
        assert page is not None
        assert (page.text, page.revision, page.version) == ("a", 1, 1)
