"""A prompt manager on your own tables: prompts with tags (many-to-many), every change
a version, concurrent editors never collide on the next number.

This is the case where users of ``max(version) + 1`` met IntegrityError 1062 / 23505:
two editors saving the same prompt, with its tags, at once. Here the revision is taken
by the UPDATE itself (``revstore.sqlalchemy.Versioned``) and every unit of work is
re-run on deadlocks and serialization failures (``revstore.sqlalchemy.transaction``).

    python -m examples.prompt_manager sqlite:///prompts.db
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    String,
    Table,
    create_engine,
    event,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

import revstore.sqlalchemy as rs
from revstore import NotFound
from revstore.config import parse_url


class Base(DeclarativeBase):
    pass


prompt_tags = Table(
    "pm_prompt_tags",
    Base.metadata,
    Column("prompt_id", ForeignKey("pm_prompts.id"), primary_key=True),
    Column("tag_id", ForeignKey("pm_tags.id"), primary_key=True),
)


class Tag(Base):
    __tablename__ = "pm_tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


class Prompt(rs.Versioned, Base):
    """revision, version and the table pm_prompts_versions come from Versioned; the tags
    are part of each version."""

    __tablename__ = "pm_prompts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    text: Mapped[str] = mapped_column(String(4000))
    model: Mapped[str] = mapped_column(String(50), default="default")
    tags: Mapped[list[Tag]] = relationship(secondary=prompt_tags, order_by=Tag.id)


@dataclass(frozen=True)
class Saved:
    """What a save returns: the numbers the database gave it."""

    id: int
    revision: int
    version: int


def make_engine(url: str) -> Engine:
    """An engine for a revstore-style URL (sqlite:///…, postgresql://…, mysql://…)."""
    if not url.startswith("sqlite"):
        return create_engine(parse_url(url).sqlalchemy())
    # SQLite: wait for the writer lock instead of failing at once under concurrency...
    engine = create_engine(parse_url(url).sqlalchemy(), connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's BEGIN below, not the driver's

    @event.listens_for(engine, "begin")
    def _writer_lock_first(conn: Connection) -> None:
        # ...and take it when the transaction begins, before anything is read: what a
        # unit of work reads (the prompt's tags) is then what its flush writes over.
        # SQLite has one writer at a time anyway; this only moves the wait earlier.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class PromptManager:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    def drop_schema(self) -> None:
        Base.metadata.drop_all(self.engine)

    # --------------------------------------------------------------- writes

    def ensure_tags(self, names: Iterable[str]) -> None:
        """Create the tags that do not exist yet (two editors may add the same new tag
        at once: the loser's insert meets the unique name and it reads the winner's)."""
        for name in sorted(set(names)):
            # IntegrityError: another editor created it first; it exists, all we need.
            with contextlib.suppress(IntegrityError):
                rs.transaction(self.sessions).run(_ensure_tag, name)

    def create(
        self, name: str, text: str, tags: Sequence[str] = (), author: str | None = None
    ) -> Saved:
        self.ensure_tags(tags)

        def work(session: Session) -> Saved:
            prompt = Prompt(name=name, text=text, tags=_tags(session, tags))
            prompt.author = author
            session.add(prompt)
            session.flush()  # revision 1, version 1 and the first snapshot
            return Saved(prompt.id, prompt.revision, prompt.version)

        return rs.transaction(self.sessions).run(work)

    def update(
        self,
        prompt_id: int,
        *,
        text: str | None = None,
        tags: Sequence[str] | None = None,
        author: str | None = None,
        summary: str | None = None,
        expected_revision: int | None = None,
    ) -> Saved:
        """Change a prompt's text and/or tags as one new version. With
        ``expected_revision`` it raises ``revstore.VersionConflict`` (with
        ``.current_revision``) when someone saved in between; without, every
        concurrent save succeeds, each at its own consecutive revision."""
        if tags is not None:
            self.ensure_tags(tags)

        def work(session: Session) -> Saved:
            prompt = _locked(session, prompt_id)
            # One flush, one version: no autoflush halfway through (loading the tags
            # would otherwise flush the new text as a version of its own).
            with session.no_autoflush:
                if tags is not None:
                    prompt.tags = _tags(session, tags)
                if text is not None:
                    prompt.text = text
                rs.set_change(
                    prompt, author=author, summary=summary, expected_revision=expected_revision
                )
            session.flush()
            return Saved(prompt.id, prompt.revision, prompt.version)

        return rs.transaction(self.sessions).run(work)

    # --------------------------------------------------------------- reads

    def get(self, prompt_id: int) -> Prompt:
        with self.sessions() as session:
            prompt = session.get(Prompt, prompt_id)
            if prompt is None:
                raise NotFound(f"prompt {prompt_id} does not exist")
            prompt.tags  # noqa: B018 -- loaded before the session closes
            return prompt

    def history(self, prompt_id: int, *, after: int = 0, limit: int = 1000) -> list[rs.Snapshot]:
        with self.sessions() as session:
            prompt = session.get(Prompt, prompt_id)
            if prompt is None:
                raise NotFound(f"prompt {prompt_id} does not exist")
            return rs.history(session, prompt, after=after, limit=limit)

    def restore(self, prompt_id: int, version: int, author: str | None = None) -> Saved:
        def work(session: Session) -> Saved:
            prompt = _locked(session, prompt_id)
            rs.restore(session, prompt, version)
            prompt.author = author
            session.flush()
            return Saved(prompt.id, prompt.revision, prompt.version)

        return rs.transaction(self.sessions).run(work)


def _locked(session: Session, prompt_id: int) -> Prompt:
    """The prompt, its row locked before its tags are read (PostgreSQL, MariaDB; SQLite
    holds the writer lock already, see make_engine). Without it every save still
    succeeds (the flush applies a tag change onto the tags the database has then), but
    an editor who sets the tags it had loaded changes nothing, as with a column, while
    another editor may have changed them since. With the lock, what it loaded is
    current, so the tags it saves are the tags the version has."""
    prompt = session.get(Prompt, prompt_id, with_for_update=True)
    if prompt is None:
        raise NotFound(f"prompt {prompt_id} does not exist")
    return prompt


def _ensure_tag(session: Session, name: str) -> None:
    if session.scalar(select(Tag.id).where(Tag.name == name)) is not None:
        return
    session.add(Tag(name=name))


def _tags(session: Session, names: Sequence[str]) -> list[Tag]:
    if not names:
        return []
    found = {t.name: t for t in session.scalars(select(Tag).where(Tag.name.in_(names)))}
    missing = sorted(set(names) - set(found))
    if missing:
        raise NotFound(f"no tag(s) {', '.join(missing)}")
    return [found[n] for n in dict.fromkeys(names)]


def main(argv: list[str]) -> None:
    url = argv[1] if len(argv) > 1 else "sqlite:///prompts.db"
    manager = PromptManager(make_engine(url))
    manager.create_schema()
    saved = manager.create("greeting", "You are helpful.", ["system"], author="ada")
    manager.update(saved.id, text="You are very helpful.", tags=["system", "tone"], author="bob")
    manager.restore(saved.id, 1, author="ada")
    for snap in manager.history(saved.id):
        print(snap.version, snap.revision, snap.author, snap.text, snap.tags)


if __name__ == "__main__":
    main(sys.argv)
