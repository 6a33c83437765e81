"""AsyncStore's own PostgreSQL connections (``backends.pgaio``): statements compiled by
SQLAlchemy (``backends.compiled``) but run on psycopg directly. What they return, the
errors they raise, the pool's limits and liveness probe, and lost connections, each
against what SQLAlchemy's own execution does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, delete
from sqlalchemy.exc import DBAPIError

from revstore import Store, schema
from revstore.apikeys import ApiKey
from revstore.backends import open_async_backend, pgaio
from revstore.backends.aio import AsyncSqlBackend
from revstore.backends.compiled import Rows, StatementCache, driver_rows
from revstore.backends.executor import translate_any
from revstore.backends.ops import Execute, Op, Raw, Step
from revstore.backends.pgaio import PsycopgLink, PsycopgPool, wrapped
from revstore.backends.protocol import _RECORD, Protocol, in_transaction, self_committing
from revstore.content import Canonical
from revstore.errors import AmbiguousCommit, RevstoreError, Unavailable
from revstore.failures import Disconnected
from revstore.idempotency import Claim
from revstore.record import Action, Mode, Plan, WriteIntent
from revstore.stream import AppendBatch


def put(ns: str, rid: str, value: Any, mode: Mode = Mode.PUT) -> WriteIntent:
    body = Canonical(value, max_bytes=1 << 20)
    return WriteIntent(ns, rid, mode, None, True, body.text, body.hash, body.value, "me", "s")


def batch(ns: str, stream: str, values: list[Any], ids: list[str] | None = None) -> AppendBatch:
    return AppendBatch(ns, stream, [Canonical(v, max_bytes=1 << 20) for v in values], ids, None)


@pytest.fixture
def pg(server_url: Callable[[str], str]) -> Iterator[Store]:
    store = Store(server_url("postgresql"))
    store.create_schema()
    yield store
    store.close()


def scenario(p: Protocol, ns: str) -> Iterator[Step[Any]]:
    """Every protocol, on one namespace: each statement the executors are sent."""
    d = p.dialect
    ts = datetime.now(UTC)
    yield p.write_from_head(put(ns, "a", {"n": 1}), None, lock=True)  # insert
    yield p.write_from_head(put(ns, "a", {"n": 2}), None, lock=False)  # compare-and-set
    yield p.write_from_head(put(ns, "a", {"n": 2}), None, lock=True)  # unchanged
    yield self_committing(d.put_one(put(ns, "a", {"n": 3})))  # driver SQL
    yield self_committing(d.put_many([put(ns, "a", {"n": 4})]))  # a batch of one
    yield self_committing(d.put_many([put(ns, "a", {"n": 5}), put(ns, "b", {"n": 0})]))
    yield p.write_from_head(put(ns, "b", {"n": 1}), lambda v: Canonical(v, max_bytes=99), True)
    yield p.write_from_head(  # a patch: its content computed from the head's
        put(ns, "b", {"n": 9}), lambda v: Canonical({**v, "q": 2}, max_bytes=99), lock=True
    )
    yield p.write_from_head(put(ns, "c", None, Mode.DELETE), None, lock=True)  # absent
    yield p.write_from_head(put(ns, "b", None, Mode.DELETE), None, lock=True)  # tombstone
    yield p.get_record(ns, "a")
    yield p.get_record(ns, "b")  # deleted
    yield p.get_record(ns, "zz")
    yield p.history(ns, "a", 0, 10, 1 << 20)
    yield p.history(ns, "a", 0, 1, 10)
    yield p.history(ns, "zz", 0, 10, 1 << 20)
    yield p.get_version(ns, "a", 2)
    yield p.compact(ns, "a", 2)
    yield p.get_version(ns, "a", 1)  # compacted
    yield p.get_version(ns, "a", 99)
    yield p.list_records(ns, None, None, 10, 1 << 20)
    yield p.list_records(ns, "a", None, 10, 1 << 20)
    yield p.list_records(ns, "\U0010ffff", None, 10, 1 << 20)  # a prefix with no bound
    yield p.retention_set(ns, 3, 60, ts)
    yield p.retention_policies(ns)
    yield p.retention_policies(None)
    yield p.retention_candidates(ns, "", 10, ts - timedelta(days=1))
    yield p.retention_candidates(ns, "", 10, ts, only=["a", "b"])
    yield p.retention_set(ns, None, None, ts)
    yield p.append_locked(batch(ns, "s", [1, 2]))
    yield p.append_optimistic(batch(ns, "s", [3]))
    yield p.append_optimistic(batch(ns, "t", [1]))  # a new stream
    yield p.append_locked(batch(ns, "s", ["x", "y"], ["i1", "i2"]))
    yield p.resent(batch(ns, "s", ["x", "y"], ["i1", "i2"]))
    yield p.resent(batch(ns, "s", ["x"], ["i9"]))
    yield self_committing(d.append_one(batch(ns, "s", [4, 5])))
    yield self_committing(d.append_many([batch(ns, "s", [6])]))
    yield self_committing(d.append_many([batch(ns, "s", [7]), batch(ns, "t", [2, 3])]))
    yield p.read_stream(ns, "s", 0, 10, 1 << 20)
    yield p.read_stream(ns, "s", 2, 2, 5)
    yield p.read_stream(ns, "nope", 0, 10, 1 << 20)
    yield p.stream_info(ns, "s")
    yield p.stream_info(ns, "nope")
    yield p.list_streams(ns, None, None, 1)
    yield p.list_streams(ns, "s", None, 10)
    key = f"{ns}-key"
    claim = Claim(key, "owner", "h" * 64, 60)
    yield p.key_insert(key, claim.request_hash, claim.marker, ts, ts + timedelta(seconds=60))
    yield p.key_insert(key, claim.request_hash, claim.marker, ts, ts + timedelta(seconds=60))
    yield p.key_get(key)
    yield p.key_get(f"{ns}-absent")
    yield p.settle_record(claim, put(ns, "k", 1), p.write_from_head(put(ns, "k", 1), None, True))
    yield p.key_answer(key, 201, "{}", "{}", ts + timedelta(seconds=9), claim.marker, None)
    yield p.key_answer(key, 201, "{}", "{}", None, None, claim.request_hash)
    yield p.key_release(key, claim.marker)
    yield p.key_expire(key, ts + timedelta(days=1))
    yield p.key_purge(ts - timedelta(days=3650))
    api = ApiKey(f"{ns[:20]}k", "name", ns, "reader", ts)
    yield p.apikey_insert(api, "t" * 64)
    yield p.apikey_get(api.id)
    yield p.apikey_list(ns)
    yield p.apikey_list(None)
    yield p.apikey_revoke(api.id, ts)
    yield p.apikey_revoke(api.id, ts)
    yield p.ping()


def failing(p: Protocol, ns: str) -> Iterator[Step[Any]]:
    """Statements the server or the driver refuses."""
    ts = datetime.now(UTC)
    plan = Plan(Action.INSERT, revision=1, version=1, snapshot=True)
    version = put(ns, "dup", {"n": 1})

    def twice() -> Step[None]:
        yield p._insert_version(version, plan, ts)
        yield p._insert_version(version, plan, ts)  # unique_violation

    yield twice()
    yield p.key_get("nul\x00byte")  # psycopg refuses it before sending: DataError
    yield p.key_get("lone \ud800 surrogate")  # cannot be encoded
    yield p.get_record(ns, "x" * 300)  # fine: the column is varchar(255), compared as text
    yield p.retention_candidates(ns, "", 2**63, ts)  # bigint out of range


def compare(conn: Connection, cache: StatementCache, op: Op) -> tuple[Any, BaseException | None]:
    """Run ``op`` through SQLAlchemy, roll it back, run it on the same psycopg connection
    through ``cache``; assert both gave the same rows (values, their types, keys),
    row count and error. Returns what the cache path gave."""
    driver = conn.connection.driver_connection
    assert driver is not None
    conn.exec_driver_sql("SAVEPOINT compare")
    theirs: Any = None
    their_error: BaseException | None = None
    try:
        if isinstance(op, Execute):
            result = conn.execute(op.statement, op.params)  # type: ignore[arg-type]
        else:
            result = conn.exec_driver_sql(op.sql, op.params)
        theirs = (list(result) if result.returns_rows else None, result.rowcount)
    except (DBAPIError, UnicodeError) as exc:
        their_error = exc
    conn.exec_driver_sql("ROLLBACK TO SAVEPOINT compare")

    mine: Any = None
    my_error: BaseException | None = None
    cur = driver.cursor()
    sql: str | None = None
    params: Any = None
    try:
        if isinstance(op, Execute):
            sql, params, many, shape = cache.prepare(op.statement, op.params)
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            desc = cur.description
            rows = None if desc is None else shape.rows(cache.dialect, cur, cur.fetchall())
        else:
            sql, params = op.sql, op.params
            cur.execute(sql, params)
            desc = cur.description
            rows = None if desc is None else driver_rows(sql, cur, cur.fetchall())
        mine = Rows(rows, cur.rowcount)
    except psycopg.Error as exc:
        my_error = wrapped(cache.dialect, exc, driver, sql, params)  # type: ignore[arg-type]
    except UnicodeError as exc:
        my_error = exc
    if my_error is not None:
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT compare")

    if their_error is not None or my_error is not None:
        assert type(my_error) is type(their_error), (op, their_error, my_error)
        assert type(getattr(my_error, "orig", None)) is type(getattr(their_error, "orig", None))
        return None, my_error
    their_rows, their_count = theirs
    if their_count != -1:
        # (SQLAlchemy keeps the row count of an UPDATE or DELETE, or with
        # preserve_rowcount: the only ones the protocols read. The driver's is kept.)
        assert mine.rowcount == their_count, op
    if their_rows is None:
        with pytest.raises(Exception, match="does not return rows"):
            mine.first()
        return mine, None
    my_rows = mine.fetchall()
    assert [tuple(r) for r in my_rows] == [tuple(r) for r in their_rows], op
    for m, t in zip(my_rows, their_rows, strict=True):
        assert [type(v) for v in m] == [type(v) for v in t], op
        assert list(m._mapping.keys()) == list(t._mapping.keys()), op
        assert all(v.tzinfo is not None for v in m if isinstance(v, datetime)), op
    return Rows(my_rows, mine.rowcount), None


def drive_compared(
    conn: Connection, cache: StatementCache, store: Store, step: Step[Any]
) -> tuple[int, object]:
    """Drive ``step`` as the executors do, every statement through ``compare``;
    the number of statements and the outcome."""
    sent = 0
    try:
        op = next(step)
        while True:
            result, error = compare(conn, cache, op)
            sent += 1
            if error is not None:
                err = translate_any(store.backend.dialect, error)
                err.__cause__ = error
                op = step.throw(err)
            else:
                op = step.send(result)
    except StopIteration as done:
        return sent, done.value
    except RevstoreError as exc:
        return sent, exc


def test_every_protocol_statement_gives_what_sqlalchemy_gives(pg: Store, ns: str) -> None:
    engine = pg.backend.engine
    cache = StatementCache(engine.dialect)
    protocol = pg.backend.protocol
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN")
        try:
            sent = [drive_compared(conn, cache, pg, s)[0] for s in scenario(protocol, ns)]
            outcomes = [drive_compared(conn, cache, pg, s)[1] for s in failing(protocol, ns)]
        finally:
            conn.exec_driver_sql("ROLLBACK")
    assert all(sent), sent
    assert sum(sent) > 100
    names = [type(o).__name__ for o in outcomes]
    assert names == ["Duplicate", "InvalidInput", "InvalidInput", "NotFound", "InvalidInput"]


def run(url: str, body: Callable[[AsyncSqlBackend], Any], **options: Any) -> Any:
    async def main() -> Any:
        backend = open_async_backend(url, **options)
        try:
            return await asyncio.wait_for(body(backend), timeout=60)
        finally:
            await backend.dispose()

    return asyncio.run(main())


async def pool_of(backend: AsyncSqlBackend) -> PsycopgPool:
    links = await backend.links()
    assert isinstance(links, PsycopgPool)
    return links


def kill(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            gone = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            if gone.fetchone() == (0,):
                return
            time.sleep(0.02)


def test_a_connection_the_server_closed_while_idle_is_replaced_at_checkout(
    pg: Store, server_url: Callable[[str], str], ns: str
) -> None:
    url = server_url("postgresql")

    async def body(b: AsyncSqlBackend) -> None:
        pool = await pool_of(b)
        await b.write_record(put(ns, "r", {"n": 1}))
        [link] = pool._idle
        before = link.conn.info.backend_pid
        await asyncio.to_thread(kill, url, before)
        # A write is not sent on the dead connection (it would be AmbiguousCommit):
        # the probe drops it at checkout and the write runs on a new one.
        assert (await b.write_record(put(ns, "r", {"n": 2}))).revision == 2
        [replaced] = pool._idle
        assert replaced.conn.info.backend_pid != before and pool._open == 1

    run(url, body, pool_size=1, max_overflow=0)


def test_a_lost_connection_is_translated_as_sqlalchemy_does(
    pg: Store, server_url: Callable[[str], str], ns: str
) -> None:
    url = server_url("postgresql")
    get = Execute(_RECORD, {"ns": ns, "id": "r"})

    with pg.backend.engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        assert pid is not None
        kill(url, pid)
        with pytest.raises(DBAPIError) as theirs:
            conn.execute(get.statement, get.params)

    async def body(b: AsyncSqlBackend) -> tuple[BaseException, bool]:
        pool = await pool_of(b)
        link = await pool.checkout()
        await asyncio.to_thread(kill, url, link.conn.info.backend_pid)
        with pytest.raises(DBAPIError) as mine:
            await link.send(get)
        await link.release()
        return mine.value, link.invalidated

    mine, dropped = run(url, body)
    assert dropped
    assert isinstance(mine, DBAPIError) and mine.connection_invalidated
    assert theirs.value.connection_invalidated
    assert type(mine) is type(theirs.value)
    d = pg.backend.dialect
    assert type(translate_any(d, mine)) is type(translate_any(d, theirs.value)) is Disconnected


def test_a_connection_lost_in_a_write_is_an_ambiguous_commit(
    pg: Store, server_url: Callable[[str], str], ns: str
) -> None:
    """Mid-COMMIT, and during a one-statement write: the write may have landed."""
    url = server_url("postgresql")

    async def body(b: AsyncSqlBackend) -> list[type[BaseException]]:
        pool = await pool_of(b)
        raised: list[type[BaseException]] = []

        link = await pool.checkout()
        pid = link.conn.info.backend_pid

        def then_lose_it() -> Step[None]:
            yield Execute(delete(schema.records).where(schema.records.c.namespace == ns), None)
            kill(url, pid)  # before the COMMIT is sent

        with pytest.raises(AmbiguousCommit) as lost_commit:
            await b.drive(link, in_transaction(then_lose_it(), "BEGIN"))
        raised.append(type(lost_commit.value))
        await link.release()

        link = await pool.checkout()
        await asyncio.to_thread(kill, url, link.conn.info.backend_pid)
        statement = b.dialect.put_one(put(ns, "r", {"n": 1}))
        with pytest.raises(AmbiguousCommit) as lost_write:
            await b.drive(link, self_committing(statement))
        raised.append(type(lost_write.value))
        await link.release()
        # The pool goes on with new connections.
        assert (await b.write_record(put(ns, "r2", {"n": 1}))).revision == 1
        return raised

    assert run(url, body) == [AmbiguousCommit, AmbiguousCommit]


def test_the_pool_keeps_to_its_limits(pg: Store, server_url: Callable[[str], str]) -> None:
    url = server_url("postgresql")

    async def body(b: AsyncSqlBackend) -> tuple[int, int, int]:
        pool = await pool_of(b)
        most = 0

        async def sleeper() -> None:
            nonlocal most
            link = await b._connect(b._checkout)
            most = max(most, pool._open)
            try:
                await link.send(Raw("SELECT pg_sleep(0.05)"))
            finally:
                await b._release(link)

        await asyncio.gather(*(sleeper() for _ in range(12)))
        # The overflow connection stays idle for a while (no connection churn under
        # load) ...
        kept = (pool._open, len(pool._idle))
        # ... and is closed once it has been idle past OVERFLOW_IDLE_SECONDS.
        for link in pool._idle:
            link.idle_since -= pgaio.OVERFLOW_IDLE_SECONDS + 1
        link = await b._connect(b._checkout)
        await b._release(link)
        return most, *kept, pool._open, len(pool._idle)

    assert run(url, body, pool_size=2, max_overflow=1) == (3, 3, 3, 2, 2)


def test_a_checkout_that_waits_too_long_is_unavailable(
    pg: Store, server_url: Callable[[str], str], ns: str
) -> None:
    url = server_url("postgresql")

    async def body(b: AsyncSqlBackend) -> None:
        pool = await pool_of(b)
        pool.timeout = 0.2
        held = await pool.checkout()
        with pytest.raises(Unavailable, match="QueuePool limit"):
            await b.run(b.protocol.get_record(ns, "r"))
        await held.release()
        # Handed on to a waiter: the connection comes back, nothing leaks.
        waiting = asyncio.ensure_future(b.run(b.protocol.ping()))
        await asyncio.sleep(0.05)
        again = await pool.checkout()
        assert isinstance(again, PsycopgLink)
        await again.release()
        await waiting
        assert pool._open == 1 and len(pool._idle) == 1

    run(url, body, pool_size=1, max_overflow=0)


def test_a_cancelled_waiter_does_not_lose_the_connection_it_was_handed(
    pg: Store, server_url: Callable[[str], str]
) -> None:
    url = server_url("postgresql")

    async def body(b: AsyncSqlBackend) -> None:
        pool = await pool_of(b)
        held = await pool.checkout()
        waiter = asyncio.ensure_future(pool.checkout())
        await asyncio.sleep(0.01)
        await held.release()  # handed to the waiter…
        waiter.cancel()  # …which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool._open == 1 and len(pool._idle) == 1
        link = await pool.checkout()
        await link.release()

    run(url, body, pool_size=1, max_overflow=0)
