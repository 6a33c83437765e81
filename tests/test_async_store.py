"""``AsyncStore`` is ``Store`` with coroutines: the same public methods with the same
parameters (the two are built from one set of flows, ``revstore.operations``), and a
cancelled caller leaves the store usable with nothing half-written."""

from __future__ import annotations

import asyncio
import inspect

import psycopg
import pytest

from revstore import AsyncStore, Store


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_")
    }


@pytest.mark.parametrize(
    ("sync", "aio", "attribute"),
    [(Store, AsyncStore, None), (Store, AsyncStore, "keys"), (Store, AsyncStore, "api_keys")],
)
def test_the_async_api_is_the_sync_api_as_coroutines(
    sqlite_url: str, sync: type, aio: type, attribute: str | None
) -> None:
    with Store(sqlite_url) as s:
        sync_obj = s if attribute is None else getattr(s, attribute)
        sync_methods = public_methods(type(sync_obj))

    async def async_side() -> dict[str, inspect.Signature]:
        async with AsyncStore(sqlite_url) as a:
            obj = a if attribute is None else getattr(a, attribute)
            methods = public_methods(type(obj))
            for name in methods:
                member = getattr(obj, name)
                if name not in {"claim"}:
                    assert inspect.iscoroutinefunction(member), f"{name} is not a coroutine"
            return methods

    async_methods = asyncio.run(async_side())
    assert set(sync_methods) == set(async_methods)
    for name, sig in sync_methods.items():
        theirs = async_methods[name]
        assert list(sig.parameters) == list(theirs.parameters), name
        for p, q in zip(sig.parameters.values(), theirs.parameters.values(), strict=True):
            assert (p.kind, p.default) == (q.kind, q.default), (name, p.name)


def test_a_cancelled_put_waiting_on_a_lock_leaves_the_store_usable(
    server_url: object, ns: str
) -> None:
    url = server_url("postgresql")  # type: ignore[operator]
    with Store(url) as setup:
        setup.put("doc", {"n": 1}, namespace=ns)
    holder = psycopg.connect(url)  # a plain client, in a transaction of its own

    async def main() -> None:
        async with AsyncStore(url, pool_size=1, max_overflow=0) as store:
            # Another client holds the record's row lock: the put waits in the server.
            holder.execute(
                "SELECT 1 FROM revstore_records WHERE namespace = %s AND id = 'doc' FOR UPDATE",
                (ns,),
            )
            task = asyncio.create_task(store.patch("doc", {"m": 2}, namespace=ns))
            await asyncio.sleep(0.5)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            holder.rollback()
            # The pool's only connection was dropped, not returned inside a transaction:
            # the next call works and sees nothing of the cancelled patch.
            assert (await store.get("doc", namespace=ns)).content == {"n": 1}
            rec = await store.put("doc", {"n": 3}, namespace=ns)
            assert (rec.revision, rec.version) == (2, 2)

    try:
        asyncio.run(asyncio.wait_for(main(), timeout=60))
    finally:
        holder.close()


def test_concurrent_puts_and_appends_share_statements_on_postgresql(
    server_url: object, ns: str
) -> None:
    """Group commit in AsyncStore: tasks of one loop writing distinct records (streams)
    at once are sent as one statement; each gets its own result."""
    url = server_url("postgresql")  # type: ignore[operator]

    async def main() -> None:
        async with AsyncStore(url) as store:
            await store.create_schema()
            for k in range(32):
                await store.put(f"r{k}", {"k": k}, namespace=ns)
                await store.append(f"s{k}", [{"k": k}], namespace=ns)
            backend = store.backend
            puts = await asyncio.gather(
                *(store.put(f"r{k}", {"k": k, "n": 2}, namespace=ns) for k in range(32))
            )
            appends = await asyncio.gather(
                *(store.append(f"s{k}", [{"n": 2}, {"n": 3}], namespace=ns) for k in range(32))
            )
            assert [(p.id, p.revision, p.content) for p in puts] == [
                (f"r{k}", 2, {"k": k, "n": 2}) for k in range(32)
            ]
            assert [(a.first_sequence, a.last_sequence) for a in appends] == [(2, 3)] * 32
            stats = backend._puts.stats, backend._appends.stats  # type: ignore[union-attr]
            assert all(s.batches >= 1 and s.batched_writes >= 16 for s in stats)
            assert (await store.get("r7", namespace=ns)).content == {"k": 7, "n": 2}

    asyncio.run(main())
