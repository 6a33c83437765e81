"""The operations of a store, written once for ``Store`` and ``AsyncStore``.

Each public operation validates its input here and returns a *flow*: a generator that
yields :class:`Call` s (one attempt at one backend operation, which the caller's retry
policy may re-run) and receives their results. ``Store`` runs a flow with blocking
calls, ``AsyncStore`` with awaited ones; what an operation does, what it refuses and in
which order it asks the database is decided only here (the same pattern as
``backends.protocol``, one level up).

The two stores expose the flows as methods through :func:`blocking` and
:func:`awaiting`, which keep each flow's signature and docstring, so the two APIs
cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import methodcaller
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from revstore.config import (
    DEFAULT_MAX_BATCH_ITEMS,
    DEFAULT_MAX_PAGE_BYTES,
    DEFAULT_URL,
    MAX_AUTHOR,
    MAX_OVERFLOW,
    MAX_SUMMARY,
    POOL_SIZE,
    STRATEGIES,
)
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
from revstore.idempotency import Claim, KeyState, Outcome, owner_marker, state_of, validate_key
from revstore.record import HistoryPage, Mode, Record, RecordPage, Version, WriteIntent
from revstore.retention import CHUNK, PAGE, Policy, RetentionReport, check_policy
from revstore.retry import RetryPolicy, RetryStats
from revstore.stream import AppendBatch, AppendResult, ReadPage, StreamInfo, StreamPage

if TYPE_CHECKING:
    from revstore.backends.protocol import Protocol

T = TypeVar("T")
P = ParamSpec("P")
_list = list  # Operations.list shadows the builtin inside the class body


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt at one backend operation: ``send(backend)`` starts it on the sync or
    the asyncio executor (whose methods have the same names and arguments) and gives
    its result, or an awaitable of it. ``op`` and ``key`` name it in retry logs."""

    op: str
    key: str
    send: Callable[[Any], Any]


Flow = Generator[Call, Any, T]
"""An operation: yields the calls it needs, receives each result, returns its own."""


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    value: T


def advance(flow: Flow[T], result: Any) -> Call | Done[T]:
    """Send ``result`` (None to start) into ``flow``: its next call, or its end."""
    try:
        return flow.send(result)
    except StopIteration as stop:
        return Done(stop.value)


def read_call(op: str, key: str, step: Callable[[Protocol], Any]) -> Call:
    """A call that runs a protocol with no transaction around it. The protocol is built
    anew for each attempt: a generator runs once."""
    return Call(op, key, lambda backend: backend.run(step(backend.protocol)))


def point_read_call(op: str, key: str, step: Callable[[Protocol], Any]) -> Call:
    """A read of one row by its key: the backend may run it where it is cheapest
    (``point_read``); otherwise as ``read_call``."""
    return Call(op, key, lambda backend: backend.point_read(lambda: step(backend.protocol)))


def transaction_call(op: str, key: str, step: Callable[[Protocol], Any]) -> Call:
    """A call that runs a protocol inside one write transaction."""
    return Call(op, key, lambda backend: backend.transaction(step(backend.protocol)))


def _listing(namespace: object, prefix: object, after: object, limit: object) -> int:
    """Check the arguments of a listing by id (records, streams); the limit."""
    validate_id(namespace, "namespace")
    if prefix is not None and prefix != "":
        validate_id(prefix, "prefix")
    if after is not None:
        validate_id(after, "after")
    return validate_limit(limit)


def _claim(value: object) -> Claim | None:
    if value is not None and not isinstance(value, Claim):
        raise InvalidInput(f"claim must be a Claim from Store.keys.claim(), got {shown(value)}")
    return value


def _expected(value: object, what: str) -> int | None:
    return None if value is None else validate_non_negative(value, what)


class RetentionOperations:
    """Retention policies and their application, as flows (see ``revstore.retention``)."""

    def set_retention(
        self,
        namespace: str,
        *,
        keep_last: int | None = None,
        max_age: float | None = None,
    ) -> Flow[Policy | None]:
        """Keep the last ``keep_last`` versions of each record of ``namespace``, and / or
        those younger than ``max_age`` seconds (a version either rule keeps is kept;
        the newest always). Both None removes the policy. Applied by
        ``apply_retention`` (a running service does it by itself)."""
        validate_id(namespace, "namespace")
        keep, age = check_policy(keep_last, max_age)
        ts = _now()
        yield transaction_call(
            "retention.set", namespace, methodcaller("retention_set", namespace, keep, age, ts)
        )
        return None if keep is None and age is None else Policy(namespace, keep, age, ts)

    def get_retention(self, namespace: str | None = None) -> Flow[list[Policy]]:
        """The policies, of one namespace or of all."""
        if namespace is not None:
            validate_id(namespace, "namespace")
        policies: list[Policy] = yield read_call(
            "retention.get", namespace or "*", methodcaller("retention_policies", namespace)
        )
        return policies

    def apply_retention(
        self,
        namespace: str | None = None,
        *,
        records: Sequence[str] | None = None,
        progress: Callable[[RetentionReport], None] | None = None,
    ) -> Flow[RetentionReport]:
        """Remove the versions the policies no longer keep, of one namespace or of all
        (only of ``records``, ids in ``namespace``, when given: what a service just
        wrote), one record and at most ``retention.CHUNK`` versions per transaction (so
        a writer of that record waits for one short delete at most). ``progress`` is
        called with the running totals after each record."""
        only: tuple[str, ...] | None = None
        if records is not None:
            if namespace is None:
                raise InvalidInput("records= needs the namespace they are in")
            if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
                raise InvalidInput("records must be a list of record ids")
            only = tuple(sorted({validate_id(r) for r in records}))
            if not only:
                return RetentionReport(0, 0, 0)
        policies = yield from self.get_retention(namespace)
        compacted = removed = 0
        for policy in policies:
            ns = policy.namespace
            young = _now() - timedelta(seconds=policy.max_age_seconds or 0)
            after = ""
            while True:
                page: list[tuple[str, int, int, int | None]] = yield read_call(
                    "retention.scan",
                    ns,
                    methodcaller("retention_candidates", ns, after, PAGE, young, only),
                )
                for record_id, oldest, newest, first_young in page:
                    cutoff = policy.cutoff(newest, first_young)
                    if cutoff > oldest:
                        compacted += 1
                    while cutoff > oldest:
                        below = min(cutoff, oldest + CHUNK)
                        removed += yield transaction_call(
                            "retention.compact",
                            record_id,
                            methodcaller("compact", ns, record_id, below),
                        )
                        oldest = below
                    if progress is not None:
                        progress(RetentionReport(len(policies), compacted, removed))
                if len(page) < PAGE:
                    break
                after = page[-1][0]
        return RetentionReport(len(policies), compacted, removed)


class Operations(RetentionOperations):
    """The store's operations as flows, with the limits they enforce."""

    def __init__(
        self,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
    ) -> None:
        self.max_content_bytes = validate_positive(max_content_bytes, "max_content_bytes")
        self.max_batch_items = validate_positive(max_batch_items, "max_batch_items")
        self.max_page_bytes = validate_positive(max_page_bytes, "max_page_bytes")

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
    ) -> Flow[Record]:
        """Create or replace a record. ``expected_revision=0`` means create-only.

        ``claim`` (every write takes one): an idempotency key reserved through
        ``keys``, applied with this write's result in the write's own transaction."""
        body = self._content(content)
        intent = write_intent(
            Mode.PUT, namespace, id, expected_revision, create_version, author, summary, body
        )
        result: Record = yield _write("put", intent, None, _claim(claim))
        return result

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
    ) -> Flow[Record]:
        """Apply an RFC 7396 JSON Merge Patch to the current content, atomically."""
        patch_doc = self._content(patch)
        intent = write_intent(
            Mode.UPDATE, namespace, id, expected_revision, create_version, author, summary, None
        )

        def transform(current: JSON) -> Canonical:
            # Runs under the record's lock, on the content it holds.
            return self._content(merge_patch(current, patch_doc.value))

        result: Record = yield _write("patch", intent, transform, _claim(claim))
        return result

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
    ) -> Flow[Record]:
        """Make a new version whose content is that of ``version``."""
        old = yield from self.get_version(id, version, namespace=namespace)
        body = self._content(old.content)
        summary = summary if summary is not None else f"restore version {version}"
        intent = write_intent(
            Mode.UPDATE, namespace, id, expected_revision, True, author, summary, body
        )
        result: Record = yield _write("restore", intent, None, _claim(claim))
        return result

    def delete(
        self,
        id: str,
        *,
        expected_revision: int | None = None,
        namespace: str = "default",
        claim: Claim | None = None,
    ) -> Flow[Record]:
        """Tombstone the record: history is kept, get() raises NotFound, put() revives it."""
        intent = write_intent(
            Mode.DELETE, namespace, id, expected_revision, False, None, None, None
        )
        result: Record = yield _write("delete", intent, None, _claim(claim))
        return result

    def get(self, id: str, *, namespace: str = "default") -> Flow[Record]:
        """The record's head (NotFound when absent or deleted)."""
        validate_id(namespace, "namespace")
        validate_id(id)
        result: Record = yield point_read_call("get", id, lambda p: p.get_record(namespace, id))
        return result

    def history(
        self, id: str, *, after: int = 0, limit: int = 50, namespace: str = "default"
    ) -> Flow[HistoryPage]:
        """Snapshots oldest first, ``after`` a version number, with ``next_after`` cursor.

        A page ends early when its content would pass ``max_page_bytes``."""
        validate_id(namespace, "namespace")
        validate_id(id)
        after = validate_non_negative(after, "after")
        limit = validate_limit(limit)
        budget = self.max_page_bytes
        result: HistoryPage = yield read_call(
            "history", id, lambda p: p.history(namespace, id, after, limit, budget)
        )
        return result

    def get_version(self, id: str, version: int, *, namespace: str = "default") -> Flow[Version]:
        """One snapshot of the record (NotFound when there is no such version)."""
        validate_id(namespace, "namespace")
        validate_id(id)
        version = validate_positive(version, "version")
        result: Version = yield read_call(
            "get_version", id, lambda p: p.get_version(namespace, id, version)
        )
        return result

    def list(
        self,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 50,
        *,
        namespace: str = "default",
    ) -> Flow[RecordPage]:
        """Live records in id order; ``after`` an id, with a ``next_after`` cursor.

        A page ends early when its content would pass ``max_page_bytes``."""
        limit = _listing(namespace, prefix, after, limit)
        budget = self.max_page_bytes
        result: RecordPage = yield read_call(
            "list",
            prefix or "*",
            lambda p: p.list_records(namespace, prefix, after, limit, budget),
        )
        return result

    def diff(
        self, id: str, from_version: int, to_version: int, *, namespace: str = "default"
    ) -> Flow[_list[dict[str, Any]]]:
        """RFC 6902 JSON Patch operations turning ``from_version`` into ``to_version``."""
        old = yield from self.get_version(id, from_version, namespace=namespace)
        new = yield from self.get_version(id, to_version, namespace=namespace)
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
    ) -> Flow[AppendResult]:
        """Append a batch atomically at a contiguous range of sequences."""
        batch = self._batch(namespace, stream, items, expected_sequence, item_ids)
        claimed = _claim(claim)
        result: AppendResult = yield Call(
            "append", stream, lambda backend: backend.append(batch, claimed)
        )
        return result

    def _batch(
        self,
        namespace: str,
        stream: str,
        items: object,
        expected_sequence: object,
        item_ids: object,
    ) -> AppendBatch:
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
        return AppendBatch(
            namespace, stream, bodies, ids, _expected(expected_sequence, "expected_sequence")
        )

    def read(
        self, stream: str, *, after: int = 0, limit: int = 100, namespace: str = "default"
    ) -> Flow[ReadPage]:
        """Items in sequence order, ``after`` a sequence, with a ``next_after`` cursor.

        A page ends early when its bodies would pass ``max_page_bytes``."""
        validate_id(namespace, "namespace")
        validate_id(stream, "stream id")
        after = validate_non_negative(after, "after")
        limit = validate_limit(limit)
        budget = self.max_page_bytes
        result: ReadPage = yield read_call(
            "read", stream, lambda p: p.read_stream(namespace, stream, after, limit, budget)
        )
        return result

    def list_streams(
        self,
        prefix: str | None = None,
        after: str | None = None,
        limit: int = 50,
        *,
        namespace: str = "default",
    ) -> Flow[StreamPage]:
        """Streams in id order, with their info; ``after`` an id, with a ``next_after``
        cursor."""
        limit = _listing(namespace, prefix, after, limit)
        result: StreamPage = yield read_call(
            "list_streams",
            prefix or "*",
            methodcaller("list_streams", namespace, prefix, after, limit),
        )
        return result

    def stream_info(self, stream: str, *, namespace: str = "default") -> Flow[StreamInfo]:
        """The stream's last sequence and item count (NotFound when it has no items)."""
        validate_id(namespace, "namespace")
        validate_id(stream, "stream id")
        result: StreamInfo = yield point_read_call(
            "stream_info", stream, lambda p: p.stream_info(namespace, stream)
        )
        return result


def _write(op: str, intent: WriteIntent, transform: Any, claim: Claim | None) -> Call:
    return Call(op, intent.id, lambda backend: backend.write_record(intent, transform, claim))


def write_intent(
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


# -------------------------------------------------------------------- idempotency keys


def _now() -> datetime:
    return datetime.now(UTC)


class KeyOperations:
    """The idempotency-key table's operations as flows (``Store.keys``; the states are
    explained in ``revstore.idempotency``). Each call is one self-committing statement,
    re-run safely after a lost connection (by its owner marker)."""

    def reserve(self, key: str, request_hash: str, owner: str, *, lease: float) -> Flow[KeyState]:
        """Try to become the one caller that writes for ``key``."""
        validate_key(key)
        marker = owner_marker(owner)
        for _ in range(5):
            ts = _now()
            until = ts + timedelta(seconds=lease)
            inserted = yield read_call(
                "idempotency.reserve",
                key,
                methodcaller("key_insert", key, request_hash, marker, ts, until),
            )
            if inserted:
                return KeyState(Outcome.RESERVED)
            row = yield read_call("idempotency.lookup", key, lambda p: p.key_get(key))
            if row is None:
                continue  # released or purged in between: try again
            if row.expires_at <= ts:
                # An expired answer, or the lease of a reservation never applied (its
                # holder died): free the key. An applied row is kept for keep_for.
                yield read_call("idempotency.expire", key, methodcaller("key_expire", key, ts))
                continue
            return state_of(row, request_hash, marker)
        return KeyState(Outcome.IN_PROGRESS)

    def lookup(self, key: str, request_hash: str) -> Flow[KeyState | None]:
        """The state of a key another caller holds (None: gone, the caller may reserve)."""
        row = yield read_call("idempotency.lookup", key, lambda p: p.key_get(key))
        if row is None or row.expires_at <= _now():
            return None
        return state_of(row, request_hash)

    def answer(
        self,
        key: str,
        owner: str,
        status: int,
        headers: str,
        body: str,
        *,
        keep_for: float,
    ) -> Flow[bool]:
        """Store the reply of the holder of ``key`` (False: it lost the key)."""
        until = _now() + timedelta(seconds=keep_for)
        marker = owner_marker(owner)
        stored: bool = yield read_call(
            "idempotency.complete",
            key,
            lambda p: p.key_answer(key, status, headers, body, until, marker, None),
        )
        return stored

    def answer_applied(
        self, key: str, request_hash: str, status: int, headers: str, body: str
    ) -> Flow[bool]:
        """Store a reply rebuilt from an applied result (by any caller with the same
        request: the reply is a function of the result). Its expiry stays the one the
        write set."""
        stored: bool = yield read_call(
            "idempotency.complete",
            key,
            lambda p: p.key_answer(key, status, headers, body, None, None, request_hash),
        )
        return stored

    def release(self, key: str, owner: str) -> Flow[bool]:
        """Forget a reservation whose write did not happen, so a retry can run. An
        applied key is never released: its write committed."""
        marker = owner_marker(owner)
        released: int = yield read_call(
            "idempotency.release", key, lambda p: p.key_release(key, marker)
        )
        return released > 0

    def purge_expired(self) -> Flow[int]:
        """Delete every expired key; how many."""
        ts = _now()
        return int((yield read_call("idempotency.purge", "*", lambda p: p.key_purge(ts))))


class Facade:
    """A set of flows (``ops``) exposed through a store's ``drive``: ``Store.keys``,
    ``Store.api_keys`` and their ``AsyncStore`` twins are subclasses listing the flows
    with ``blocking`` or ``awaiting``."""

    def __init__(self, ops: Any, drive: Callable[[Flow[Any]], Any]) -> None:
        self._ops = ops
        self._drive = drive


class KeysShell(Facade):
    """What ``Store.keys`` and ``AsyncStore.keys`` share: reserve a key, then pass
    ``keys.claim(...)`` to a write so the key is applied in the write's own transaction
    (see ``revstore.idempotency``)."""

    def __init__(self, drive: Callable[[Flow[Any]], Any]) -> None:
        super().__init__(KeyOperations(), drive)

    def claim(self, key: str, owner: str, request_hash: str, *, keep_for: float) -> Claim:
        """The claim of the holder ``owner`` of ``key``, for its write."""
        return Claim(key, owner, request_hash, keep_for)


# -------------------------------------------------------------------- the two shells


class Shell:
    """What ``Store`` and ``AsyncStore`` share: their settings, checked at the edge, and
    their operations. Each opens its own executor (``_open``) and runs flows with its
    own kind of call (``blocking`` / ``awaiting``)."""

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
        self._ops = Operations(max_content_bytes, max_batch_items, max_page_bytes)
        validate_positive(pool_size, "pool_size")
        validate_non_negative(max_overflow, "max_overflow")
        if not isinstance(group_commit, bool):
            raise InvalidInput(f"group_commit must be true or false, got {shown(group_commit)}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInput(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self.retry = retry or RetryPolicy()
        self.stats = RetryStats()
        self._open(
            url,
            strategy=strategy,
            pool_size=pool_size,
            max_overflow=max_overflow,
            group_commit=group_commit,
        )

    def _open(self, url: str, **options: Any) -> None:
        raise NotImplementedError

    @property
    def max_content_bytes(self) -> int:
        return self._ops.max_content_bytes

    @property
    def max_batch_items(self) -> int:
        return self._ops.max_batch_items

    @property
    def max_page_bytes(self) -> int:
        """A page of ``history``, ``read`` or ``list`` holds at most ``limit`` items *and*
        stops before its content (canonical JSON, UTF-8 bytes) passes this budget,
        always with at least one item; ``next_after`` continues."""
        return self._ops.max_page_bytes


def _signature_of(flow: Callable[..., Any], returns: str | None) -> inspect.Signature:
    """``flow``'s signature as the store method shows it: ``Flow[X]`` becomes ``X``
    (or ``Awaitable[X]``)."""
    sig = inspect.signature(flow)
    shown_return = str(sig.return_annotation)
    if shown_return.startswith("Flow[") and shown_return.endswith("]"):
        shown_return = shown_return[5:-1]
    if returns is not None:
        shown_return = f"{returns}[{shown_return}]"
    return sig.replace(return_annotation=shown_return)


def _as_method(method: Callable[..., Any], flow: Callable[..., Any], returns: str | None) -> None:
    method.__name__ = flow.__name__
    method.__qualname__ = flow.__qualname__
    method.__doc__ = flow.__doc__
    method.__signature__ = _signature_of(flow, returns)  # type: ignore[attr-defined]


def blocking(flow: Callable[Concatenate[Any, P], Flow[T]]) -> Callable[Concatenate[Any, P], T]:
    """A flow of ``Operations`` (or ``KeyOperations``) as a method that blocks until the
    flow's result: ``self._ops`` builds the flow and ``self._drive`` runs it."""

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = self._drive(flow(self._ops, *args, **kwargs))
        return result

    _as_method(method, flow, None)
    return method


def awaiting(
    flow: Callable[Concatenate[Any, P], Flow[T]],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]:
    """The same flow as a coroutine method (``self._drive`` is a coroutine)."""

    async def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = await self._drive(flow(self._ops, *args, **kwargs))
        return result

    _as_method(method, flow, "Awaitable")
    return method
