"""Models and workers for the Sequenced and transaction tests.

A plain module (not a conftest) so that spawned processes can import the workers by
name; each process rebuilds the models for the same table names from their suffix.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Engine, ForeignKey, Integer, String, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from revstore.config import ASYNC_DRIVERS, parse_url
from revstore.retry import RetryPolicy
from revstore.sqlalchemy.sequenced import Sequenced, append
from revstore.sqlalchemy.transaction import transaction


@dataclass
class Models:
    suffix: str
    base: type[DeclarativeBase]
    chat: type[Any]
    message: type[Any]
    note: type[Any]
    """A Sequenced model without item ids."""


def make_models(suffix: str | None = None) -> Models:
    suffix = suffix or uuid.uuid4().hex[:10]

    class Base(DeclarativeBase):
        pass

    class Chat(Base):
        __tablename__ = f"chat_{suffix}"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        title: Mapped[str] = mapped_column(String(50), default="")

    class Message(Sequenced, Base):
        __tablename__ = f"msg_{suffix}"
        __sequence_scope__ = "chat_id"
        id: Mapped[int] = mapped_column(
            BigInteger().with_variant(Integer, "sqlite"), primary_key=True
        )
        chat_id: Mapped[int] = mapped_column(ForeignKey(Chat.id), nullable=False)
        item_id: Mapped[str | None] = mapped_column(String(64))
        text: Mapped[str] = mapped_column(String(200))
        writer: Mapped[str] = mapped_column(String(40), default="")
        chat: Mapped[Chat] = relationship()

    class Note(Sequenced, Base):
        __tablename__ = f"note_{suffix}"
        __sequence_scope__ = "topic"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        topic: Mapped[str] = mapped_column("topicName", String(40))
        body: Mapped[str] = mapped_column(String(200), default="")

    return Models(suffix, Base, Chat, Message, Note)


def sync_engine(url: str, **kw: Any) -> Engine:
    parsed = parse_url(url)
    if parsed.backend == "sqlite":
        # The busy timeout: SQLite writers queue for the file's write lock.
        kw.setdefault("connect_args", {"timeout": 30})
    return create_engine(parsed.sqlalchemy(), **kw)


def async_engine(url: str, **kw: Any) -> AsyncEngine:
    parsed = parse_url(url)
    if parsed.backend == "sqlite":
        kw.setdefault("connect_args", {"timeout": 30})
    return create_async_engine(parsed.sqlalchemy(driver=ASYNC_DRIVERS[parsed.backend]), **kw)


def sqlite_begin_deferred(engine: Engine) -> None:
    """The SQLAlchemy recipe for real SQLite transactions: pysqlite's own implicit
    BEGIN (only before a write) replaced by a BEGIN at the transaction's start, so a
    read and a later write are one transaction (and a stale read can fail)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")


# ---------------------------------------------------------------- concurrent appends


@dataclass
class Acked:
    """What one worker was told: per committed transaction, the (item id, sequence)
    pairs it wrote or got back."""

    batches: list[list[tuple[str, int]]] = field(default_factory=list)
    shared: dict[str, int] = field(default_factory=dict)
    """Re-sent item ids (sent by every worker) → the sequence each was given."""


def append_worker(
    url: str, suffix: str, name: str, batches: int, shared: list[str], start_at: float
) -> Acked:
    """At ``start_at`` (all workers at once), send each of the ``shared`` item ids
    (the same for every worker, in its own order), then append ``batches`` transactions
    of 1-4 rows with its own item ids, some shared ones again mixed in; all to chat 1,
    through ``transaction``."""
    models = make_models(suffix)
    engine = sync_engine(url, pool_size=2)
    sessions = sessionmaker(engine, expire_on_commit=False)
    Message = models.message
    policy = RetryPolicy(max_attempts=50, max_seconds=60)
    out = Acked()
    rng = random.Random(name)
    pending_shared = list(shared)
    rng.shuffle(pending_shared)

    @transaction(sessions, policy=policy)
    def send(session: Any, rows: list[tuple[str, str]]) -> list[tuple[str, int]]:
        # A read first, as an app does (load the chat): on MariaDB it fixes the
        # transaction's REPEATABLE READ snapshot before the scope is locked.
        assert session.get(models.chat, 1) is not None
        stored = append(
            session, [Message(chat_id=1, item_id=i, text=t, writer=name) for i, t in rows]
        )
        return [(m.item_id, m.sequence) for m in stored]

    def resend(item: str) -> None:
        ((got, seq),) = send([(item, f"{name} sends {item}")])
        assert got == item
        assert out.shared.setdefault(item, seq) == seq, f"{item}: two sequences"

    try:
        time.sleep(max(0.0, start_at - time.time()))
        for item in pending_shared[: len(pending_shared) // 2]:
            resend(item)
        for b in range(batches):
            rows = [(f"{name}-{b}-{k}", f"{name} {b}/{k}") for k in range(rng.randint(1, 4))]
            out.batches.append(send(rows))
            if rng.random() < 0.5:
                resend(rng.choice(shared))
        for item in pending_shared[len(pending_shared) // 2 :]:
            resend(item)
    finally:
        engine.dispose()
    return out


def append_threads(
    url: str,
    suffix: str,
    name: str,
    threads: int,
    batches: int,
    shared: list[str],
    start_at: float = 0.0,
) -> Acked:
    """``append_worker`` in several threads of this process."""
    results: list[Acked] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(t: int) -> None:
        try:
            got = append_worker(url, suffix, f"{name}t{t}", batches, shared, start_at)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            raise
        with lock:
            results.append(got)

    pool = [threading.Thread(target=one, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if errors:
        raise errors[0]
    merged = Acked()
    for r in results:
        merged.batches.extend(r.batches)
        for item, seq in r.shared.items():
            assert merged.shared.setdefault(item, seq) == seq, f"{item} given two sequences"
    return merged
