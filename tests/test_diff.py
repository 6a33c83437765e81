"""``revstore.diff``: an RFC 6902 diff that is always correct, near-linear, and small
for small edits. Correctness is checked by applying the patch with ``jsonpatch`` (an
independent implementation) and comparing canonical texts, so ``1``, ``1.0`` and
``true`` count as different values, as they are in stored content."""

from __future__ import annotations

import copy
import json
from typing import Any
from unittest import mock

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revstore import diff as diff_module
from revstore.content import diff

KEYS = st.one_of(st.text(alphabet="ab/~01", max_size=4), st.text(max_size=6))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([0.0, -0.0, 1.0, 2.5]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="ab1", max_size=3),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=8), st.dictionaries(KEYS, children, max_size=5)
    ),
    max_leaves=40,
)


def text(value: Any) -> str:
    """Canonical text: tells ``1`` from ``1.0`` from ``true``, and ``-0.0`` from ``0.0``."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def check(old: Any, new: Any) -> list[dict[str, Any]]:
    before = text(old)
    ops = diff(old, new)
    json.dumps(ops)  # the patch itself is JSON
    result = jsonpatch.apply_patch(old, ops)
    assert text(result) == text(new), ops
    assert text(old) == before, "diff must not modify its input"
    return ops


@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """``value`` with a few random edits (the pairs a real history has)."""
    if isinstance(value, list) and value and draw(st.booleans()):
        out = list(value)
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["insert", "delete", "change", "move"]))
            if kind == "insert" or not out:
                out.insert(draw(st.integers(0, len(out))), draw(VALUES))
            elif kind == "delete":
                del out[draw(st.integers(0, len(out) - 1))]
            elif kind == "change":
                i = draw(st.integers(0, len(out) - 1))
                out[i] = draw(mutated(out[i], depth + 1)) if depth < 4 else draw(VALUES)
            else:
                item = out.pop(draw(st.integers(0, len(out) - 1)))
                out.insert(draw(st.integers(0, len(out))), item)
        return out
    if isinstance(value, dict) and value and draw(st.booleans()):
        out_d = dict(value)
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["add", "delete", "change"]))
            if kind == "add" or not out_d:
                out_d[draw(KEYS)] = draw(VALUES)
            elif kind == "delete":
                del out_d[draw(st.sampled_from(sorted(out_d)))]
            else:
                k = draw(st.sampled_from(sorted(out_d)))
                out_d[k] = draw(mutated(out_d[k], depth + 1)) if depth < 4 else draw(VALUES)
        return out_d
    return draw(VALUES) if draw(st.booleans()) else copy.deepcopy(value)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    a = draw(VALUES)
    if draw(st.booleans()):
        return a, draw(VALUES)
    return a, draw(mutated(a))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs())
def test_patch_turns_old_into_new(pair: tuple[Any, Any]) -> None:
    check(*pair)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs(), st.sampled_from([0, 2]))
def test_patch_is_correct_when_alignment_falls_back(pair: tuple[Any, Any], depth: int) -> None:
    # No Myers budget at all: arrays are aligned on unique elements (depth 2), or
    # (depth 0) every changed array middle is edited element by element.
    with (
        mock.patch.object(diff_module, "MYERS_BUDGET", 0),
        mock.patch.object(diff_module, "MAX_ANCHOR_DEPTH", depth),
    ):
        check(*pair)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=30), st.lists(st.integers(0, 3), max_size=30))
def test_arrays_of_few_distinct_values(a: list[int], b: list[int]) -> None:
    # Many equal elements: the case where an alignment is easy to get wrong.
    check(a, b)
    check([a, b], [b, a])


def test_equal_documents_need_no_operation() -> None:
    doc = {"a": [1, 2.5, {"b": None}], "c": "x"}
    assert diff(doc, copy.deepcopy(doc)) == []
    assert diff({"b": 1, "a": 2}, {"a": 2, "b": 1}) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [(1, 1.0), (1, True), (1.0, True), (0, False), (0.0, -0.0), ("1", 1), (None, False)],
)
def test_numbers_and_booleans_are_not_mixed_up(old: Any, new: Any) -> None:
    for a, b in ((old, new), (new, old)):
        assert check([a], [b]) == [{"op": "replace", "path": "/0", "value": b}]
        assert check({"k": a}, {"k": b}) == [{"op": "replace", "path": "/k", "value": b}]
        assert check([[a, 5]], [[b, 5]]) == [{"op": "replace", "path": "/0/0", "value": b}]
        assert check(a, b) == [{"op": "replace", "path": "", "value": b}]


def test_keys_with_slash_and_tilde_are_escaped() -> None:
    old = {"a/b": 1, "~": {"~1/": [1]}, "": 0}
    new = {"a/b": 2, "~": {"~1/": [1, 2]}, "": 0, "/~": 3}
    ops = check(old, new)
    assert {"op": "replace", "path": "/a~1b", "value": 2} in ops
    assert {"op": "add", "path": "/~0/~01~1/1", "value": 2} in ops
    assert {"op": "add", "path": "/~1~0", "value": 3} in ops


def test_one_changed_element_of_a_long_array_is_one_operation() -> None:
    old = list(range(40_000))
    new = list(old)
    new[12_345] = "changed"
    assert check(old, new) == [{"op": "replace", "path": "/12345", "value": "changed"}]


def test_a_change_deep_inside_a_long_array_stays_deep() -> None:
    old = [{"id": i, "tags": ["a", "b"]} for i in range(10_000)]
    new = copy.deepcopy(old)
    new[5_000]["tags"].append("c")
    assert check(old, new) == [{"op": "add", "path": "/5000/tags/2", "value": "c"}]


def test_insert_and_remove_in_the_middle_of_a_long_array() -> None:
    old = list(range(100_000))
    inserted = [*old[:50000], "x", "y", *old[50000:]]
    assert check(old, inserted) == [
        {"op": "add", "path": "/50000", "value": "x"},
        {"op": "add", "path": "/50001", "value": "y"},
    ]
    removed = old[:70_000] + old[70_003:]
    assert check(old, removed) == [{"op": "remove", "path": "/70000"}] * 3


def test_shifted_array_is_a_few_operations() -> None:
    old = list(range(50_000))
    assert check(old, [*old[1:], old[0]]) == [
        {"op": "remove", "path": "/0"},
        {"op": "add", "path": "/49999", "value": 0},
    ]
    assert len(check(old, ["head", *old])) == 1


def test_scattered_edits_in_a_long_array_are_found() -> None:
    old = [f"line {i}" for i in range(20_000)]
    new = list(old)
    for i in range(19_000, 0, -1_000):
        new.insert(i, f"new {i}")
    del new[5]
    ops = check(old, new)
    assert len(ops) == 20


def test_too_many_edits_for_the_budget_still_give_a_correct_patch() -> None:
    # Every other element differs: far more edits than the alignment budget allows.
    old = list(range(3_000))
    new = [x if x % 2 else -x for x in range(1, 3_001)]
    with mock.patch.object(diff_module, "MYERS_BUDGET", 60_000):
        ops = check(old, new)
    assert len(ops) <= len(new) + len(old)


def test_many_edits_are_aligned_on_unique_elements() -> None:
    # 10,000 edits: past Myers' budget, found by anchoring on unique elements.
    old = list(range(20_000))
    assert check(old, old[::2]) == [{"op": "remove", "path": f"/{i}"} for i in range(1, 10_001)]
    blocks = [{"id": i, "text": f"block {i}"} for i in range(5_000)]
    edited = copy.deepcopy(blocks)
    for i in range(0, 5_000, 50):
        edited[i]["text"] += "!"
    del edited[4_321]
    edited.insert(1_234, {"id": "new"})
    ops = check(blocks, edited)
    assert len(ops) == 100 + 2


def test_nested_arrays() -> None:
    old = [[list(range(5)) for _ in range(3)] for _ in range(3)]
    new = copy.deepcopy(old)
    new[1][2].insert(2, "x")
    new[2].insert(0, [])
    del new[0][1][4]
    ops = check(old, new)
    assert len(ops) == 3


def test_type_changes_replace_the_value() -> None:
    assert check({"a": [1]}, {"a": {"0": 1}}) == [
        {"op": "replace", "path": "/a", "value": {"0": 1}}
    ]
    assert check([1, 2], {"0": 1}) == [{"op": "replace", "path": "", "value": {"0": 1}}]
