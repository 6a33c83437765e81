"""``Store``: the blocking entry point. Its operations are the flows of
``revstore.operations`` (validated at the edge there), run here with blocking calls on
the sync executor under the retry policy. ``AsyncStore`` is the same with coroutines.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

from revstore.apikeys import ApiKeyOperations
from revstore.backends import open_backend
from revstore.backends.sql import SqlBackend
from revstore.config import DEFAULT_MAX_BATCH_ITEMS as DEFAULT_MAX_BATCH_ITEMS
from revstore.config import DEFAULT_MAX_PAGE_BYTES as DEFAULT_MAX_PAGE_BYTES
from revstore.config import MAX_AUTHOR as MAX_AUTHOR
from revstore.config import MAX_SUMMARY as MAX_SUMMARY
from revstore.operations import (
    Call,
    Facade,
    Flow,
    KeyOperations,
    KeysShell,
    Operations,
    Shell,
    advance,
    blocking,
)

T = TypeVar("T")


class Keys(KeysShell):
    """Idempotency keys through a ``Store`` (``Store.keys``)."""

    reserve = blocking(KeyOperations.reserve)
    lookup = blocking(KeyOperations.lookup)
    answer = blocking(KeyOperations.answer)
    answer_applied = blocking(KeyOperations.answer_applied)
    release = blocking(KeyOperations.release)
    purge_expired = blocking(KeyOperations.purge_expired)


class ApiKeys(Facade):
    """API keys through a ``Store`` (``Store.api_keys``)."""

    create = blocking(ApiKeyOperations.create)
    list = blocking(ApiKeyOperations.list)
    get = blocking(ApiKeyOperations.get)
    revoke = blocking(ApiKeyOperations.revoke)
    verify = blocking(ApiKeyOperations.verify)


class Store(Shell):
    """Versioned records and sequenced streams in one SQL database.

    Safe to share between threads; every process opens its own ``Store``. (From
    ``async def`` code, use :class:`revstore.AsyncStore`: the same operations.)

    ``group_commit``: writes that threads of this process make at the same moment share
    one commit; each keeps its own result and errors. On PostgreSQL (``counter``
    strategy), puts and appends without item ids on different records or streams are
    sent as one statement; on SQLite and MariaDB/MySQL, write transactions (except
    optimistic ones) run in one transaction, each decided at its turn, writes to one
    record included. ``False`` sends every write alone.

    ``max_page_bytes``: a page of ``history``, ``read`` or ``list`` holds at most
    ``limit`` items *and* stops before its content (canonical JSON, UTF-8 bytes) passes
    this budget, always with at least one item; ``next_after`` continues.
    """

    backend: SqlBackend

    def _open(self, url: str, **options: Any) -> None:
        self.backend = open_backend(url, **options)
        # A server that cannot be reached (restarting) is waited for as long as the
        # retry policy's time budget, not only for its attempts (see SqlBackend._connect).
        self.backend.reconnect_seconds = self.retry.max_seconds
        self._schema_lock = threading.Lock()
        self.keys = Keys(self._drive)
        """Idempotency keys: reserve one, then pass ``keys.claim(...)`` to a write so the
        key is applied in the write's own transaction (see ``revstore.idempotency``)."""
        self.api_keys = ApiKeys(ApiKeyOperations(), self._drive)
        """API keys: create (the token is returned once), list, revoke, verify (see
        ``revstore.apikeys``)."""

    @property
    def strategy(self) -> str:
        return self.backend.strategy.name

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.dispose()

    def create_schema(self) -> int:
        """Create the tables, or upgrade older ones in place, and return the schema
        version (idempotent; also done on first use). Safe for any number of processes
        at once: they take a database-level lock. A schema newer than this release
        knows raises :class:`~revstore.errors.SchemaMismatch`."""
        with self._schema_lock:
            return self.retry.run(
                self.backend.create_schema, op="create_schema", key="-", stats=self.stats
            )

    def ping(self) -> None:
        """Raise Unavailable unless the database answers now (a readiness probe: no
        retries, no waiting for a server that is down)."""
        self.backend.ping()

    def _drive(self, flow: Flow[T]) -> T:
        step = advance(flow, None)
        while isinstance(step, Call):
            step = advance(flow, self._call(step))
        return step.value

    def _call(self, call: Call) -> Any:
        if self.backend.schema_version is None:
            self.create_schema()
        return self.retry.run(
            lambda: call.send(self.backend), op=call.op, key=call.key, stats=self.stats
        )

    put = blocking(Operations.put)
    patch = blocking(Operations.patch)
    restore = blocking(Operations.restore)
    delete = blocking(Operations.delete)
    get = blocking(Operations.get)
    history = blocking(Operations.history)
    get_version = blocking(Operations.get_version)
    list = blocking(Operations.list)
    diff = blocking(Operations.diff)
    append = blocking(Operations.append)
    read = blocking(Operations.read)
    stream_info = blocking(Operations.stream_info)
    list_streams = blocking(Operations.list_streams)
    set_retention = blocking(Operations.set_retention)
    get_retention = blocking(Operations.get_retention)
    apply_retention = blocking(Operations.apply_retention)
