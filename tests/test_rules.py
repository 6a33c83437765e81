"""Core rules without a database: canonical JSON, merge-patch, diff, write planning."""

from __future__ import annotations

import json

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st

from revstore import InvalidInput, NotFound, VersionConflict
from revstore.content import Canonical, canonical_json, content_hash, merge_patch, validate_id
from revstore.record import Action, Head, Mode, WriteIntent, plan_write
from revstore.stream import StoredItem, classify_resend

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_hash_ignores_key_order(doc: dict[str, object]) -> None:
    reordered = dict(reversed(list(doc.items())))
    assert content_hash(canonical_json(doc)) == content_hash(canonical_json(reordered))
    assert json.loads(Canonical(doc, max_bytes=10**7).text) == doc


@given(json_values, json_values)
def test_diff_turns_old_into_new(old: object, new: object) -> None:
    from revstore.content import diff

    assert jsonpatch.apply_patch(old, diff(old, new)) == new


# The examples of RFC 7396 appendix A.
RFC7396 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7396)
def test_merge_patch_rfc7396_examples(target: object, patch: object, result: object) -> None:
    assert merge_patch(target, patch) == result


def test_deeply_nested_content_is_refused() -> None:
    doc: object = 1
    for _ in range(200):
        doc = [doc]
    with pytest.raises(InvalidInput, match="nested deeper"):
        Canonical(doc, max_bytes=10**6)


def test_id_rules() -> None:
    assert validate_id("a" * 255) == "a" * 255
    for bad in ["", "a" * 256, "x\ny", "\x85next-line"]:
        with pytest.raises(InvalidInput):
            validate_id(bad)


def intent(
    mode: Mode = Mode.PUT, exp: int | None = None, create_version: bool = True
) -> WriteIntent:
    return WriteIntent("ns", "id", mode, exp, create_version, "{}", "h-new", {})


def test_plan_write_arithmetic() -> None:
    none = lambda: None  # noqa: E731
    assert plan_write(None, intent(), none).action is Action.INSERT
    assert plan_write(None, intent(create_version=False), none).version == 0
    head = Head(revision=4, version=2, content_hash="h-old", deleted=False)
    plan = plan_write(head, intent(), none)
    assert (plan.action, plan.revision, plan.version, plan.snapshot) == (Action.UPDATE, 5, 3, True)
    plan = plan_write(head, intent(create_version=False), none)
    assert (plan.revision, plan.version, plan.snapshot) == (5, 2, False)
    same = Head(4, 2, "h-new", False)
    assert plan_write(same, intent(), none).action is Action.UNCHANGED
    with pytest.raises(VersionConflict):
        plan_write(same, intent(exp=3), none)
    tomb = Head(4, 2, "h-new", True)
    assert plan_write(tomb, intent(exp=0), none).action is Action.UPDATE
    with pytest.raises(NotFound):
        plan_write(tomb, intent(Mode.UPDATE), none)
    with pytest.raises(NotFound):
        plan_write(None, intent(Mode.DELETE), none)
    plan = plan_write(head, intent(Mode.DELETE), none)
    assert (plan.revision, plan.version, plan.deleted) == (5, 2, True)


def test_classify_resend() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    stored = {"a": StoredItem(7, "a", "ha", {"x": 1}, now), "b": StoredItem(8, "b", "hb", {}, now)}
    assert classify_resend("s", ["c"], ["hc"], {}) is None
    res = classify_resend("s", ["a", "b"], ["ha", "hb"], stored)
    assert res is not None and res.duplicate and (res.first_sequence, res.last_sequence) == (7, 8)
    from revstore import DuplicateItem

    with pytest.raises(DuplicateItem):
        classify_resend("s", ["a", "c"], ["ha", "hc"], {"a": stored["a"]})
    with pytest.raises(DuplicateItem):
        classify_resend("s", ["a"], ["changed"], {"a": stored["a"]})
