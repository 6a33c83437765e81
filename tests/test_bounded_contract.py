"""Bounded work per call, on every backend.

Pages are bounded by bytes as well as by count (``Store(max_page_bytes=...)``):
``history``, ``read`` and ``list`` end a page before its content passes the budget
(always with at least one item), and ``next_after`` continues to the end with every
item exactly once. A re-sent append does not load the stored bodies it names."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest

from revstore import DuplicateItem, InvalidInput, Store, config
from revstore.backends.sql import page_cut, prefix_upper_bound
from revstore.content import canonical_json
from revstore.store import DEFAULT_MAX_PAGE_BYTES

BUDGET = 1000


@pytest.fixture
def small_pages(backend_url: str, make_store: Callable[..., Store]) -> Iterator[Store]:
    s = make_store(backend_url, max_page_bytes=BUDGET)
    s.create_schema()
    yield s
    s.close()


def doc(size: int, tag: int) -> dict[str, Any]:
    """A document of exactly ``size`` bytes of canonical JSON."""
    body = {"n": tag, "t": ""}
    pad = size - len(canonical_json(body).encode())
    assert pad >= 0
    body["t"] = "x" * pad
    assert len(canonical_json(body).encode()) == size
    return body


def size(value: Any) -> int:
    return len(canonical_json(value).encode())


def walk(fetch: Callable[[Any], Any], after: Any) -> list[list[Any]]:
    """Every page from ``after`` on, following next_after."""
    pages = []
    for _ in range(1000):
        page = fetch(after)
        pages.append(page)
        if page.next_after is None:
            return pages
        after = page.next_after
    raise AssertionError("next_after never ended")


SIZES = [300, 300, 300, 100, 1000, 2500, 50, 50, 999, 20, 700, 300]


def expected_pages(sizes: list[int], limit: int) -> list[list[int]]:
    """Indexes per page, by the rule: at most ``limit`` items, stop before passing
    BUDGET, at least one item."""
    pages: list[list[int]] = []
    current: list[int] = []
    total = 0
    for k, s in enumerate(sizes):
        if current and (len(current) == limit or total + s > BUDGET):
            pages.append(current)
            current, total = [], 0
        current.append(k)
        total += s
    pages.append(current)
    return pages


@pytest.mark.parametrize("limit", [50, 2])
def test_history_pages_end_early_by_bytes(small_pages: Store, ns: str, limit: int) -> None:
    for k, s in enumerate(SIZES):
        small_pages.put("doc", doc(s, k), namespace=ns)
    pages = walk(
        lambda after: small_pages.history("doc", after=after, limit=limit, namespace=ns), 0
    )
    got = [[v.content["n"] for v in page] for page in pages]
    assert got == expected_pages(SIZES, limit)
    for page in pages:
        assert len(page.versions) == 1 or sum(size(v.content) for v in page) <= BUDGET
    versions = [v.version for page in pages for v in page]
    assert versions == list(range(1, len(SIZES) + 1))


@pytest.mark.parametrize("limit", [50, 3])
def test_read_pages_end_early_by_bytes(small_pages: Store, ns: str, limit: int) -> None:
    small_pages.append("chat", [doc(s, k) for k, s in enumerate(SIZES[:6])], namespace=ns)
    for k, s in enumerate(SIZES[6:], start=6):
        small_pages.append("chat", [doc(s, k)], namespace=ns)
    pages = walk(lambda after: small_pages.read("chat", after=after, limit=limit, namespace=ns), 0)
    got = [[i.body["n"] for i in page] for page in pages]
    assert got == expected_pages(SIZES, limit)
    assert [i.sequence for page in pages for i in page] == list(range(1, len(SIZES) + 1))


@pytest.mark.parametrize("limit", [50, 4])
def test_list_pages_end_early_by_bytes(small_pages: Store, ns: str, limit: int) -> None:
    for k, s in enumerate(SIZES):
        small_pages.put(f"r/{k:02}", doc(s, k), namespace=ns)
    small_pages.put("other", doc(20, 99), namespace=ns)
    small_pages.put("r/gone", doc(20, 98), namespace=ns)
    small_pages.delete("r/gone", namespace=ns)
    pages = walk(lambda after: small_pages.list("r/", after, limit, namespace=ns), None)
    got = [[r.content["n"] for r in page.records] for page in pages]
    assert got == expected_pages(SIZES, limit)
    assert [r.id for page in pages for r in page.records] == [f"r/{k:02}" for k in range(12)]


def test_one_item_over_the_budget_comes_alone(small_pages: Store, ns: str) -> None:
    small_pages.put("doc", doc(5000, 0), namespace=ns)
    small_pages.put("doc", doc(20, 1), namespace=ns)
    first = small_pages.history("doc", namespace=ns)
    assert [v.version for v in first] == [1]
    assert first.next_after == 1
    second = small_pages.history("doc", after=1, namespace=ns)
    assert ([v.version for v in second], second.next_after) == ([2], None)

    small_pages.append("s", [doc(5000, 0)], namespace=ns)
    only = small_pages.read("s", namespace=ns)
    assert ([i.sequence for i in only], only.next_after) == ([1], None)

    small_pages.put("big", doc(5000, 0), namespace=ns)
    small_pages.put("big2", doc(5000, 1), namespace=ns)
    page = small_pages.list("big", namespace=ns)
    assert ([r.id for r in page.records], page.next_after) == (["big"], "big")


def test_budget_counts_utf8_bytes_not_characters(small_pages: Store, ns: str) -> None:
    # 400 characters but 800 bytes each: two fit the budget by characters, not by bytes.
    for k in range(3):
        small_pages.put("doc", {"t": "é" * 400, "k": k}, namespace=ns)
        small_pages.append("s", [{"t": "é" * 400, "k": k}], namespace=ns)
        small_pages.put(f"r{k}", {"t": "é" * 400}, namespace=ns)
    assert len(small_pages.history("doc", namespace=ns).versions) == 1
    assert len(small_pages.read("s", namespace=ns).items) == 1
    assert len(small_pages.list(namespace=ns).records) == 1


def test_default_budget_keeps_full_pages(store: Store, ns: str) -> None:
    assert store.max_page_bytes == DEFAULT_MAX_PAGE_BYTES == 8 * 1024 * 1024
    for k in range(5):
        store.put("doc", doc(2000, k), namespace=ns)
    page = store.history("doc", limit=5, namespace=ns)
    assert (len(page.versions), page.next_after) == (5, None)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "8"])
def test_max_page_bytes_is_validated(sqlite_url: str, bad: Any) -> None:
    with pytest.raises(InvalidInput, match="max_page_bytes"):
        Store(sqlite_url, max_page_bytes=bad)


def test_list_prefix_is_a_case_sensitive_range(store: Store, ns: str) -> None:
    ids = ["Doc-1", "doc-1", "doc-2", "doc", "doc\U0010fffd", "doc\U0010fffdx", "do", "dod", "e"]
    for id in ids:
        store.put(id, {"id": id}, namespace=ns)
    assert [r.id for r in store.list(prefix="doc", namespace=ns)] == [
        "doc",
        "doc-1",
        "doc-2",
        "doc\U0010fffd",
        "doc\U0010fffdx",
    ]
    assert [r.id for r in store.list(prefix="Doc", namespace=ns)] == ["Doc-1"]
    assert [r.id for r in store.list(prefix="doc\U0010fffd", namespace=ns)] == [
        "doc\U0010fffd",
        "doc\U0010fffdx",
    ]
    page = store.list(prefix="doc", after="doc-1", limit=2, namespace=ns)
    assert ([r.id for r in page.records], page.next_after) == (
        ["doc-2", "doc\U0010fffd"],
        "doc\U0010fffd",
    )
    assert store.list(prefix="d", after="a", namespace=ns).records[0].id == "do"


def test_page_cut_rule() -> None:
    assert page_cut([], 10, 100) == (0, False)
    assert page_cut([500], 10, 100) == (1, False)
    assert page_cut([500, 1], 10, 100) == (1, True)
    assert page_cut([50, 50, 1], 10, 100) == (2, True)
    assert page_cut([50, 50], 2, 100) == (2, False)
    assert page_cut([50, 50, 1], 2, 1000) == (2, True)


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("ab") == "ac"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff") is None
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"


def test_resend_check_does_not_load_stored_bodies(store: Store, ns: str) -> None:
    # 20 stored items of 100 KB; a batch naming their ids with other (tiny) bodies is
    # refused without the 2 MB of stored bodies being read into memory.
    ids = [f"m-{k}" for k in range(20)]
    store.append("s", [doc(100_000, k) for k in range(20)], item_ids=ids, namespace=ns)
    store.read("s", limit=1, namespace=ns)  # warm the connection and statement caches
    tracemalloc.start()
    try:
        with pytest.raises(DuplicateItem):
            store.append("s", [{"k": k} for k in range(20)], item_ids=ids, namespace=ns)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    again = store.append("s", [doc(100_000, k) for k in range(20)], item_ids=ids, namespace=ns)
    assert again.duplicate
    assert [i.body for i in again.items] == [doc(100_000, k) for k in range(20)]


def test_list_looks_at_a_bounded_window_of_ids(store: Store, ns: str) -> None:
    # ids 00..29; every one but 00, 01, 17 and 29 deleted. With a window of 5 ids a
    # page of 2 ends after 5 ids even without a live one (empty, with next_after).
    live = {0, 1, 17, 29}
    for k in range(30):
        store.put(f"r{k:02}", {"k": k}, namespace=ns)
        if k not in live:
            store.delete(f"r{k:02}", namespace=ns)
    with mock.patch.object(config, "LIST_SCAN_ROWS", 5):
        pages = walk(lambda after: store.list("r", after, 2, namespace=ns), None)
        assert [[r.content["k"] for r in p.records] for p in pages] == [
            [0, 1], [], [], [17], [], [29], []
        ]  # fmt: skip
        assert [p.next_after for p in pages] == ["r04", "r09", "r14", "r19", "r24", "r29", None]
        # The window is never smaller than the page asked for.
        page = store.list("r", None, 10, namespace=ns)
        assert ([r.id for r in page.records], page.next_after) == (["r00", "r01"], "r10")
    everything = store.list("r", None, 50, namespace=ns)
    assert ([r.id for r in everything.records], everything.next_after) == (
        ["r00", "r01", "r17", "r29"],
        None,
    )
