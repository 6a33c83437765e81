"""Retention on every backend, through Store and AsyncStore: a namespace keeps the last N
versions and / or the young ones; removed versions raise VersionCompacted with the
oldest kept; history starts there; numbering never reuses a removed number; writers
running beside the retention lose nothing the policy keeps."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from revstore import InvalidInput, NotFound, Store, VersionCompacted
from revstore.retention import Policy, RetentionReport


def write_versions(store: Store, ns: str, rid: str, n: int, start: int = 1) -> None:
    for k in range(start, start + n):
        store.put(rid, {"k": k}, namespace=ns)


def history_versions(store: Store, ns: str, rid: str) -> list[int]:
    out: list[int] = []
    after = 0
    while True:
        page = store.history(rid, after=after, limit=100, namespace=ns)
        out.extend(v.version for v in page.versions)
        if page.next_after is None:
            return out
        after = page.next_after


def test_keep_last_removes_older_versions_and_numbering_goes_on(store: Store, ns: str) -> None:
    write_versions(store, ns, "doc", 10)
    write_versions(store, ns, "small", 2)
    policy = store.set_retention(ns, keep_last=3)
    assert policy is not None and (policy.keep_last, policy.max_age_seconds) == (3, None)
    report = store.apply_retention(ns)
    assert report == RetentionReport(namespaces=1, records=1, versions_removed=7)
    assert history_versions(store, ns, "doc") == [8, 9, 10]
    assert history_versions(store, ns, "small") == [1, 2]  # under the limit: untouched
    with pytest.raises(VersionCompacted) as info:
        store.get_version("doc", 5, namespace=ns)
    assert info.value.oldest_version == 8
    assert isinstance(info.value, NotFound)
    assert store.get_version("doc", 8, namespace=ns).content == {"k": 8}
    with pytest.raises(NotFound) as beyond:
        store.get_version("doc", 11, namespace=ns)
    assert not isinstance(beyond.value, VersionCompacted)
    with pytest.raises(VersionCompacted):
        store.restore("doc", 2, namespace=ns)
    with pytest.raises(VersionCompacted):
        store.diff("doc", 1, 10, namespace=ns)
    # A removed number is never given again.
    assert store.put("doc", {"k": 11}, namespace=ns).version == 11
    # Applying again changes nothing more than the new version asks for.
    assert store.apply_retention(ns).versions_removed == 1
    assert history_versions(store, ns, "doc") == [9, 10, 11]


def test_max_age_keeps_young_versions_and_always_the_newest(store: Store, ns: str) -> None:
    write_versions(store, ns, "old", 4)
    write_versions(store, ns, "mixed", 5)
    time.sleep(1.2)
    write_versions(store, ns, "mixed", 2, start=6)
    store.set_retention(ns, max_age=1)
    store.apply_retention(ns)
    assert history_versions(store, ns, "mixed") == [6, 7]
    assert history_versions(store, ns, "old") == [4]  # all old: the newest stays
    # Both rules: a version either keeps is kept.
    write_versions(store, ns, "both", 6)
    time.sleep(1.2)
    write_versions(store, ns, "both", 1, start=7)
    store.set_retention(ns, keep_last=3, max_age=1)
    store.apply_retention(ns)
    assert history_versions(store, ns, "both") == [5, 6, 7]


def test_policies_are_per_namespace_and_can_be_removed(store: Store, ns: str) -> None:
    other = f"{ns}-other"
    write_versions(store, ns, "doc", 5)
    write_versions(store, other, "doc", 5)
    store.set_retention(ns, keep_last=2)
    assert [p.namespace for p in store.get_retention(ns)] == [ns]
    store.apply_retention(ns)
    store.apply_retention(other)  # no policy there: nothing happens
    assert history_versions(store, other, "doc") == [1, 2, 3, 4, 5]
    assert history_versions(store, ns, "doc") == [4, 5]
    assert store.set_retention(ns) is None
    assert store.get_retention(ns) == []
    write_versions(store, ns, "doc", 3, start=6)
    assert store.apply_retention(ns).versions_removed == 0
    assert history_versions(store, ns, "doc") == [4, 5, 6, 7, 8]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_last": 0},
        {"keep_last": -1},
        {"keep_last": "3"},
        {"keep_last": True},
        {"keep_last": 2.5},
        {"max_age": 0},
        {"max_age": "1d"},
        {"max_age": float("nan")},
        {"max_age": 10**12},
    ],
)
def test_bad_policies_are_refused(store: Store, ns: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        store.set_retention(ns, **kwargs)
    assert store.get_retention(ns) == []


def test_removal_goes_in_small_steps_with_progress(
    store: Store, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import revstore.operations

    monkeypatch.setattr(revstore.operations, "CHUNK", 4)
    write_versions(store, ns, "doc", 15)
    store.set_retention(ns, keep_last=2)
    seen: list[RetentionReport] = []
    report = store.apply_retention(ns, progress=seen.append)
    assert report.versions_removed == 13 and report.records == 1
    assert seen and seen[-1] == report
    assert history_versions(store, ns, "doc") == [14, 15]
    with pytest.raises(VersionCompacted) as info:
        store.get_version("doc", 1, namespace=ns)
    assert info.value.oldest_version == 14


def test_retention_beside_writers_loses_nothing_the_policy_keeps(store: Store, ns: str) -> None:
    keep = 5
    keys = [f"r{k}" for k in range(4)]
    store.set_retention(ns, keep_last=keep)
    acked: dict[str, list[int]] = {k: [] for k in keys}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + 2.0

    def writer(t: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            key = keys[(t + n) % len(keys)]
            try:
                rec = store.put(key, {"t": t, "n": n}, namespace=ns)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                acked[key].append(rec.version)

    def retainer() -> None:
        while time.monotonic() < stop:
            try:
                store.apply_retention(ns)
            except Exception as exc:
                errors.append(f"retention: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
    threads.append(threading.Thread(target=retainer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    store.apply_retention(ns)
    for key in keys:
        versions = acked[key]
        assert len(versions) == len(set(versions)), "a version number was given twice"
        newest = max(versions)
        assert store.get(key, namespace=ns).version == newest
        # What the policy keeps is all there, contiguous and readable.
        assert history_versions(store, ns, key) == list(range(newest - keep + 1, newest + 1))
        for v in range(newest - keep + 1, newest + 1):
            assert store.get_version(key, v, namespace=ns).version == v
        if newest > keep:
            with pytest.raises(VersionCompacted):
                store.get_version(key, 1, namespace=ns)


def test_a_policy_reads_back_as_set(store: Store, ns: str) -> None:
    store.set_retention(ns, keep_last=7, max_age=3600)
    (policy,) = store.get_retention(ns)
    assert isinstance(policy, Policy)
    assert (policy.namespace, policy.keep_last, policy.max_age_seconds) == (ns, 7, 3600)
    assert policy.updated_at is not None
