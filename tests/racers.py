"""Concurrent writers for the contract suite's concurrency tests, and the invariant
checks run on what they acknowledged. Importable by spawned worker processes."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from apis import open_store
from revstore import SequenceConflict, Store, VersionConflict


@dataclass
class Outcome:
    """What a group of writers saw: every acknowledged write, every unexpected error."""

    acked: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    conflicts: int = 0
    resent: int = 0
    """Re-sent batches answered as duplicates with their first sequences."""

    def merge(self, other: Outcome) -> None:
        self.acked.extend(other.acked)
        self.errors.extend(other.errors)
        self.conflicts += other.conflicts
        self.resent += other.resent


# ---------------------------------------------------------------- records


def _record_writer(
    store: Store, ns: str, keys: list[str], tag: str, seconds: float, seed: int, out: Outcome
) -> None:
    rng = random.Random(seed)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        key = rng.choice(keys)
        token = f"{tag}-{n}"
        careful = rng.random() < 0.5
        try:
            if careful:
                # Writer with an expectation: on conflict, re-apply on the head it returns.
                head = store.get(key, namespace=ns)
                while True:
                    try:
                        rec = store.put(
                            key, {"t": token}, expected_revision=head.revision, namespace=ns
                        )
                        break
                    except VersionConflict as exc:
                        with lock:
                            out.conflicts += 1
                        assert exc.current is not None
                        head = exc.current
            else:
                rec = store.put(key, {"t": token}, namespace=ns)
        except Exception as exc:
            out.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        with lock:
            out.acked.append(
                {"key": key, "token": token, "revision": rec.revision, "version": rec.version}
            )


def run_record_threads(
    url: str, ns: str, keys: list[str], threads: int, seconds: float, tag: str, api: str = "sync"
) -> Outcome:
    """``threads`` writers sharing one store of ``api`` (async: each is a task on the
    store's loop)."""
    store = open_store(api, url)
    out = Outcome()
    try:
        workers = [
            threading.Thread(
                target=_record_writer,
                args=(store, ns, keys, f"{tag}{t}", seconds, hash((tag, t)), out),
            )
            for t in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        store.close()
    return out


def seed_records(url: str, ns: str, keys: list[str]) -> None:
    store = Store(url)
    try:
        for key in keys:
            store.put(key, {"t": "seed"}, namespace=ns)
    finally:
        store.close()


def check_records(url: str, ns: str, keys: list[str], out: Outcome) -> None:
    """Unique and gapless numbers; every acknowledged write present exactly once;
    nothing present that nobody wrote; no error other than VersionConflict."""
    assert not out.errors, f"{len(out.errors)} unexpected errors, e.g. {out.errors[:3]}"
    assert out.acked, "no write was acknowledged"
    store = Store(url)
    try:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for a in out.acked:
            by_key.setdefault(a["key"], []).append(a)
        for key in keys:
            versions = []
            after = 0
            while True:
                page = store.history(key, after=after, limit=1000, namespace=ns)
                versions.extend(page.versions)
                if page.next_after is None:
                    break
                after = page.next_after
            head = store.get(key, namespace=ns)
            numbers = [v.version for v in versions]
            assert numbers == list(range(1, len(numbers) + 1)), f"{key}: versions not gapless"
            # Every write made a snapshot, so revisions in history are gapless too.
            assert [v.revision for v in versions] == numbers, f"{key}: revisions not gapless"
            assert (head.revision, head.version) == (len(numbers), len(numbers))
            acked = by_key.get(key, [])
            revs = [a["revision"] for a in acked]
            assert len(revs) == len(set(revs)), f"{key}: a revision was acknowledged twice"
            stored = {v.version: v.content["t"] for v in versions}
            counts = Counter(stored.values())
            for a in acked:
                assert stored.get(a["version"]) == a["token"], (
                    f"{key}: acked write {a} not at its version"
                )
                assert counts[a["token"]] == 1, (
                    f"{key}: {a['token']} stored {counts[a['token']]} times"
                )
            unknown = set(counts) - {a["token"] for a in acked} - {"seed"}
            assert not unknown, (
                f"{key}: history holds writes nobody acknowledged: {sorted(unknown)[:5]}"
            )
            assert len(versions) == len(acked) + 1
    finally:
        store.close()


# ---------------------------------------------------------------- streams


def _batch(rng: random.Random, prefix: str) -> tuple[list[dict[str, Any]], list[str]]:
    size = rng.randint(1, 20)
    ids = [f"{prefix}-{k}" for k in range(size)]
    return [{"id": i, "pad": "x" * rng.randint(0, 64)} for i in ids], ids


def _stream_writer(
    store: Store, ns: str, keys: list[str], tag: str, seconds: float, seed: int, out: Outcome
) -> None:
    rng = random.Random(seed)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    sent: list[tuple[str, list[dict[str, Any]], list[str], tuple[int, int]]] = []
    n = 0
    while time.monotonic() < deadline:
        n += 1
        try:
            if sent and rng.random() < 0.5:
                # A pod retrying after a lost reply: the same batch again.
                key, items, ids, seqs = rng.choice(sent)
                res = store.append(key, items, item_ids=ids, namespace=ns)
                ok = res.duplicate and (res.first_sequence, res.last_sequence) == seqs
                if not ok:
                    out.errors.append(
                        f"re-send of {ids[0]} got {res.first_sequence}-{res.last_sequence} "
                        f"duplicate={res.duplicate}, first answer was {seqs}"
                    )
                else:
                    with lock:
                        out.resent += 1
                continue
            key = rng.choice(keys)
            if n % 7 == 0:
                # The same batch sent by every process at about the same time.
                items, ids = _batch(random.Random(n), f"shared-{key}-{n}")
            else:
                items, ids = _batch(rng, f"{tag}-{n}")
            # A third of fresh batches carry no item ids (the one-statement path); they
            # are checked by the unique id inside each body and never re-sent.
            send_ids: list[str] | None = None if n % 3 == 0 and n % 7 else ids
            if n % 5 == 0:
                # With an expectation: on conflict, take the current last sequence and retry.
                expected = store.stream_info(key, namespace=ns).last_sequence
                while True:
                    try:
                        res = store.append(
                            key, items, item_ids=send_ids, expected_sequence=expected, namespace=ns
                        )
                        break
                    except SequenceConflict as exc:
                        with lock:
                            out.conflicts += 1
                        expected = exc.current_sequence
            else:
                res = store.append(key, items, item_ids=send_ids, namespace=ns)
        except Exception as exc:
            out.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        seqs = (res.first_sequence, res.last_sequence)
        if res.last_sequence - res.first_sequence + 1 != len(ids):
            out.errors.append(f"batch {ids[0]} took a non-contiguous range {seqs}")
        if send_ids is not None:
            sent.append((key, items, ids, seqs))
        with lock:
            out.acked.append(
                {"key": key, "ids": ids, "first": res.first_sequence, "dup": res.duplicate}
            )


def run_stream_threads(
    url: str, ns: str, keys: list[str], threads: int, seconds: float, tag: str, api: str = "sync"
) -> Outcome:
    """``threads`` writers sharing one store of ``api`` (async: each is a task on the
    store's loop)."""
    store = open_store(api, url)
    out = Outcome()
    try:
        workers = [
            threading.Thread(
                target=_stream_writer,
                args=(store, ns, keys, f"{tag}{t}", seconds, hash((tag, t)), out),
            )
            for t in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        store.close()
    return out


def seed_streams(url: str, ns: str, keys: list[str]) -> None:
    store = Store(url)
    try:
        for key in keys:
            store.append(key, [{"id": f"seed-{key}"}], item_ids=[f"seed-{key}"], namespace=ns)
    finally:
        store.close()


def check_streams(url: str, ns: str, keys: list[str], out: Outcome) -> None:
    """Gapless sequences; every acknowledged item exactly once at the sequence it was
    told; re-sends answered with the original sequences; nothing unacknowledged."""
    # Shared batches carry identical bodies from every sender, so each send must be a
    # plain success (first) or a duplicate (the rest): never a DuplicateItem.
    assert not out.errors, f"{len(out.errors)} unexpected errors, e.g. {out.errors[:3]}"
    store = Store(url)
    try:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for a in out.acked:
            by_key.setdefault(a["key"], []).append(a)
        for key in keys:
            items = []
            after = 0
            while True:
                page = store.read(key, after=after, limit=1000, namespace=ns)
                items.extend(page.items)
                if page.next_after is None:
                    break
                after = page.next_after
            seqs = [i.sequence for i in items]
            assert seqs == list(range(1, len(seqs) + 1)), f"{key}: sequences not gapless"
            info = store.stream_info(key, namespace=ns)
            assert info.last_sequence == info.item_count == len(items)
            where = {i.body["id"]: i.sequence for i in items}
            assert len(where) == len(items), f"{key}: an item is stored twice"
            acked_ids: set[str] = {f"seed-{key}"}
            for a in by_key.get(key, []):
                for k, item_id in enumerate(a["ids"]):
                    acked_ids.add(item_id)
                    assert where.get(item_id) == a["first"] + k, (
                        f"{key}: item {item_id} acknowledged at {a['first'] + k}, "
                        f"stored at {where.get(item_id)}"
                    )
            unknown = set(where) - acked_ids
            assert not unknown, f"{key}: stored items nobody acknowledged: {sorted(unknown)[:5]}"
    finally:
        store.close()


# ---------------------------------------------------------------- processes


def run_processes(
    kind: str,
    url: str,
    ns: str,
    keys: list[str],
    processes: int,
    threads: int,
    seconds: float,
    api: str = "sync",
) -> Outcome:
    """Several OS processes, each with its own Store and threads (the multi-pod case)."""
    fn = run_record_threads if kind == "records" else run_stream_threads
    out = Outcome()
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(fn, url, ns, keys, threads, seconds, f"p{p}t", api)
            for p in range(processes)
        ]
        for f in futures:
            out.merge(f.result(timeout=seconds + 120))
    return out


__all__ = [
    "Outcome",
    "check_records",
    "check_streams",
    "run_processes",
    "run_record_threads",
    "run_stream_threads",
    "seed_records",
    "seed_streams",
]
