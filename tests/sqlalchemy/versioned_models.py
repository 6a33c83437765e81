"""Models for the revstore.sqlalchemy tests, built per test under unique table names, and
the writers of the concurrency test (importable by spawned worker processes)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ForeignKey, MetaData, String, Table, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from revstore.config import ASYNC_DRIVERS, parse_url
from revstore.sqlalchemy import Versioned


def sync_url(url: str) -> str:
    return parse_url(url).sqlalchemy()


def async_url(url: str) -> str:
    parsed = parse_url(url)
    return parsed.sqlalchemy(driver=ASYNC_DRIVERS[parsed.backend])


def engine_args(url: str) -> dict[str, Any]:
    # SQLite: wait for the writer lock long enough under the concurrency test.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def make_engine(url: str) -> Engine:
    return create_engine(sync_url(url), **engine_args(url))


@dataclass
class Models:
    metadata: MetaData
    Prompt: Any
    Tag: Any
    suffix: str


def tables_engine(url: str, metadata: MetaData) -> Iterator[Engine]:
    """An engine with ``metadata``'s tables, created first and dropped after (a test
    module's own models: ``yield from tables_engine(backend_url, Base.metadata)``)."""
    engine = make_engine(url)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


def snapshots(engine: Engine, model: Any, key: int) -> list[dict[str, Any]]:
    """The history rows of the ``model`` row ``id = key``, oldest first."""
    hist = model.__versioned__.history
    with engine.connect() as conn:
        rows = conn.execute(select(hist).where(hist.c.id == key).order_by(hist.c.version))
        return [dict(r._mapping) for r in rows]


def make_models(suffix: str | None = None) -> Models:
    """A Prompt (Versioned, with many-to-many tags) and a Tag, on a fresh MetaData."""
    suffix = suffix or uuid.uuid4().hex[:10]

    class Base(DeclarativeBase):
        metadata = MetaData()

    prompt_tags = Table(
        f"rsa_prompt_tags_{suffix}",
        Base.metadata,
        Column("prompt_id", ForeignKey(f"rsa_prompt_{suffix}.id"), primary_key=True),
        Column("tag_id", ForeignKey(f"rsa_tag_{suffix}.id"), primary_key=True),
    )

    class Tag(Base):
        __tablename__ = f"rsa_tag_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50), unique=True)

    class Prompt(Versioned, Base):
        __tablename__ = f"rsa_prompt_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        # A column whose name differs from its attribute: the history keeps the name.
        body: Mapped[str | None] = mapped_column("body_text", String(2000), default=None)
        tags: Mapped[list[Tag]] = relationship(secondary=prompt_tags, order_by=Tag.id)

    return Models(Base.metadata, Prompt, Tag, suffix)


# ----------------------------------------------------------------- concurrency


def write_many(url: str, suffix: str, prompt_id: int, tag: str, count: int) -> list[Any]:
    """``count`` updates of one prompt, each in its own session and transaction, with
    no expectation: every one must succeed. Returns (token, revision) per write, or
    ("error", text)."""
    models = make_models(suffix)
    engine = make_engine(url)
    acked: list[Any] = []
    try:
        for i in range(count):
            token = f"{tag}-{i}"
            try:
                with Session(engine) as session:
                    prompt = session.get(models.Prompt, prompt_id)
                    assert prompt is not None
                    prompt.title = token
                    prompt.author = tag
                    session.flush()
                    # Read before COMMIT: afterwards it would reload the newest head.
                    revision = prompt.revision
                    session.commit()
                    acked.append((token, revision))
            except Exception as exc:  # reported, and the test fails on it
                acked.append(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()
    return acked


def process_writer(
    url: str, suffix: str, prompt_id: int, tag: str, threads: int, count: int
) -> list[Any]:
    """A worker process: ``threads`` threads, each making ``count`` writes."""
    results: list[Any] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        got = write_many(url, suffix, prompt_id, f"{tag}t{n}", count)
        with lock:
            results.extend(got)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results
