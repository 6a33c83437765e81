"""Group commit, the mechanism: which writes share a batch, what each caller gets back.

The backend statement is replaced here by a function over a dict, because what is
under test is the batching between threads; the PostgreSQL statement it drives is
tested against the real server in ``test_postgresql_group_commit.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from revstore.backends import groupcommit
from revstore.backends.groupcommit import (
    HOT_SECONDS,
    LOCKED,
    AsyncGroupCommit,
    GroupCommit,
    Locked,
    ThreadedGroupCommit,
    _ThreadSignal,
)
from revstore.errors import AmbiguousCommit, Retryable, Unavailable


class Ledger:
    """Applies (key, value) writes; records which writes went out together."""

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.values: dict[str, list[int]] = {}
        self.batches: list[list[tuple[str, int]]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.door = threading.Event()  # cleared: a statement sent waits until it is set
        self.door.set()

    def _apply(self, batch: list[tuple[str, int]]) -> list[int | None]:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.batches.append(batch)
        self.door.wait(10)
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


def outcomes(
    gc: GroupCommit[tuple[str, int], int | None], n: int, error: type[Exception], label: str
) -> list[str]:
    """Submit ("k0", 0) .. (f"k{n - 1}", n - 1) from 24 threads: per write, in order,
    "ok", or ``label`` where the write raised ``error``."""

    def submit(req: tuple[str, int]) -> str:
        try:
            gc.submit(req)
        except error:
            return label
        return "ok"

    with ThreadPoolExecutor(24) as pool:
        return list(pool.map(submit, [(f"k{i}", i) for i in range(n)]))


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

    results = outcomes(gc, 96, Retryable, "failed")
    failed_values = {v for batch in failed for _, v in batch}
    assert len(failed) == 1 and 13 in failed_values
    for i, outcome in enumerate(results):
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


def closed_door() -> tuple[threading.Event, list[int], Callable[[], Iterator[None]]]:
    """A ``lead_within`` that waits until the door is set (SQLite: the write gate
    another process holds) and notes the thread that entered."""
    door = threading.Event()
    entered: list[int] = []

    @contextmanager
    def within() -> Iterator[None]:
        door.wait(10)
        entered.append(threading.get_ident())
        yield

    return door, entered, within


def test_writes_queued_while_the_leader_waits_to_enter_join_its_batch() -> None:
    # ``lead_within``: the leader takes its batch only once inside, so every write that
    # queued meanwhile goes with it.
    door, entered, within = closed_door()
    ledger = Ledger(delay=0.0)
    gc = GroupCommit(ledger.one, ledger.many, key=lambda r: r[0], lead_within=within)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(gc.submit, (f"k{i}", i)) for i in range(8)]
        deadline = time.monotonic() + 10
        while len(gc._queue) < 7 and time.monotonic() < deadline:
            time.sleep(0.001)  # the first write leads and waits at the door
        door.set()
        assert [f.result(timeout=10) for f in futures] == [1] * 8
    assert [len(b) for b in ledger.batches] == [8] and len(entered) == 1


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


class Poisoned(Exception):
    """A failure that belongs to one write (as a constraint violation does)."""


def test_a_statement_failed_by_one_write_is_split_so_the_others_land() -> None:
    ledger = Ledger()
    sent: list[list[tuple[str, int]]] = []

    def many(reqs: list[tuple[str, int]]) -> list[int | None]:
        sent.append(reqs)
        if any(v % 17 == 5 for _, v in reqs):
            raise Poisoned("check constraint")  # the whole statement fails, applies nothing
        return ledger.many(reqs)

    gc: GroupCommit[tuple[str, int], int | None] = GroupCommit(
        ledger.one, many, key=lambda r: r[0], shared=lambda exc: not isinstance(exc, Poisoned)
    )

    results = outcomes(gc, 192, Poisoned, "poisoned")
    # Only the guilty writes failed; every other write landed exactly once.
    for i, outcome in enumerate(results):
        assert outcome == ("poisoned" if i % 17 == 5 else "ok"), i
    assert sorted(v for vs in ledger.values.values() for v in vs) == [
        i for i in range(192) if i % 17 != 5
    ]
    assert gc.stats.splits > 0, "no batch held a guilty write: the test raced nothing"
    # Each guilty write was finally sent alone, and no write was sent twice once applied.
    poisoned = {v for _, v in [r for b in sent for r in b] if v % 17 == 5}
    assert all([(f"k{v}", v)] in sent for v in poisoned)


def test_a_shared_failure_is_never_sent_again() -> None:
    # A lost connection during the commit may have applied the statement: re-sending
    # any of its writes could apply it twice. Each gets the error, once.
    sent: list[list[tuple[str, int]]] = []
    ledger = Ledger()

    def many(reqs: list[tuple[str, int]]) -> list[int | None]:
        sent.append(reqs)
        if any(v == 13 for _, v in reqs):
            raise AmbiguousCommit("connection lost during a one-statement write")
        return ledger.many(reqs)

    gc: GroupCommit[tuple[str, int], int | None] = GroupCommit(
        ledger.one, many, key=lambda r: r[0], shared=lambda exc: isinstance(exc, Unavailable)
    )

    results = outcomes(gc, 96, AmbiguousCommit, "ambiguous")
    failed = [b for b in sent if any(v == 13 for _, v in b)]
    assert len(failed) == 1 and gc.stats.splits == 0
    for i, outcome in enumerate(results):
        assert outcome == ("ambiguous" if (f"k{i}", i) in failed[0] else "ok")
    assert sum(len(b) for b in sent) == 96  # no write sent twice


def test_a_write_on_a_row_held_elsewhere_waits_outside_the_leadership() -> None:
    # "held" is locked by another client: run_many skips it, and its caller waits in
    # run_one after the leadership was handed on, while writes to other keys go on.
    ledger = Ledger(delay=0.001)
    released = threading.Event()
    held_waiting = threading.Event()
    one_calls: list[tuple[str, int]] = []

    def one(req: tuple[str, int]) -> int | None:
        one_calls.append(req)
        if req[0] == "held":
            held_waiting.set()
            assert released.wait(60), "the lock was never released"
        return ledger.one(req)

    def many(reqs: list[tuple[str, int]]) -> list[int | Locked | None]:
        if released.is_set():
            return list(ledger.many(reqs))
        held = [k == "held" for k, _ in reqs]
        applied = iter(ledger.many([r for r, h in zip(reqs, held, strict=True) if not h]))
        return [LOCKED if h else next(applied) for h in held]

    gc: GroupCommit[tuple[str, int], int | None] = GroupCommit(one, many, key=lambda r: r[0])
    done_while_held: list[bool] = []

    def submit(req: tuple[str, int]) -> int | None:
        result = gc.submit(req)
        done_while_held.append(not released.is_set())
        return result

    with ThreadPoolExecutor(17) as pool:
        held = [pool.submit(gc.submit, ("held", 1))]
        assert held_waiting.wait(60)
        held.append(pool.submit(gc.submit, ("held", 2)))  # busy key: straight to run_one
        others = list(pool.map(submit, [(f"k{i}", i) for i in range(160)]))
        released.set()
        assert sorted(f.result(timeout=60) or 0 for f in held) == [1, 2]
    assert others == [1] * 160 and all(done_while_held)
    assert gc.stats.locked_writes == 1 and gc.stats.batches > 0
    assert sorted(one_calls) == [("held", 1), ("held", 2)]


def test_a_key_found_locked_goes_straight_to_run_one_for_a_while() -> None:
    # A hot record written by other processes too: a batch would mostly skip it and
    # cost it a second trip, so for HOT_SECONDS after a skip its writes go alone.
    ledger = Ledger(delay=0)
    one_calls: list[tuple[str, int]] = []
    many_calls: list[list[tuple[str, int]]] = []
    skip = [True]
    clock = [1000.0]  # a fake clock: no timing in the test

    def one(req: tuple[str, int]) -> int | None:
        one_calls.append(req)
        return ledger.one(req)

    def many(reqs: list[tuple[str, int]]) -> list[int | Locked | None]:
        many_calls.append(reqs)
        if skip[0]:
            skip[0] = False
            return [LOCKED]
        return list(ledger.many(reqs))

    gc: GroupCommit[tuple[str, int], int | None] = GroupCommit(
        one, many, key=lambda r: r[0], clock=lambda: clock[0]
    )
    results = [gc.submit(("hot", i)) for i in range(5)]
    clock[0] += HOT_SECONDS / 2
    results.append(gc.submit(("hot", 5)))
    assert gc.submit(("other", 0)) == 1  # another key is batched as ever
    clock[0] += HOT_SECONDS
    results.append(gc.submit(("hot", 6)))  # the memory has expired: a batch again
    assert results == list(range(1, 8))
    assert many_calls == [[("hot", 0)], [("other", 0)], [("hot", 6)]]
    assert one_calls == [("hot", i) for i in range(6)]
    assert gc.stats.locked_writes == 1


# ---------------------------------------------------------------- chains (run_chain)


class ChainLedger(Ledger):
    """A Ledger whose backend also applies several writes of one key in one call."""

    def __init__(self, delay: float = 0.002) -> None:
        super().__init__(delay)
        self.chains: list[list[tuple[str, int]]] = []

    def chain(self, reqs: list[tuple[str, int]]) -> list[int | None]:
        assert len({k for k, _ in reqs}) == 1, "a chain holds one key"
        assert len(reqs) > 1, "a chain of one is sent by run_one"
        self.chains.append(reqs)
        return self._apply(reqs)


def chained(ledger: ChainLedger, **kw: int) -> GroupCommit[tuple[str, int], int | None]:
    return GroupCommit(ledger.one, ledger.many, key=lambda r: r[0], run_chain=ledger.chain, **kw)


def test_writes_to_a_busy_key_go_together_in_chains_in_their_order() -> None:
    ledger = ChainLedger()
    gc = chained(ledger)
    threads, each = 16, 25

    def writer(t: int) -> list[int | None]:
        # value = t * 1000 + n: a thread's own writes are sent one after the other
        return [gc.submit(("hot", t * 1000 + n)) for n in range(each)]

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(writer, range(threads)))
    applied = ledger.values["hot"]
    assert sorted(applied) == sorted(t * 1000 + n for t in range(threads) for n in range(each))
    # Each caller got the place its own write took, and each thread's writes landed
    # in the order it made them: a chain keeps the order of arrival.
    for t, mine in enumerate(results):
        assert [applied[r - 1] for r in mine if r is not None] == [
            t * 1000 + n for n in range(each)
        ]
    assert gc.stats.chains > 0 and gc.stats.largest > 1, "nothing was chained"
    assert len(ledger.batches) < threads * each  # fewer statements than writes
    assert max(len(c) for c in ledger.chains) <= 64  # max_batch bounds a chain too
    assert gc.stats.chained_writes + gc.stats.solo_writes + gc.stats.batched_writes == 400


def test_a_chain_failed_by_one_write_is_split_so_the_others_land_in_order() -> None:
    ledger = ChainLedger()

    def chain(reqs: list[tuple[str, int]]) -> list[int | None]:
        if any(v % 7 == 3 for _, v in reqs):
            raise ValueError("refused")  # one write's fault: nothing applied
        return ledger.chain(reqs)

    def one(req: tuple[str, int]) -> int | None:
        if req[1] % 7 == 3:
            raise ValueError("refused")
        return ledger.one(req)

    gc: GroupCommit[tuple[str, int], int | None] = GroupCommit(
        one, ledger.many, key=lambda r: r[0], run_chain=chain, shared=lambda e: False
    )
    outcome = outcomes_on_one_key(gc, 140)
    assert [o == "refused" for o in outcome] == [i % 7 == 3 for i in range(140)]
    assert sorted(ledger.values["hot"]) == [i for i in range(140) if i % 7 != 3]
    assert gc.stats.splits > 0 and gc.stats.chains > 0


def outcomes_on_one_key(gc: GroupCommit[tuple[str, int], int | None], n: int) -> list[str]:
    def submit(i: int) -> str:
        try:
            gc.submit(("hot", i))
        except ValueError:
            return "refused"
        return "ok"

    with ThreadPoolExecutor(24) as pool:
        return list(pool.map(submit, range(n)))


def test_a_write_skipped_on_a_row_held_elsewhere_joins_its_keys_chain() -> None:
    ledger = ChainLedger(delay=0.001)
    skipped = [0]

    def many(reqs: list[tuple[str, int]]) -> list[int | Locked | None]:
        # "held" is held by another client for the first two batches that carry it
        held = [k == "held" for k, _ in reqs]
        if not any(held) or skipped[0] >= 2:
            return list(ledger.many(reqs))
        skipped[0] += 1
        applied = iter(ledger.many([r for r, h in zip(reqs, held, strict=True) if not h]))
        return [LOCKED if h else next(applied) for h in held]

    gc: GroupCommit[tuple[str, int], int | None] = GroupCommit(
        ledger.one, many, key=lambda r: r[0], run_chain=ledger.chain
    )
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(gc.submit, [("held" if i % 2 else f"k{i}", i) for i in range(200)]))
    assert sorted(ledger.values["held"]) == list(range(1, 200, 2))
    assert sorted(r for i, r in enumerate(results) if i % 2) == list(range(1, 101))
    assert all(r == 1 for i, r in enumerate(results) if not i % 2)
    assert gc.stats.locked_writes >= 1


def _first_chain_of_three(
    gc: GroupCommit[tuple[str, int], int | None], ledger: ChainLedger
) -> None:
    """Make ``hot`` a key whose last chain carried three writes: one write in flight
    alone, three queued behind it, sent together when it is done."""
    with gc._lock:
        gc._hot["hot"] = time.monotonic() + 60  # found locked: its writes go to chains
    ledger.door.clear()  # the first write stays in flight until the three queued
    first = threading.Thread(target=gc.submit, args=(("hot", 0),))
    first.start()
    wait_for(lambda: gc._chains.get("hot") is not None)
    behind = [threading.Thread(target=gc.submit, args=(("hot", v),)) for v in (1, 2, 3)]
    for i, t in enumerate(behind):
        t.start()  # queued in this order
        wait_for(lambda i=i: len(gc._chains.get("hot") or ()) == i + 1)
    ledger.door.set()
    first.join(10)
    for t in behind:
        t.join(10)
    assert ledger.chains and ledger.chains[-1] == [("hot", 1), ("hot", 2), ("hot", 3)]


def wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_new_chain_waits_for_the_writers_of_the_last_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The writers of a hot key come back together after its chain: the first of them
    # waits for the others instead of going alone (one commit, not two).
    monkeypatch.setattr(groupcommit, "GATHER_SECONDS", 10.0)  # only the writes end it
    ledger = ChainLedger(delay=0.05)
    gc = chained(ledger)
    _first_chain_of_three(gc, ledger)
    ones = len([b for b in ledger.batches if len(b) == 1])
    writers = [threading.Thread(target=gc.submit, args=(("hot", v),)) for v in (4, 5, 6)]
    for t in writers:
        t.start()
        time.sleep(0.01)  # one after the other: the first leads, and waits
    for t in writers:
        t.join(10)
    assert ledger.chains[-1] == [("hot", 4), ("hot", 5), ("hot", 6)]
    assert len([b for b in ledger.batches if len(b) == 1]) == ones  # none went alone
    assert ledger.values["hot"] == [0, 1, 2, 3, 4, 5, 6]


def test_a_lone_write_after_a_chain_waits_at_most_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(groupcommit, "GATHER_SECONDS", 0.05)
    ledger = ChainLedger(delay=0.01)
    gc = chained(ledger)
    _first_chain_of_three(gc, ledger)
    assert gc.submit(("hot", 4)) == 5  # nobody else came: it went alone after the wait
    assert not gc._gathering


def test_a_key_gone_cold_waits_for_nobody() -> None:
    now = [0.0]
    ledger = ChainLedger(delay=0.01)
    gc: GroupCommit[tuple[str, int], int | None] = GroupCommit(
        ledger.one, ledger.many, key=lambda r: r[0], run_chain=ledger.chain, clock=lambda: now[0]
    )
    with gc._lock:
        gc._chains["hot"] = deque()
    gc._finish_chain("hot", 3)  # a chain of three just ended
    now[0] += HOT_SECONDS * 2  # long ago
    with gc._lock:
        slot, lead = gc._join_chain(("hot", 1), "hot", lambda: _ThreadSignal())
    assert lead and slot.gather == 0 and slot.gathered is None


def test_a_new_chain_waits_for_the_writers_of_the_last_one_on_asyncio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(groupcommit, "GATHER_SECONDS", 10.0)  # only the writes end it
    sent: list[list[int]] = []
    applied: list[int] = []

    async def apply(values: list[int]) -> list[int | None]:
        sent.append(values)
        await asyncio.sleep(0.05)
        applied.extend(values)
        return [len(applied) - len(values) + k + 1 for k in range(len(values))]

    async def one(req: tuple[str, int]) -> int | None:
        return (await apply([req[1]]))[0]

    async def many(reqs: list[tuple[str, int]]) -> list[int | None]:
        return await apply([v for _, v in reqs])

    async def main() -> None:
        gc: AsyncGroupCommit[tuple[str, int], int | None] = AsyncGroupCommit(
            one, many, key=lambda r: r[0], run_chain=many
        )
        gc._hot["hot"] = time.monotonic() + 60  # its writes go to chains
        first = asyncio.create_task(gc.submit(("hot", 0)))
        await asyncio.sleep(0.01)
        behind = []
        for v in (1, 2, 3):
            behind.append(asyncio.create_task(gc.submit(("hot", v))))
            await asyncio.sleep(0.001)
        await asyncio.gather(first, *behind)
        assert sent[-1] == [1, 2, 3]
        later = []
        for v in (4, 5, 6):
            later.append(asyncio.create_task(gc.submit(("hot", v))))
            await asyncio.sleep(0.01)  # one after the other: the first leads, and waits
        assert await asyncio.gather(*later) == [5, 6, 7]
        assert sent == [[0], [1, 2, 3], [4, 5, 6]]

    asyncio.run(main())


class Hops:
    """``ThreadedGroupCommit``'s ``in_thread``: runs a call in a pool thread and counts
    the crossings from the event loop (and the threads that made them)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(4)
        self.calls = 0
        self.threads: set[int] = set()

    async def __call__(self, fn: Callable[[], object]) -> object:
        self.calls += 1

        def run() -> object:
            self.threads.add(threading.get_ident())
            return fn()

        return await asyncio.get_running_loop().run_in_executor(self.pool, run)


def threaded(
    ledger: Ledger, hops: Hops, **kw: object
) -> ThreadedGroupCommit[tuple[str, int], int | None]:
    return ThreadedGroupCommit(
        ledger.one,
        ledger.many,
        key=lambda r: r[0],
        in_thread=hops,
        **kw,  # type: ignore[arg-type]
    )


def test_tasks_writes_cross_to_a_thread_once_per_batch() -> None:
    # The sync statements run in the pool's threads, a batch in one call: fewer
    # crossings than writes, each write applied once with its own result.
    ledger, hops = Ledger(delay=0.005), Hops()

    async def main() -> list[int | None]:
        gc = threaded(ledger, hops)
        return await asyncio.gather(*(gc.submit((f"k{i}", i)) for i in range(200)))

    assert asyncio.run(main()) == [1] * 200
    assert sorted(v for vs in ledger.values.values() for v in vs) == list(range(200))
    assert hops.calls == len(ledger.batches) < 40
    assert threading.get_ident() not in hops.threads


def test_threaded_leader_takes_its_batch_inside_lead_within_in_its_thread() -> None:
    # As in GroupCommit: the writes that queued while the leader waited to enter go in
    # its batch, and the leader enters in the thread that sends the batch.
    door, entered, within = closed_door()
    ledger, hops = Ledger(delay=0.0), Hops()

    async def main() -> list[int | None]:
        gc = threaded(ledger, hops, lead_within=within)
        tasks = [asyncio.create_task(gc.submit((f"k{i}", i))) for i in range(8)]
        deadline = time.monotonic() + 10
        while len(gc._queue) < 7 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # the first write leads and waits at the door
        door.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [1] * 8
    assert [len(b) for b in ledger.batches] == [8] and len(entered) == 1
    assert entered[0] in hops.threads


def test_threaded_batch_failed_by_one_write_is_split_so_the_others_land() -> None:
    ledger, hops = Ledger(), Hops()

    def many(reqs: list[tuple[str, int]]) -> list[int | None]:
        if any(v % 17 == 5 for _, v in reqs):
            raise Poisoned("check constraint")
        return ledger.many(reqs)

    async def main() -> list[BaseException | int | None]:
        gc: ThreadedGroupCommit[tuple[str, int], int | None] = ThreadedGroupCommit(
            ledger.one,
            many,
            key=lambda r: r[0],
            in_thread=hops,
            shared=lambda exc: not isinstance(exc, Poisoned),
        )
        return await asyncio.gather(
            *(gc.submit((f"k{i}", i)) for i in range(120)), return_exceptions=True
        )

    results = asyncio.run(main())
    for i, r in enumerate(results):
        assert isinstance(r, Poisoned) if i % 17 == 5 else r == 1, (i, r)
    assert sorted(v for vs in ledger.values.values() for v in vs) == [
        i for i in range(120) if i % 17 != 5
    ]


def test_threaded_writes_get_the_error_when_no_thread_can_run_them() -> None:
    # The pool is shut down (the store is closing): every write gets the error, none
    # waits for a batch that never runs.
    ledger, hops = Ledger(delay=0.0), Hops()
    hops.pool.shutdown()

    async def main() -> list[BaseException | int | None]:
        gc = threaded(ledger, hops)
        return await asyncio.wait_for(
            asyncio.gather(*(gc.submit((f"k{i}", i)) for i in range(20)), return_exceptions=True),
            10,
        )

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert not ledger.batches


def test_threaded_group_commit_takes_the_sync_ones_batching_but_no_chains() -> None:
    ledger, hops = ChainLedger(), Hops()
    door, entered, within = closed_door()
    door.set()
    sync = GroupCommit(ledger.one, ledger.many, key=lambda r: r[0], max_batch=3, lead_within=within)
    gc = ThreadedGroupCommit.beside(sync, hops)
    assert (gc._max_batch, gc._max_leaders, gc._lead_within) == (3, 1, within)

    async def main() -> list[int | None]:
        return await asyncio.gather(*(gc.submit((f"k{i}", i)) for i in range(9)))

    assert asyncio.run(main()) == [1] * 9
    assert max(len(b) for b in ledger.batches) <= 3 and entered
    with pytest.raises(ValueError):
        ThreadedGroupCommit.beside(chained(ledger), hops)
