"""Group commit on SQLite and MariaDB (``backends/batch.py``): concurrent write
transactions of one process run in one transaction, one after the other, and each
keeps its own outcome, evaluated at its turn.

Both APIs: ``Store`` (threads, ``GroupCommit``) and ``AsyncStore`` (tasks,
``AsyncGroupCommit``). Every test builds one batch deterministically: another
connection holds the database (SQLite: its write lock; MariaDB: the row of record
``blocker``), a first write to ``blocker`` becomes the leader and waits behind it, the
writes under test queue behind the leader one at a time (so their order is known), and
then the hold is released: the leader's successor sends the whole queue as one batch.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from apis import APIS, open_store
from revstore import Store
from revstore.backends.batch import Outcome, Pending, Tainted, one_by_one
from revstore.backends.groupcommit import LOCKED, _Batching
from revstore.backends.ops import Raw, Step
from revstore.backends.strategy import Tx
from revstore.config import parse_url
from revstore.content import Canonical
from revstore.errors import (
    InvalidInput,
    NotFound,
    RevstoreError,
    SequenceConflict,
    VersionConflict,
)
from revstore.operations import write_intent
from revstore.record import Mode, Record
from testdbs import backend_url_for, mysql_connection

BATCHED = ("sqlite", "mysql")


@pytest.fixture(params=[(b, a) for b in BATCHED for a in APIS], ids="-".join)
def batched_store(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Store]:
    """A ``Store``, or a blocking face of an ``AsyncStore`` (its batches are sent by
    tasks of its event loop), on each backend that batches transactions."""
    backend, api = request.param
    s = open_store(api, backend_url_for(backend, sqlite_url))
    s.create_schema()
    assert s.backend.batches is not None, "group commit is on by default"
    yield s
    s.close()


@contextmanager
def held(store: Store, ns: str, record: str = "blocker") -> Iterator[None]:
    """Hold what a write to ``ns/record`` needs, from a connection of our own."""
    url = parse_url(store.url)
    if store.backend_name == "sqlite":
        conn = sqlite3.connect(url.url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    my = mysql_connection(store, autocommit=False)
    try:
        with my.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(
                "SELECT revision FROM revstore_records WHERE namespace = %s AND id = %s FOR UPDATE",
                (ns, record),
            )
            assert cur.fetchone() is not None
        yield
    finally:
        my.rollback()
        my.close()


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def wait_leading_alone(gc: _Batching[Any, Any], solo_before: int, who: str) -> None:
    """Wait until the one leader has taken its batch, of one write. Leading is not
    enough: a leader takes its batch once it is through ``lead_within`` (SQLite's write
    gate), and a write that queued before that would join its batch."""
    wait_until(
        lambda: gc._leaders == 1 and gc.stats.solo_writes == solo_before + 1,
        f"{who} to take its batch alone",
    )


def one_batch(store: Store, ns: str, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` (writes) as one batch, in this order; each one's result or error."""
    gc = store.backend.batches
    assert isinstance(gc, _Batching)
    # One batch in flight at a time (MariaDB allows several): the queue then goes to
    # the leader's successor whole, in order.
    gc._max_leaders = 1
    before = (gc.stats.batches, gc.stats.batched_writes)
    solo_before = gc.stats.solo_writes
    results: list[Any] = [None] * len(calls)

    def run(i: int, call: Callable[[], Any]) -> None:
        try:
            results[i] = call()
        except Exception as exc:
            results[i] = exc

    threads: list[threading.Thread] = []
    with held(store, ns):
        leader = threading.Thread(
            target=store.put, args=("blocker", {"b": 1}), kwargs={"namespace": ns}
        )
        leader.start()
        wait_leading_alone(gc, solo_before, "the leader")
        for i, call in enumerate(calls):
            t = threading.Thread(target=run, args=(i, call))
            t.start()
            threads.append(t)
            wait_until(lambda i=i: len(gc._queue) == i + 1, f"write {i} to queue")
    leader.join(30)
    for t in threads:
        t.join(30)
    assert (gc.stats.batches, gc.stats.batched_writes) == (before[0] + 1, before[1] + len(calls))
    return results


def count_shared(store: Store) -> list[int]:
    """From now on, the size of every batch sent through the shared statements
    (``Protocol.writes_together``) of ``store``, in a list."""
    # AsyncStore on SQLite batches on its sync executor (backends/threaded.py).
    protocol = getattr(store.backend, "sync", store.backend).protocol
    shared = protocol.writes_together
    sent: list[int] = []

    def counted(writes: Any) -> Any:
        sent.append(len(writes))
        return shared(writes)

    protocol.writes_together = counted  # type: ignore[method-assign]
    return sent


def test_mixed_preconditions_are_each_decided_at_their_turn(batched_store: Store, ns: str) -> None:
    s = batched_store
    s.put("blocker", {"b": 0}, namespace=ns)
    s.put("r", {"v": 0}, namespace=ns)  # revision 1, version 1
    out = one_batch(
        s,
        ns,
        [
            lambda: s.put("r", {"v": 1}, expected_revision=1, namespace=ns),  # ok: 2
            lambda: s.put("r", {"v": 2}, expected_revision=1, namespace=ns),  # head is 2
            lambda: s.put("r", {"v": 3}, namespace=ns),  # blind: 3
            lambda: s.put("r", {"v": 3}, namespace=ns),  # same content: unchanged
            lambda: s.put("r", {"v": 4}, create_version=False, namespace=ns),  # 4, no version
            lambda: s.put("r", {"v": 5}, expected_revision=4, namespace=ns),  # ok: 5
        ],
    )
    assert isinstance(out[0], Record) and (out[0].revision, out[0].version) == (2, 2)
    assert isinstance(out[1], VersionConflict)
    assert out[1].current_revision == 2 and out[1].current is not None
    assert out[1].current.content == {"v": 1}
    assert (out[2].revision, out[2].version) == (3, 3)
    assert out[3].revision == 3 and out[3].content == {"v": 3}
    assert (out[4].revision, out[4].version) == (4, 3)
    assert (out[5].revision, out[5].version) == (5, 4)
    assert s.get("r", namespace=ns).content == {"v": 5}
    history = s.history("r", namespace=ns).versions
    assert [(v.version, v.revision, v.content) for v in history] == [
        (1, 1, {"v": 0}),
        (2, 2, {"v": 1}),
        (3, 3, {"v": 3}),
        (4, 5, {"v": 5}),
    ]


def test_a_failing_write_leaves_the_others_committed(batched_store: Store, ns: str) -> None:
    s = batched_store
    s.put("blocker", {"b": 0}, namespace=ns)
    s.put("a", {"n": 0}, namespace=ns)
    out = one_batch(
        s,
        ns,
        [
            lambda: s.put("a", {"n": 1}, namespace=ns),
            lambda: s.patch("missing", {"x": 1}, namespace=ns),  # NotFound
            lambda: s.put("b", {"n": 1}, expected_revision=7, namespace=ns),  # absent
            lambda: s.put("c", {"n": 1}, namespace=ns),
        ],
    )
    assert out[0].revision == 2
    assert isinstance(out[1], NotFound)
    assert isinstance(out[2], VersionConflict) and out[2].current is None
    assert out[3].revision == 1 and out[3].created
    assert s.get("a", namespace=ns).content == {"n": 1}
    assert s.get("c", namespace=ns).content == {"n": 1}
    with pytest.raises(NotFound):
        s.get("b", namespace=ns)
    with pytest.raises(NotFound):
        s.get("missing", namespace=ns)


def test_a_record_written_deleted_and_recreated_in_one_batch(batched_store: Store, ns: str) -> None:
    s = batched_store
    s.put("blocker", {"b": 0}, namespace=ns)
    s.put("r", {"v": 0}, namespace=ns)
    out = one_batch(
        s,
        ns,
        [
            lambda: s.put("r", {"v": 1}, namespace=ns),
            lambda: s.delete("r", namespace=ns),
            lambda: s.put("r", {"v": 2}, expected_revision=2, namespace=ns),  # deleted: head 3
            lambda: s.put("r", {"v": 3}, namespace=ns),
        ],
    )
    assert (out[0].revision, out[0].version) == (2, 2)
    assert out[1].revision == 3
    assert isinstance(out[2], VersionConflict) and out[2].current is None
    assert out[3].revision == 4 and out[3].version == 3 and out[3].created
    assert s.get("r", namespace=ns).content == {"v": 3}


def test_create_only_races_in_one_batch_have_one_winner(batched_store: Store, ns: str) -> None:
    s = batched_store
    s.put("blocker", {"b": 0}, namespace=ns)
    out = one_batch(
        s,
        ns,
        [lambda k=k: s.put("new", {"by": k}, expected_revision=0, namespace=ns) for k in range(5)],
    )
    assert isinstance(out[0], Record) and out[0].revision == 1 and out[0].created
    for lost in out[1:]:
        assert isinstance(lost, VersionConflict) and lost.current_revision == 1
        assert lost.current is not None and lost.current.content == {"by": 0}
    assert s.get("new", namespace=ns).content == {"by": 0}


def test_appends_in_one_batch_stay_contiguous_and_exactly_once(
    batched_store: Store, ns: str
) -> None:
    s = batched_store
    s.put("blocker", {"b": 0}, namespace=ns)
    s.append("chat", [{"m": 0}], namespace=ns)
    out = one_batch(
        s,
        ns,
        [
            lambda: s.append("chat", [{"m": 1}, {"m": 2}], namespace=ns),
            lambda: s.append("chat", [{"m": 3}], expected_sequence=1, namespace=ns),  # stale
            lambda: s.append("chat", [{"m": 4}], item_ids=["x"], namespace=ns),
            lambda: s.append("chat", [{"m": 4}], item_ids=["x"], namespace=ns),  # re-sent
            lambda: s.append("chat", [{"m": 5}, {"m": 6}], expected_sequence=4, namespace=ns),
        ],
    )
    assert (out[0].first_sequence, out[0].last_sequence) == (2, 3)
    assert type(out[1]).__name__ == "SequenceConflict"
    assert (out[2].first_sequence, out[2].last_sequence) == (4, 4)
    assert (out[3].first_sequence, out[3].last_sequence) == (
        4,
        4,
    )  # the stored answer, not a new item
    assert (out[4].first_sequence, out[4].last_sequence) == (5, 6)
    page = s.read("chat", namespace=ns)
    assert [i.sequence for i in page.items] == [1, 2, 3, 4, 5, 6]
    assert [i.body for i in page.items] == [{"m": n} for n in (0, 1, 2, 4, 5, 6)]


def test_a_row_held_elsewhere_does_not_stall_its_batch(batched_store: Store, ns: str) -> None:
    """MariaDB: another client holds record x (a long transaction). The batch waits at
    most 1 s for it, then hands the write to x back to its writer, which waits alone;
    the writes batched with it commit meanwhile."""
    s = batched_store
    if s.backend_name != "mysql":
        pytest.skip("SQLite has no row locks: its writers share one write lock anyway")
    s.put("blocker", {"b": 0}, namespace=ns)
    for r in ("a", "x", "y", "z"):
        s.put(r, {"v": 0}, namespace=ns)
    out: list[Any] = []
    gc = s.backend.batches
    locked_before = gc.stats.locked_writes
    with held(s, ns, "x"):
        batch = threading.Thread(
            target=lambda: out.extend(
                one_batch(
                    s,
                    ns,
                    [
                        lambda: s.put("y", {"v": 1}, namespace=ns),
                        lambda: s.put("x", {"v": 1}, namespace=ns),
                        lambda: s.put("z", {"v": 1}, namespace=ns),
                        # Before x in the batch's order: its change outlives x's failed
                        # statement (which undoes only itself) and commits.
                        lambda: s.put("a", {"v": 1}, namespace=ns),
                    ],
                )
            )
        )
        batch.start()
        # a, y and z land while x is still held (within the 1 s wait, plus slack).
        wait_until(
            lambda: all(s.get(r, namespace=ns).revision == 2 for r in ("a", "y", "z")),
            "a, y and z to commit while x is held",
        )
        assert s.get("x", namespace=ns).revision == 1
    batch.join(30)
    assert [getattr(r, "revision", r) for r in out] == [2, 2, 2, 2]
    assert s.get("x", namespace=ns).content == {"v": 1}
    assert s.get("a", namespace=ns).content == {"v": 1}
    assert gc.stats.locked_writes == locked_before + 1


def test_a_lone_write_on_a_row_held_elsewhere_does_not_hold_up_the_queue(
    batched_store: Store, ns: str
) -> None:
    """MariaDB: the leader's write is alone in its batch and another client holds its
    row. It waits for the row at most as long as a batch does, then alone, after the
    leadership is handed on: a write that queued behind it meanwhile commits while the
    row is still held (until now it waited for the row too, up to the server's 50 s)."""
    s = batched_store
    if s.backend_name != "mysql":
        pytest.skip("SQLite has no row locks: its writers share one write lock anyway")
    for r in ("x", "y"):
        s.put(r, {"v": 0}, namespace=ns)
    gc = s.backend.batches
    assert isinstance(gc, _Batching)
    gc._max_leaders = 1  # the write to y can only queue behind the lone write to x
    locked_before, solo_before = gc.stats.locked_writes, gc.stats.solo_writes
    out: list[Any] = []
    with held(s, ns, "x"):
        lone = threading.Thread(target=lambda: out.append(s.put("x", {"v": 1}, namespace=ns)))
        lone.start()
        wait_leading_alone(gc, solo_before, "the lone write")
        behind = threading.Thread(target=lambda: out.append(s.put("y", {"v": 1}, namespace=ns)))
        behind.start()
        wait_until(lambda: s.get("y", namespace=ns).revision == 2, "y to commit while x is held")
        assert s.get("x", namespace=ns).revision == 1
    lone.join(30)
    behind.join(30)
    assert sorted((r.id, r.revision) for r in out) == [("x", 2), ("y", 2)]
    assert gc.stats.locked_writes == locked_before + 1


def test_writes_to_other_records_never_wait_for_a_row_held_elsewhere(
    batched_store: Store, ns: str
) -> None:
    """MariaDB, the class of the two tests above: another client holds record X while
    16 writers put to 48 other records and 4 more to X: the first write to X leads a
    batch of its own, the others land wherever the queue puts them (alone, a key
    already busy, or among other writes). No write to another record waits
    for X longer than a batch's short waits (1 s, twice at most per write to X): they
    all complete while X is still held, and the writes to X after its release."""
    s = batched_store
    if s.backend_name != "mysql":
        pytest.skip("SQLite has no row locks: its writers share one write lock anyway")
    keys = [f"free{i}" for i in range(48)]
    for k in [*keys, "X"]:
        s.put(k, {"n": 0}, namespace=ns)
    released = threading.Event()  # set just before X is released
    lock = threading.Lock()
    done: list[tuple[str, bool]] = []  # key, completed after the release
    errors: list[BaseException] = []

    def one(key: str, n: int) -> None:
        try:
            s.put(key, {"n": n}, namespace=ns)
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            done.append((key, released.is_set()))

    def writer(t: int) -> None:
        rng = random.Random(t)
        for n in range(1, 7):
            one(rng.choice(keys), n)

    gc = s.backend.batches
    assert isinstance(gc, _Batching)
    x_writes = [threading.Thread(target=one, args=("X", n)) for n in range(1, 5)]
    threads = [*x_writes, *(threading.Thread(target=writer, args=(t,)) for t in range(16))]
    solo_before = gc.stats.solo_writes
    with held(s, ns, "X"):
        # The first write to X leads a batch of its own, the others queue behind it.
        x_writes[0].start()
        wait_leading_alone(gc, solo_before, "the first write to X")
        for th in threads[1:]:
            th.start()
        # Four writes to X cost the others at most 8 s of short waits; a write waiting
        # for X with the server's default (50 s) would still be running at 20 s.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not errors:
            if sum(1 for key, _ in done if key != "X") == 16 * 6:
                break
            time.sleep(0.01)
        released.set()
    for th in threads:
        th.join(60)
    assert not errors, errors[:3]
    late = [key for key, after in done if key != "X" and after]
    assert not late, f"{len(late)} writes to other records waited for X"
    assert len(done) == 16 * 6 + 4
    assert [after for key, after in done if key == "X"] == [True] * 4
    assert s.get("X", namespace=ns).revision == 5


def test_a_write_failing_after_it_changed_rows_is_taken_out(batched_store: Store, ns: str) -> None:
    """No savepoints: a write that fails for its own reason after it changed rows (rare:
    a refused value, a lost claim) rolls the batch back; the others are sent again
    without it and commit, and it gets its error with none of its changes kept."""
    s = batched_store
    for r in ("a", "victim", "b"):
        s.put(r, {"v": 0}, namespace=ns)
    # AsyncStore on SQLite batches on its sync executor (backends/threaded.py).
    backend = getattr(s.backend, "sync", s.backend)

    def tainted() -> Tx[None]:
        def step() -> Step[None]:
            yield Raw(
                "UPDATE revstore_records SET revision = revision + 100 "
                f"WHERE namespace = '{ns}' AND id = 'victim'"
            )
            raise InvalidInput("refused after a change")

        return Tx(step())

    def put(record: str) -> Callable[[], Tx[Record]]:
        intent = write_intent(
            Mode.PUT, ns, record, None, True, None, None, Canonical({"v": 1}, max_bytes=99)
        )
        return lambda: backend.strategy.record_write(backend.protocol, intent, None, None)

    out = backend._commit_together(
        [
            Pending(("a",), put("a")),
            Pending(("victim",), tainted),
            Pending(("b",), put("b")),
        ]
    )
    assert out[0].get().revision == 2 and out[2].get().revision == 2
    with pytest.raises(InvalidInput, match="refused after a change"):
        out[1].get()
    assert s.get("victim", namespace=ns).revision == 1
    assert s.get("a", namespace=ns).content == s.get("b", namespace=ns).content == {"v": 1}


def test_a_write_that_changed_rows_then_met_a_held_row_waits_alone(
    batched_store: Store, ns: str
) -> None:
    """MariaDB: a write of a batch changes a row, then waits for one another client
    holds. The batch is sent again without it and commits; it is handed back to wait
    for its row alone (LOCKED), not run again inside the batch's leadership."""
    s = batched_store
    if s.backend_name != "mysql":
        pytest.skip("SQLite has no row locks: its writers share one write lock anyway")
    for r in ("a", "victim", "b", "x"):
        s.put(r, {"v": 0}, namespace=ns)
    backend = s.backend

    def changes_then_waits() -> Tx[None]:
        def step() -> Step[None]:
            for record in ("victim", "x"):
                yield Raw(
                    "UPDATE revstore_records SET revision = revision + 100 "
                    f"WHERE namespace = '{ns}' AND id = '{record}'"
                )

        return Tx(step())

    def put(record: str) -> Callable[[], Tx[Record]]:
        intent = write_intent(
            Mode.PUT, ns, record, None, True, None, None, Canonical({"v": 1}, max_bytes=99)
        )
        return lambda: backend.strategy.record_write(backend.protocol, intent, None, None)

    with held(s, ns, "x"):
        out = backend._commit_together(
            [
                Pending(("a",), put("a")),
                Pending(("victim",), changes_then_waits),
                Pending(("b",), put("b")),
            ]
        )
        # Decided while x is still held.
        assert out[1] is LOCKED
        assert out[0].get().revision == 2 and out[2].get().revision == 2
        assert s.get("victim", namespace=ns).revision == 1  # its change rolled back


def test_a_write_failing_before_it_changed_rows_costs_no_resend() -> None:
    """The protocol alone (no database): a conflict decided on a read is that write's
    outcome, the batch goes on; after an UPDATE the same failure taints the batch."""

    def write(fail_after_change: bool) -> Callable[[], Tx[int]]:
        def step() -> Step[int]:
            yield Raw("SELECT 1")
            if fail_after_change:
                yield Raw("UPDATE t SET x = 1")
            raise InvalidInput("no")

        return lambda: Tx(step())

    def ok() -> Tx[int]:
        def step() -> Step[int]:
            yield Raw("UPDATE t SET x = 2")
            return 7

        return Tx(step())

    def drive(batch: list[Pending[Any]]) -> list[Outcome[Any]]:
        gen = one_by_one(batch)
        sent: list[str] = []
        try:
            op = next(gen)
            while True:
                sent.append(op.sql)
                op = gen.send(None)
        except StopIteration as done:
            return list(done.value)

    outcomes = drive([Pending("k", ok), Pending("k", write(False))])
    assert outcomes[0].get() == 7 and isinstance(outcomes[1].error, InvalidInput)
    with pytest.raises(Tainted) as tainted:
        drive([Pending("k", ok), Pending("k", write(True))])
    assert tainted.value.index == 1


def test_a_batch_of_puts_creates_revives_and_decides_each_in_order(
    batched_store: Store, ns: str
) -> None:
    """A batch of plain puts goes in shared statements (``counter_puts_together``),
    except the puts to an absent or deleted record, which go after them the general
    way, in their order: every put is decided at its turn either way."""
    s = batched_store
    s.put("blocker", {"b": 0}, namespace=ns)
    s.put("live", {"v": 0}, namespace=ns)
    s.put("gone", {"v": 0}, namespace=ns)
    s.delete("gone", namespace=ns)  # revision 2
    sent = count_shared(s)
    out = one_batch(
        s,
        ns,
        [
            lambda: s.put("new", {"v": 1}, namespace=ns),  # created: 1
            lambda: s.put("live", {"v": 1}, expected_revision=1, namespace=ns),  # 2
            lambda: s.put("new", {"v": 2}, expected_revision=1, namespace=ns),  # 2
            lambda: s.put("gone", {"v": 1}, expected_revision=1, namespace=ns),  # deleted
            lambda: s.put("gone", {"v": 1}, namespace=ns),  # revived: 3
            lambda: s.put("live", {"v": 1}, namespace=ns),  # unchanged
            lambda: s.put("new", {"v": 3}, expected_revision=1, namespace=ns),  # head 2
            lambda: s.put("live", {"v": 2}, create_version=False, namespace=ns),  # 3
        ],
    )
    assert sent == [8], "the puts went through the shared statements, once"
    assert out[0].revision == 1 and out[0].created
    assert (out[1].revision, out[1].version) == (2, 2) and not out[1].created
    assert (out[2].revision, out[2].version) == (2, 2)
    assert isinstance(out[3], VersionConflict) and out[3].current is None
    assert out[4].revision == 3 and out[4].created
    assert out[5].unchanged and out[5].revision == 2 and out[5].content == {"v": 1}
    assert isinstance(out[6], VersionConflict) and out[6].current_revision == 2
    assert out[6].current is not None and out[6].current.content == {"v": 2}
    assert (out[7].revision, out[7].version) == (3, 2)
    live = s.get("live", namespace=ns)
    assert (live.revision, live.version, live.content) == (3, 2, {"v": 2})
    assert live.created_at == out[1].created_at == out[7].created_at
    assert [(v.version, v.revision) for v in s.history("live", namespace=ns).versions] == [
        (1, 1),
        (2, 2),
    ]
    assert [(v.version, v.content) for v in s.history("new", namespace=ns).versions] == [
        (1, {"v": 1}),
        (2, {"v": 2}),
    ]
    assert s.get("gone", namespace=ns).content == {"v": 1}


@contextmanager
def refusing_poison(store: Store, ns: str) -> Iterator[None]:
    """A trigger that refuses any head of ``ns`` holding "poison": a refusal the input
    validation knows nothing of, made by the database inside a batch's statement."""
    url = parse_url(store.url)
    name = f"refuse_{abs(hash(ns)) % 10**9}"
    if store.backend_name == "sqlite":
        conn = sqlite3.connect(url.url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute(
            f"CREATE TRIGGER {name} BEFORE UPDATE ON revstore_records "
            f"WHEN NEW.namespace = '{ns}' AND instr(NEW.content, 'poison') > 0 "
            "BEGIN SELECT RAISE(ABORT, 'refuse_poison'); END"
        )
        try:
            yield
        finally:
            conn.execute(f"DROP TRIGGER {name}")
            conn.close()
        return
    my = mysql_connection(store, autocommit=True)
    try:
        with my.cursor() as cur:
            cur.execute(
                f"CREATE TRIGGER {name} BEFORE UPDATE ON revstore_records FOR EACH ROW "
                f"IF NEW.namespace = '{ns}' AND INSTR(NEW.content, 'poison') > 0 THEN "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refuse_poison'; END IF"
            )
        yield
    finally:
        with my.cursor() as cur:
            cur.execute(f"DROP TRIGGER IF EXISTS {name}")
        my.close()


def test_a_put_the_database_refuses_fails_alone_among_puts(batched_store: Store, ns: str) -> None:
    """The puts' shared statements fail as a whole for one put's reason: the batch is
    sent again with each write on its own, so only that put fails."""
    s = batched_store
    s.put("blocker", {"b": 0}, namespace=ns)
    for r in ("a", "victim", "b"):
        s.put(r, {"v": 0}, namespace=ns)
    with refusing_poison(s, ns):
        out = one_batch(
            s,
            ns,
            [
                lambda: s.put("a", {"v": 1}, namespace=ns),
                lambda: s.put("victim", {"v": "poison"}, namespace=ns),
                lambda: s.put("b", {"v": 1}, namespace=ns),
                lambda: s.put("a", {"v": 2}, namespace=ns),
            ],
        )
    assert [getattr(r, "revision", None) for r in out] == [2, None, 2, 3]
    assert isinstance(out[1], RevstoreError) and "refuse_poison" in str(out[1])
    assert s.get("victim", namespace=ns).revision == 1
    assert s.get("a", namespace=ns).content == {"v": 2}
    assert [v.version for v in s.history("a", namespace=ns).versions] == [1, 2, 3]


def test_a_batch_of_puts_and_appends_keeps_each_stream_contiguous(
    batched_store: Store, ns: str
) -> None:
    """Plain appends share the batch's statements with the puts: each batch of items
    contiguous, each ``expected_sequence`` checked at its turn, a new stream created
    the general way after them, in its order."""
    s = batched_store
    s.put("blocker", {"b": 0}, namespace=ns)
    s.put("r", {"v": 0}, namespace=ns)
    s.append("chat", [{"m": 0}], namespace=ns)
    sent = count_shared(s)
    out = one_batch(
        s,
        ns,
        [
            lambda: s.append("chat", [{"m": 1}, {"m": 2}], namespace=ns),  # 2-3
            lambda: s.append("new", [{"m": "a"}], namespace=ns),  # a new stream: 1
            lambda: s.append("chat", [{"m": 9}], expected_sequence=1, namespace=ns),  # stale
            lambda: s.put("r", {"v": 1}, namespace=ns),  # 2
            lambda: s.append("new", [{"m": "b"}], expected_sequence=1, namespace=ns),  # 2
            lambda: s.append("chat", [{"m": 3}], expected_sequence=3, namespace=ns),  # 4
        ],
    )
    assert sent == [6], "the writes went through the shared statements, once"
    assert (out[0].first_sequence, out[0].last_sequence) == (2, 3)
    assert out[1].first_sequence == 1
    assert isinstance(out[2], SequenceConflict) and out[2].current_sequence == 3
    assert out[3].revision == 2
    assert out[4].first_sequence == 2
    assert (out[5].first_sequence, out[5].last_sequence) == (4, 4)
    chat = s.read("chat", namespace=ns)
    assert [(i.sequence, i.body) for i in chat.items] == [
        (1, {"m": 0}),
        (2, {"m": 1}),
        (3, {"m": 2}),
        (4, {"m": 3}),
    ]
    assert [i.body for i in s.read("new", namespace=ns).items] == [{"m": "a"}, {"m": "b"}]
    info = s.stream_info("chat", namespace=ns)
    assert (info.last_sequence, info.item_count) == (4, 4)


@pytest.mark.parametrize("api", APIS)
def test_a_connection_keeps_a_batchs_short_lock_wait_only_for_batches(
    api: str, sqlite_url: str
) -> None:
    """MariaDB: a batch waits at most 1 s for a row lock; everything else the session's
    default. A connection keeps the setting between batches (no statement to shorten
    and restore it around each), and a use outside a batch restores it first."""
    s = open_store(api, backend_url_for("mysql", sqlite_url), pool_size=1, max_overflow=0)
    try:
        s.create_schema()
        backend = s.backend  # one pooled connection: every call below is on it

        def read(sql: str) -> Step[Any]:
            rows = yield Raw(sql)
            return rows.first()[-1]

        def wait(how: str) -> int:
            step = read("SELECT @@SESSION.innodb_lock_wait_timeout")
            if how == "read":
                return int(backend.run(step))
            return int(backend.transaction(step, short_lock_wait=how == "batch"))

        def sets() -> int:
            # SET statements this session received (the setting's own, and no other).
            return int(
                backend.transaction(
                    read("SHOW SESSION STATUS LIKE 'Com_set_option'"), short_lock_wait=True
                )
            )

        default = wait("read")
        assert default > 1
        assert wait("batch") == 1
        before = sets()
        for _ in range(3):
            assert wait("batch") == 1
        assert sets() == before  # kept from batch to batch: no statement sent
        assert wait("transaction") == default  # restored for a transaction outside
        assert wait("batch") == 1
        assert wait("read") == default  # and for anything run without one
    finally:
        s.close()
