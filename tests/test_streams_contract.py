"""Stream semantics: the contract every backend passes unchanged."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from revstore import DuplicateItem, InvalidInput, NotFound, SequenceConflict, Store


def test_append_assigns_contiguous_gapless_sequences(store: Store, ns: str) -> None:
    res = store.append("chat", [{"role": "user", "content": "hi"}, {"role": "bot"}], namespace=ns)
    assert (res.first_sequence, res.last_sequence, res.duplicate) == (1, 2, False)
    assert [i.sequence for i in res.items] == [1, 2]
    assert res.items[0].body == {"role": "user", "content": "hi"}
    res = store.append("chat", [{"n": k} for k in range(5)], namespace=ns)
    assert (res.first_sequence, res.last_sequence) == (3, 7)
    page = store.read("chat", namespace=ns)
    assert [i.sequence for i in page] == list(range(1, 8))
    assert page.items[3].body == {"n": 1}
    info = store.stream_info("chat", namespace=ns)
    assert (info.last_sequence, info.item_count) == (7, 7)
    assert info.updated_at >= info.created_at


def test_read_paging(store: Store, ns: str) -> None:
    store.append("s", [{"n": k} for k in range(1, 11)], namespace=ns)
    page = store.read("s", limit=4, namespace=ns)
    assert [i.sequence for i in page] == [1, 2, 3, 4] and page.next_after == 4
    page = store.read("s", after=8, limit=4, namespace=ns)
    assert [i.sequence for i in page] == [9, 10] and page.next_after is None


def test_missing_stream(store: Store, ns: str) -> None:
    with pytest.raises(NotFound):
        store.read("nope", namespace=ns)
    with pytest.raises(NotFound):
        store.stream_info("nope", namespace=ns)


def test_expected_sequence(store: Store, ns: str) -> None:
    with pytest.raises(SequenceConflict) as info:
        store.append("s", [{"a": 1}], expected_sequence=3, namespace=ns)
    assert info.value.current_sequence == 0
    res = store.append("s", [{"a": 1}], expected_sequence=0, namespace=ns)
    assert res.first_sequence == 1
    with pytest.raises(SequenceConflict) as info:
        store.append("s", [{"a": 2}], expected_sequence=0, namespace=ns)
    assert info.value.current_sequence == 1
    res = store.append("s", [{"a": 2}, {"a": 3}], expected_sequence=1, namespace=ns)
    assert (res.first_sequence, res.last_sequence) == (2, 3)
    assert store.stream_info("s", namespace=ns).last_sequence == 3


def test_resent_batch_is_exactly_once(store: Store, ns: str) -> None:
    first = store.append("s", [{"m": 1}, {"m": 2}], item_ids=["a", "b"], namespace=ns)
    store.append("s", [{"m": 3}], namespace=ns)
    again = store.append("s", [{"m": 1}, {"m": 2}], item_ids=["a", "b"], namespace=ns)
    assert again.duplicate is True
    assert (again.first_sequence, again.last_sequence) == (
        first.first_sequence,
        first.last_sequence,
    )
    assert [(i.sequence, i.item_id, i.body) for i in again.items] == [
        (1, "a", {"m": 1}),
        (2, "b", {"m": 2}),
    ]
    # A sub-batch of stored items is also a pure re-send.
    part = store.append("s", [{"m": 2}], item_ids=["b"], namespace=ns)
    assert part.duplicate and part.first_sequence == 2
    # A re-send wins over a stale expected_sequence: it was already accepted.
    late = store.append(
        "s", [{"m": 1}, {"m": 2}], item_ids=["a", "b"], expected_sequence=0, namespace=ns
    )
    assert late.duplicate
    assert store.stream_info("s", namespace=ns).last_sequence == 3


def test_mixed_or_changed_resend_is_rejected(store: Store, ns: str) -> None:
    store.append("s", [{"m": 1}], item_ids=["a"], namespace=ns)
    with pytest.raises(DuplicateItem) as info:
        store.append("s", [{"m": 1}, {"m": 2}], item_ids=["a", "b"], namespace=ns)
    assert info.value.item_ids == ["a"]
    with pytest.raises(DuplicateItem) as info:
        store.append("s", [{"m": "changed"}], item_ids=["a"], namespace=ns)
    assert info.value.item_ids == ["a"]
    assert store.stream_info("s", namespace=ns).last_sequence == 1
    assert [i.item_id for i in store.read("s", namespace=ns)] == ["a"]


def test_item_ids_are_per_stream(store: Store, ns: str) -> None:
    store.append("s1", [{"m": 1}], item_ids=["a"], namespace=ns)
    res = store.append("s2", [{"m": 1}], item_ids=["a"], namespace=ns)
    assert res.duplicate is False and res.first_sequence == 1


def test_items_without_ids_never_dedupe(store: Store, ns: str) -> None:
    store.append("s", [{"m": 1}], namespace=ns)
    res = store.append("s", [{"m": 1}], namespace=ns)
    assert res.first_sequence == 2 and not res.duplicate
    assert [i.item_id for i in res.items] == [None]


@pytest.mark.parametrize(
    ("items", "item_ids"),
    [
        ([], None),
        ([{"a": float("nan")}], None),
        ([{"a": {1, 2}}], None),
        ([{"a": 1}, {"a": 2}], ["only-one"]),
        ([{"a": 1}, {"a": 2}], ["same", "same"]),
        ([{"a": 1}], [""]),
        ([{"a": 1}], ["x" * 256]),
        ({"a": 1}, None),
        ("text", None),
    ],
    ids=["empty", "nan", "set", "ids-length", "ids-repeat", "id-empty", "id-long", "dict", "str"],
)
def test_bad_batches_write_nothing(store: Store, ns: str, items: object, item_ids: object) -> None:
    with pytest.raises(InvalidInput):
        store.append("s", items, item_ids=item_ids, namespace=ns)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.stream_info("s", namespace=ns)


def test_batch_and_item_limits(backend_url: str, ns: str, make_store: Callable[..., Store]) -> None:
    store = make_store(backend_url, max_batch_items=5, max_content_bytes=100)
    try:
        with pytest.raises(InvalidInput, match="at most 5"):
            store.append("s", [{"n": k} for k in range(6)], namespace=ns)
        with pytest.raises(InvalidInput, match="item 1"):
            store.append("s", [{"n": 1}, {"big": "x" * 200}], namespace=ns)
        with pytest.raises(NotFound):
            store.stream_info("s", namespace=ns)
        assert store.append("s", [{"n": k} for k in range(5)], namespace=ns).last_sequence == 5
    finally:
        store.close()


def test_default_batch_limit_is_1000(store: Store, ns: str) -> None:
    res = store.append("s", [{"n": k} for k in range(1000)], namespace=ns)
    assert (res.first_sequence, res.last_sequence) == (1, 1000)
    with pytest.raises(InvalidInput):
        store.append("s", [{"n": k} for k in range(1001)], namespace=ns)


@pytest.mark.parametrize("bad", [-1, "3", 1.0])
def test_bad_expected_sequence(store: Store, ns: str, bad: object) -> None:
    with pytest.raises(InvalidInput):
        store.append("s", [{"a": 1}], expected_sequence=bad, namespace=ns)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 1001])
def test_bad_read_limit(store: Store, ns: str, bad: int) -> None:
    store.append("s", [{"a": 1}], namespace=ns)
    with pytest.raises(InvalidInput):
        store.read("s", limit=bad, namespace=ns)


def test_list_streams_pages_by_id_with_prefix(store: Store, ns: str) -> None:
    for sid, n in [("chat-b", 2), ("chat-a", 1), ("log", 3), ("chat-c", 1), ("chat_x", 1)]:
        store.append(sid, [{"k": k} for k in range(n)], namespace=ns)
    page = store.list_streams(prefix="chat-", limit=2, namespace=ns)
    assert [(s.id, s.last_sequence, s.item_count) for s in page] == [
        ("chat-a", 1, 1),
        ("chat-b", 2, 2),
    ]
    assert page.next_after == "chat-b"
    rest = store.list_streams(prefix="chat-", after=page.next_after, limit=2, namespace=ns)
    assert [s.id for s in rest] == ["chat-c"] and rest.next_after is None
    assert [s.id for s in store.list_streams(namespace=ns)] == [
        "chat-a",
        "chat-b",
        "chat-c",
        "chat_x",
        "log",
    ]
    assert store.list_streams(namespace=f"{ns}-none").streams == []
    with pytest.raises(InvalidInput):
        store.list_streams(limit=0, namespace=ns)
    with pytest.raises(InvalidInput):
        store.list_streams(after="", namespace=ns)
