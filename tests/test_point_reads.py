"""AsyncStore on SQLite reads one row by key on the event loop's thread
(``ThreadedBackend.point_read``): it must see every committed write, and it must never
wait for a lock there, which would stall every other task of the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from revstore import AsyncStore, NotFound
from revstore.backends.ops import Execute, Raw, Step
from revstore.backends.threaded import ThreadedBackend


def test_point_reads_see_every_committed_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"

    async def main() -> None:
        store = AsyncStore(url)
        other = AsyncStore(url)  # another writer: its commits come from its own pool
        try:
            await store.create_schema()
            assert isinstance(store.backend, ThreadedBackend)
            for n in range(1, 30):
                writer = store if n % 2 else other
                await writer.put("doc", {"n": n})
                got = await store.get("doc")
                assert got.content == {"n": n} and got.revision == n
                await writer.append("s", [n])
                info = await store.stream_info("s")
                assert info.last_sequence == n
            await other.delete("doc")
            try:
                await store.get("doc")
            except NotFound:
                pass
            else:
                raise AssertionError("a deleted record was read")
            assert store.backend._inline is not None  # the loop's connection served them
        finally:
            await store.close()
            await other.close()

    asyncio.run(main())


def test_a_locked_point_read_goes_to_a_thread_and_the_loop_runs_on(tmp_path: Path) -> None:
    """A point read that meets a lock does not wait on the loop: it is re-run in a
    thread, which waits; the loop's other tasks run meanwhile. The lock is real: another
    connection holds SQLite's write lock, and the read asks for it (BEGIN IMMEDIATE)."""
    path = tmp_path / "l.db"
    url = f"sqlite:///{path}"

    async def main() -> None:
        store = AsyncStore(url)
        await store.create_schema()
        backend = store.backend
        assert isinstance(backend, ThreadedBackend)
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, until released below
        attempts: list[str] = []

        def locking_read() -> Step[Any]:
            attempts.append("started")
            yield Raw("BEGIN IMMEDIATE")
            result = yield Execute(_select_one())
            yield Raw("ROLLBACK")
            return result.first()[0]

        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        loop = asyncio.get_running_loop()
        tick_task = loop.create_task(ticker())
        # Released from another thread after a while: the read must be waiting in its
        # thread by then, with the loop free.
        loop.call_later(0.5, lambda: loop.run_in_executor(None, holder.rollback))
        try:
            value = await backend.point_read(locking_read)
        finally:
            tick_task.cancel()
            holder.close()
            await store.close()
        assert value == 1
        assert attempts == ["started", "started"]  # on the loop (locked), then in a thread
        assert ticks >= 5, f"the loop stalled while the read waited ({ticks} ticks)"

    asyncio.run(main())


def _select_one() -> Any:
    from sqlalchemy import literal, select

    return select(literal(1))
