"""Group commit: one-statement writes that threads of one process make at the same
moment, sent to the database as one statement and one commit.

A server spends most of a small write on the parts every statement pays once: the
round trip, parse/bind, executor start-up and, above all, the commit's WAL flush. When
several threads write to *different* records at once, the first of them (the leader)
takes every write queued behind it and sends them together; the others wait for their
own result. Each write keeps its own outcome — applied, or handed back (``None``) to
the caller's ordinary path, exactly as if its own statement had matched no row — and a
failure of the statement (retryable error, lost connection) reaches every write of the
batch, whose callers retry or report it as they would for their own statement.

A write to a key that is already queued or in flight is never batched: one statement
cannot change a row twice, and queueing it behind a client round trip would serialise
a hot record in the client, where the database's row lock orders it faster.

This module knows nothing of SQL; the backend supplies ``run_one`` and ``run_many``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


class _Slot(Generic[Req, Res]):
    __slots__ = ("_done", "error", "key", "lead", "request", "result")

    def __init__(self, request: Req, key: Hashable) -> None:
        self.request = request
        self.key = key
        # A lock taken at birth and released when the slot is served: the cheapest
        # one-shot signal between two threads (an Event builds a Condition per wait).
        self._done = threading.Lock()
        self._done.acquire()
        self.lead = False  # set when a finishing leader hands the lead to this slot
        self.result: Res | None = None
        self.error: BaseException | None = None

    def wait(self) -> None:
        self._done.acquire()

    def set(self) -> None:
        self._done.release()

    def outcome(self) -> Res:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set whenever error is None


class GroupCommitStats:
    """Counters for tests and benchmarks (read without the lock: indicative only)."""

    __slots__ = ("batched_writes", "batches", "largest", "solo_writes")

    def __init__(self) -> None:
        self.batches = 0  # statements sent for more than one write
        self.batched_writes = 0  # writes that went in those statements
        self.largest = 0
        self.solo_writes = 0  # writes sent alone (nobody to batch with, or a busy key)


class GroupCommit(Generic[Req, Res]):
    """Batches concurrent ``submit`` calls on distinct keys into ``run_many`` calls.

    At most ``max_leaders`` batches are in flight per instance (per process): while
    they run, new writes queue, and the next leader takes up to ``max_batch`` of them.
    One leader is the default. On spread records, two leaders ran 1.03 times as fast as the code
    without group commit (``benchmarks/results/2026-11-22-group-commit-2-leaders.md``)
    and one leader 1.81 times (``2026-11-22-group-commit.md``), each against that code in
    the same run: a second leader mostly sends the writes that would have made the
    first batch larger.
    """

    def __init__(
        self,
        run_one: Callable[[Req], Res],
        run_many: Callable[[list[Req]], list[Res]],
        key: Callable[[Req], Hashable],
        *,
        max_batch: int = 64,
        max_leaders: int = 1,
    ) -> None:
        if max_batch < 1 or max_leaders < 1:
            raise ValueError("max_batch and max_leaders must be at least 1")
        self._run_one = run_one
        self._run_many = run_many
        self._key = key
        self._max_batch = max_batch
        self._max_leaders = max_leaders
        self._lock = threading.Lock()
        self._queue: deque[_Slot[Req, Res]] = deque()
        self._busy: set[Hashable] = set()  # keys queued or in flight
        self._leaders = 0
        self.stats = GroupCommitStats()

    def submit(self, request: Req) -> Res:
        key = self._key(request)
        with self._lock:
            if key in self._busy:
                busy = True
            else:
                busy = False
                slot: _Slot[Req, Res] = _Slot(request, key)
                self._busy.add(key)
                lead = self._leaders < self._max_leaders
                if lead:
                    self._leaders += 1
                else:
                    self._queue.append(slot)
        if busy:
            # Same key already queued or in flight: see the module docstring.
            self.stats.solo_writes += 1
            return self._run_one(request)
        if not lead:
            slot.wait()
            if not slot.lead:
                return slot.outcome()
        self._lead(slot)
        return slot.outcome()

    def _lead(self, own: _Slot[Req, Res]) -> None:
        with self._lock:
            batch = [own]
            while self._queue and len(batch) < self._max_batch:
                batch.append(self._queue.popleft())
        try:
            if len(batch) == 1:
                self.stats.solo_writes += 1
                results = [self._run_one(own.request)]
            else:
                results = self._run_many([s.request for s in batch])
                self.stats.batches += 1
                self.stats.batched_writes += len(batch)
                self.stats.largest = max(self.stats.largest, len(batch))
        except BaseException as exc:
            # The statement failed as a whole: nothing of it was applied (or, for a
            # lost connection during its commit, all of it may have been), which is
            # what every write of the batch reports.
            for s in batch:
                s.error = exc
        else:
            for s, r in zip(batch, results, strict=True):
                s.result = r
        with self._lock:
            for s in batch:
                self._busy.discard(s.key)
            # Hand the lead to the oldest waiter rather than leaving the queue to the
            # next caller: waiters must not depend on new traffic to be served.
            successor = self._queue.popleft() if self._queue else None
            if successor is not None:
                successor.lead = True
            else:
                self._leaders -= 1
        for s in batch[1:]:
            s.set()
        if successor is not None:
            successor.set()
