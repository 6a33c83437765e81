"""revstore.sqlalchemy.transaction / async_transaction on the three backends: a unit of
work is re-run whole on a real deadlock / serialization failure, a StaleDataError and a
connection lost before COMMIT; never on a VersionConflict or a unique key; a
connection lost during COMMIT is AmbiguousCommit."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from seq_workers import async_engine, sqlite_begin_deferred, sync_engine
from sqlalchemy import Engine, Integer, String, event, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from revstore.errors import AmbiguousCommit, Unavailable, VersionConflict
from revstore.retry import RetryPolicy
from revstore.sqlalchemy.transaction import async_transaction, transaction

STALE = (StaleDataError, OperationalError)
"""What a write of a row changed since it was read raises in one attempt."""
FAST = RetryPolicy(max_attempts=10, max_seconds=20, initial_wait=0.001, max_wait=0.05)


class Models:
    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]

        class Base(DeclarativeBase):
            pass

        class Account(Base):
            __tablename__ = f"acct_{suffix}"
            id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
            balance: Mapped[int] = mapped_column(Integer, default=0)
            name: Mapped[str] = mapped_column(String(40), default="")
            version: Mapped[int] = mapped_column(Integer, nullable=False)
            __mapper_args__ = {"version_id_col": version}

        self.base = Base
        self.account = Account


def transactional(engine: Engine) -> Engine:
    """SQLite: WAL and a BEGIN at the start of each transaction (SQLAlchemy's recipe),
    so that two transactions that read then write really race."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        sqlite_begin_deferred(engine)
    return engine


@pytest.fixture
def db(backend_url: str) -> Iterator[tuple[Models, Engine]]:
    m = Models()
    engine = transactional(sync_engine(backend_url))
    m.base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        s.add_all([m.account(id=1), m.account(id=2)])
    try:
        yield m, engine
    finally:
        engine.dispose()
        cleanup = sync_engine(backend_url)
        m.base.metadata.drop_all(cleanup)
        cleanup.dispose()


def balances(engine: Engine, m: Models) -> list[int]:
    with Session(engine) as s:
        return list(s.scalars(select(m.account.balance).order_by(m.account.id)))


def test_a_deadlock_reruns_the_unit_and_both_commit(
    db: tuple[Models, Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """Two units lock row 1 / row 2, meet, then each writes the other's row: a deadlock
    on PostgreSQL and MariaDB, a stale snapshot (SQLITE_BUSY_SNAPSHOT) on SQLite. The
    loser is re-run from a fresh session and both changes land."""
    m, engine = db
    sessions = sessionmaker(engine)
    barrier = threading.Barrier(2, timeout=30)
    calls = {1: 0, 2: 0}
    Account = m.account

    @transaction(sessions, policy=FAST)
    def cross(session: Session, mine: int, theirs: int) -> str:
        calls[mine] += 1
        session.execute(select(Account).where(Account.id == mine).with_for_update()).one()
        if calls[mine] == 1:
            barrier.wait()  # both hold (or have read) their row
        session.execute(
            update(Account).where(Account.id == theirs).values(balance=Account.balance + 1)
        )
        return f"{mine} done"

    results: dict[int, str] = {}

    def run(mine: int, theirs: int) -> None:
        results[mine] = cross(mine, theirs)

    caplog.set_level(logging.INFO, logger="revstore.retry")
    threads = [threading.Thread(target=run, args=(a, b)) for a, b in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {1: "1 done", 2: "2 done"}
    assert calls[1] + calls[2] >= 3, calls  # at least one unit was re-run whole
    assert balances(engine, m) == [1, 1]
    retries = [r for r in caplog.records if getattr(r, "event", None) == "retry"]
    assert retries and all(r.op == "transaction" for r in retries)  # type: ignore[attr-defined]
    assert retries[0].key.endswith("cross")  # type: ignore[attr-defined]


def stale_once(session: Session, m: Models, engine: Engine, calls: list[int]) -> int:
    """Load account 1, let another session change it on the first call, then write."""
    calls.append(1)
    row = session.get(m.account, 1)
    assert row is not None
    if len(calls) == 1:
        with Session(engine) as other:
            got = other.get(m.account, 1)
            assert got is not None
            got.name = uuid.uuid4().hex[:8]  # a real change: the version moves
            other.commit()
    row.balance += 10
    return row.balance


def test_stale_data_reruns_in_every_form(db: tuple[Models, Engine]) -> None:
    m, engine = db
    sessions = sessionmaker(engine)
    # Decorator.
    calls: list[int] = []
    assert transaction(sessions, policy=FAST)(stale_once)(m, engine, calls) == 10
    assert len(calls) == 2
    # Iterator of attempts.
    calls = []
    bodies = 0
    for attempt in transaction(sessions, policy=FAST):
        with attempt as session:
            bodies += 1
            got = stale_once(session, m, engine, calls)
    assert (len(calls), bodies, got) == (2, 2, 20)
    # A plain with-block is one attempt: the error comes out as raised (SQLite refuses
    # the stale transaction's write itself: SQLITE_BUSY_SNAPSHOT).
    calls = []
    with pytest.raises(STALE), transaction(sessions) as session:
        stale_once(session, m, engine, calls)
    assert len(calls) == 1
    assert balances(engine, m) == [20, 0]
    with transaction(sessions) as session:
        session.add(m.account(id=3, balance=5))
    assert balances(engine, m) == [20, 0, 5]


def test_conflicts_and_unique_keys_are_never_retried(db: tuple[Models, Engine]) -> None:
    m, engine = db
    sessions = sessionmaker(engine)
    calls: list[str] = []

    @transaction(sessions, policy=FAST)
    def conflicting(session: Session) -> None:
        calls.append("conflict")
        session.add(m.account(id=9))
        raise VersionConflict("expected revision 3", None)

    @transaction(sessions, policy=FAST)
    def duplicate(session: Session) -> None:
        calls.append("duplicate")
        session.add(m.account(id=1))  # stored: the unique key fires at the flush

    with pytest.raises(VersionConflict):
        conflicting()
    with pytest.raises(IntegrityError):
        duplicate()
    assert calls == ["conflict", "duplicate"]
    assert balances(engine, m) == [0, 0]  # the conflicting unit's insert rolled back


def test_retries_are_bounded(db: tuple[Models, Engine], caplog: pytest.LogCaptureFixture) -> None:
    _m, engine = db
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=3, max_seconds=5, initial_wait=0.001, max_wait=0.01)

    @transaction(sessionmaker(engine), policy=policy)
    def always_stale(session: Session) -> None:
        calls.append(1)
        session.execute(text("SELECT 1"))
        raise StaleDataError("the row changed under us")

    caplog.set_level(logging.INFO, logger="revstore.retry")
    with pytest.raises(Unavailable, match="gave up after 3 attempts") as raised:
        always_stale()
    assert len(calls) == 3
    assert isinstance(raised.value.__cause__.__cause__, StaleDataError)  # type: ignore[union-attr]
    assert len([r for r in caplog.records if getattr(r, "event", None) == "retry"]) == 2


def kill_statement(engine: Engine) -> tuple[str, str]:
    """(query for this connection's id, statement ending a connection by id)."""
    if engine.dialect.name == "postgresql":
        return "SELECT pg_backend_pid()", "SELECT pg_terminate_backend({})"
    return "SELECT CONNECTION_ID()", "KILL {}"


def test_a_connection_lost_before_commit_reruns(
    backend_url: str, db: tuple[Models, Engine]
) -> None:
    m, engine = db
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no connection to lose")
    whoami, kill = kill_statement(engine)
    killer = sync_engine(backend_url, isolation_level="AUTOCOMMIT")
    calls: list[int] = []

    @transaction(sessionmaker(engine), policy=FAST)
    def unit(session: Session) -> None:
        calls.append(1)
        session.execute(update(m.account).values(balance=m.account.balance + 1))
        if len(calls) == 1:
            pid = session.execute(text(whoami)).scalar_one()
            with killer.connect() as c:
                c.execute(text(kill.format(int(pid))))
        session.execute(text("SELECT 1"))

    try:
        unit()
    finally:
        killer.dispose()
    assert len(calls) == 2
    assert balances(engine, m) == [1, 1]


def test_a_connection_lost_during_commit_is_ambiguous(
    backend_url: str, db: tuple[Models, Engine]
) -> None:
    m, engine = db
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no connection to lose")
    whoami, kill = kill_statement(engine)
    killer = sync_engine(backend_url, isolation_level="AUTOCOMMIT")
    calls: list[int] = []

    def kill_at_commit(conn: Any) -> None:
        # Fired just before the DBAPI COMMIT: the connection dies under it.
        pid = conn.exec_driver_sql(whoami).scalar_one()
        with killer.connect() as c:
            c.execute(text(kill.format(int(pid))))

    @transaction(sessionmaker(engine), policy=FAST)
    def unit(session: Session) -> None:
        calls.append(1)
        session.execute(update(m.account).values(balance=m.account.balance + 1))

    event.listen(engine, "commit", kill_at_commit)
    try:
        with pytest.raises(AmbiguousCommit, match="may or may not"):
            unit()
    finally:
        event.remove(engine, "commit", kill_at_commit)
        killer.dispose()
    assert calls == [1]


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="sessionmaker"):
        transaction("not a sessionmaker")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async_sessionmaker"):
        async_transaction(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- asyncio


def async_transactional(engine: AsyncEngine) -> AsyncEngine:
    transactional(engine.sync_engine)
    return engine


def test_async_units_retry_and_commit(backend_url: str, db: tuple[Models, Engine]) -> None:
    """The async twin on each backend's asyncio driver: a real deadlock / stale
    snapshot between two tasks is re-run; StaleDataError is re-run in the decorator
    and the iterator forms; a VersionConflict is not; the plain form is one attempt."""
    m, sync = db
    Account = m.account

    async def main() -> None:
        engine = async_transactional(async_engine(backend_url))
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        try:
            barrier = asyncio.Barrier(2)
            calls = {1: 0, 2: 0}

            @async_transaction(sessions, policy=FAST)
            async def cross(session: AsyncSession, mine: int, theirs: int) -> int:
                calls[mine] += 1
                await session.execute(select(Account).where(Account.id == mine).with_for_update())
                if calls[mine] == 1:
                    await asyncio.wait_for(barrier.wait(), 30)
                await session.execute(
                    update(Account).where(Account.id == theirs).values(balance=Account.balance + 1)
                )
                return mine

            done = await asyncio.wait_for(asyncio.gather(cross(1, 2), cross(2, 1)), 60)
            assert sorted(done) == [1, 2]
            assert calls[1] + calls[2] >= 3, calls

            stale: list[int] = []

            async def stale_once(session: AsyncSession) -> int:
                stale.append(1)
                row = await session.get(Account, 1)
                assert row is not None
                if len(stale) % 2 == 1:
                    async with sessions() as other:
                        got = await other.get(Account, 1)
                        assert got is not None
                        got.name = f"other {len(stale)}"
                        await other.commit()
                row.balance += 10
                return row.balance

            assert await async_transaction(sessions, policy=FAST)(stale_once)() == 11
            assert len(stale) == 2
            bodies = 0
            async for attempt in async_transaction(sessions, policy=FAST):
                async with attempt as session:
                    bodies += 1
                    got = await stale_once(session)
            assert (bodies, got, len(stale)) == (2, 21, 4)

            conflicts: list[int] = []

            @async_transaction(sessions, policy=FAST)
            async def conflicting(session: AsyncSession) -> None:
                conflicts.append(1)
                raise VersionConflict("expected revision 3", None)

            with pytest.raises(VersionConflict):
                await conflicting()
            assert conflicts == [1]

            with pytest.raises(STALE):
                async with async_transaction(sessions) as session:
                    await stale_once(session)
            async with async_transaction(sessions) as session:
                session.add(Account(id=3, balance=7))
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert balances(sync, m) == [21, 1, 7]
