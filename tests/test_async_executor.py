"""The asyncio executor drives the same protocols and strategies as the sync one, on
each server's native async driver (psycopg async, asyncmy; SQLite: the sync executor in
threads), and agrees with the sync Store on what it wrote. A cancelled caller never
leaves its connection inside a transaction."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from revstore import Store
from revstore.backends import open_async_backend
from revstore.backends.aio import AsyncSqlBackend
from revstore.content import Canonical
from revstore.errors import NotFound, SequenceConflict, VersionConflict
from revstore.record import Mode, WriteIntent
from revstore.schema import SCHEMA_VERSION
from revstore.stream import AppendBatch

T = TypeVar("T")


def put(ns: str, rid: str, value: Any, expected: int | None = None) -> WriteIntent:
    body = Canonical(value, max_bytes=1 << 20)
    return WriteIntent(
        namespace=ns,
        id=rid,
        mode=Mode.PUT,
        expected_revision=expected,
        create_version=True,
        content_text=body.text,
        content_hash=body.hash,
        content_value=body.value,
        author=None,
        summary=None,
    )


def batch(ns: str, stream: str, values: list[Any], ids: list[str] | None = None) -> AppendBatch:
    return AppendBatch(ns, stream, [Canonical(v, max_bytes=1 << 20) for v in values], ids, None)


def run(url: str, strategy: str | None, body: Callable[[AsyncSqlBackend], Awaitable[T]]) -> T:
    async def main() -> T:
        backend = open_async_backend(url, strategy=strategy)
        try:
            # A hang guard only (a connection left inside a transaction blocks the
            # next writer of its row for ever); never a timing assertion.
            return await asyncio.wait_for(body(backend), timeout=120)
        finally:
            await backend.dispose()

    return asyncio.run(main())


@pytest.fixture
def url(backend_url: str) -> str:
    with Store(backend_url) as store:
        store.create_schema()
    return backend_url


@pytest.mark.parametrize("strategy", ["counter", "lock", "optimistic"])
def test_async_writes_match_the_sync_store(url: str, ns: str, strategy: str) -> None:
    async def body(b: AsyncSqlBackend) -> None:
        first = await b.write_record(put(ns, "doc", {"n": 1}))
        assert (first.revision, first.version, first.created) == (1, 1, True)
        second = await b.write_record(put(ns, "doc", {"n": 2}, expected=1))
        assert (second.revision, second.version) == (2, 2)
        with pytest.raises(VersionConflict):
            await b.write_record(put(ns, "doc", {"n": 3}, expected=1))
        same = await b.write_record(put(ns, "doc", {"n": 2}))
        assert same.unchanged and same.revision == 2
        got = await b.run(b.protocol.get_record(ns, "doc"))
        assert got.content == {"n": 2}
        page = await b.run(b.protocol.history(ns, "doc", 0, 10, 1 << 20))
        assert [v.version for v in page.versions] == [1, 2]
        with pytest.raises(NotFound):
            await b.run(b.protocol.get_record(ns, "absent"))

        appended = await b.append(batch(ns, "s", [1, 2, 3]))
        assert (appended.first_sequence, appended.last_sequence) == (1, 3)
        keyed = await b.append(batch(ns, "s", ["a", "b"], ["i1", "i2"]))
        resent = await b.append(batch(ns, "s", ["a", "b"], ["i1", "i2"]))
        assert resent.duplicate and resent.first_sequence == keyed.first_sequence == 4
        with pytest.raises(SequenceConflict):
            await b.append(AppendBatch(ns, "s", [Canonical(9, max_bytes=99)], None, 1))
        info = await b.run(b.protocol.stream_info(ns, "s"))
        assert (info.last_sequence, info.item_count) == (5, 5)

    run(url, strategy, body)
    with Store(url) as store:
        assert store.get("doc", namespace=ns).revision == 2
        assert [i.body for i in store.read("s", namespace=ns).items] == [1, 2, 3, "a", "b"]


def test_concurrent_async_writers_take_every_number_once(url: str, ns: str) -> None:
    writers = 12

    async def body(b: AsyncSqlBackend) -> list[int]:
        async def one(k: int) -> int:
            # The executor makes one attempt; re-run transient failures as the Store's
            # retry policy does (its asyncio shell is not written yet).
            while True:
                try:
                    return (await b.write_record(put(ns, "hot", {"k": k}))).revision
                except Exception as exc:
                    from revstore.failures import Retryable

                    if not isinstance(exc, Retryable):
                        raise
                    await asyncio.sleep(0.01)

        return list(await asyncio.gather(*(one(k) for k in range(writers))))

    revisions = run(url, None, body)
    assert sorted(revisions) == list(range(1, writers + 1))


def test_a_cancelled_writer_leaves_no_transaction_behind(url: str, ns: str) -> None:
    async def body(b: AsyncSqlBackend) -> None:
        await b.write_record(put(ns, "c", {"n": 0}))
        for round_ in range(1, 6):
            tasks = [
                asyncio.ensure_future(b.write_record(put(ns, "c", {"n": round_, "k": k})))
                for k in range(4)
            ]
            await asyncio.sleep(0)
            for task in tasks[::2]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Every pooled connection is usable and holds no row lock: a write to the
        # same record goes through (it would wait for ever behind an open transaction).
        done = await b.write_record(put(ns, "c", {"n": "last"}))
        assert done.content == {"n": "last"}

    run(url, "lock", body)


def test_async_schema_creation_runs_the_same_schema_code(
    backend_url: str, tmp_path: pathlib.Path, ns: str
) -> None:
    """On a fresh SQLite file it creates the tables; on the servers it finds them."""

    async def body(b: AsyncSqlBackend) -> int:
        version = await b.create_schema()
        await b.write_record(put(ns, "schema", {"ok": True}))
        return version

    for url in (backend_url, f"sqlite:///{tmp_path / 'fresh.db'}"):
        assert run(url, None, body) == SCHEMA_VERSION
    with Store(f"sqlite:///{tmp_path / 'fresh.db'}") as store:
        assert store.get("schema", namespace=ns).content == {"ok": True}
