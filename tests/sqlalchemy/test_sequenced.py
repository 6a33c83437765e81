"""revstore.sqlalchemy.Sequenced on the three backends, sync and async: per-scope
sequences taken at flush are unique, gapless and contiguous per transaction, also with
many threads and processes on one scope; item ids make re-sends no-ops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pytest
from seq_workers import (
    Acked,
    Models,
    append_threads,
    async_engine,
    make_models,
    sync_engine,
)
from sqlalchemy import Engine, MetaData, UniqueConstraint, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from revstore.errors import InvalidInput
from revstore.retry import RetryPolicy
from revstore.sqlalchemy.sequenced import (
    Sequenced,
    add_sequenced,
    append,
    async_add_sequenced,
    async_append,
)
from revstore.sqlalchemy.transaction import async_transaction


@pytest.fixture
def models(backend_url: str) -> Iterator[tuple[Models, Engine]]:
    """Fresh uniquely named tables on the backend, dropped after the test."""
    m = make_models()
    engine = sync_engine(backend_url)
    m.base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        s.add_all([m.chat(id=1), m.chat(id=2)])
    try:
        yield m, engine
    finally:
        m.base.metadata.drop_all(engine)
        engine.dispose()


def rows(session: Session, model: Any, scope: Any) -> list[Any]:
    return list(
        session.scalars(select(model).where(model.chat_id == scope).order_by(model.sequence))
    )


def test_schema_has_the_counter_table_and_the_unique_keys(models: tuple[Models, Engine]) -> None:
    m, engine = models
    table = m.message.__table__
    counter = m.base.metadata.tables[f"{table.name}_sequences"]
    assert [c.name for c in counter.primary_key] == ["chat_id"]
    uniques = {
        tuple(c.name for c in u.columns)
        for u in table.constraints
        if isinstance(u, UniqueConstraint)
    }
    assert {("chat_id", "sequence"), ("chat_id", "item_id")} <= uniques
    # The column of the mapped attribute, not the attribute's name.
    note_counter = m.base.metadata.tables[f"{m.note.__table__.name}_sequences"]
    assert list(note_counter.c.keys()) == ["topicName", "last_sequence"]
    db = inspect(engine)
    assert db.has_table(counter.name)
    found = {tuple(u["column_names"]) for u in db.get_unique_constraints(table.name)}
    found |= {tuple(i["column_names"]) for i in db.get_indexes(table.name) if i.get("unique")}
    assert ("chat_id", "sequence") in found and ("chat_id", "item_id") in found


def test_sequences_are_per_scope_gapless_and_in_add_order(models: tuple[Models, Engine]) -> None:
    m, engine = models
    with Session(engine) as s:
        s.add_all([m.message(chat_id=1, text=f"a{k}") for k in range(3)])
        s.add(m.message(chat_id=2, text="b0", sequence=99))  # overwritten at flush
        s.flush()
        s.add_all([m.message(chat_id=1, text="a3"), m.message(chat_id=2, text="b1")])
        s.commit()
    with Session(engine) as s:
        s.add(m.message(chat_id=1, text="a4"))
        s.add_all([m.note(topic="x"), m.note(topic="x"), m.note(topic="y")])
        s.commit()
        assert [(r.sequence, r.text) for r in rows(s, m.message, 1)] == [
            (k + 1, f"a{k}") for k in range(5)
        ]
        assert [(r.sequence, r.text) for r in rows(s, m.message, 2)] == [(1, "b0"), (2, "b1")]
        notes = s.scalars(select(m.note).order_by(m.note.topic, m.note.sequence)).all()
        assert [(n.topic, n.sequence) for n in notes] == [("x", 1), ("x", 2), ("y", 1)]


def test_a_rolled_back_flush_leaves_no_gap(models: tuple[Models, Engine]) -> None:
    m, engine = models
    with Session(engine) as s:
        s.add(m.message(chat_id=1, text="kept"))
        s.commit()
    with Session(engine) as s:
        s.add_all([m.message(chat_id=1, text="lost"), m.message(chat_id=1, text="lost")])
        s.flush()
        s.rollback()
    with Session(engine) as s:
        s.add(m.message(chat_id=1, text="after"))
        s.commit()
        assert [(r.sequence, r.text) for r in rows(s, m.message, 1)] == [
            (1, "kept"),
            (2, "after"),
        ]


def test_scope_through_a_relationship(models: tuple[Models, Engine]) -> None:
    m, engine = models
    with Session(engine) as s:
        stored = s.get(m.chat, 1)
        new = m.chat(id=3)  # its rows are numbered at insert, one by one
        s.add_all(
            [
                m.message(chat=stored, text="s1"),
                m.message(chat=new, text="n1"),
                m.message(chat=stored, text="s2"),
                m.message(chat=new, text="n2"),
            ]
        )
        s.commit()
        assert [r.text for r in rows(s, m.message, 1)] == ["s1", "s2"]
        assert [(r.sequence, r.text) for r in rows(s, m.message, 3)] == [(1, "n1"), (2, "n2")]


def test_item_ids_make_resends_no_ops(models: tuple[Models, Engine]) -> None:
    m, engine = models
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as s:
        first = append(
            s,
            [
                m.message(chat_id=1, item_id="a", text="A"),
                m.message(chat_id=1, item_id=None, text="no id"),
                m.message(chat_id=1, item_id="a", text="A again, same flush"),
                m.message(chat_id=1, item_id="b", text="B"),
            ],
        )
        assert [(r.item_id, r.sequence, r.text) for r in first] == [
            ("a", 1, "A"),
            (None, 2, "no id"),
            ("a", 1, "A"),
            ("b", 3, "B"),
        ]
        assert first[0] is first[2]
        # Re-sent in the same transaction, after a flush.
        again = add_sequenced(s, m.message(chat_id=1, item_id="b", text="B?"))
        assert again is first[3]
        s.commit()
    with sessions() as s:
        # Re-sent in a new transaction: the stored row, with its sequence.
        got = append(
            s,
            [
                m.message(chat_id=1, item_id="c", text="C"),
                m.message(chat_id=1, item_id="a", text="A later"),
                m.message(chat_id=2, item_id="a", text="another scope"),
            ],
        )
        assert [(r.chat_id, r.item_id, r.sequence, r.text) for r in got] == [
            (1, "c", 4, "C"),
            (1, "a", 1, "A"),
            (2, "a", 1, "another scope"),
        ]
        # A plain session.add of a re-send is dropped too: nothing is written twice.
        s.add(m.message(chat_id=1, item_id="c", text="C twice"))
        s.commit()
    with sessions() as s:
        stored = rows(s, m.message, 1)
        assert [(r.sequence, r.item_id, r.text) for r in stored] == [
            (1, "a", "A"),
            (2, None, "no id"),
            (3, "b", "B"),
            (4, "c", "C"),
        ]


def test_numbers_cannot_be_changed_or_bypassed(models: tuple[Models, Engine]) -> None:
    m, engine = models
    with Session(engine) as s:
        row = m.message(chat_id=1, text="x")
        s.add(row)
        s.commit()
        row.sequence = 7
        with pytest.raises(InvalidInput, match="cannot change"):
            s.flush()
        s.rollback()
        row.chat_id = 2
        with pytest.raises(InvalidInput, match="cannot change"):
            s.flush()
        s.rollback()
        row.text = "edited"  # other columns stay editable
        s.commit()
        with pytest.raises(InvalidInput, match="bulk INSERT"):
            s.execute(insert(m.message), [{"chat_id": 1, "text": "bulk", "sequence": 2}])
        with pytest.raises(InvalidInput, match="bulk UPDATE"):
            s.execute(update(m.message).values(sequence=m.message.sequence + 1))
        s.execute(update(m.message).values(text="all edited"))
        s.add(m.message(text="no scope"))
        with pytest.raises(InvalidInput, match="chat_id is not set"):
            s.flush()


def test_two_writers_rows_stay_contiguous(models: tuple[Models, Engine]) -> None:
    """A second transaction's flush into the scope waits for the first's commit: the
    first's two flushes are contiguous, the second's rows follow them."""
    m, engine = models
    import threading

    first_flushed = threading.Event()
    second = {}

    def other() -> None:
        with Session(engine) as s:
            first_flushed.wait(30)
            s.add(m.message(chat_id=1, text="second"))
            s.commit()
            second["seq"] = s.scalars(
                select(m.message.sequence).where(m.message.text == "second")
            ).one()

    t = threading.Thread(target=other)
    t.start()
    with Session(engine) as s:
        s.add(m.message(chat_id=1, text="first a"))
        s.flush()
        first_flushed.set()
        t.join(0.5)  # the other writer is blocked on the counter row (or SQLite's lock)
        assert t.is_alive()
        s.add(m.message(chat_id=1, text="first b"))
        s.commit()
    t.join(30)
    with Session(engine) as s:
        assert [r.text for r in rows(s, m.message, 1)] == ["first a", "first b", "second"]
    assert second["seq"] == 3


def test_bad_models_are_refused_at_class_creation() -> None:
    class Base(DeclarativeBase):
        metadata = MetaData()

    with pytest.raises(InvalidInput, match="__sequence_scope__"):

        class NoScope(Sequenced, Base):
            __tablename__ = "no_scope_never_created"
            id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(InvalidInput, match="not a column"):

        class BadScope(Sequenced, Base):
            __tablename__ = "bad_scope_never_created"
            __sequence_scope__ = "nope"
            id: Mapped[int] = mapped_column(primary_key=True)


# ---------------------------------------------------------------- async


def test_async_append_on_each_backend(backend_url: str) -> None:
    m = make_models()
    sync = sync_engine(backend_url)
    m.base.metadata.create_all(sync)
    with Session(sync) as s, s.begin():
        s.add(m.chat(id=1))

    async def main() -> list[tuple[int, str | None, str]]:
        engine = async_engine(backend_url)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        try:
            async with sessions() as s:
                got = await async_append(
                    s,
                    [
                        m.message(chat_id=1, item_id="a", text="A"),
                        m.message(chat_id=1, item_id="b", text="B"),
                    ],
                )
                assert [r.sequence for r in got] == [1, 2]
                await s.commit()
            async with sessions() as s:
                again = await async_add_sequenced(s, m.message(chat_id=1, item_id="a", text="?"))
                assert (again.sequence, again.text) == (1, "A")
                s.add(m.message(chat_id=1, text="C"))
                await s.commit()
            async with sessions() as s:
                stored = (
                    await s.scalars(
                        select(m.message).where(m.message.chat_id == 1).order_by(m.message.sequence)
                    )
                ).all()
                return [(r.sequence, r.item_id, r.text) for r in stored]
        finally:
            await engine.dispose()

    try:
        assert asyncio.run(main()) == [(1, "a", "A"), (2, "b", "B"), (3, None, "C")]
    finally:
        m.base.metadata.drop_all(sync)
        sync.dispose()


# ---------------------------------------------------------------- many writers, one scope


def check_appends(engine: Engine, m: Models, acked: list[Acked], shared: list[str]) -> None:
    """Unique and gapless per scope; each acknowledged transaction's rows contiguous
    and present exactly once; each re-sent item id stored once, at the sequence every
    sender was given; nothing stored that nobody acknowledged."""
    with Session(engine) as s:
        stored = s.execute(
            select(m.message.sequence, m.message.item_id).where(m.message.chat_id == 1)
        ).all()
    by_item = {item: seq for seq, item in stored}
    assert len(by_item) == len(stored), "an item id is stored twice"
    sequences = sorted(seq for seq, _ in stored)
    assert sequences == list(range(1, len(stored) + 1)), "sequences have a gap or a repeat"
    acked_items: set[str] = set()
    for a in acked:
        for batch in a.batches:
            first = batch[0][1]
            assert [seq for _, seq in batch] == list(range(first, first + len(batch))), (
                f"a transaction's rows are not contiguous: {batch}"
            )
            for item, seq in batch:
                assert by_item.get(item) == seq, f"{item} acknowledged at {seq}"
                acked_items.add(item)
    given: dict[str, int] = {}
    for a in acked:
        for item, seq in a.shared.items():
            assert given.setdefault(item, seq) == seq, f"re-sent {item} got two sequences"
    assert set(given) == set(shared)
    for item, seq in given.items():
        assert by_item[item] == seq
    assert set(by_item) == acked_items | set(shared), "rows stored that nobody acknowledged"


@pytest.mark.slow
def test_threads_and_processes_append_to_one_scope(
    models: tuple[Models, Engine], backend_url: str
) -> None:
    m, engine = models
    shared = [f"shared-{k}" for k in range(6)]
    processes, threads, batches = 3, 3, 8
    # Every worker starts at once (after the spawned processes are up) with the
    # re-sends, so the same item ids race each other.
    start_at = time.time() + 4
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(
                append_threads, backend_url, m.suffix, f"p{p}", threads, batches, shared, start_at
            )
            for p in range(processes)
        ]
        acked = [f.result(timeout=240) for f in futures]
    # And threads of this process at the same scope, after: the counters continue.
    acked.append(append_threads(backend_url, m.suffix, "main", 4, 4, shared))
    check_appends(engine, m, acked, shared)
    assert sum(len(a.batches) for a in acked) == processes * threads * batches + 4 * 4


def test_a_duplicate_item_id_under_the_unique_key_is_refused(models: tuple[Models, Engine]) -> None:
    """The unique (scope, item_id) key is real: a row written around the session (plain
    Core, a raw statement) with a stored item id is refused by the database."""
    m, engine = models
    with Session(engine) as s:
        add_sequenced(s, m.message(chat_id=1, item_id="a", text="A"))
        s.commit()
    with engine.begin() as conn, pytest.raises(IntegrityError):
        conn.execute(
            m.message.__table__.insert().values(chat_id=1, item_id="a", text="raw", sequence=5)
        )


def test_a_resend_after_an_earlier_read_gets_the_row_stored_since(
    models: tuple[Models, Engine],
) -> None:
    """The transaction read before another one stored the item id (on MariaDB its
    REPEATABLE READ snapshot predates that row): the re-send still finds it."""
    m, engine = models
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as late:
        assert late.get(m.chat, 1) is not None
        with sessions() as early:
            add_sequenced(early, m.message(chat_id=1, item_id="z", text="first"))
            early.commit()
        got = add_sequenced(late, m.message(chat_id=1, item_id="z", text="re-send"))
        assert (got.sequence, got.text) == (1, "first")
        late.commit()
    with sessions() as s:
        assert [r.text for r in rows(s, m.message, 1)] == ["first"]


def test_async_tasks_append_to_one_scope(models: tuple[Models, Engine], backend_url: str) -> None:
    """Many asyncio tasks (async_transaction + async_append) on one scope, with re-sends
    of the same item ids: the same invariants as with threads and processes."""
    m, engine = models
    shared = [f"shared-{k}" for k in range(4)]

    async def main() -> list[Acked]:
        aengine = async_engine(backend_url, pool_size=4, max_overflow=4)
        sessions = async_sessionmaker(aengine, expire_on_commit=False)

        async def worker(name: str) -> Acked:
            out = Acked()

            @async_transaction(sessions, policy=RetryPolicy(max_attempts=50, max_seconds=60))
            async def send(session: AsyncSession, batch: list[str]) -> list[tuple[str, int]]:
                stored = await async_append(
                    session, [m.message(chat_id=1, item_id=i, text=name) for i in batch]
                )
                return [(r.item_id, r.sequence) for r in stored]

            for b in range(5):
                out.batches.append(await send([f"{name}-{b}-{k}" for k in range(1 + b % 3)]))
                ((item, seq),) = await send([shared[(b + len(name)) % len(shared)]])
                assert out.shared.setdefault(item, seq) == seq
            for item in shared:
                ((got, seq),) = await send([item])
                assert got == item and out.shared.setdefault(item, seq) == seq
            return out

        try:
            return await asyncio.wait_for(
                asyncio.gather(*(worker(f"task{k}") for k in range(8))), 120
            )
        finally:
            await aengine.dispose()

    acked = asyncio.run(main())
    check_appends(engine, m, list(acked), shared)
