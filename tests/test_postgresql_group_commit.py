"""Group commit on the real PostgreSQL server: the batched counter statement.

Many threads put to different records at once, so their writes share statements;
every write must still get exactly its own outcome (applied at its own revision,
conflict with the current head, unchanged, created through the ordinary path), with
every field stored byte for byte. Two Stores (two pools, two group commits: what two
processes are to each other) share records, so batches that overlap take their row
locks in the same order and never deadlock.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from revstore import SequenceConflict, Store, VersionConflict
from revstore.backends.aio import AsyncSqlBackend
from revstore.backends.groupcommit import LOCKED
from revstore.backends.postgresql import PostgresBackend, _shared_failure
from revstore.backends.sql import AppendBatch
from revstore.content import Canonical
from revstore.errors import (
    AmbiguousCommit,
    Duplicate,
    InvalidInput,
    Retryable,
    RevstoreError,
    Unavailable,
)
from revstore.operations import write_intent
from revstore.record import Mode, WriteIntent

T = TypeVar("T")

AWKWARD = ["plain", 'quote " in it', "back\\slash", "{braces,comma}", "NULL", "", "é ☃ 𝄞"]


@pytest.fixture
def pg_url(server_url: Callable[[str], str]) -> str:
    return server_url("postgresql")


@pytest.fixture
def stores(pg_url: str) -> Iterator[list[Store]]:
    opened = [Store(pg_url), Store(pg_url)]
    opened[0].create_schema()
    yield opened
    for s in opened:
        s.close()


def race(threads: list[threading.Thread]) -> None:
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def puts(store: Store) -> Any:
    backend = store.backend
    assert isinstance(backend, PostgresBackend) and backend._puts is not None
    return backend._puts.stats


def appends(store: Store) -> Any:
    backend = store.backend
    assert isinstance(backend, PostgresBackend) and backend._appends is not None
    return backend._appends.stats


def test_batched_writes_each_keep_their_own_outcome(stores: list[Store], ns: str) -> None:
    store = stores[0]
    keys = [f"r{i}" for i in range(48)]
    for k in keys:
        store.put(k, {"w": "seed"}, namespace=ns)
    acked: list[tuple[str, int, int, dict[str, Any], str | None, str | None, bool]] = []
    conflicts: list[tuple[str, int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(t: int) -> None:
        rng = random.Random(t)
        try:
            for n in range(40):
                key = rng.choice(keys)
                content = {"w": f"{t}.{n}", "text": rng.choice(AWKWARD)}
                author = rng.choice([None, *AWKWARD])
                summary = rng.choice([None, *AWKWARD])
                snapshot = rng.random() < 0.8
                stale = rng.random() < 0.2
                try:
                    rec = store.put(
                        key,
                        content,
                        expected_revision=1 if stale else None,
                        create_version=snapshot,
                        author=author,
                        summary=summary,
                        namespace=ns,
                    )
                except VersionConflict as exc:
                    assert exc.current is not None
                    with lock:
                        conflicts.append((key, 1, exc.current.revision))
                    continue
                with lock:
                    acked.append(
                        (key, rec.revision, rec.version, content, author, summary, snapshot)
                    )
        except BaseException as exc:  # any other error fails the test below
            errors.append(exc)

    race([threading.Thread(target=writer, args=(t,)) for t in range(24)])
    assert not errors, errors[:3]
    stats = puts(store)
    assert stats.batches > 0 and stats.largest > 1, "no write was batched: the test raced nothing"
    # A conflict was only ever reported against a head that had moved on.
    assert conflicts and all(current > expected for _, expected, current in conflicts)

    for key in keys:
        history = store.history(key, limit=1000, namespace=ns).versions
        head = store.get(key, namespace=ns)
        mine = sorted((a for a in acked if a[0] == key), key=lambda a: a[1])
        # Revisions: seed, then each acknowledged write at its own, gapless.
        assert [a[1] for a in mine] == list(range(2, head.revision + 1))
        assert [v.version for v in history] == list(range(1, head.version + 1))
        by_version = {v.version: v for v in history}
        for _, revision, version, content, author, summary, snapshot in mine:
            if snapshot:
                v = by_version[version]
                assert (v.revision, v.content, v.author, v.summary) == (
                    revision,
                    content,
                    author,
                    summary,
                )
            else:
                assert version not in by_version or by_version[version].revision < revision
        if mine:
            assert head.content == mine[-1][3]


def test_unchanged_and_missing_records_take_the_ordinary_path(stores: list[Store], ns: str) -> None:
    store = stores[0]
    keys = [f"u{i}" for i in range(32)]
    for k in keys[:16]:
        store.put(k, {"same": k}, namespace=ns)
    results: dict[str, Any] = {}

    def write(key: str) -> None:
        # The first 16 exist with this very content: unchanged; the rest are created.
        results[key] = store.put(key, {"same": key}, namespace=ns)

    race([threading.Thread(target=write, args=(k,)) for k in keys])
    for k in keys[:16]:
        assert results[k].unchanged and results[k].revision == 1
    for k in keys[16:]:
        assert results[k].created and not results[k].unchanged and results[k].revision == 1


def test_overlapping_batches_from_two_stores_never_deadlock(stores: list[Store], ns: str) -> None:
    keys = [f"o{i}" for i in range(12)]
    for k in keys:
        stores[0].put(k, {"n": -1}, namespace=ns)
    errors: list[BaseException] = []
    acked: list[tuple[str, int]] = []
    lock = threading.Lock()

    def writer(store: Store, t: int) -> None:
        rng = random.Random(t)
        try:
            for n in range(60):
                key = rng.choice(keys)
                rec = store.put(key, {"n": n, "t": t}, namespace=ns)
                with lock:
                    acked.append((key, rec.revision))
        except BaseException as exc:
            errors.append(exc)

    race([threading.Thread(target=writer, args=(stores[t % 2], t)) for t in range(32)])
    assert not errors, errors[:3]
    assert puts(stores[0]).batches > 0 and puts(stores[1]).batches > 0
    # A deadlock would have been detected by the server and retried: none happened.
    assert stores[0].stats.retries == 0 and stores[1].stats.retries == 0
    assert len(set(acked)) == len(acked) == 32 * 60
    for key in keys:
        head = stores[0].get(key, namespace=ns)
        assert sorted(r for k, r in acked if k == key) == list(range(2, head.revision + 1))


def test_batched_appends_are_contiguous_and_each_keep_their_outcome(
    stores: list[Store], ns: str
) -> None:
    streams = [f"s{i}" for i in range(40)]
    for name in streams[:36]:  # the last four are created by the writers themselves
        stores[0].append(name, [{"seed": True}], namespace=ns)
    acked: list[tuple[str, int, list[Any]]] = []
    refused: list[tuple[str, int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(store: Store, t: int) -> None:
        rng = random.Random(t)
        try:
            for n in range(40):
                name = rng.choice(streams)
                items = [
                    {"w": f"{t}.{n}.{k}", "text": rng.choice(AWKWARD)}
                    for k in range(rng.randint(1, 5))
                ]
                expected = 1 if rng.random() < 0.15 else None
                try:
                    res = store.append(name, items, expected_sequence=expected, namespace=ns)
                except SequenceConflict as exc:
                    with lock:
                        refused.append((name, 1, exc.current_sequence))
                    continue
                assert [i.sequence for i in res.items] == list(
                    range(res.first_sequence, res.last_sequence + 1)
                )
                with lock:
                    acked.append((name, res.first_sequence, items))
        except BaseException as exc:
            errors.append(exc)

    race([threading.Thread(target=writer, args=(stores[t % 2], t)) for t in range(24)])
    assert not errors, errors[:3]
    assert appends(stores[0]).batches > 0 and appends(stores[0]).largest > 1
    assert refused and all(current != expected for _, expected, current in refused)
    assert stores[0].stats.retries == 0 and stores[1].stats.retries == 0
    for name in streams:
        stored = stores[0].read(name, limit=1000, namespace=ns).items
        assert [i.sequence for i in stored] == list(range(1, len(stored) + 1))
        expected_bodies: dict[int, Any] = {}
        for _, first, items in (a for a in acked if a[0] == name):
            for k, body in enumerate(items):
                assert first + k not in expected_bodies, "a sequence acknowledged twice"
                expected_bodies[first + k] = body
        seeded = 1 if name in streams[:36] else 0
        assert len(stored) == seeded + len(expected_bodies)
        for item in stored[seeded:]:
            assert item.body == expected_bodies[item.sequence]


def test_group_commit_can_be_turned_off(pg_url: str, ns: str) -> None:
    store = Store(pg_url, group_commit=False)
    try:
        assert isinstance(store.backend, PostgresBackend) and store.backend._puts is None
        assert store.put("x", {"a": 1}, namespace=ns).revision == 1
        assert store.put("x", {"a": 2}, namespace=ns).revision == 2
    finally:
        store.close()


# ---------------------------------------------------------------- a row held elsewhere


def _libpq(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


class HeldRow:
    """A row lock held from another connection: a long transaction elsewhere."""

    def __init__(self, pg_url: str, table: str, ns: str, key: str) -> None:
        self.url = _libpq(pg_url)
        # Set just *before* the lock is released: a write that completes and finds it
        # unset certainly completed while the lock was held.
        self.released = threading.Event()
        self.holder = psycopg.connect(self.url)
        row = self.holder.execute(
            f"SELECT 1 FROM {table} WHERE namespace = %s AND id = %s FOR UPDATE", (ns, key)
        ).fetchone()
        assert row is not None
        self.pid = self.holder.info.backend_pid

    def wait_for_a_waiter(self) -> None:
        """Return once some session is queued on this lock (polls server state)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            for _ in range(10_000):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (self.pid,),
                ).fetchone()
                if row is not None and row[0] > 0:
                    return
                time.sleep(0.01)
        raise AssertionError("no write ever queued on the held row")

    def release(self) -> None:
        if not self.released.is_set():
            self.released.set()
            self.holder.rollback()
            self.holder.close()


def finished_while_held(held: HeldRow, fn: Callable[[], T]) -> tuple[T, bool]:
    """Run ``fn`` while ``held`` is held; its result, and whether it returned before
    the release (a statement that waits on the lock returns only after it)."""
    out: list[tuple[T, bool]] = []
    th = threading.Thread(target=lambda: out.append((fn(), not held.released.is_set())))
    th.start()
    th.join(60)  # a guard against a stall only: on one, the release ends it and we fail
    held.release()
    th.join()
    assert out, "the statement failed"
    return out[0]


R = TypeVar("R")


def sent_while_held(
    held: HeldRow, send: Callable[[list[R]], list[T]], write: Callable[[str, int], R]
) -> T:
    """Send, while ``held`` holds the row of "held", a batch of writes to "held", "free"
    and "absent" (no row), then each of "held" and "absent" alone: none may wait for the
    lock, "held" comes back LOCKED and "absent" None. Returns the result for "free"."""
    (many, lone, lone_absent), in_time = finished_while_held(
        held,
        lambda: (
            send([write("held", 1), write("free", 1), write("absent", 1)]),
            send([write("held", 2)]),
            send([write("absent", 2)]),
        ),
    )
    assert in_time
    assert many[0] is LOCKED and many[2] is None
    assert lone == [LOCKED] and lone_absent == [None]
    return many[1]


def test_the_leaders_statements_skip_a_row_held_elsewhere(
    stores: list[Store], pg_url: str, ns: str
) -> None:
    # What a group-commit leader sends never waits for a row lock held elsewhere: such
    # a write comes back LOCKED, told apart from one whose row does not exist (None).
    store = stores[0]
    backend = store.backend
    assert isinstance(backend, PostgresBackend)
    for key in ["held", "free"]:
        store.put(key, {"n": 0}, namespace=ns)
        store.append(key, [{"n": 0}], namespace=ns)

    def intent(key: str, n: int) -> WriteIntent:
        body = Canonical({"n": n}, max_bytes=1 << 20)
        return write_intent(Mode.PUT, ns, key, None, True, None, None, body)

    def batch(name: str, n: int) -> AppendBatch:
        return AppendBatch(ns, name, [Canonical({"n": n}, max_bytes=1 << 20)], None, None)

    free = sent_while_held(
        HeldRow(pg_url, "revstore_records", ns, "held"), backend._put_many, intent
    )
    assert isinstance(free, tuple) and free[:2] == (2, 2)
    assert store.get("held", namespace=ns).revision == 1  # nothing applied to it
    done = backend._put_many([intent("held", 3)])[0]  # released: applied
    assert isinstance(done, tuple) and done[:2] == (2, 2)

    free_a = sent_while_held(
        HeldRow(pg_url, "revstore_streams", ns, "held"), backend._append_many, batch
    )
    assert isinstance(free_a, tuple) and free_a[0] == 2
    assert store.stream_info("held", namespace=ns).last_sequence == 1
    appended = backend._append_many([batch("held", 3)])[0]
    assert isinstance(appended, tuple) and appended[0] == 2


def writes_around_a_held_x(
    held: HeldRow,
    write: Callable[[str, int], T],
    pick: Callable[[random.Random, int], tuple[str, int]],
    x_args: tuple[int, int],
    what: str,
) -> list[T]:
    """Write to X with ``x_args[0]`` (stuck on the lock ``held`` keeps), then at once to
    X again with ``x_args[1]`` and 16 writers of 6 writes each to what ``pick`` chooses;
    check that no write to another key waited for the lock on X and that both writes to
    X completed after its release. Returns the results of the writes to X."""
    lock = threading.Lock()
    done: list[tuple[str, float, bool]] = []  # key, latency, completed after the release
    errors: list[BaseException] = []
    x_results: list[T] = []

    def one(key: str, arg: int) -> None:
        start = time.perf_counter()
        try:
            res = write(key, arg)
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            done.append((key, time.perf_counter() - start, held.released.is_set()))
            if key == "X":
                x_results.append(res)

    def writer(t: int) -> None:
        rng = random.Random(t)
        for n in range(6):
            one(*pick(rng, n))

    try:
        first_x = threading.Thread(target=one, args=("X", x_args[0]))
        first_x.start()
        held.wait_for_a_waiter()  # the first write to X is stuck on the lock
        # A second write to the held key, among the writes to others.
        writers = [threading.Thread(target=one, args=("X", x_args[1]))]
        writers += [threading.Thread(target=writer, args=(t,)) for t in range(16)]
        for th in writers:
            th.start()
        # Wait for the writes to the other keys, but not for ever: on a stall, the
        # lock is released after this (generous) bound and the assertions below fail.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(1 for d in done if d[0] != "X") < 16 * 6:
            if errors:
                break
            time.sleep(0.01)
    finally:
        held.release()
    first_x.join()
    for th in writers:
        th.join()
    assert not errors, errors[:3]
    others = sorted(lat for key, lat, _ in done if key != "X")
    print(
        f"\n{len(others)} {what} while X was locked elsewhere: "
        f"median {1000 * others[len(others) // 2]:.1f} ms, max {1000 * others[-1]:.1f} ms"
    )
    late = [key for key, _, after in done if key != "X" and after]
    assert not late, f"{len(late)} {what} waited for the lock on X"
    # Both writes to X completed after the release.
    assert [after for key, _, after in done if key == "X"] == [True, True]
    return x_results


def test_a_record_locked_elsewhere_does_not_stall_writes_to_other_records(
    stores: list[Store], pg_url: str, ns: str
) -> None:
    store = stores[0]
    keys = [f"free{i}" for i in range(48)]
    for k in [*keys, "X"]:
        store.put(k, {"n": 0}, namespace=ns)
    x_records = writes_around_a_held_x(
        HeldRow(pg_url, "revstore_records", ns, "X"),
        lambda key, n: store.put(key, {"n": n}, namespace=ns),
        lambda rng, n: (rng.choice(keys), n),
        (99, 100),
        "writes to other records",
    )
    # Each write to X at its own revision.
    assert sorted(rec.revision for rec in x_records) == [2, 3]
    assert store.get("X", namespace=ns).revision == 3
    assert puts(store).locked_writes >= 1
    for k in keys:
        history = store.history(k, limit=1000, namespace=ns).versions
        assert [v.version for v in history] == list(range(1, len(history) + 1))


def test_a_stream_locked_elsewhere_does_not_stall_appends_to_other_streams(
    stores: list[Store], pg_url: str, ns: str
) -> None:
    store = stores[0]
    names = [f"free{i}" for i in range(48)]
    for name in [*names, "X"]:
        store.append(name, [{"seed": True}], namespace=ns)
    x_appends = writes_around_a_held_x(
        HeldRow(pg_url, "revstore_streams", ns, "X"),
        lambda name, size: store.append(name, [{"k": k} for k in range(size)], namespace=ns),
        lambda rng, _: (rng.choice(names), rng.randint(1, 4)),
        (2, 3),
        "appends to other streams",
    )
    # The two appends to X: contiguous, after the seed, in some order.
    x_ranges = sorted((res.first_sequence, res.last_sequence) for res in x_appends)
    assert x_ranges in ([(2, 3), (4, 6)], [(2, 4), (5, 6)])
    assert appends(store).locked_writes >= 1
    for name in [*names, "X"]:
        stored = store.read(name, limit=1000, namespace=ns).items
        assert [i.sequence for i in stored] == list(range(1, len(stored) + 1))


# ---------------------------------------------------------------- one write's failure


@pytest.fixture
def refusing_url(pg_url: str) -> Iterator[str]:
    """A database of this test's own whose tables refuse any content holding "poison":
    a CHECK constraint, a refusal the input validation knows nothing of, so the write
    reaches the database and fails there, inside a batch."""
    name = f"revstore_gc_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(_libpq(pg_url), autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        setup = Store(url)
        setup.create_schema()
        setup.close()
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            checked = [
                ("revstore_records", "content"),
                ("revstore_versions", "content"),  # a chain's middle writes are only here
                ("revstore_stream_items", "body"),
            ]
            for table, column in checked:
                conn.execute(
                    f"ALTER TABLE {table} ADD CONSTRAINT refuse_poison"
                    f" CHECK (strpos({column}, 'poison') = 0)"
                )
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def assert_refused_alone(exc: BaseException) -> None:
    # The write's own outcome: the server's refusal, not a lost connection nor a retry.
    assert isinstance(exc, RevstoreError), exc
    assert not isinstance(exc, (AmbiguousCommit, Retryable)), exc
    assert "23514" in str(exc) or "refuse_poison" in str(exc), exc


def test_a_write_the_database_refuses_fails_alone_in_its_batch(refusing_url: str) -> None:
    store = Store(refusing_url)
    ns = "gc-refuse"
    keys = [f"r{i}" for i in range(48)]
    try:
        for k in keys:
            store.put(k, {"w": "seed"}, namespace=ns)
        acked: list[tuple[str, int, dict[str, Any]]] = []
        refused: list[BaseException] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def writer(t: int) -> None:
            rng = random.Random(t)
            for n in range(20):
                key = rng.choice(keys)
                poison = rng.random() < 0.08
                content = {"w": f"{t}.{n}", "text": "poison" if poison else rng.choice(AWKWARD)}
                try:
                    rec = store.put(key, content, namespace=ns)
                except BaseException as exc:
                    (refused if poison else errors).append(exc)
                    continue
                assert not poison, "the database took a write it refuses"
                with lock:
                    acked.append((key, rec.revision, content))

        race([threading.Thread(target=writer, args=(t,)) for t in range(24)])
        assert not errors, errors[:3]  # no innocent write failed
        assert refused
        for exc in refused:
            assert_refused_alone(exc)
        assert puts(store).splits > 0, "no batch held a refused write: the test raced nothing"
        for key in keys:
            head = store.get(key, namespace=ns)
            mine = sorted((a for a in acked if a[0] == key), key=lambda a: a[1])
            assert [a[1] for a in mine] == list(range(2, head.revision + 1))
            history = store.history(key, limit=1000, namespace=ns).versions
            assert [v.content for v in history[1:]] == [a[2] for a in mine]
    finally:
        store.close()


def test_an_append_the_database_refuses_fails_alone_in_its_batch(refusing_url: str) -> None:
    store = Store(refusing_url)
    ns = "gc-refuse"
    names = [f"s{i}" for i in range(48)]
    try:
        for name in names:
            store.append(name, [{"seed": True}], namespace=ns)
        acked: list[tuple[str, int, list[Any]]] = []
        refused: list[BaseException] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def writer(t: int) -> None:
            rng = random.Random(t)
            for n in range(20):
                name = rng.choice(names)
                poison = rng.random() < 0.08
                items: list[Any] = [{"w": f"{t}.{n}.{k}"} for k in range(rng.randint(1, 4))]
                if poison:
                    items[-1] = {"text": "poison"}
                try:
                    res = store.append(name, items, namespace=ns)
                except BaseException as exc:
                    (refused if poison else errors).append(exc)
                    continue
                assert not poison, "the database took an append it refuses"
                with lock:
                    acked.append((name, res.first_sequence, items))

        race([threading.Thread(target=writer, args=(t,)) for t in range(24)])
        assert not errors, errors[:3]
        assert refused
        for exc in refused:
            assert_refused_alone(exc)
        assert appends(store).splits > 0, "no batch held a refused append: the test raced nothing"
        for name in names:
            stored = store.read(name, limit=1000, namespace=ns).items
            assert [i.sequence for i in stored] == list(range(1, len(stored) + 1))
            mine = [(first, items) for n, first, items in acked if n == name]
            expected = {first + k: body for first, items in mine for k, body in enumerate(items)}
            assert {i.sequence: i.body for i in stored[1:]} == expected
    finally:
        store.close()


def test_which_failures_split_a_batch() -> None:
    # What the server or the driver refused (nothing applied) may be one write's; a
    # lost connection (may have committed), a retryable condition, or an error from
    # outside the driver (effect unknown) belongs to every write and is never re-sent.
    def raised(err: Exception, cause: BaseException | None) -> Exception:
        try:
            raise err from cause
        except Exception as exc:
            return exc

    refused = DBAPIError("UPDATE …", None, Exception("23514 check violation"))
    lost = DBAPIError("UPDATE …", None, Exception("server closed"), connection_invalidated=True)
    assert not _shared_failure(raised(Unavailable("PostgreSQL error 23514"), refused))
    assert not _shared_failure(raised(Duplicate("unique key", code="23505"), refused))
    assert not _shared_failure(raised(InvalidInput("NUL in text"), refused))
    assert _shared_failure(raised(AmbiguousCommit("connection lost"), refused))
    assert _shared_failure(raised(Unavailable("lost"), lost))
    assert _shared_failure(raised(Retryable("serialization_failure", code="40001"), refused))
    assert _shared_failure(raised(Unavailable("pool timeout"), TimeoutError()))
    assert _shared_failure(ValueError("a bug after the statement ran"))


# ---------------------------------------------------------------- chains: one hot record


def chained_puts(store: Store) -> int:
    return int(puts(store).chains)


def test_a_hot_record_takes_many_writes_per_commit_each_at_its_turn(
    stores: list[Store], ns: str
) -> None:
    # Writers of two Stores (two processes' worth of group commits) on one record:
    # writes that queue behind one in flight go together as a chain, one statement,
    # each with its own expectation, snapshot flag, author and summary.
    stores[0].put("hot", {"w": "seed"}, namespace=ns)
    acked: list[tuple[int, int, dict[str, Any], str | None, bool]] = []
    conflicts: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(store: Store, t: int) -> None:
        rng = random.Random(t)
        try:
            for n in range(30):
                content = {"w": f"{t}.{n}", "text": rng.choice(AWKWARD)}
                author = rng.choice([None, *AWKWARD])
                snapshot = rng.random() < 0.8
                roll = rng.random()
                expected = 1 if roll < 0.1 else None
                if 0.1 <= roll < 0.25:  # a fresh expectation: may still lose the race
                    expected = store.get("hot", namespace=ns).revision
                try:
                    rec = store.put(
                        "hot",
                        content,
                        expected_revision=expected,
                        create_version=snapshot,
                        author=author,
                        namespace=ns,
                    )
                except VersionConflict as exc:
                    assert exc.current is not None and expected is not None
                    with lock:
                        conflicts.append((expected, exc.current.revision))
                    continue
                assert expected is None or rec.revision == expected + 1
                with lock:
                    acked.append((rec.revision, rec.version, content, author, snapshot))
        except BaseException as exc:  # any other error fails the test below
            errors.append(exc)

    race([threading.Thread(target=writer, args=(stores[t % 2], t)) for t in range(24)])
    assert not errors, errors[:3]
    assert chained_puts(stores[0]) + chained_puts(stores[1]) > 0, "no chain: the test raced nothing"
    assert conflicts and all(current != expected for expected, current in conflicts)
    head = stores[0].get("hot", namespace=ns)
    acked.sort(key=lambda a: a[0])
    # Every revision after the seed was acknowledged to exactly one writer.
    assert [a[0] for a in acked] == list(range(2, head.revision + 1))
    history = stores[0].history("hot", limit=1000, namespace=ns).versions
    assert [v.version for v in history] == list(range(1, head.version + 1))
    by_version = {v.version: v for v in history}
    version = 1
    for revision, got_version, content, author, snapshot in acked:
        version += snapshot
        assert got_version == version  # versions follow the snapshots, in revision order
        if snapshot:
            v = by_version[version]
            assert (v.revision, v.content, v.author) == (revision, content, author)
    assert head.content == acked[-1][2]


def test_unchanged_writes_in_a_chain_are_decided_at_their_turn(
    stores: list[Store], ns: str
) -> None:
    # Many writers send one of two contents to one record: a write whose content is
    # the head's at its turn writes nothing; the others alternate the content.
    stores[0].put("flip", {"c": "a"}, namespace=ns)
    results: list[tuple[int, bool, str]] = []
    lock = threading.Lock()

    def writer(store: Store, t: int) -> None:
        for n in range(30):
            c = "ab"[(t + n) % 2]
            rec = store.put("flip", {"c": c}, namespace=ns)
            with lock:
                results.append((rec.revision, rec.unchanged, c))

    race([threading.Thread(target=writer, args=(stores[t % 2], t)) for t in range(16)])
    head = stores[0].get("flip", namespace=ns)
    applied = sorted((r, c) for r, unchanged, c in results if not unchanged)
    assert [r for r, _ in applied] == list(range(2, head.revision + 1))
    history = stores[0].history("flip", limit=1000, namespace=ns).versions
    # No two consecutive versions hold the same content: each change was a change.
    contents = [v.content["c"] for v in history]
    assert all(x != y for x, y in itertools.pairwise(contents))
    assert [c for _, c in applied] == contents[1:]
    for revision, unchanged, c in results:
        if unchanged:  # the content it found was its own, at the revision it reports
            assert contents[revision - 1] == c
    assert chained_puts(stores[0]) + chained_puts(stores[1]) > 0


def test_appends_to_a_hot_stream_go_in_chains_and_stay_contiguous(
    stores: list[Store], ns: str
) -> None:
    stores[0].append("chat", [{"seed": True}], namespace=ns)
    acked: list[tuple[int, list[Any]]] = []
    refused: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(store: Store, t: int) -> None:
        rng = random.Random(t)
        try:
            for n in range(30):
                items = [{"m": f"{t}.{n}.{k}"} for k in range(rng.choice([1, 1, 3, 10]))]
                expected = 1 if rng.random() < 0.1 else None
                try:
                    res = store.append("chat", items, expected_sequence=expected, namespace=ns)
                except SequenceConflict as exc:
                    with lock:
                        refused.append((1, exc.current_sequence))
                    continue
                assert res.last_sequence - res.first_sequence + 1 == len(items)
                with lock:
                    acked.append((res.first_sequence, items))
        except BaseException as exc:
            errors.append(exc)

    race([threading.Thread(target=writer, args=(stores[t % 2], t)) for t in range(24)])
    assert not errors, errors[:3]
    assert appends(stores[0]).chains + appends(stores[1]).chains > 0, "nothing was chained"
    assert refused and all(current > expected for expected, current in refused)
    stored: list[Any] = []
    while page := stores[0].read("chat", after=len(stored), limit=1000, namespace=ns).items:
        stored += page
    assert [i.sequence for i in stored] == list(range(1, len(stored) + 1))
    expected_bodies: dict[int, Any] = {1: {"seed": True}}
    for first, items in acked:
        for k, body in enumerate(items):
            assert first + k not in expected_bodies, "a sequence acknowledged twice"
            expected_bodies[first + k] = body
    assert {i.sequence: i.body for i in stored} == expected_bodies
    assert stores[0].stream_info("chat", namespace=ns).item_count == len(stored)


def test_a_record_deleted_amid_its_chains(stores: list[Store], ns: str) -> None:
    # Writes racing a deletion: each is applied at its own revision before it, or
    # re-creates the record after it; nothing is lost and no revision is reused.
    stores[0].put("gone", {"n": 0}, namespace=ns)
    acked: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    deleted = threading.Event()

    def writer(store: Store, t: int) -> None:
        try:
            for n in range(30):
                rec = store.put("gone", {"n": n, "t": t}, namespace=ns)
                with lock:
                    acked.append(rec.revision)
                if t == 0 and n == 10:
                    store.delete("gone", namespace=ns)
                    deleted.set()
        except BaseException as exc:
            errors.append(exc)

    race([threading.Thread(target=writer, args=(stores[t % 2], t)) for t in range(16)])
    assert not errors, errors[:3] and deleted.is_set()
    head = stores[0].get("gone", namespace=ns)
    assert len(set(acked)) == len(acked) == 16 * 30
    # The deletion took one revision of its own; every other one is an acknowledged put.
    assert len(set(range(2, head.revision + 1)) - set(acked)) == 1


def test_a_write_the_database_refuses_fails_alone_in_its_chain(refusing_url: str) -> None:
    store = Store(refusing_url)
    ns = "gc-refuse-chain"
    try:
        store.put("hot", {"w": "seed"}, namespace=ns)
        acked: list[tuple[int, dict[str, Any]]] = []
        refused: list[BaseException] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def writer(t: int) -> None:
            rng = random.Random(t)
            for n in range(20):
                poison = rng.random() < 0.08
                content = {"w": f"{t}.{n}", "text": "poison" if poison else "fine"}
                try:
                    rec = store.put("hot", content, namespace=ns)
                except BaseException as exc:
                    (refused if poison else errors).append(exc)
                    continue
                assert not poison, "the database took a write it refuses"
                with lock:
                    acked.append((rec.revision, content))

        race([threading.Thread(target=writer, args=(t,)) for t in range(24)])
        assert not errors, errors[:3]
        assert refused
        for exc in refused:
            assert_refused_alone(exc)
        assert puts(store).chains > 0 and puts(store).splits > 0, "no chain held a refused write"
        head = store.get("hot", namespace=ns)
        acked.sort(key=lambda a: a[0])
        assert [a[0] for a in acked] == list(range(2, head.revision + 1))
        history = store.history("hot", limit=1000, namespace=ns).versions
        assert [v.content for v in history[1:]] == [a[1] for a in acked]
    finally:
        store.close()


def test_an_async_store_chains_a_hot_record(pg_url: str, ns: str) -> None:
    from revstore import AsyncStore

    async def main() -> tuple[list[int], int, int]:
        async with AsyncStore(pg_url) as store:
            await store.put("hot", {"n": -1}, namespace=ns)

            async def writer(t: int) -> list[int]:
                return [
                    (await store.put("hot", {"n": n, "t": t}, namespace=ns)).revision
                    for n in range(20)
                ]

            revisions = [r for rs in await asyncio.gather(*map(writer, range(48))) for r in rs]
            backend = store.backend
            assert isinstance(backend, AsyncSqlBackend) and backend._puts is not None
            head = await store.get("hot", namespace=ns)
            return revisions, head.revision, backend._puts.stats.chains

    revisions, last, chains = asyncio.run(main())
    assert sorted(revisions) == list(range(2, last + 1)) and len(revisions) == 48 * 20
    assert chains > 0
