"""Property-based tests of the library API (Hypothesis), on every backend: whatever the
arguments (any text, any int, any nesting, wrong types), every call either succeeds or
raises a caller-facing RevstoreError (InvalidInput, NotFound, a Conflict), never
another exception and never a database failure; and a write that succeeds reads back
byte-exact.

The default run keeps example counts small; ``-m slow`` runs many more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from revstore import Store
from revstore.content import MAX_DEPTH, canonical_json
from revstore.errors import Conflict, InvalidInput, NotFound, RevstoreError

# Text from the whole code space, surrogates included, plus the strings that broke
# something once or that a backend treats specially.
TRICKY = [
    "",
    " ",
    "a ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "\ufffe",
    "\uffff",
    "\ufdd0",
    "\U0010ffff",
    "\ufffd",
    "\ufeff",
    "\U0001f600",
    "e\u0301",
    "%",
    "_",
    "\\",
    "'",
    '"',
    "\t",
    "\x85",
    "\u2028",
    "NULL",
    "*",
    "a" * 255,
    "a" * 256,
    "\U0001f600" * 255,
]
TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=20),
    st.text(st.characters(max_codepoint=0x7F), min_size=1, max_size=8),
    st.sampled_from(TRICKY),
)
WRONG = st.one_of(
    st.none(),
    st.integers(),
    st.binary(max_size=4),
    st.floats(),
    st.booleans(),
    st.lists(st.text(max_size=2), max_size=2),
    st.just(object()),
)
# Text every field accepts (no surrogates, controls or noncharacters: category Cn
# holds the noncharacters). Arguments draw it most of the time, so that a good share of
# the calls get past the edge and exercise the database, the rest any text at all.
VALID_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc", "Cn")), min_size=1, max_size=20)


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten, else ``other`` (``one_of`` with a repeated branch
    does not weight it)."""
    return st.integers(0, 9).flatmap(lambda k: other if k == 9 else valid)


ANY_TEXT = mostly(VALID_TEXT, st.one_of(TEXT, WRONG))
FREE_TEXT = mostly(st.one_of(st.none(), VALID_TEXT), st.one_of(TEXT, WRONG))
"""author / summary: None is the common case."""
# Digit counts around the int<->str limit (the ints themselves cannot be repr'd).
HUGE = st.sampled_from([4299, 4300, 4301, 5000, 20]).flatmap(
    lambda d: st.sampled_from([10**d - 1, -(10**d - 1), 10**d, -(10**d)])
)
NUMBER = st.one_of(
    st.integers(),
    HUGE,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308, 1e16, 0.1]),
)
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)


def _nested(depth: int) -> Any:
    doc: Any = 0
    for k in range(depth):
        doc = [doc] if k % 2 else {"k": doc}
    return doc


JSONISH = st.recursive(
    SCALAR,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(TEXT, kids, max_size=4),
        st.tuples(kids, kids),
    ),
    max_leaves=12,
)
NOT_JSON = st.one_of(
    st.binary(max_size=4),
    st.sets(st.integers(), max_size=2),
    st.dictionaries(
        st.one_of(st.integers(), HUGE, st.floats(), st.none(), st.binary(max_size=2)),
        st.integers(),
        min_size=1,
        max_size=2,
    ),
    st.complex_numbers(),
    st.decimals(allow_nan=False),
    st.just(object()),
    st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2).map(_nested),
)
VALID_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
    ),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=6), kids, max_size=4
        ),
    ),
    max_leaves=12,
)
CONTENT = mostly(VALID_JSON, st.one_of(JSONISH, NOT_JSON))
COUNT = st.one_of(
    st.none(),
    st.integers(-3, 5),
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), True, False, 1.0, "1"]),
    HUGE,
)
FLAG = mostly(st.booleans(), st.sampled_from([None, 0, 1, "true"]))

EXPECTED_ERRORS = (InvalidInput, NotFound, Conflict)
"""What bad input may raise. Unavailable or AmbiguousCommit would say the database
failed on it: a bug in the edge checks."""

FAST = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
THOROUGH = settings(
    # Per backend and per store API (sync, async): 2 x 400 calls of each kind.
    max_examples=400,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``: its result, or None after a caller-facing RevstoreError."""
    try:
        return fn(*args, **kwargs)
    except EXPECTED_ERRORS:
        return None
    except RevstoreError as exc:
        raise AssertionError(f"bad input reported as a database failure: {exc!r}") from exc


def same_json(a: Any, b: Any) -> bool:
    """Equal as stored: the same canonical text (so 1 vs 1.0, -0.0 vs 0.0 and list vs
    tuple are told apart exactly as the hash tells them apart)."""
    return canonical_json(a) == canonical_json(b)


def _namespace(data: st.DataObject, ns: str) -> Any:
    # Mostly the test's own namespace (so rows stay isolated); sometimes any text
    # appended to it, sometimes a wrong type.
    return data.draw(
        mostly(
            st.one_of(st.just(ns), VALID_TEXT.map(lambda t: ns + t)),
            st.one_of(TEXT.map(lambda t: ns + t), WRONG),
        ),
        "namespace",
    )


def check_records(store: Store, ns: str, data: st.DataObject) -> None:
    # Everything is drawn before the first call, so what is drawn never depends on
    # the database's state (Hypothesis needs that to replay and shrink a failure).
    namespace = _namespace(data, ns)
    id = data.draw(ANY_TEXT, "id")
    content = data.draw(CONTENT, "content")
    author = data.draw(FREE_TEXT, "author")
    summary = data.draw(FREE_TEXT, "summary")
    create_version = data.draw(FLAG, "create_version")
    expected = data.draw(mostly(st.none(), COUNT), "expected_revision")
    patch = data.draw(CONTENT, "patch")
    patch_expected = data.draw(st.one_of(st.none(), COUNT), "patch expected")
    n = [data.draw(COUNT, f"number {k}") for k in range(9)]
    prefix = data.draw(st.one_of(st.none(), ANY_TEXT), "prefix")
    after = data.draw(st.one_of(st.none(), ANY_TEXT), "list after")

    rec = attempt(
        store.put,
        id,
        content,
        expected_revision=expected,
        create_version=create_version,
        author=author,
        summary=summary,
        namespace=namespace,
    )
    event("put stored" if rec is not None else "put refused")
    if rec is not None:
        got = store.get(id, namespace=namespace)
        assert same_json(got.content, content)
        assert got.content_hash == rec.content_hash
        assert (got.id, got.namespace) == (id, namespace)
        if create_version and not rec.unchanged:
            v = store.get_version(id, rec.version, namespace=namespace)
            assert same_json(v.content, content)
            assert (v.author, v.summary) == (author, summary)
        listed = store.list(prefix=id, namespace=namespace).records
        assert id in [r.id for r in listed]
        assert all(r.id.startswith(id) for r in listed)
    patched = attempt(
        store.patch, id, patch, expected_revision=patch_expected, author=author, namespace=namespace
    )
    if patched is not None:
        assert same_json(store.get(id, namespace=namespace).content, patched.content)
    attempt(store.get, id, namespace=namespace)
    attempt(store.history, id, after=n[0], limit=n[1], namespace=namespace)
    attempt(store.get_version, id, n[2], namespace=namespace)
    attempt(store.diff, id, n[3], n[4], namespace=namespace)
    attempt(store.list, prefix=prefix, after=after, limit=n[5], namespace=namespace)
    attempt(store.restore, id, n[6], summary=summary, namespace=namespace)
    attempt(store.delete, id, expected_revision=n[7], namespace=namespace)


def check_streams(store: Store, ns: str, data: st.DataObject) -> None:
    namespace = _namespace(data, ns)
    stream = data.draw(ANY_TEXT, "stream")
    items = data.draw(
        mostly(st.lists(VALID_JSON, min_size=1, max_size=4), st.one_of(st.lists(CONTENT), WRONG)),
        "items",
    )
    same_length_ids = (
        st.lists(VALID_TEXT, min_size=len(items), max_size=len(items), unique=True)
        if isinstance(items, list)
        else st.none()
    )
    item_ids = data.draw(
        mostly(st.one_of(st.none(), same_length_ids), st.one_of(st.lists(ANY_TEXT), WRONG)),
        "item_ids",
    )
    expected = data.draw(mostly(st.none(), COUNT), "expected_sequence")
    after = data.draw(COUNT, "after")
    limit = data.draw(COUNT, "limit")

    res = attempt(
        store.append,
        stream,
        items,
        expected_sequence=expected,
        item_ids=item_ids,
        namespace=namespace,
    )
    event("append stored" if res is not None else "append refused")
    if res is not None:
        page = store.read(
            stream, after=res.first_sequence - 1, limit=len(items), namespace=namespace
        )
        numbers = list(range(res.first_sequence, res.last_sequence + 1))
        assert [i.sequence for i in page.items] == numbers
        for stored, sent in zip(page.items, items, strict=True):
            assert same_json(stored.body, sent)
        if item_ids is not None:
            assert [i.item_id for i in page.items] == list(item_ids)
            assert store.append(stream, items, item_ids=item_ids, namespace=namespace).duplicate
    attempt(store.read, stream, after=after, limit=limit, namespace=namespace)
    attempt(store.stream_info, stream, namespace=namespace)


@FAST
@given(data=st.data())
def test_record_calls_succeed_or_refuse_cleanly(store: Store, ns: str, data: st.DataObject) -> None:
    check_records(store, ns, data)


@FAST
@given(data=st.data())
def test_stream_calls_succeed_or_refuse_cleanly(store: Store, ns: str, data: st.DataObject) -> None:
    check_streams(store, ns, data)


@pytest.mark.slow
@THOROUGH
@given(data=st.data())
def test_record_calls_thoroughly(store: Store, ns: str, data: st.DataObject) -> None:
    check_records(store, ns, data)


@pytest.mark.slow
@THOROUGH
@given(data=st.data())
def test_stream_calls_thoroughly(store: Store, ns: str, data: st.DataObject) -> None:
    check_streams(store, ns, data)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(value=st.one_of(CONTENT, CONTENT, NUMBER))
def test_canonical_form_is_total(value: Any) -> None:
    """Content validation never raises anything but InvalidInput, and what it accepts
    has a canonical text that parses back to the same canonical text."""
    from revstore.content import Canonical

    try:
        body = Canonical(value, max_bytes=1 << 20)
    except InvalidInput:
        return
    assert canonical_json(body.value) == body.text
    if isinstance(value, float):
        assert math.isfinite(value)


# Objects of scalars and of arrays or objects of scalars, as records usually are, with
# the values at the edges of the rules (the fast path of ``content._shallow``) and a few
# that only the full check refuses or accepts (subclasses, non-str keys, tuples, deeper
# nesting).
class _Color(int):
    pass


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**4299, max_value=10**4301),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.builds(_Color, st.integers(-5, 5)),
    st.tuples(st.integers()),
    st.lists(st.integers(), max_size=2),
)
KEYS = st.one_of(TEXT, st.integers(-2, 2), st.booleans(), st.none())
MEMBERS = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.dictionaries(KEYS, SCALARS, max_size=4),
)


@given(st.dictionaries(KEYS, MEMBERS, max_size=6))
@example({"m": {"b": 1, "a": "x"}, "l": [1.5, None], "a": {"z": True, "y": -0.0}})
@settings(max_examples=300, deadline=None)
def test_objects_of_scalars_get_the_same_verdict_and_value_on_the_fast_path(
    doc: dict[Any, Any],
) -> None:
    """``Canonical`` takes a shallow object by a shortcut: it must refuse exactly what
    the full check refuses, and hand back exactly what decoding its canonical text gives
    (same value, same key order at every level)."""
    import json

    from revstore.content import Canonical, _validate_tree

    def reference() -> tuple[str, Any] | None:
        # The path before the shortcut: the full check, json.dumps, UTF-8, decode.
        try:
            _validate_tree(doc, "content")
            text = json.dumps(
                doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
            text.encode("utf-8")
        except (InvalidInput, UnicodeEncodeError):
            return None
        return text, json.loads(text)

    expected = reference()
    try:
        c = Canonical(doc, max_bytes=10**7)
    except InvalidInput:
        assert expected is None, "the fast path refused what the full check accepts"
        return
    assert expected is not None, "the fast path accepted what the full check refuses"
    text, decoded = expected
    assert c.text == text
    assert c.value == decoded
    # Key order at every level: the texts in insertion order must match too.
    assert json.dumps(c.value) == json.dumps(decoded)
    # A copy: changing the caller's document later changes nothing stored.
    for member in doc.values():
        if isinstance(member, (list, dict)):
            member.clear()
    assert json.dumps(c.value) == json.dumps(decoded)
