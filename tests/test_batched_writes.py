"""Group commit on SQLite and MariaDB (``backends/batch.py``): concurrent write
transactions of one process run in one transaction, each in its own savepoint, and each
keeps its own outcome, evaluated at its turn.

Both APIs: ``Store`` (threads, ``GroupCommit``) and ``AsyncStore`` (tasks,
``AsyncGroupCommit``). Every test builds one batch deterministically: another
connection holds the database (SQLite: its write lock; MariaDB: the row of record
``blocker``), a first write to ``blocker`` becomes the leader and waits behind it, the
writes under test queue behind the leader one at a time (so their order is known), and
then the hold is released: the leader's successor sends the whole queue as one batch.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
import pytest
from sqlalchemy.engine import make_url

from apis import APIS, open_store
from revstore import Store
from revstore.backends.groupcommit import _Batching
from revstore.config import parse_url
from revstore.errors import NotFound, VersionConflict
from revstore.record import Record
from testdbs import backend_url_for

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
def held(store: Store, ns: str) -> Iterator[None]:
    """Hold what a write to ``ns/blocker`` needs, from a connection of our own."""
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
    u = make_url(url.sqlalchemy())
    my = pymysql.connect(
        host=u.host,
        port=u.port or 3306,
        user=u.username,
        password=u.password or "",
        database=u.database,
        autocommit=False,
    )
    try:
        with my.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(
                "SELECT revision FROM revstore_records WHERE namespace = %s AND id = 'blocker' "
                "FOR UPDATE",
                (ns,),
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


def one_batch(store: Store, ns: str, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` (writes) as one batch, in this order; each one's result or error."""
    gc = store.backend.batches
    assert isinstance(gc, _Batching)
    # One batch in flight at a time (MariaDB allows several): the queue then goes to
    # the leader's successor whole, in order.
    gc._max_leaders = 1
    before = (gc.stats.batches, gc.stats.batched_writes)
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
        wait_until(lambda: gc._leaders == 1, "the leader")
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
