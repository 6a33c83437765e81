"""``Store``: the public entry point. Validates input at the edge, asks the core for the
rules, runs each operation on the backend under the retry policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from revstore.apikeys import ApiKeys
from revstore.backends import open_backend
from revstore.backends.sql import SqlBackend
from revstore.config import DEFAULT_MAX_BATCH_ITEMS as DEFAULT_MAX_BATCH_ITEMS
from revstore.config import DEFAULT_MAX_PAGE_BYTES as DEFAULT_MAX_PAGE_BYTES
from revstore.config import DEFAULT_URL, MAX_OVERFLOW, POOL_SIZE, STRATEGIES
from revstore.config import MAX_AUTHOR as MAX_AUTHOR
from revstore.config import MAX_SUMMARY as MAX_SUMMARY
from revstore.content import (
    DEFAULT_MAX_CONTENT_BYTES,
    JSON,
    Canonical,
    diff,
    merge_patch,
    optional_text,
    shown,
    validate_id,
    validate_limit,
    validate_non_negative,
    validate_positive,
)
from revstore.errors import InvalidInput
from revstore.idempotency import Claim, IdempotencyKeys
from revstore.record import HistoryPage, Mode, Record, RecordPage, Version, WriteIntent
from revstore.retry import RetryPolicy, RetryStats
from revstore.stream import AppendBatch, AppendResult, ReadPage, StreamInfo

T = TypeVar("T")
_list = list  # Store.list shadows the builtin inside the class body


def _claim(value: object) -> Claim | None:
    if value is not None and not isinstance(value, Claim):
        raise InvalidInput(f"claim must be a Claim from Store.keys.claim(), got {shown(value)}")
    return value


def _expected(value: object, what: str) -> int | None:
    return None if value is None else validate_non_negative(value, what)


class Store:
    """Versioned records and sequenced streams in one SQL database.

    Safe to share between threads; every process opens its own ``Store``.

    ``group_commit`` (PostgreSQL, ``counter`` strategy): puts, and appends without
    item ids, that threads of this process make at the same moment on different
    records or streams are sent as one statement with one commit; each keeps its own
    result and errors. ``False`` sends every write alone.

    ``max_page_bytes``: a page of ``history``, ``read`` or ``list`` holds at most
    ``limit`` items *and* stops before its content (canonical JSON, UTF-8 bytes) passes
    this budget, always with at least one item; ``next_after`` continues.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        strategy: str | None = None,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        retry: RetryPolicy | None = None,
        pool_size: int = POOL_SIZE,
        max_overflow: int = MAX_OVERFLOW,
        group_commit: bool = True,
    ) -> None:
        if strategy is not None and strategy not in STRATEGIES:
            raise InvalidInput(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {shown(strategy)}"
            )
        self.url = url
        self.max_content_bytes = validate_positive(max_content_bytes, "max_content_bytes")
        self.max_batch_items = validate_positive(max_batch_items, "max_batch_items")
        self.max_page_bytes = validate_positive(max_page_bytes, "max_page_bytes")
        validate_positive(pool_size, "pool_size")
        validate_non_negative(max_overflow, "max_overflow")
        if not isinstance(group_commit, bool):
            raise InvalidInput(f"group_commit must be true or false, got {shown(group_commit)}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInput(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self.retry = retry or RetryPolicy()
        self.stats = RetryStats()
        self.backend: SqlBackend = open_backend(
            url,
            strategy=strategy,
            pool_size=pool_size,
            max_overflow=max_overflow,
            group_commit=group_commit,
        )
        # A server that cannot be reached (restarting) is waited for as long as the
        # retry policy's time budget, not only for its attempts (see SqlBackend._connect).
        self.backend.reconnect_seconds = self.retry.max_seconds
        self._schema_lock = threading.Lock()
        self.keys = IdempotencyKeys(self.backend, self._call)
        """Idempotency keys: reserve one, then pass ``keys.claim(...)`` to a write so the
        key is applied in the write's own transaction (see ``revstore.idempotency``)."""
        self.api_keys = ApiKeys(self.backend, self._call)
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
        """Raise Unavailable unless the database answers."""
        self.retry.run(self.backend.ping, op="ping", key="-", stats=self.stats)

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        if not self.backend._schema_ready:
            self.create_schema()
        return self.retry.run(fn, op=op, key=key, stats=self.stats)

    def _content(self, content: JSON) -> Canonical:
        return Canonical(content, max_bytes=self.max_content_bytes)

    # ---------------------------------------------------------------- records

    def put(
        self,
        id: str,
        content: JSON,
        *,
        expected_revision: int | None = None,
        create_version: bool = True,
        author: str | None = None,
        summary: str | None = None,
        namespace: str = "default",
        claim: Claim | None = None,
    ) -> Record:
        """Create or replace a record. ``expected_revision=0`` means create-only.

        ``claim`` (every write takes one): an idempotency key reserved through
        ``keys``, applied with this write's result in the write's own transaction."""
        body = self._content(content)
        intent = self._intent(
            Mode.PUT, namespace, id, expected_revision, create_version, author, summary, body
        )
        claim = _claim(claim)
        return self._call("put", id, lambda: self.backend.write_record(intent, None, claim))

    def patch(
        self,
        id: str,
        patch: JSON,
        *,
        expected_revision: int | None = None,
        create_version: bool = True,
        author: str | None = None,
        summary: str | None = None,
        namespace: str = "default",
        claim: Claim | None = None,
    ) -> Record:
        """Apply an RFC 7396 JSON Merge Patch to the current content, atomically."""
        patch_doc = self._content(patch)
        intent = self._intent(
            Mode.UPDATE, namespace, id, expected_revision, create_version, author, summary, None
        )

        def transform(current: JSON) -> Canonical:
            # Runs under the record's lock, on the content it holds.
            return self._content(merge_patch(current, patch_doc.value))

        claim = _claim(claim)
        return self._call("patch", id, lambda: self.backend.write_record(intent, transform, claim))

    def restore(
        self,
        id: str,
        version: int,
        *,
        expected_revision: int | None = None,
        author: str | None = None,
        summary: str | None = None,
        namespace: str = "default",
        claim: Claim | None = None,
    ) -> Record:
        """Make a new version whose content is that of ``version``."""
        old = self.get_version(id, version, namespace=namespace)
        body = self._content(old.content)
        summary = summary if summary is not None else f"restore version {version}"
        intent = self._intent(
            Mode.UPDATE, namespace, id, expected_revision, True, author, summary, body
        )
        claim = _claim(claim)
        return self._call("restore", id, lambda: self.backend.write_record(intent, None, claim))

    def delete(
        self,
        id: str,
        *,
        expected_revision: int | None = None,
        namespace: str = "default",
        claim: Claim | None = None,
    ) -> Record:
        """Tombstone the record: history is kept, get() raises NotFound, put() revives it."""
        intent = self._intent(
            Mode.DELETE, namespace, id, expected_revision, False, None, None, None
        )
        claim = _claim(claim)
        return self._call("delete", id, lambda: self.backend.write_record(intent, None, claim))

    def _intent(
        self,
        mode: Mode,
        namespace: str,
        id: str,
        expected_revision: object,
        create_version: object,
        author: object,
        summary: object,
        body: Canonical | None,
    ) -> WriteIntent:
        validate_id(namespace, "namespace")
        validate_id(id)
        if not isinstance(create_version, bool):
            raise InvalidInput(f"create_version must be true or false, got {shown(create_version)}")
        return WriteIntent(
            namespace=namespace,
            id=id,
            mode=mode,
            expected_revision=_expected(expected_revision, "expected_revision"),
            create_version=create_version,
            content_text=body.text if body else "",
            content_hash=body.hash if body else "",
            content_value=body.value if body else None,
            author=optional_text(author, "author", MAX_AUTHOR),
            summary=optional_text(summary, "summary", MAX_SUMMARY),
        )

    def get(self, id: str, *, namespace: str = "default") -> Record:
        validate_id(namespace, "namespace")
        validate_id(id)
        return self._call("get", id, lambda: self.backend.get_record(namespace, id))

    def history(
        self, id: str, *, after: int = 0, limit: int = 50, namespace: str = "default"
    ) -> HistoryPage:
        """Snapshots oldest first, ``after`` a version number, with ``next_after`` cursor.

        A page ends early when its content would pass ``max_page_bytes``."""
        validate_id(namespace, "namespace")
        validate_id(id)
        after = validate_non_negative(after, "after")
        limit = validate_limit(limit)
        budget = self.max_page_bytes
        return self._call(
            "history", id, lambda: self.backend.history(namespace, id, after, limit, budget)
        )

    def get_version(self, id: str, version: int, *, namespace: str = "default") -> Version:
        validate_id(namespace, "namespace")
        validate_id(id)
        version = validate_positive(version, "version")
        return self._call(
            "get_version", id, lambda: self.backend.get_version(namespace, id, version)
        )

    def list(
        self,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 50,
        *,
        namespace: str = "default",
    ) -> RecordPage:
        """Live records in id order; ``after`` an id, with a ``next_after`` cursor.

        A page ends early when its content would pass ``max_page_bytes``."""
        validate_id(namespace, "namespace")
        if prefix is not None and prefix != "":
            validate_id(prefix, "prefix")
        if after is not None:
            validate_id(after, "after")
        limit = validate_limit(limit)
        budget = self.max_page_bytes
        return self._call(
            "list",
            prefix or "*",
            lambda: self.backend.list_records(namespace, prefix, after, limit, budget),
        )

    def diff(
        self, id: str, from_version: int, to_version: int, *, namespace: str = "default"
    ) -> _list[dict[str, Any]]:
        """RFC 6902 JSON Patch operations turning ``from_version`` into ``to_version``."""
        old = self.get_version(id, from_version, namespace=namespace)
        new = self.get_version(id, to_version, namespace=namespace)
        return diff(old.content, new.content)

    # ---------------------------------------------------------------- streams

    def append(
        self,
        stream: str,
        items: Sequence[JSON],
        *,
        expected_sequence: int | None = None,
        item_ids: Sequence[str] | None = None,
        namespace: str = "default",
        claim: Claim | None = None,
    ) -> AppendResult:
        """Append a batch atomically at a contiguous range of sequences."""
        validate_id(namespace, "namespace")
        validate_id(stream, "stream id")
        if isinstance(items, (str, bytes, dict)) or not isinstance(items, Sequence):
            raise InvalidInput("items must be a list of JSON values")
        if not items:
            raise InvalidInput("a batch needs at least one item")
        if len(items) > self.max_batch_items:
            raise InvalidInput(
                f"a batch holds at most {self.max_batch_items} items, got {len(items)}"
            )
        bodies = [
            Canonical(item, max_bytes=self.max_content_bytes, what=f"item {k}")
            for k, item in enumerate(items)
        ]
        ids: _list[str] | None = None
        if item_ids is not None:
            if isinstance(item_ids, (str, bytes)) or not isinstance(item_ids, Sequence):
                raise InvalidInput("item_ids must be a list of strings")
            if len(item_ids) != len(items):
                raise InvalidInput(
                    f"item_ids has {len(item_ids)} entries for {len(items)} items; "
                    "give one id per item"
                )
            ids = [validate_id(i, f"item_ids[{k}]") for k, i in enumerate(item_ids)]
            if len(set(ids)) != len(ids):
                raise InvalidInput("item_ids must be unique within a batch")
        batch = AppendBatch(
            namespace, stream, bodies, ids, _expected(expected_sequence, "expected_sequence")
        )
        claim = _claim(claim)
        return self._call("append", stream, lambda: self.backend.append(batch, claim))

    def read(
        self, stream: str, *, after: int = 0, limit: int = 100, namespace: str = "default"
    ) -> ReadPage:
        """Items in sequence order, ``after`` a sequence, with a ``next_after`` cursor.

        A page ends early when its bodies would pass ``max_page_bytes``."""
        validate_id(namespace, "namespace")
        validate_id(stream, "stream id")
        after = validate_non_negative(after, "after")
        limit = validate_limit(limit)
        budget = self.max_page_bytes
        return self._call(
            "read",
            stream,
            lambda: self.backend.read_stream(namespace, stream, after, limit, budget),
        )

    def stream_info(self, stream: str, *, namespace: str = "default") -> StreamInfo:
        validate_id(namespace, "namespace")
        validate_id(stream, "stream id")
        return self._call(
            "stream_info", stream, lambda: self.backend.stream_info(namespace, stream)
        )
