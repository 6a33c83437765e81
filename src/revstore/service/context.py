"""What the routes need from the app, in one object on ``app.state``: the settings,
the metrics, and the app's :class:`~revstore.AsyncStore` with the idempotency layer
over it.

An ``AsyncStore`` serves one event loop (its connections belong to that loop), so the
app opens it in the loop that serves it: in the lifespan (``start``), or, under a
server that runs no lifespan, at the first request. Each uvicorn worker thus opens its
own; a request arriving on another loop is a programming error, refused clearly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.requests import HTTPConnection

from revstore.async_store import AsyncStore
from revstore.backends import check_url
from revstore.errors import RevstoreError
from revstore.service.idempotency import IdempotencyStore
from revstore.service.metrics import Metrics
from revstore.service.retention import RetentionWorker
from revstore.service.settings import Settings
from revstore.store import Store

log = logging.getLogger("revstore.service")

StoreSource = AsyncStore | Callable[[], AsyncStore] | Store | str | None
"""What ``create_app`` serves: an ``AsyncStore`` (the caller's, not closed by the
app), a function making one (called in the app's loop; the app closes what it
returns), a sync ``Store`` (the app opens an ``AsyncStore`` with its URL, strategy,
limits and retry policy; the ``Store`` itself is not used), or a database URL (None:
``Settings.url``)."""


def store_factory(source: StoreSource, settings: Settings) -> Callable[[], AsyncStore] | None:
    """How the app opens its own store (None: it serves the ``AsyncStore`` given)."""
    if isinstance(source, AsyncStore):
        return None
    if isinstance(source, Store):
        given = source
        return lambda: AsyncStore(
            given.url,
            strategy=given.strategy,
            max_content_bytes=given.max_content_bytes,
            max_batch_items=given.max_batch_items,
            max_page_bytes=given.max_page_bytes,
            retry=given.retry,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
        )
    if source is None or isinstance(source, str):
        url = source or settings.url
        check_url(url)  # a malformed URL fails create_app, not the first request
        return lambda: AsyncStore(
            url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            max_page_bytes=settings.max_page_bytes,
        )
    if callable(source):
        return source
    raise TypeError(
        "create_app serves an AsyncStore, a function returning one, a Store or a database "
        f"URL, not {type(source).__name__}"
    )


class Services:
    def __init__(self, source: StoreSource, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._given = source if isinstance(source, AsyncStore) else None
        self._factory = store_factory(source, settings)
        self._store: AsyncStore | None = None
        self._idempotency: IdempotencyStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.retention = RetentionWorker(lambda: self.store, settings.retention_interval)
        self._retention_task: asyncio.Task[None] | None = None

    @property
    def owns_store(self) -> bool:
        return self._given is None

    @property
    def store(self) -> AsyncStore:
        """The app's store, opened on first use in the running loop."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # read from outside the app (a test looking at it): no check
        if self._store is None:
            if loop is None:
                raise RuntimeError("the app opens its store in its event loop: start it first")
            self._open(loop)
            assert self._store is not None
        elif loop is not None and loop is not self._loop:
            # Its connections belong to the other loop: using them here would hang or fail
            # obscurely. (A Starlette TestClient used without ``with`` runs every request
            # on a new loop.)
            raise RuntimeError(
                "this app's AsyncStore serves another event loop; run the app on one loop "
                "(e.g. `with TestClient(app) as client:`)"
            )
        return self._store

    @property
    def idempotency(self) -> IdempotencyStore:
        self.store  # noqa: B018 - opens it (and the layer) or checks the loop
        assert self._idempotency is not None
        return self._idempotency

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        store = self._given if self._factory is None else self._factory()
        if not isinstance(store, AsyncStore):
            raise TypeError(f"the store factory returned {type(store).__name__}, not an AsyncStore")
        self._idempotency = IdempotencyStore(
            store, ttl=self.settings.idempotency_ttl, lease=self.settings.idempotency_lease
        )
        self._store, self._loop = store, loop

    async def start(self) -> None:
        """The lifespan's start: open the store here and create the tables."""
        try:
            await self.store.create_schema()
        except RevstoreError as exc:
            # Serve anyway: /readyz says 503 until the database answers.
            log.warning("database not ready at startup: %s", exc, extra={"event": "startup"})
        if self.settings.retention_interval > 0:
            self._retention_task = asyncio.get_running_loop().create_task(self.retention.run())

    async def stop(self) -> None:
        """The lifespan's end: close the store the app opened (a new start opens another)."""
        task, self._retention_task = self._retention_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        store, self._store, self._idempotency, self._loop = self._store, None, None, None
        if store is not None and self.owns_store:
            await store.close()


def services(conn: HTTPConnection) -> Services:
    svc: Services = conn.app.state.services
    return svc
