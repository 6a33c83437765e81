"""Record semantics: the contract every backend passes unchanged."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from revstore import InvalidInput, NotFound, Store, VersionConflict
from revstore.content import canonical_json, content_hash


def test_create_then_update_counts_revision_and_version(store: Store, ns: str) -> None:
    r1 = store.put("doc", {"text": "hi"}, namespace=ns)
    assert (r1.revision, r1.version, r1.unchanged) == (1, 1, False)
    assert r1.content == {"text": "hi"}
    assert r1.content_hash == content_hash(canonical_json({"text": "hi"}))
    r2 = store.put("doc", {"text": "hello"}, author="ann", summary="typo", namespace=ns)
    assert (r2.revision, r2.version) == (2, 2)
    assert r2.created_at == r1.created_at
    assert r2.updated_at >= r1.updated_at
    got = store.get("doc", namespace=ns)
    assert (got.revision, got.version, got.content) == (2, 2, {"text": "hello"})
    v2 = store.get_version("doc", 2, namespace=ns)
    assert (v2.version, v2.revision, v2.author, v2.summary) == (2, 2, "ann", "typo")
    assert v2.content == {"text": "hello"}


def test_created_flag(store: Store, ns: str) -> None:
    assert store.put("doc", {"v": 1}, namespace=ns).created is True
    assert store.put("doc", {"v": 2}, namespace=ns).created is False
    assert store.put("doc", {"v": 2}, namespace=ns).created is False
    assert store.delete("doc", namespace=ns).created is False
    assert store.put("doc", {"v": 2}, namespace=ns).created is True


def test_autosave_changes_head_only(store: Store, ns: str) -> None:
    store.put("doc", {"t": 1}, namespace=ns)
    auto = store.put("doc", {"t": 2}, create_version=False, namespace=ns)
    assert (auto.revision, auto.version) == (2, 1)
    snap = store.put("doc", {"t": 3}, namespace=ns)
    assert (snap.revision, snap.version) == (3, 2)
    hist = store.history("doc", namespace=ns)
    assert [(v.version, v.revision, v.content) for v in hist] == [
        (1, 1, {"t": 1}),
        (2, 3, {"t": 3}),
    ]


def test_create_without_version_then_snapshot(store: Store, ns: str) -> None:
    r = store.put("doc", {"t": 1}, create_version=False, namespace=ns)
    assert (r.revision, r.version) == (1, 0)
    assert len(store.history("doc", namespace=ns)) == 0
    r = store.put("doc", {"t": 2}, namespace=ns)
    assert (r.revision, r.version) == (2, 1)


def test_same_content_is_a_no_op(store: Store, ns: str) -> None:
    store.put("doc", {"a": 1, "b": [1, 2]}, namespace=ns)
    # Same document, other key order: same canonical JSON, same hash.
    same = store.put("doc", {"b": [1, 2], "a": 1}, namespace=ns)
    assert same.unchanged is True
    assert (same.revision, same.version) == (1, 1)
    assert len(store.history("doc", namespace=ns)) == 1
    patched = store.patch("doc", {"a": 1}, namespace=ns)
    assert patched.unchanged is True and patched.revision == 1


def test_expected_revision(store: Store, ns: str) -> None:
    r1 = store.put("doc", {"v": 1}, expected_revision=0, namespace=ns)
    assert r1.revision == 1
    with pytest.raises(VersionConflict) as info:
        store.put("doc", {"v": 2}, expected_revision=0, namespace=ns)
    assert info.value.current is not None
    assert info.value.current.revision == 1
    assert info.value.current.content == {"v": 1}
    r2 = store.put("doc", {"v": 2}, expected_revision=1, namespace=ns)
    assert r2.revision == 2
    with pytest.raises(VersionConflict) as info:
        store.put("doc", {"v": 3}, expected_revision=1, namespace=ns)
    assert info.value.current_revision == 2
    assert info.value.current is not None and info.value.current.content == {"v": 2}
    assert store.get("doc", namespace=ns).revision == 2


def test_expected_revision_on_missing_record(store: Store, ns: str) -> None:
    with pytest.raises(VersionConflict) as info:
        store.put("ghost", {"v": 1}, expected_revision=3, namespace=ns)
    assert info.value.current is None
    with pytest.raises(NotFound):
        store.get("ghost", namespace=ns)


def test_conflict_wins_over_unchanged(store: Store, ns: str) -> None:
    store.put("doc", {"v": 1}, namespace=ns)
    store.put("doc", {"v": 2}, namespace=ns)
    with pytest.raises(VersionConflict):
        store.put("doc", {"v": 2}, expected_revision=1, namespace=ns)


def test_merge_patch(store: Store, ns: str) -> None:
    store.put("doc", {"title": "t", "text": "a", "meta": {"x": 1, "y": 2}}, namespace=ns)
    r = store.patch("doc", {"title": None, "text": "b", "meta": {"y": None, "z": 3}}, namespace=ns)
    assert r.content == {"text": "b", "meta": {"x": 1, "z": 3}}
    assert (r.revision, r.version) == (2, 2)
    with pytest.raises(VersionConflict) as info:
        store.patch("doc", {"text": "c"}, expected_revision=1, namespace=ns)
    assert info.value.current_revision == 2
    r = store.patch("doc", {"text": "c"}, expected_revision=2, create_version=False, namespace=ns)
    assert (r.revision, r.version) == (3, 2)


def test_patch_missing_is_not_found(store: Store, ns: str) -> None:
    with pytest.raises(NotFound):
        store.patch("ghost", {"a": 1}, namespace=ns)


def test_delete_tombstone_and_revive(store: Store, ns: str) -> None:
    store.put("doc", {"v": 1}, namespace=ns)
    store.put("doc", {"v": 2}, namespace=ns)
    with pytest.raises(VersionConflict):
        store.delete("doc", expected_revision=1, namespace=ns)
    tomb = store.delete("doc", expected_revision=2, namespace=ns)
    assert tomb.revision == 3
    for call in (
        lambda: store.get("doc", namespace=ns),
        lambda: store.get_version("doc", 1, namespace=ns),
        lambda: store.restore("doc", 1, namespace=ns),
        lambda: store.patch("doc", {"a": 1}, namespace=ns),
        lambda: store.delete("doc", namespace=ns),
    ):
        with pytest.raises(NotFound):
            call()
    assert [v.version for v in store.history("doc", namespace=ns)] == [1, 2]
    assert "doc" not in [r.id for r in store.list(namespace=ns)]
    # A tombstone counts as absent: create-only succeeds and numbering continues.
    revived = store.put("doc", {"v": 2}, expected_revision=0, namespace=ns)
    assert (revived.revision, revived.version, revived.unchanged) == (4, 3, False)
    assert store.get("doc", namespace=ns).content == {"v": 2}


def test_delete_missing_is_not_found(store: Store, ns: str) -> None:
    with pytest.raises(NotFound):
        store.delete("ghost", namespace=ns)


def test_restore(store: Store, ns: str) -> None:
    for n in range(1, 4):
        store.put("doc", {"n": n}, namespace=ns)
    r = store.restore("doc", 1, namespace=ns)
    assert (r.revision, r.version, r.content) == (4, 4, {"n": 1})
    v4 = store.get_version("doc", 4, namespace=ns)
    assert v4.content == {"n": 1} and v4.summary == "restore version 1"
    with pytest.raises(VersionConflict):
        store.restore("doc", 2, expected_revision=1, namespace=ns)
    with pytest.raises(NotFound):
        store.restore("doc", 99, namespace=ns)
    with pytest.raises(NotFound):
        store.restore("ghost", 1, namespace=ns)
    # Restoring the content the head already has writes nothing.
    assert store.restore("doc", 4, namespace=ns).unchanged is True


def test_history_paging(store: Store, ns: str) -> None:
    for n in range(1, 8):
        store.put("doc", {"n": n}, namespace=ns)
    page = store.history("doc", limit=3, namespace=ns)
    assert [v.version for v in page] == [1, 2, 3] and page.next_after == 3
    page = store.history("doc", after=page.next_after, limit=3, namespace=ns)
    assert [v.version for v in page] == [4, 5, 6] and page.next_after == 6
    page = store.history("doc", after=6, limit=3, namespace=ns)
    assert [v.version for v in page] == [7] and page.next_after is None
    assert len(store.history("doc", after=7, namespace=ns)) == 0
    with pytest.raises(NotFound):
        store.history("ghost", namespace=ns)


def test_get_version_missing(store: Store, ns: str) -> None:
    store.put("doc", {"n": 1}, namespace=ns)
    with pytest.raises(NotFound):
        store.get_version("doc", 2, namespace=ns)
    with pytest.raises(NotFound):
        store.get_version("ghost", 1, namespace=ns)


def test_list_prefix_and_paging(store: Store, ns: str) -> None:
    for rid in ["a/1", "a/2", "a/3", "b/1", "a%", "A/9"]:
        store.put(rid, {"id": rid}, namespace=ns)
    store.delete("a/2", namespace=ns)
    ids = [r.id for r in store.list(namespace=ns)]
    assert sorted(ids) == sorted(["a/1", "a/3", "b/1", "a%", "A/9"])
    # Prefix match is literal (no LIKE wildcards) and case-sensitive.
    assert [r.id for r in store.list(prefix="a/", namespace=ns)] == ["a/1", "a/3"]
    assert [r.id for r in store.list(prefix="a%", namespace=ns)] == ["a%"]
    first = store.list(prefix="a/", limit=1, namespace=ns)
    assert [r.id for r in first] == ["a/1"] and first.next_after == "a/1"
    second = store.list(prefix="a/", after=first.next_after, limit=1, namespace=ns)
    assert [r.id for r in second] == ["a/3"]


def test_diff(store: Store, ns: str) -> None:
    store.put("doc", {"a": 1, "b": [1, 2]}, namespace=ns)
    store.put("doc", {"a": 2, "b": [1, 2, 3], "c": "x"}, namespace=ns)
    ops = store.diff("doc", 1, 2, namespace=ns)
    import jsonpatch

    assert jsonpatch.apply_patch({"a": 1, "b": [1, 2]}, ops) == {"a": 2, "b": [1, 2, 3], "c": "x"}
    assert store.diff("doc", 2, 2, namespace=ns) == []
    with pytest.raises(NotFound):
        store.diff("doc", 1, 9, namespace=ns)


def test_namespaces_and_case_are_separate(store: Store, ns: str) -> None:
    store.put("doc", {"who": "lower"}, namespace=ns)
    store.put("Doc", {"who": "upper"}, namespace=ns)
    store.put("doc ", {"who": "space"}, namespace=ns)
    store.put("doc", {"who": "other"}, namespace=ns + "-2")
    assert store.get("doc", namespace=ns).content == {"who": "lower"}
    assert store.get("Doc", namespace=ns).content == {"who": "upper"}
    assert store.get("doc ", namespace=ns).content == {"who": "space"}
    assert store.get("doc", namespace=ns + "-2").content == {"who": "other"}


def test_unicode_and_json_types_round_trip(store: Store, ns: str) -> None:
    content = {"é": "ünïcødé 🚀", "n": [1, 2.5, -3, 10**15], "t": True, "f": False, "z": None}
    store.put("unicode-✓", content, namespace=ns)
    assert store.get("unicode-✓", namespace=ns).content == content
    for scalar in ["just text", 42, None, [1, 2]]:
        store.put("scalar", scalar, namespace=ns)
        assert store.get("scalar", namespace=ns).content == scalar


@pytest.mark.parametrize(
    "content",
    [math.nan, {"x": math.inf}, {1, 2}, b"bytes", {"k": object()}, {1: "int key"}],
    ids=["nan", "inf", "set", "bytes", "object", "int-key"],
)
def test_bad_content_writes_nothing(store: Store, ns: str, content: object) -> None:
    with pytest.raises(InvalidInput):
        store.put("doc", content, namespace=ns)
    with pytest.raises(NotFound):
        store.get("doc", namespace=ns)


@pytest.mark.parametrize(
    "rid",
    ["", "x" * 256, "a\nb", "tab\there", "nul\x00", "del\x7f", 42],
    ids=["empty", "long", "newline", "tab", "nul", "del", "int"],
)
def test_bad_ids(store: Store, ns: str, rid: object) -> None:
    with pytest.raises(InvalidInput):
        store.put(rid, {"a": 1}, namespace=ns)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.get(rid, namespace=ns)  # type: ignore[arg-type]


def test_id_of_255_characters_is_fine(store: Store, ns: str) -> None:
    rid = "é" * 255
    store.put(rid, {"a": 1}, namespace=ns)
    assert store.get(rid, namespace=ns).id == rid


def test_content_size_limit(backend_url: str, ns: str, make_store: Callable[..., Store]) -> None:
    store = make_store(backend_url, max_content_bytes=1000)
    try:
        store.put("ok", {"s": "x" * 900}, namespace=ns)
        with pytest.raises(InvalidInput, match="over the limit"):
            store.put("big", {"s": "x" * 1000}, namespace=ns)
        with pytest.raises(NotFound):
            store.get("big", namespace=ns)
        with pytest.raises(InvalidInput):
            store.patch("ok", {"t": "y" * 200}, namespace=ns)
        assert store.get("ok", namespace=ns).revision == 1
    finally:
        store.close()


def test_default_content_limit_is_one_mebibyte(store: Store, ns: str) -> None:
    with pytest.raises(InvalidInput):
        store.put("big", "x" * (1024 * 1024), namespace=ns)
    rec = store.put("near", "x" * (1024 * 1024 - 10), namespace=ns)
    assert len(store.get("near", namespace=ns).content) == len(rec.content)


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, True])
def test_bad_version_numbers(store: Store, ns: str, bad: object) -> None:
    store.put("doc", {"a": 1}, namespace=ns)
    with pytest.raises(InvalidInput):
        store.get_version("doc", bad, namespace=ns)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.restore("doc", bad, namespace=ns)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, 1001, -5, "10"])
def test_bad_limits(store: Store, ns: str, bad: object) -> None:
    store.put("doc", {"a": 1}, namespace=ns)
    with pytest.raises(InvalidInput):
        store.history("doc", limit=bad, namespace=ns)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        store.list(limit=bad, namespace=ns)  # type: ignore[arg-type]


def test_bad_expected_revision_and_fields(store: Store, ns: str) -> None:
    for kwargs in (
        {"expected_revision": -1},
        {"expected_revision": "1"},
        {"create_version": "yes"},
        {"author": "a" * 300},
        {"summary": 5},
    ):
        with pytest.raises(InvalidInput):
            store.put("doc", {"a": 1}, namespace=ns, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.get("doc", namespace=ns)


@pytest.mark.parametrize("strategy", ["counter", "lock", "optimistic"])
def test_every_strategy_keeps_the_rules(
    backend_url: str, ns: str, strategy: str, make_store: Callable[..., Store]
) -> None:
    store = make_store(backend_url, strategy=strategy)
    try:
        assert store.strategy == strategy
        assert store.put("doc", {"v": 1}, namespace=ns).revision == 1
        assert store.put("doc", {"v": 1}, namespace=ns).unchanged
        assert store.put("doc", {"v": 2}, create_version=False, namespace=ns).version == 1
        with pytest.raises(VersionConflict):
            store.put("doc", {"v": 3}, expected_revision=1, namespace=ns)
        assert store.patch("doc", {"w": 1}, namespace=ns).content == {"v": 2, "w": 1}
        store.delete("doc", namespace=ns)
        revived = store.put("doc", {"v": 4}, namespace=ns)
        assert (revived.revision, revived.version) == (5, 3)
        res = store.append("s", [{"i": 1}, {"i": 2}], namespace=ns)
        assert (res.first_sequence, res.last_sequence) == (1, 2)
    finally:
        store.close()


def test_unknown_strategy_and_url() -> None:
    with pytest.raises(InvalidInput):
        Store("sqlite:///x.db", strategy="magic")
    with pytest.raises(InvalidInput):
        Store("oracle://x")
    with pytest.raises(InvalidInput):
        Store("not a url")
    with pytest.raises(InvalidInput):
        Store("sqlite:///:memory:")


def test_schema_creation_is_idempotent(store: Store) -> None:
    store.create_schema()
    store.create_schema()
    Store(store.url).create_schema()


def test_lone_surrogates_are_invalid(store: Store, ns: str) -> None:
    for call in (
        lambda: store.put("doc", {"t": "\ud800"}, namespace=ns),
        lambda: store.put("doc", {"\udfff": 1}, namespace=ns),
        lambda: store.put("bad\ud800", {"t": 1}, namespace=ns),
        lambda: store.put("doc", {"t": 1}, author="\ud800", namespace=ns),
        lambda: store.append("s", [{"t": 1}], item_ids=["\ud800"], namespace=ns),
    ):
        with pytest.raises(InvalidInput, match="surrogate"):
            call()
    with pytest.raises(NotFound):
        store.get("doc", namespace=ns)


def test_numbers_beyond_64_bits_are_invalid(store: Store, ns: str) -> None:
    store.put("doc", {"a": 1}, namespace=ns)
    huge = 2**63
    with pytest.raises(InvalidInput):
        store.put("doc", {"a": 2}, expected_revision=huge, namespace=ns)
    with pytest.raises(InvalidInput):
        store.get_version("doc", huge, namespace=ns)
    with pytest.raises(InvalidInput):
        store.history("doc", after=huge, namespace=ns)
    with pytest.raises(InvalidInput):
        store.append("s", [{"a": 1}], expected_sequence=huge, namespace=ns)
    with pytest.raises(VersionConflict):
        store.put("doc", {"a": 2}, expected_revision=huge - 1, namespace=ns)
