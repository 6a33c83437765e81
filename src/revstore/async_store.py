"""``AsyncStore``: the asyncio entry point. The same operations, arguments, results and
errors as ``Store`` (both run the flows of ``revstore.operations``), as coroutines on
each database's native async driver (``backends.aio``), with asyncio waits between
retries.

Cancellation: a cancelled caller never leaves a connection inside a transaction (the
executor rolls back or drops it), and a write whose COMMIT outcome is unknown raises
``AmbiguousCommit``, as in sync.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from revstore.apikeys import ApiKeyOperations
from revstore.backends import open_async_backend
from revstore.backends.aio import AsyncSqlBackend
from revstore.backends.threaded import ThreadedBackend
from revstore.operations import (
    Call,
    Facade,
    Flow,
    KeyOperations,
    KeysShell,
    Operations,
    Shell,
    advance,
    awaiting,
)

T = TypeVar("T")


class AsyncKeys(KeysShell):
    """Idempotency keys through an ``AsyncStore`` (``AsyncStore.keys``)."""

    reserve = awaiting(KeyOperations.reserve)
    lookup = awaiting(KeyOperations.lookup)
    answer = awaiting(KeyOperations.answer)
    answer_applied = awaiting(KeyOperations.answer_applied)
    release = awaiting(KeyOperations.release)
    purge_expired = awaiting(KeyOperations.purge_expired)


class AsyncApiKeys(Facade):
    """API keys through an ``AsyncStore`` (``AsyncStore.api_keys``)."""

    create = awaiting(ApiKeyOperations.create)
    list = awaiting(ApiKeyOperations.list)
    get = awaiting(ApiKeyOperations.get)
    revoke = awaiting(ApiKeyOperations.revoke)
    verify = awaiting(ApiKeyOperations.verify)


class AsyncStore(Shell):
    """``Store`` for ``async def`` code: every operation is a coroutine.

    One ``AsyncStore`` serves one event loop (its connections belong to that loop);
    open it inside the loop (e.g. in a FastAPI lifespan) and close it with
    ``await store.close()`` or ``async with``. Takes the same arguments as ``Store``.
    ``group_commit`` batches the write transactions that tasks of the loop start at the
    same moment (SQLite, MariaDB/MySQL), as ``Store`` does for threads.
    """

    backend: AsyncSqlBackend | ThreadedBackend

    def _open(self, url: str, **options: Any) -> None:
        self.backend = open_async_backend(url, **options)
        # As in Store: a restarting server is waited for as long as the retry budget.
        self.backend.reconnect_seconds = self.retry.max_seconds
        self._schema_lock: asyncio.Lock | None = None
        self.keys = AsyncKeys(self._drive)
        """Idempotency keys, as ``Store.keys`` with coroutines."""
        self.api_keys = AsyncApiKeys(ApiKeyOperations(), self._drive)
        """API keys, as ``Store.api_keys`` with coroutines."""

    @property
    def strategy(self) -> str:
        return self.backend.strategy.name

    @property
    def backend_name(self) -> str:
        return self.backend.name

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.backend.dispose()

    async def create_schema(self) -> int:
        """As ``Store.create_schema``."""
        if self._schema_lock is None:
            # Made here, not in __init__: an asyncio.Lock belongs to the running loop.
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            return await self.retry.run_async(
                self.backend.create_schema, op="create_schema", key="-", stats=self.stats
            )

    async def ping(self) -> None:
        """As ``Store.ping``."""
        await self.backend.ping()

    async def _drive(self, flow: Flow[T]) -> T:
        step = advance(flow, None)
        while isinstance(step, Call):
            step = advance(flow, await self._call(step))
        return step.value

    async def _call(self, call: Call) -> Any:
        if self.backend.schema_version is None:
            await self.create_schema()
        return await self.retry.run_async(
            lambda: call.send(self.backend), op=call.op, key=call.key, stats=self.stats
        )

    put = awaiting(Operations.put)
    patch = awaiting(Operations.patch)
    restore = awaiting(Operations.restore)
    delete = awaiting(Operations.delete)
    get = awaiting(Operations.get)
    history = awaiting(Operations.history)
    get_version = awaiting(Operations.get_version)
    list = awaiting(Operations.list)
    diff = awaiting(Operations.diff)
    append = awaiting(Operations.append)
    read = awaiting(Operations.read)
    stream_info = awaiting(Operations.stream_info)
    list_streams = awaiting(Operations.list_streams)
    set_retention = awaiting(Operations.set_retention)
    get_retention = awaiting(Operations.get_retention)
    apply_retention = awaiting(Operations.apply_retention)
