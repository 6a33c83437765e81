"""Group commit: one-statement writes that threads of one process make at the same
moment, sent to the database as one statement and one commit.

A server spends most of a small write on the parts every statement pays once: the
round trip, parse/bind, executor start-up and, above all, the commit's WAL flush. When
several threads write to *different* records at once, the first of them (the leader)
takes every write queued behind it and sends them together; the others wait for their
own result. Each write keeps its own outcome — applied, or handed back (``None``) to
the caller's ordinary path, exactly as if its own statement had matched no row.

Failures. A failure the backend's ``shared`` predicate calls shared (a lost
connection, a retryable server error) reaches every write of the statement, whose
callers retry or report it as they would for their own statement; a lost connection
is never re-sent, since the statement may have committed. Any other failure of a
statement of several writes (a data error, a constraint: one write's reason, and the
statement applied nothing) splits it in halves, sent again, down to the guilty write,
so that it alone gets its error and every other write lands.

Row locks held elsewhere. Everything the leader sends goes through ``run_many``, which
must never wait on a row lock: a write whose row another client holds (a long
transaction elsewhere) comes back as :data:`LOCKED`. Its caller then sends it with
``run_one``, which waits in the database's lock queue as a hot record should, but
after the leadership was handed on: one busy record never stalls the writes to other
records queued behind it.

A write to a key that is already queued or in flight is never batched with it: one
statement of ``run_many`` changes a row once. Without ``run_chain`` it goes at once
through ``run_one``, outside the leadership, so its lock wait is its own. So do the
writes to a key found locked in the last ``HOT_SECONDS`` (a hot record, written by
other processes too): sending them through a batch would mostly cost a second trip.

Chains (with ``run_chain``). Those same writes instead queue per key: one write of the
key at a time is in flight outside the batches (the chain's leader), and when it is
done the writes that queued behind it meanwhile go together, in their order of
arrival, through ``run_chain``: one statement that applies them one after another
under one row lock and one commit, each with its own preconditions. A hot record then
takes as many writes per commit as arrived during the previous commit, instead of one
write per commit behind the row lock (the ceiling of a write-per-statement client).
A chain waits in the database's lock queue like ``run_one``, outside the leadership.
The writers of a hot key come back together when its chain is done; the first of a new
chain then waits (``GATHER_SECONDS`` at most) for as many writes as the last chain
carried, so that they go in one chain rather than one alone and the rest after it.

This module knows nothing of SQL; the backend supplies ``run_one``, ``run_many``,
``run_chain`` and ``shared``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Final, Generic, Protocol, TypeVar, cast

Req = TypeVar("Req")
Res = TypeVar("Res")

HOT_SECONDS = 0.1
"""How long writes to a key found locked go straight to ``run_one``. A time, not a count
of writes: a key of a spread workload that two processes happened to batch at the same
moment must not be kept out of batches until it is written again and again."""
GATHER_SECONDS = 0.001
"""How long the first write of a new chain on a key whose last chain carried several
writes waits for as many to queue behind it before it is sent (``_Batching``)."""
HOT_KEYS = 4096
"""Bound on the keys remembered as hot (the memory is cleared when it is reached)."""


class Locked(enum.Enum):
    """The type of :data:`LOCKED`."""

    LOCKED = "locked"


LOCKED: Final = Locked.LOCKED
"""What ``run_many`` returns for a write it skipped because another client holds its row."""


def _every_failure_is_shared(exc: BaseException) -> bool:
    return True


class _Slot(Generic[Req, Res]):
    __slots__ = (
        "chain",
        "error",
        "gather",
        "gathered",
        "key",
        "lead",
        "request",
        "result",
        "signal",
    )

    def __init__(self, request: Req, key: Hashable, signal: _Signal, chain: bool = False) -> None:
        self.request = request
        self.key = key
        self.signal = signal  # set when the slot is served (or, sync, handed the lead)
        self.lead = False  # set when a finishing leader hands the lead to this slot
        self.chain = chain  # queued in its key's chain, not in the batch queue
        self.result: Res | Locked | None = None
        self.error: BaseException | None = None
        # A new chain's leader: how many writes to wait for behind it, and the signal
        # set when they have queued (``_Batching._join_chain``).
        self.gather = 0
        self.gathered: _Signal | None = None


class _Signal(Protocol):
    def set(self) -> None: ...


class _ThreadSignal:
    """A lock taken at birth and released when set: the cheapest one-shot signal
    between two threads (an Event builds a Condition per wait)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wait(self, timeout: float = -1) -> None:
        self._lock.acquire(timeout=timeout)

    def set(self) -> None:
        self._lock.release()


class _FutureSignal:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        if not self.future.done():  # a cancelled waiter's future is done already
            self.future.set_result(None)


class GroupCommitStats:
    """Counters for tests and benchmarks (read without the lock: indicative only)."""

    __slots__ = (
        "batched_writes",
        "batches",
        "chained_writes",
        "chains",
        "largest",
        "locked_writes",
        "solo_writes",
        "splits",
    )

    def __init__(self) -> None:
        self.batches = 0  # statements sent for more than one write
        self.batched_writes = 0  # writes that went in those statements
        self.chains = 0  # statements sent for several writes of one key (``run_chain``)
        self.chained_writes = 0  # writes that went in those statements
        self.largest = 0  # the largest batch or chain
        self.solo_writes = 0  # writes sent alone (nobody to batch with, a busy or hot key)
        self.locked_writes = 0  # writes skipped on a row held elsewhere, then sent alone
        self.splits = 0  # failed statements split for one write's failure


class _Batching(Generic[Req, Res]):
    """The decisions of group commit, free of I/O and of any way of waiting: who leads,
    what a leader takes, what a failed send becomes, who leads next. ``GroupCommit``
    (threads) and ``AsyncGroupCommit`` (asyncio tasks) only send and wait.

    ``run_many`` takes one or more requests with distinct keys and returns, in order,
    each one's result or :data:`LOCKED`; it must never wait on a row lock. ``run_one``
    sends one request, waiting for its row as long as it takes. ``shared(exc)`` tells
    whether a failure of ``run_many`` belongs to every write it carried (the default:
    never split); when it does not, the statement must have applied nothing.

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
        key: Callable[[Req], Hashable],
        *,
        shared: Callable[[BaseException], bool] = _every_failure_is_shared,
        max_batch: int = 64,
        max_leaders: int = 1,
        clock: Callable[[], float] = time.monotonic,
        chaining: bool = False,
    ) -> None:
        if max_batch < 1 or max_leaders < 1:
            raise ValueError("max_batch and max_leaders must be at least 1")
        self._key = key
        self._shared = shared
        self._chaining = chaining
        self._clock = clock
        self._max_batch = max_batch
        self._max_leaders = max_leaders
        # Never held across a wait or a send: only around these decisions.
        self._lock = threading.Lock()
        self._queue: deque[_Slot[Req, Res]] = deque()
        self._busy: set[Hashable] = set()  # keys queued or in flight
        self._hot: dict[Hashable, float] = {}  # key found locked -> hot until (monotonic)
        # A key's chain: present while one of its chains is in flight; holds the writes
        # that queued behind it, in their order of arrival.
        self._chains: dict[Hashable, deque[_Slot[Req, Res]]] = {}
        # A key's last chain, when it carried several writes: its size and until when
        # (monotonic) the next chain's leader waits for as many (``_join_chain``).
        self._last_chain: dict[Hashable, tuple[int, float]] = {}
        self._gathering: dict[Hashable, _Slot[Req, Res]] = {}  # such leaders, waiting
        self._leaders = 0
        self.stats = GroupCommitStats()

    def _arrive(
        self, request: Req, signal: Callable[[], _Signal]
    ) -> tuple[_Slot[Req, Res] | None, bool]:
        """The new request's slot (None: send it alone, see the module docstring) and
        whether it leads (its batch, or its key's chain when ``slot.chain``); a slot
        that does not lead is queued."""
        key = self._key(request)
        with self._lock:
            # A key in flight or hot is sent alone, or in its chain (module docstring).
            hot = key in self._busy or (key in self._hot and self._clock() < self._hot[key])
            if self._chaining and (hot or key in self._chains):
                return self._join_chain(request, key, signal)
            if hot:
                self.stats.solo_writes += 1
                return None, False
            self._hot.pop(key, None)
            slot: _Slot[Req, Res] = _Slot(request, key, signal())
            self._busy.add(key)
            lead = self._leaders < self._max_leaders
            if lead:
                self._leaders += 1
            else:
                self._queue.append(slot)
            return slot, lead

    def _join_chain(
        self, request: Req, key: Hashable, signal: Callable[[], _Signal]
    ) -> tuple[_Slot[Req, Res], bool]:
        """(Under the lock.) Queue a write in its key's chain, or lead a new one.

        The writers of a hot key come back together when its chain is done, and the
        first of them would otherwise go alone, the others making the next chain: one
        write, then all the rest, two commits where one would do. So a new chain's
        leader whose key's last chain carried several writes waits (``GATHER_SECONDS``
        at most) for as many less one to queue behind it."""
        slot: _Slot[Req, Res] = _Slot(request, key, signal(), chain=True)
        queue = self._chains.get(key)
        if queue is not None:
            queue.append(slot)
            gathering = self._gathering.get(key)
            if gathering is not None and len(queue) >= gathering.gather:
                del self._gathering[key]
                assert gathering.gathered is not None
                gathering.gathered.set()
            return slot, False
        self._chains[key] = deque()
        last = self._last_chain.pop(key, None)
        if last is not None and self._clock() < last[1]:
            slot.gather, slot.gathered = last[0] - 1, signal()
            self._gathering[key] = slot
        return slot, True

    def _rechain(
        self, skipped: _Slot[Req, Res], signal: Callable[[], _Signal]
    ) -> tuple[_Slot[Req, Res], bool]:
        """A write its batch skipped (``LOCKED``) goes to its key's chain."""
        with self._lock:
            return self._join_chain(skipped.request, skipped.key, signal)

    def _take(self, own: _Slot[Req, Res]) -> list[_Slot[Req, Res]]:
        """What a leader sends: its own write and up to ``max_batch`` queued behind it
        (in the batch queue, or in its key's chain)."""
        with self._lock:
            queue = self._chains[own.key] if own.chain else self._queue
            batch = [own]
            while queue and len(batch) < self._max_batch:
                batch.append(queue.popleft())
        if len(batch) == 1:
            self.stats.solo_writes += 1
        else:
            if own.chain:
                self.stats.chains += 1
                self.stats.chained_writes += len(batch)
            else:
                self.stats.batches += 1
                self.stats.batched_writes += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
        return batch

    def _settle(
        self, batch: list[_Slot[Req, Res]], results: Sequence[Res | Locked] | BaseException
    ) -> list[list[_Slot[Req, Res]]]:
        """Give each slot of a sent ``batch`` its outcome from ``results`` (or the
        failure of the send); the parts to send again, in order."""
        if not isinstance(results, BaseException) and len(results) != len(batch):
            results = RuntimeError(f"run_many gave {len(results)} results for {len(batch)}")
        if isinstance(results, BaseException):
            if len(batch) > 1 and not self._shared(results):
                # One write's failure, and the statement applied nothing: send each
                # half again, so the guilty write gets its own error and the others
                # land (a batch with one bad write costs about 2·log2(n) statements).
                self.stats.splits += 1
                half = len(batch) // 2
                return [batch[:half], batch[half:]]
            # Shared: nothing of the statement was applied (or, for a lost connection
            # during its commit, all of it may have been), which every write reports.
            for s in batch:
                s.error = results
            return []
        for s, r in zip(batch, results, strict=True):
            s.result = r
        return []

    def _take_and_send(
        self,
        own: _Slot[Req, Res],
        send: Callable[[_Slot[Req, Res], list[Req]], Sequence[Res | Locked]],
    ) -> list[_Slot[Req, Res]]:
        """A sync leader's work: take its batch, send it (in parts, when a part fails
        for one write), settle every slot; the batch taken."""
        batch = self._take(own)
        todo = [batch]
        while todo:
            part = todo.pop(0)
            try:
                results: Sequence[Res | Locked] | BaseException = send(
                    own, [s.request for s in part]
                )
            except BaseException as exc:
                results = exc
            todo[:0] = self._settle(part, results)
        return batch

    def _gathered(self, own: _Slot[Req, Res]) -> None:
        """After a new chain's leader waited: it no longer waits (it may have timed out)."""
        with self._lock:
            if self._gathering.get(own.key) is own:
                del self._gathering[own.key]

    def _finish(self, batch: list[_Slot[Req, Res]]) -> _Slot[Req, Res] | None:
        """After a batch: free its keys and pick the next leader (None: nobody waits)."""
        if batch[0].chain:
            return self._finish_chain(batch[0].key, len(batch))
        with self._lock:
            for s in batch:
                if s.error is not None or s.result is not LOCKED:
                    # A skipped write's key is freed by its owner after its own send.
                    self._busy.discard(s.key)
            # Hand the lead to the oldest waiter rather than leaving the queue to the
            # next caller: waiters must not depend on new traffic to be served.
            successor = self._queue.popleft() if self._queue else None
            if successor is not None:
                successor.lead = True
            else:
                self._leaders -= 1
        return successor

    def _finish_chain(self, key: Hashable, size: int) -> _Slot[Req, Res] | None:
        """After a chain of ``size`` writes: the oldest write queued behind it leads the
        next one."""
        with self._lock:
            queue = self._chains[key]
            if queue:
                successor = queue.popleft()
                successor.lead = True
                return successor
            del self._chains[key]
            if size > 1:
                if len(self._last_chain) >= HOT_KEYS:
                    self._last_chain.clear()
                self._last_chain[key] = (size, self._clock() + HOT_SECONDS)
            # Still hot: its next write goes straight to a chain rather than to a
            # batch, where it would make a second trip whenever another client has it.
            self._mark_hot(key)
            return None

    def _outcome(self, slot: _Slot[Req, Res]) -> Res | Locked:
        if slot.error is not None:
            raise slot.error
        if slot.result is LOCKED:
            self.stats.locked_writes += 1
        return slot.result  # type: ignore[return-value]  # set whenever error is None

    def _unlock(self, key: Hashable) -> None:
        """After a skipped write was sent alone: the key is free, and hot for a while."""
        with self._lock:
            self._busy.discard(key)
            self._mark_hot(key)

    def _mark_hot(self, key: Hashable) -> None:
        """(Under the lock.)"""
        if len(self._hot) >= HOT_KEYS:
            self._hot.clear()
        self._hot[key] = self._clock() + HOT_SECONDS


class GroupCommit(_Batching[Req, Res]):
    """Batches concurrent ``submit`` calls of threads on distinct keys into
    ``run_many`` calls (see ``_Batching``), and with ``run_chain`` those on one key into
    chains; the caller that leads sends the batch or the chain.

    ``lead_within``: a context a leader enters before it takes its batch and leaves
    after sending it (SQLite: the write gate that the processes on one file queue at).
    The writes that queue while the leader waits there join its batch, instead of
    waiting for the next one."""

    def __init__(
        self,
        run_one: Callable[[Req], Res],
        run_many: Callable[[list[Req]], Sequence[Res | Locked]],
        key: Callable[[Req], Hashable],
        run_chain: Callable[[list[Req]], Sequence[Res]] | None = None,
        lead_within: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
        **options: Any,
    ) -> None:
        super().__init__(key, chaining=run_chain is not None, **options)
        self._run_one = run_one
        self._run_many = run_many
        self._run_chain = run_chain
        self._lead_within = lead_within

    def submit(self, request: Req) -> Res:
        slot, lead = self._arrive(request, _ThreadSignal)
        if slot is None:
            return self._run_one(request)
        result = self._serve(slot, lead)
        if result is LOCKED:
            # Another client holds the row. Wait for it here, in the server's lock
            # queue, now that the leadership has been handed on; the key stays busy
            # meanwhile, then hot, so writes to it go straight to that queue too.
            try:
                if self._chaining:
                    return cast(Res, self._serve(*self._rechain(slot, _ThreadSignal)))
                return self._run_one(request)
            finally:
                self._unlock(slot.key)
        return result

    def _serve(self, slot: _Slot[Req, Res], lead: bool) -> Res | Locked:
        if not lead:
            assert isinstance(slot.signal, _ThreadSignal)
            slot.signal.wait()
        if lead or slot.lead:
            self._lead(slot)
        return self._outcome(slot)

    def _send(self, own: _Slot[Req, Res], requests: list[Req]) -> Sequence[Res | Locked]:
        if not own.chain:
            return self._run_many(requests)
        if len(requests) == 1:
            return [self._run_one(requests[0])]
        assert self._run_chain is not None
        return self._run_chain(requests)

    def _lead(self, own: _Slot[Req, Res]) -> None:
        if own.gathered is not None:
            assert isinstance(own.gathered, _ThreadSignal)
            own.gathered.wait(GATHER_SECONDS)
            self._gathered(own)
        with self._lead_within():
            batch = self._take_and_send(own, self._send)
        successor = self._finish(batch)
        for s in batch[1:]:
            s.signal.set()
        if successor is not None:
            successor.signal.set()


class AsyncGroupCommit(_Batching[Req, Res]):
    """``GroupCommit`` for asyncio tasks of one event loop.

    Every batch or chain is sent by a task of its own, never by a caller's task: a
    caller cancelled while its batch runs must not cancel (and fail) the other writes
    of the batch. Its write then lands or not like a statement already sent, and the
    caller just stops waiting for it."""

    def __init__(
        self,
        run_one: Callable[[Req], Awaitable[Res]],
        run_many: Callable[[list[Req]], Awaitable[Sequence[Res | Locked]]],
        key: Callable[[Req], Hashable],
        run_chain: Callable[[list[Req]], Awaitable[Sequence[Res]]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(key, chaining=run_chain is not None, **options)
        self._run_one = run_one
        self._run_many = run_many
        self._run_chain = run_chain
        self._leading: set[asyncio.Task[None]] = set()  # strong references

    async def submit(self, request: Req) -> Res:
        slot, lead = self._arrive(request, _FutureSignal)
        if slot is None:
            return await self._run_one(request)
        result = await self._serve(slot, lead)
        if result is LOCKED:
            # As in GroupCommit.submit: wait for the row in the server's lock queue.
            try:
                if self._chaining:
                    return cast(Res, await self._serve(*self._rechain(slot, _FutureSignal)))
                return await self._run_one(request)
            finally:
                self._unlock(slot.key)
        return result

    async def _serve(self, slot: _Slot[Req, Res], lead: bool) -> Res | Locked:
        if lead:
            self._spawn(slot)
        assert isinstance(slot.signal, _FutureSignal)
        await slot.signal.future
        return self._outcome(slot)

    def _spawn(self, own: _Slot[Req, Res]) -> None:
        task = asyncio.get_running_loop().create_task(self._lead(own))
        self._leading.add(task)
        task.add_done_callback(self._leading.discard)

    async def _send(self, own: _Slot[Req, Res], requests: list[Req]) -> Sequence[Res | Locked]:
        if not own.chain:
            return await self._run_many(requests)
        if len(requests) == 1:
            return [await self._run_one(requests[0])]
        assert self._run_chain is not None
        return await self._run_chain(requests)

    async def _lead(self, own: _Slot[Req, Res]) -> None:
        if own.gathered is not None:
            assert isinstance(own.gathered, _FutureSignal)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(own.gathered.future), GATHER_SECONDS)
            self._gathered(own)
        batch = self._take(own)
        todo = [batch]
        while todo:
            part = todo.pop(0)
            try:
                results: Sequence[Res | Locked] | BaseException = await self._send(
                    own, [s.request for s in part]
                )
            except BaseException as exc:
                results = exc
            todo[:0] = self._settle(part, results)
        self._hand_on(batch)

    def _hand_on(self, batch: list[_Slot[Req, Res]]) -> None:
        successor = self._finish(batch)
        for s in batch:
            s.signal.set()
        if successor is not None:
            self._spawn(successor)


class ThreadedGroupCommit(AsyncGroupCommit[Req, Res]):
    """``AsyncGroupCommit`` for a sync backend whose calls run in threads (SQLite under
    ``AsyncStore``, ``backends/threaded.py``): tasks queue on the event loop, and each
    leader sends its batch with one call in a thread (``in_thread``), where it enters
    ``lead_within``, takes its batch and sends it with the sync ``run_many``.

    Why not ``GroupCommit`` called from a thread per write: every write then crossed
    from the loop to a thread and back (two wake-ups and a GIL hand-over each), the
    largest part of a small write's CPU; here a batch crosses once. Why take the batch
    in the thread, after ``lead_within``: as in ``GroupCommit``, the writes that queue
    while the leader waits at SQLite's write gate go in its batch."""

    def __init__(
        self,
        run_one: Callable[[Req], Res],
        run_many: Callable[[list[Req]], Sequence[Res | Locked]],
        key: Callable[[Req], Hashable],
        in_thread: Callable[[Callable[[], Any]], Awaitable[Any]],
        lead_within: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
        **options: Any,
    ) -> None:
        async def one(request: Req) -> Res:
            return cast(Res, await in_thread(lambda: run_one(request)))

        async def many(requests: list[Req]) -> Sequence[Res | Locked]:
            raise AssertionError("a ThreadedGroupCommit sends its batches in _lead")

        super().__init__(one, many, key, **options)
        self._run_many_sync = run_many
        self._in_thread = in_thread
        self._lead_within = lead_within

    @classmethod
    def beside(
        cls,
        sync: GroupCommit[Req, Res],
        in_thread: Callable[[Callable[[], Any]], Awaitable[Any]],
    ) -> ThreadedGroupCommit[Req, Res]:
        """The batching of ``sync`` (its sends, key, limits and ``lead_within``), for
        tasks whose batches run through ``in_thread``. Chains are not carried over."""
        if sync._run_chain is not None:
            raise ValueError("a ThreadedGroupCommit sends no chains")
        return cls(
            sync._run_one,
            sync._run_many,
            sync._key,
            in_thread,
            sync._lead_within,
            shared=sync._shared,
            max_batch=sync._max_batch,
            max_leaders=sync._max_leaders,
        )

    def _lead_in_thread(self, own: _Slot[Req, Res]) -> list[_Slot[Req, Res]]:
        with self._lead_within():
            return self._take_and_send(own, lambda _own, requests: self._run_many_sync(requests))

    async def _lead(self, own: _Slot[Req, Res]) -> None:
        try:
            batch: list[_Slot[Req, Res]] = await self._in_thread(lambda: self._lead_in_thread(own))
        except asyncio.CancelledError:
            raise  # the loop is closing (only it cancels a leader): its waiters with it
        except BaseException as exc:
            # The call never ran (the pool is shut down), or failed at the gate: nothing
            # was taken. Its writer gets the error; the lead goes on to the next waiter.
            own.error = exc
            batch = [own]
        self._hand_on(batch)
