"""Failures: a dead server, killed sessions, transient errors, exhausted retries."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import text

from revstore import RetryPolicy, Store, Unavailable


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres@127.0.0.1:1/test", "mysql://root@127.0.0.1:1/test"],
    ids=["postgresql", "mysql"],
)
def test_unreachable_server_is_unavailable(url: str) -> None:
    store = Store(url, retry=RetryPolicy(max_attempts=2, max_seconds=2))
    with pytest.raises(Unavailable):
        store.ping()
    with pytest.raises(Unavailable):
        store.put("x", {"a": 1})
    with pytest.raises(Unavailable):
        store.get("x")


def _kill_sessions(url: str, name: str) -> int:
    """Terminate every revstore session of the store's database, as an operator or a
    failover would, and wait until they are gone (termination is asynchronous). Only
    that database's: other tests (another xdist worker's) use databases of their own
    on the same server, and their sessions must live."""
    if name == "postgresql":
        kill = "SELECT pg_terminate_backend(pid) FROM unnest(CAST(:ids AS int[])) AS pid"
        alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(CAST(:ids AS int[]))"
        listing = (
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = 'revstore' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    else:
        kill = ""
        alive = "SELECT count(*) FROM information_schema.processlist WHERE FIND_IN_SET(id, :ids)"
        listing = (
            "SELECT id FROM information_schema.processlist "
            "WHERE db = DATABASE() AND id <> CONNECTION_ID() AND command <> 'Daemon'"
        )
    admin = Store(url)
    try:
        with admin.backend.engine.connect() as conn:
            ids = [int(i) for i in conn.execute(text(listing)).scalars()]
            if name == "postgresql":
                conn.execute(text(kill), {"ids": ids})
                param: object = ids
            else:
                for pid in ids:
                    with contextlib.suppress(Exception):  # it may have gone by itself
                        conn.execute(text(f"KILL CONNECTION {pid}"))
                param = ",".join(map(str, ids))
            deadline = time.monotonic() + 10
            while (
                conn.execute(text(alive), {"ids": param}).scalar() and time.monotonic() < deadline
            ):
                time.sleep(0.05)
    finally:
        admin.close()
    return len(ids)


@pytest.mark.parametrize("name", ["postgresql", "mysql"])
def test_killed_idle_sessions_are_replaced_transparently(
    server_url: Callable[[str], str], name: str, ns: str
) -> None:
    url = server_url(name)
    store = Store(url)
    try:
        # Fill the pool with several idle connections.
        threads = [
            threading.Thread(target=store.put, args=(f"k{i}", {"i": i}), kwargs={"namespace": ns})
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _kill_sessions(url, name) >= 1
        # Every next call works: dead pooled connections are dropped at checkout, so no
        # write is sent on one (where failing would make it ambiguous).
        for i in range(8):
            assert store.put(f"k{i}", {"i": i, "after": True}, namespace=ns).revision == 2
            assert store.get(f"k{i}", namespace=ns).revision == 2
        res = store.append("s", [{"a": 1}], namespace=ns)
        assert res.first_sequence == 1
    finally:
        store.close()


def test_optimistic_strategy_retries_lost_races(backend_url: str, ns: str) -> None:
    """Optimistic writers on one record lose races on the unique key and are re-run:
    some may exhaust the budget (Unavailable) but no acknowledged write is wrong."""
    store = Store(backend_url, strategy="optimistic", retry=RetryPolicy(max_attempts=30))
    store.put("hot", {"n": -1}, namespace=ns)
    acked: list[int] = []
    failures: list[BaseException] = []

    def writer(w: int) -> None:
        for k in range(15):
            try:
                acked.append(store.put("hot", {"w": w, "k": k}, namespace=ns).version)
            except Unavailable as exc:
                failures.append(exc)
            except Exception as exc:
                failures.append(exc)
                raise

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert all(isinstance(f, Unavailable) for f in failures), failures[:3]
        assert store.stats.retries > 0, "8 optimistic writers on one record never raced"
        history = [v.version for v in store.history("hot", limit=1000, namespace=ns)]
        assert history == list(range(1, len(history) + 1))
        assert sorted(acked) == history[1:]
    finally:
        store.close()


@pytest.mark.parametrize("name", ["postgresql", "mysql"])
def test_killed_idle_sessions_are_replaced_by_the_asyncio_executor(
    server_url: Callable[[str], str], name: str, ns: str
) -> None:
    """The same at checkout on psycopg async and asyncmy connections: one attempt, no
    retry, and no write is ever sent on a dead connection."""
    import asyncio

    from revstore.backends import open_async_backend
    from revstore.content import Canonical
    from revstore.record import Mode, WriteIntent

    url = server_url(name)

    def put(k: int, value: object) -> WriteIntent:
        body = Canonical(value, max_bytes=1000)
        return WriteIntent(
            ns, f"k{k}", Mode.PUT, None, True, body.text, body.hash, body.value, None, None
        )

    async def main() -> None:
        backend = open_async_backend(url)
        try:
            await backend.create_schema()
            await asyncio.gather(*(backend.write_record(put(k, {"k": k})) for k in range(8)))
            assert await asyncio.to_thread(_kill_sessions, url, name) >= 1
            for k in range(8):
                assert (await backend.write_record(put(k, {"after": k}))).revision == 2
        finally:
            await backend.dispose()

    asyncio.run(main())
