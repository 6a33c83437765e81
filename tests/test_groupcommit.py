"""Group commit, the mechanism: which writes share a batch, what each caller gets back.

The backend statement is replaced here by a function over a dict, because what is
under test is the batching between threads; the PostgreSQL statement it drives is
tested against the real server in ``test_postgresql_group_commit.py``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from revstore.backends.groupcommit import GroupCommit
from revstore.errors import Retryable


class Ledger:
    """Applies (key, value) writes; records which writes went out together."""

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.values: dict[str, list[int]] = {}
        self.batches: list[list[tuple[str, int]]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def _apply(self, batch: list[tuple[str, int]]) -> list[int | None]:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.batches.append(batch)
        time.sleep(self.delay)  # the round trip, during which others queue
        out: list[int | None] = []
        with self.lock:
            for key, value in batch:
                if value < 0:
                    out.append(None)  # "matched no row": the caller's own path decides
                else:
                    self.values.setdefault(key, []).append(value)
                    out.append(len(self.values[key]))
            self.in_flight -= 1
        return out

    def one(self, req: tuple[str, int]) -> int | None:
        return self._apply([req])[0]

    def many(self, reqs: list[tuple[str, int]]) -> list[int | None]:
        assert len({k for k, _ in reqs}) == len(reqs), "a batch holds each key once"
        return self._apply(reqs)


def group(ledger: Ledger, **kw: int) -> GroupCommit[tuple[str, int], int | None]:
    return GroupCommit(ledger.one, ledger.many, key=lambda r: r[0], **kw)


def test_concurrent_writes_on_distinct_keys_share_statements() -> None:
    ledger = Ledger()
    gc = group(ledger)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(gc.submit, [(f"k{i}", i) for i in range(320)]))
    # Every write applied exactly once, each caller got its own result.
    assert results == [1] * 320
    assert sorted(v for vs in ledger.values.values() for v in vs) == list(range(320))
    assert gc.stats.batches > 0 and gc.stats.largest > 1
    assert len(ledger.batches) < 320  # fewer statements than writes
    assert gc.stats.batched_writes + gc.stats.solo_writes == 320
    assert ledger.most_in_flight == 1  # one leader per GroupCommit by default


def test_a_busy_key_is_sent_alone_and_in_order_per_key() -> None:
    ledger = Ledger()
    gc = group(ledger)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(gc.submit, [("hot", i) for i in range(200)]))
    # One key: never two writes of it in one batch, and every write applied once.
    assert all(len(b) == 1 for b in ledger.batches)
    assert sorted(ledger.values["hot"]) == list(range(200))
    assert sorted(r for r in results if r is not None) == list(range(1, 201))
    assert gc.stats.batches == 0


def test_a_write_that_matched_nothing_gets_none_and_others_are_unaffected() -> None:
    ledger = Ledger()
    gc = group(ledger)
    reqs = [(f"k{i}", -1 if i % 3 == 0 else i) for i in range(90)]
    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(gc.submit, reqs))
    for (_, value), result in zip(reqs, results, strict=True):
        assert result == (None if value < 0 else 1)


def test_a_failed_statement_fails_every_write_of_its_batch_and_no_other() -> None:
    ledger = Ledger()
    failed: list[list[tuple[str, int]]] = []

    def many(reqs: list[tuple[str, int]]) -> list[int | None]:
        if any(v == 13 for _, v in reqs):
            failed.append(reqs)
            raise Retryable("deadlock_detected", code="40P01")
        return ledger.many(reqs)

    def one(req: tuple[str, int]) -> int | None:
        if req[1] == 13:
            failed.append([req])
            raise Retryable("deadlock_detected", code="40P01")
        return ledger.one(req)

    gc: GroupCommit[tuple[str, int], int | None] = GroupCommit(one, many, key=lambda r: r[0])

    def submit(req: tuple[str, int]) -> str:
        try:
            gc.submit(req)
        except Retryable:
            return "failed"
        return "ok"

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(submit, [(f"k{i}", i) for i in range(96)]))
    failed_values = {v for batch in failed for _, v in batch}
    assert len(failed) == 1 and 13 in failed_values
    for i, outcome in enumerate(outcomes):
        assert outcome == ("failed" if i in failed_values else "ok")
    applied = {v for vs in ledger.values.values() for v in vs}
    assert applied.isdisjoint(failed_values) and len(applied) == 96 - len(failed_values)


def test_waiters_are_served_without_new_traffic() -> None:
    # A burst, then silence: the last waiters must be led by a finishing leader.
    ledger = Ledger(delay=0.02)
    gc = group(ledger, max_leaders=1)
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(gc.submit, (f"k{i}", i)) for i in range(20)]
        results = [f.result(timeout=10) for f in futures]
    assert results == [1] * 20  # every waiter served (a starved one times out above)
    assert len(ledger.batches) < 20  # and they were served in batches


def test_max_batch_bounds_a_statement() -> None:
    ledger = Ledger(delay=0.02)
    gc = group(ledger, max_batch=4, max_leaders=1)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(gc.submit, [(f"k{i}", i) for i in range(64)]))
    assert max(len(b) for b in ledger.batches) <= 4
    assert gc.stats.largest == 4


def test_bad_limits_are_refused() -> None:
    ledger = Ledger()
    with pytest.raises(ValueError):
        group(ledger, max_batch=0)
    with pytest.raises(ValueError):
        group(ledger, max_leaders=0)


def test_max_leaders_bounds_the_statements_in_flight() -> None:
    ledger = Ledger(delay=0.01)
    gc = group(ledger, max_leaders=2)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(gc.submit, [(f"k{i}", i) for i in range(256)]))
    assert results == [1] * 256
    assert ledger.most_in_flight == 2
