"""The two store APIs under one blocking face, so that one contract suite runs unchanged
on ``Store`` and on ``AsyncStore`` (``api`` fixture: "sync" or "async").

``BlockingAsyncStore`` owns an event loop in a thread of its own and runs each call of
the ``AsyncStore`` there: many test threads calling it at once are many tasks on that
one loop, sharing its asyncio connection pool, which is how an async service uses it.
Importable by spawned worker processes (racers).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from revstore import AsyncStore, Store

T = TypeVar("T")

APIS = ("sync", "async")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class _Blocking:
    """Coroutine methods of ``target`` as blocking calls on ``loop``; other attributes
    as they are."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *args, **kwargs: self._loop.run(attr(*args, **kwargs))
        return attr


class BlockingAsyncStore(_Blocking):
    def __init__(self, url: str, **options: Any) -> None:
        loop = _Loop()

        async def make() -> AsyncStore:
            # Made inside the loop: its connections and locks belong to it.
            return AsyncStore(url, **options)

        super().__init__(loop.run(make()), loop)
        self.keys = _Blocking(self._target.keys, loop)
        self.backend = _Blocking(self._target.backend, loop)
        self.api_keys = _Blocking(self._target.api_keys, loop)
        self.async_store: AsyncStore = self._target

    def close(self) -> None:
        try:
            self._loop.run(self._target.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> BlockingAsyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(api: str, url: str, **options: Any) -> Any:
    """A ``Store`` ("sync") or a blocking face of an ``AsyncStore`` ("async")."""
    if api == "sync":
        return Store(url, **options)
    if api == "async":
        return BlockingAsyncStore(url, **options)
    raise ValueError(f"unknown api {api!r}")
