"""Idempotency keys in the library (``Store.keys`` and ``claim=`` on every write), on
every backend: the key is applied in the write's own transaction, with its result; a
claim that lost its key rolls its write back; racing claimants write exactly once."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pytest

from revstore import AppendResult, ClaimLost, NotFound, Record, Store, VersionConflict
from revstore.idempotency import Applied, Claim, Outcome, lease_for
from revstore.retry import RetryPolicy

TTL = 60.0


def new_key() -> str:
    return f"k-{uuid.uuid4().hex}"


def reserve(store: Store, key: str, owner: str, lease: float = 60.0) -> Claim:
    state = store.keys.reserve(key, "hash", owner, lease=lease)
    assert state.outcome is Outcome.RESERVED, state
    return store.keys.claim(key, owner, "hash", keep_for=TTL)


WRITES: dict[str, Callable[[Store, str, Claim | None], Record | AppendResult]] = {
    "put": lambda s, ns, c: s.put("doc", {"v": 2}, namespace=ns, claim=c),
    "put-unchanged": lambda s, ns, c: s.put("doc", {"v": 1}, namespace=ns, claim=c),
    "put-no-version": lambda s, ns, c: s.put(
        "doc", {"v": 2}, create_version=False, namespace=ns, claim=c
    ),
    "create": lambda s, ns, c: s.put("new", {"v": 1}, namespace=ns, claim=c),
    "patch": lambda s, ns, c: s.patch("doc", {"w": 1}, namespace=ns, claim=c),
    "restore": lambda s, ns, c: s.restore("doc", 1, namespace=ns, claim=c),
    "delete": lambda s, ns, c: s.delete("doc", namespace=ns, claim=c),
    "append": lambda s, ns, c: s.append("s", [{"n": 1}, {"n": 2}], namespace=ns, claim=c),
    "append-ids": lambda s, ns, c: s.append("s", [{"n": 1}], item_ids=["a"], namespace=ns, claim=c),
    "append-resent": lambda s, ns, c: s.append(
        "t", [{"n": 0}], item_ids=["x"], namespace=ns, claim=c
    ),
}


@pytest.mark.parametrize("op", list(WRITES))
def test_a_claimed_write_stores_its_result_with_its_key(store: Store, ns: str, op: str) -> None:
    store.put("doc", {"v": 1}, namespace=ns)
    store.append("t", [{"n": 0}], item_ids=["x"], namespace=ns)
    key = new_key()
    result = WRITES[op](store, ns, reserve(store, key, "first"))
    state = store.keys.lookup(key, "hash")
    assert state is not None and state.outcome is Outcome.APPLIED
    applied = state.applied
    if isinstance(result, Record):
        assert applied.record == result
        modes = {"delete": "delete", "patch": "update", "restore": "update"}
        assert applied.mode == modes.get(op, "put")
        assert result.created is (op == "create")
    else:
        assert applied.append == result
        assert (applied.namespace, applied.stream) == (ns, "t" if op == "append-resent" else "s")
    # Another request with the key finds the result: it has nothing left to write.
    assert store.keys.reserve(key, "hash", "second", lease=60).outcome is Outcome.APPLIED
    assert store.keys.reserve(key, "other", "third", lease=60).outcome is Outcome.MISMATCH
    # The result survives a round trip through its text exactly.
    assert Applied.from_text(applied.to_text()) == applied


def test_a_write_that_fails_leaves_its_key_unapplied(store: Store, ns: str) -> None:
    store.put("doc", {"v": 1}, namespace=ns)
    key = new_key()
    claim = reserve(store, key, "me")
    with pytest.raises(VersionConflict):
        store.put("doc", {"v": 2}, expected_revision=7, namespace=ns, claim=claim)
    with pytest.raises(NotFound):
        store.patch("absent", {"v": 2}, namespace=ns, claim=claim)
    state = store.keys.lookup(key, "hash")
    assert state is not None and state.outcome is Outcome.IN_PROGRESS
    # Unapplied: releasing it lets a retry run.
    assert store.keys.release(key, "me")
    assert store.keys.lookup(key, "hash") is None


def test_an_applied_key_is_never_released(store: Store, ns: str) -> None:
    key = new_key()
    store.append("s", [1], namespace=ns, claim=reserve(store, key, "me"))
    assert not store.keys.release(key, "me")
    state = store.keys.lookup(key, "hash")
    assert state is not None and state.outcome is Outcome.APPLIED


def test_the_holder_stores_its_answer_after_the_result(store: Store, ns: str) -> None:
    key = new_key()
    store.append("s", [1], namespace=ns, claim=reserve(store, key, "me"))
    assert not store.keys.answer(key, "not-me", 201, "{}", "{}", keep_for=TTL)
    assert store.keys.answer(key, "me", 201, '{"etag": "x"}', '{"ok": 1}', keep_for=TTL)
    state = store.keys.lookup(key, "hash")
    assert state is not None and state.outcome is Outcome.ANSWERED
    assert state.row is not None and (state.row.status, state.row.body) == (201, '{"ok": 1}')
    # A rebuilt answer never overwrites a stored one.
    assert not store.keys.answer_applied(key, "hash", 200, "{}", "{}")


def test_a_claim_whose_key_was_taken_over_writes_nothing(store: Store, ns: str) -> None:
    key = new_key()
    stale = reserve(store, key, "stale", lease=0.05)
    time.sleep(0.2)  # the holder looks dead: its lease is over
    fresh = reserve(store, key, "fresh")
    with pytest.raises(ClaimLost):
        store.append("s", [1, 2], namespace=ns, claim=stale)
    with pytest.raises(NotFound):
        store.stream_info("s", namespace=ns)  # rolled back, stream row included
    res = store.append("s", [1, 2], namespace=ns, claim=fresh)
    assert (res.first_sequence, res.last_sequence) == (1, 2)
    with pytest.raises(ClaimLost):
        store.put("doc", {"v": 1}, namespace=ns, claim=stale)
    with pytest.raises(NotFound):
        store.get("doc", namespace=ns)
    assert store.stream_info("s", namespace=ns).item_count == 2


def test_claims_are_checked(store: Store, ns: str) -> None:
    with pytest.raises(ValueError):
        store.append("s", [1], namespace=ns, claim="k")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Claim("", "me", "hash", 1.0)
    with pytest.raises(ValueError):
        Claim("k", "me", "hash", 0)


def test_the_lease_outlives_the_retry_budget() -> None:
    policy = RetryPolicy()
    assert lease_for(policy) > policy.max_seconds + policy.max_wait
    assert lease_for(policy, 3) == 3 * lease_for(policy)
    longer = RetryPolicy(max_seconds=60)
    assert lease_for(longer) > 60


# ---------------------------------------------------------------- racing claimants


def claim_and_append(url: str, ns: str, key: str, owner: str, lease: float) -> list[int]:
    """In a process of its own (spawned): ``claim_or_take`` with a Store of its own."""
    store = Store(url)
    try:
        return claim_or_take(store, ns, key, owner, lease)
    finally:
        store.close()


def claim_or_take(store: Store, ns: str, key: str, owner: str, lease: float) -> list[int]:
    """Reserve the key and append a batch without item ids under it, or take the
    applied result; on a lost claim or a busy key, try again. Returns the sequences."""
    rng = random.Random(owner)
    for attempt in range(2000):
        state = store.keys.reserve(key, "hash", owner, lease=lease)
        if state.outcome is Outcome.RESERVED:
            claim = store.keys.claim(key, owner, "hash", keep_for=TTL)
            try:
                res = store.append("race", [{"o": owner}, {"o": owner}], namespace=ns, claim=claim)
            except ClaimLost:
                continue  # taken over while writing: someone else holds it now
            return [res.first_sequence, res.last_sequence]
        if state.outcome is Outcome.APPLIED:
            applied = state.applied.append
            assert applied is not None
            return [applied.first_sequence, applied.last_sequence]
        # Busy: back off with jitter, as a client would, so that claimants do not take
        # the key from each other in lockstep for ever.
        time.sleep(rng.uniform(0, min(0.05, 0.002 * 1.5 ** min(attempt, 20))))
    raise AssertionError("the key was never applied")


def _check_one_write(store: Store, ns: str, results: list[list[int]]) -> None:
    assert {tuple(r) for r in results} == {(1, 2)}
    info = store.stream_info("race", namespace=ns)
    assert (info.last_sequence, info.item_count) == (2, 2)


@pytest.mark.parametrize("lease", [60.0, 0.01], ids=["live-lease", "expiring-lease"])
def test_racing_threads_with_one_key_write_once(
    backend_url: str, store: Store, ns: str, lease: float
) -> None:
    """With a tiny lease every claimant keeps taking the key over from the others
    while they write: the check in the write's transaction still lets one land."""
    lock = threading.Lock()

    def racer(i: int, key: str, stream_ns: str, results: list[list[int]]) -> None:
        r = claim_or_take(store, stream_ns, key, f"t{i}", lease)
        with lock:
            results.append(r)

    for round_ in range(2):
        key, stream_ns = new_key(), f"{ns}-{round_}"
        results: list[list[int]] = []
        threads = [
            threading.Thread(target=racer, args=(i, key, stream_ns, results)) for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 8
        _check_one_write(store, stream_ns, results)


@pytest.mark.slow
def test_racing_processes_with_one_key_write_once(backend_url: str, store: Store, ns: str) -> None:
    key = new_key()
    args: list[Any] = [(backend_url, ns, key, f"p{i}", 0.01) for i in range(4)]
    with ProcessPoolExecutor(max_workers=4, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(claim_and_append, *zip(*args, strict=True)))
    _check_one_write(store, ns, results)
