"""A database server restart, seen from one Store: writes made while the server is
down wait for it and land; connections pooled before the restart are replaced, never
used (a write sent on one could only end as AmbiguousCommit). The servers are
throwaway ones of the test's own (``revstore.lab.servers``): stopping them disturbs
nothing else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from revstore import Store
from revstore.lab.servers import throwaway_server
from revstore.record import Record


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_writes_wait_for_a_restarting_server_and_land(
    throwaway_kind: Callable[[str], str], kind: str, mode: str, ns: str
) -> None:
    with throwaway_server(throwaway_kind(kind)) as server:
        store = Store(server.url)
        # Generous: a loaded machine may take long to start a server; the test asserts
        # that the write lands, not how fast.
        store.backend.reconnect_seconds = 120
        try:
            if kind == "mariadb":
                # Its temporary files in its own folder: parallel servers share no /tmp.
                conn = server._connect()
                with conn.cursor() as cur:
                    cur.execute("SELECT @@tmpdir")
                    assert cur.fetchone()[0] == str(server.tmp)
                conn.close()
            store.put("r", {"n": 0}, namespace=ns)
            store.append("s", [{"n": 0}], namespace=ns)
            server.stop(mode)
            outcome: dict[str, object] = {}

            def write() -> None:
                try:
                    outcome["put"] = store.put("r", {"n": 1}, namespace=ns)
                except Exception as exc:
                    outcome["put"] = exc

            writer = threading.Thread(target=write)
            writer.start()
            # Down for longer than the retry policy's attempts last (under a second on
            # PostgreSQL, about two on MariaDB): before, the write failed with
            # Unavailable meanwhile.
            time.sleep(3.0)
            server.start()
            writer.join(150)
            put = outcome.get("put")
            assert isinstance(put, Record), f"the write made while the server was down: {put!r}"
            assert (put.revision, put.version) == (2, 2)

            # Every pooled connection died with the server; the next writes are plain
            # successes on new connections (never AmbiguousCommit, never an error).
            server.restart(pause=0.2, mode=mode)
            for n in range(2, 6):
                store.put("r", {"n": n}, namespace=ns)
                store.append("s", [{"n": n}], namespace=ns)
            assert store.get("r", namespace=ns).version == 6
            assert [i.body["n"] for i in store.read("s", namespace=ns).items] == [0, 2, 3, 4, 5]
        finally:
            store.close()


def test_a_throwaway_server_is_removed_after_use(throwaway_kind: Callable[[str], str]) -> None:
    with throwaway_server(throwaway_kind("postgresql")) as server:
        folder = server.dir
        assert folder.exists() and server.running
    assert not folder.exists() and not server.running


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_async_writes_wait_for_a_restarting_postgresql_and_land(
    throwaway_kind: Callable[[str], str], ns: str
) -> None:
    """The same through AsyncStore's own psycopg connections (``backends.pgaio``): a
    write made while the server is down waits (ConnectWait) and lands; the connections
    pooled before a restart are dropped at checkout, never written on."""
    import asyncio

    from revstore import AsyncStore

    with throwaway_server(throwaway_kind("postgresql")) as server:

        async def main() -> None:
            async with AsyncStore(server.url) as store:
                store.backend.reconnect_seconds = 120
                await asyncio.gather(
                    *(store.put(f"r{k}", {"n": 0}, namespace=ns) for k in range(4))
                )
                await asyncio.to_thread(server.stop, "fast")
                write = asyncio.ensure_future(store.put("r0", {"n": 1}, namespace=ns))
                await asyncio.sleep(3.0)
                assert not write.done()
                await asyncio.to_thread(server.start)
                put = await asyncio.wait_for(write, 150)
                assert (put.revision, put.version) == (2, 2)

                await asyncio.to_thread(server.restart, 0.2, "fast")
                done = await asyncio.gather(
                    *(store.put(f"r{k}", {"n": 2}, namespace=ns) for k in range(4))
                )
                assert [r.revision for r in done] == [3, 2, 2, 2]
                assert (await store.get("r0", namespace=ns)).content == {"n": 2}

        asyncio.run(main())
