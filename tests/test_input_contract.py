"""Bad input, on every backend: one text rule for every text field, refused at the edge
as InvalidInput; what is accepted round-trips byte-exact; a value a driver refuses is
InvalidInput, never a lost connection; numbers, depth and URLs have exact limits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from revstore import AmbiguousCommit, InvalidInput, RetryPolicy, Store, Unavailable
from revstore.content import MAX_DEPTH, MAX_INT_DIGITS, Canonical
from revstore.errors import RevstoreError
from revstore.record import Mode, WriteIntent

# Refused in every text field, on every backend.
BAD_TEXT = {
    "nul": "a\x00b",
    "lone-high-surrogate": "a\ud800b",
    "lone-low-surrogate": "a\udfff",
    "noncharacter-fffe": "a\ufffe",
    "noncharacter-ffff": "a\uffff",
    "noncharacter-fdd0": "a\ufdd0",
    "noncharacter-10ffff": "a\U0010ffff",
}
# Accepted everywhere and stored byte for byte (ids: no control characters).
GOOD_TEXT = {
    "emoji": "a\U0001f600",
    "trailing-space": "a ",
    "leading-space": " a",
    "bom": "\ufeffa",
    "combining": "e\u0301",
    "composed": "\u00e9",
    "replacement-char": "a\ufffd",
    "backslash-quotes": "a\\b\"c'",
    "like-wildcards": "a%_b/",
    "line-separator": "a\u2028",
    "private-use": "a\ue000\U000f0000",
    "astral-255": "\U0001f600" * 255,
    "case": "ABC",
}
WRITES: dict[str, Callable[[Store, str, str], Any]] = {
    "namespace": lambda s, ns, v: s.put("r", {"a": 1}, namespace=v),
    "id": lambda s, ns, v: s.put(v, {"a": 1}, namespace=ns),
    "author": lambda s, ns, v: s.put("r", {"a": 1}, author=v, namespace=ns),
    "summary": lambda s, ns, v: s.put("r", {"a": 1}, summary=v, namespace=ns),
    "patch-author": lambda s, ns, v: s.patch("r", {"a": 2}, author=v, namespace=ns),
    "delete-id": lambda s, ns, v: s.delete(v, namespace=ns),
    "stream": lambda s, ns, v: s.append(v, [1], namespace=ns),
    "item-id": lambda s, ns, v: s.append("s", [1], item_ids=[v], namespace=ns),
    "get": lambda s, ns, v: s.get(v, namespace=ns),
    "history": lambda s, ns, v: s.history(v, namespace=ns),
    "list-prefix": lambda s, ns, v: s.list(prefix=v, namespace=ns),
    "list-after": lambda s, ns, v: s.list(after=v, namespace=ns),
    "read": lambda s, ns, v: s.read(v, namespace=ns),
    "stream-info": lambda s, ns, v: s.stream_info(v, namespace=ns),
}


@pytest.mark.parametrize("field", list(WRITES))
def test_every_text_field_refuses_what_a_backend_cannot_store(
    store: Store, ns: str, field: str
) -> None:
    store.put("r", {"a": 0}, namespace=ns)
    for label, bad in BAD_TEXT.items():
        with pytest.raises(InvalidInput, match=r"U\+[0-9A-F]{4}") as info:
            WRITES[field](store, ns, bad)
        assert info.value.__cause__ is None, label  # refused at the edge, not by a driver
    # Nothing was written by any of them.
    assert store.get("r", namespace=ns).revision == 1
    assert store.stats.retries == 0


def test_ids_refuse_control_characters_but_free_text_keeps_them(store: Store, ns: str) -> None:
    for ch in ("\t", "\n", "\x1b", "\x7f", "\x85", "\x9f"):
        with pytest.raises(InvalidInput, match="control character"):
            store.put(f"a{ch}", {}, namespace=ns)
    text = "line 1\nline 2\ttab \x1b[0m \x85 \x7f"
    store.put("r", {"a": 1}, author=text[:255], summary=text, namespace=ns)
    v = store.history("r", namespace=ns).versions[0]
    assert (v.author, v.summary) == (text, text)


@pytest.mark.parametrize("label", list(GOOD_TEXT))
def test_accepted_text_round_trips_byte_exact(store: Store, ns: str, label: str) -> None:
    text = GOOD_TEXT[label]
    rec = store.put(text, {text: text}, author=text, summary=text, namespace=ns)
    assert rec.id == text
    got = store.get(text, namespace=ns)
    assert (got.id, got.content) == (text, {text: text})
    v = store.history(text, namespace=ns).versions[0]
    assert (v.author, v.summary) == (text, text)
    # Listing by the exact prefix finds it, and only it (no folding of case, spaces,
    # normalisation or U+FFFD on any backend).
    assert [r.id for r in store.list(prefix=text, namespace=ns)] == [text]
    res = store.append(text, [text], item_ids=[text], namespace=ns)
    assert res.items[0].item_id == text
    item = store.read(text, namespace=ns).items[0]
    assert (item.item_id, item.body) == (text, text)
    assert store.append(text, [text], item_ids=[text], namespace=ns).duplicate
    other = {"a\U0001f600": "a\U0001f601", "a ": "a", "e\u0301": "\u00e9"}.get(text)
    if other is not None:
        # A neighbour that a folding collation would confuse with it is another record.
        store.put(other, {"other": True}, namespace=ns)
        assert store.get(text, namespace=ns).content == {text: text}


def test_content_strings_may_hold_nul_and_round_trip(store: Store, ns: str) -> None:
    doc = {"a\x00b": "c\x00d", "list": ["\x00", "\x01\x1f\x7f", "\ufffe\uffff"]}
    rec = store.put("nul", doc, namespace=ns)
    assert store.get("nul", namespace=ns).content == doc
    assert store.history("nul", namespace=ns).versions[0].content == doc
    assert store.put("nul", dict(doc), namespace=ns).unchanged  # same hash read back
    assert store.get_version("nul", 1, namespace=ns).content_hash == rec.content_hash
    assert store.append("nul", [doc], namespace=ns).items[0].body == doc
    assert store.read("nul", namespace=ns).items[0].body == doc
    with pytest.raises(InvalidInput, match="surrogate"):
        store.put("nul", {"a": "\ud800"}, namespace=ns)
    with pytest.raises(InvalidInput, match="surrogate"):
        store.put("nul", {"\udc00": 1}, namespace=ns)


def test_integers_up_to_the_digit_limit_round_trip(store: Store, ns: str) -> None:
    biggest = 10**MAX_INT_DIGITS - 1
    doc = {"max": biggest, "min": -biggest}
    store.put("big", doc, namespace=ns)
    assert store.get("big", namespace=ns).content == doc
    assert store.append("big", [biggest], namespace=ns).items[0].body == biggest
    for too_big in (10**MAX_INT_DIGITS, -(10**MAX_INT_DIGITS), 10**5000):
        with pytest.raises(InvalidInput, match=f"more than {MAX_INT_DIGITS} digits"):
            store.put("big", {"n": [too_big]}, namespace=ns)
        with pytest.raises(InvalidInput, match=f"more than {MAX_INT_DIGITS} digits"):
            store.append("big", [too_big], namespace=ns)
        with pytest.raises(InvalidInput, match=f"more than {MAX_INT_DIGITS} digits"):
            store.patch("big", {"n": too_big}, namespace=ns)


def test_wrong_types_anywhere_in_content_are_invalid_input(store: Store, ns: str) -> None:
    for doc in (
        {10**5000: 1},  # its repr would raise
        {(1, 2): 1},
        {None: 1},
        {"a": {b"k": 1}},
        [1, {1, 2}],
        {"a": object()},
        [float("nan")],
        {"a": [float("-inf")]},
    ):
        with pytest.raises(InvalidInput):
            store.put("types", doc, namespace=ns)
        with pytest.raises(InvalidInput):
            store.append("types", [doc], namespace=ns)


NUMBER_ARGS: dict[str, Callable[[Store, str, Any], Any]] = {
    "list-limit": lambda s, ns, n: s.list(limit=n, namespace=ns),
    "history-after": lambda s, ns, n: s.history("r", after=n, namespace=ns),
    "history-limit": lambda s, ns, n: s.history("r", limit=n, namespace=ns),
    "version": lambda s, ns, n: s.get_version("r", n, namespace=ns),
    "diff": lambda s, ns, n: s.diff("r", 1, n, namespace=ns),
    "expected-revision": lambda s, ns, n: s.put("r", {"a": 2}, expected_revision=n, namespace=ns),
    "create-version": lambda s, ns, n: s.put("r", {"a": 2}, create_version=n, namespace=ns),
    "restore": lambda s, ns, n: s.restore("r", n, namespace=ns),
    "expected-sequence": lambda s, ns, n: s.append("s", [2], expected_sequence=n, namespace=ns),
    "read-after": lambda s, ns, n: s.read("s", after=n, namespace=ns),
    "read-limit": lambda s, ns, n: s.read("s", limit=n, namespace=ns),
}


@pytest.mark.parametrize("arg", list(NUMBER_ARGS))
def test_huge_or_odd_numbers_in_arguments_are_invalid_input(
    store: Store, ns: str, arg: str
) -> None:
    """Found by the property tests: an error message that showed a 5000-digit int
    raised ValueError (the int->str limit) instead of InvalidInput."""
    store.put("r", {"a": 1}, namespace=ns)
    store.append("s", [1], namespace=ns)
    for bad in (10**5000, -(10**5000), 2**63, -2, 1.0, "1", b"1", [1]):
        with pytest.raises(InvalidInput):
            NUMBER_ARGS[arg](store, ns, bad)
    assert store.get("r", namespace=ns).revision == 1


def _nested(depth: int) -> Any:
    doc: Any = "leaf"
    for k in range(depth):
        doc = [doc] if k % 2 else {"k": doc}
    return doc


def test_nesting_limit_is_exact(store: Store, ns: str) -> None:
    at_limit = _nested(MAX_DEPTH)
    store.put("deep", at_limit, namespace=ns)
    assert store.get("deep", namespace=ns).content == at_limit
    store.append("deep", [at_limit], namespace=ns)
    for doc in (_nested(MAX_DEPTH + 1), [_nested(MAX_DEPTH)]):
        with pytest.raises(InvalidInput, match=f"nested deeper than {MAX_DEPTH} levels"):
            store.put("deep", doc, namespace=ns)
        with pytest.raises(InvalidInput, match=f"nested deeper than {MAX_DEPTH} levels"):
            store.append("deep", [doc], namespace=ns)
    # A merge patch that would push the stored content over the limit is refused too.
    with pytest.raises(InvalidInput, match="nested deeper"):
        store.patch("deep", {"k": _nested(MAX_DEPTH)}, namespace=ns)
    assert store.get("deep", namespace=ns).revision == 1


def test_empty_containers_count_as_a_level() -> None:
    doc: Any = []
    for _ in range(MAX_DEPTH - 1):
        doc = [doc]
    Canonical(doc, max_bytes=10**6)  # 100 arrays
    with pytest.raises(InvalidInput):
        Canonical([doc], max_bytes=10**6)  # 101 arrays
    with pytest.raises(InvalidInput):
        Canonical({"a": [doc]}, max_bytes=10**6)


def _intent(ns: str, **fields: Any) -> WriteIntent:
    body = Canonical({"a": 1}, max_bytes=1024)
    values: dict[str, Any] = {
        "namespace": ns,
        "id": "r",
        "mode": Mode.PUT,
        "expected_revision": None,
        "content_text": body.text,
        "content_hash": body.hash,
        "content_value": body.value,
    }
    values.update(fields)
    return WriteIntent(**values)


@pytest.mark.parametrize("field", ["author", "summary", "id"])
def test_a_value_the_driver_refuses_is_invalid_input_not_a_lost_connection(
    store: Store, ns: str, field: str
) -> None:
    """Past the edge (the backend called directly), what a driver refuses before
    sending is InvalidInput: never AmbiguousCommit, never retried, never a raw error."""
    bad = ["a\ud800", "a\udcff"]  # no driver can encode these
    if store.backend_name == "postgresql":
        bad.append("a\x00")  # psycopg refuses NUL client-side, without a SQLSTATE
    for value in bad:
        intent = _intent(ns, **{field: value})
        with pytest.raises(InvalidInput):
            store.backend.write_record(intent)
    for value in ("x" * (1001 if field == "summary" else 256),):  # longer than the column
        intent = _intent(ns, **{field: value})
        if store.backend_name == "sqlite":
            continue  # SQLite does not enforce VARCHAR lengths
        with pytest.raises(InvalidInput):
            store.backend.write_record(intent)
    # The connection that saw the refusal is still good.
    assert store.put("after", {"ok": True}, namespace=ns).revision == 1


def test_a_refused_append_value_is_invalid_input(store: Store, ns: str) -> None:
    from revstore.backends.sql import AppendBatch

    body = Canonical([1], max_bytes=1024)
    for stream in ("s\ud800",) + (("s\x00",) if store.backend_name == "postgresql" else ()):
        with pytest.raises(InvalidInput):
            store.backend.append(AppendBatch(ns, stream, [body], None, None))
        with pytest.raises(InvalidInput):
            store.backend.append(AppendBatch(ns, "s", [body], [stream], None))


def test_one_writers_bad_text_never_fails_another(store: Store, ns: str) -> None:
    """12 threads write at once (on PostgreSQL, group-committed together); one sends a
    NUL in its author. Only that one fails, with InvalidInput; every other lands."""
    outcomes: dict[int, object] = {}
    start = threading.Barrier(12)

    def write(k: int) -> None:
        start.wait()
        try:
            author = "bad\x00author" if k == 5 else f"w{k}"
            outcomes[k] = store.put(f"r{k}", {"k": k}, author=author, summary="s", namespace=ns)
        except RevstoreError as exc:
            outcomes[k] = exc

    threads = [threading.Thread(target=write, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(outcomes.pop(5), InvalidInput)
    assert not [o for o in outcomes.values() if isinstance(o, BaseException)]
    assert sorted(r.id for r in store.list(namespace=ns)) == sorted(f"r{k}" for k in outcomes)
    with pytest.raises(RevstoreError):
        store.get("r5", namespace=ns)


@pytest.mark.parametrize(
    "url",
    [
        None,
        5,
        b"sqlite:///x.db",
        "",
        "revstore.db",
        "sqlite:",
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "://x",
        "weird://host/db",
        "postgresql+nope://host/db",
        "sqlite+nope:///x.db",
        "mysql+mysqldb://host/db",
        "postgresql://host:notaport/db",
        "mysql://root@127.0.0.1:notaport/test",
        "postgresql://[::1/db",
        "postgresql://host:0/db",
        "postgresql://host:70000/db",
        "sqlite:///x\x00.db",
        "sqlite:///x\ud800.db",
        "mysql://root@127.0.0.1:3306/test?charset=latin1",
    ],
)
def test_malformed_database_urls_are_invalid_input(url: Any) -> None:
    with pytest.raises(InvalidInput):
        Store(url)


@pytest.mark.parametrize(
    "options",
    [
        {"pool_size": 0},
        {"pool_size": "8"},
        {"max_overflow": -1},
        {"max_overflow": 1.5},
        {"group_commit": "yes"},
        {"retry": 3},
        {"strategy": "fastest"},
        {"strategy": ["counter"]},
        {"max_content_bytes": True},
        {"max_batch_items": 0},
    ],
)
def test_bad_store_options_are_invalid_input(sqlite_url: str, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        Store(sqlite_url, **options)


def test_unknown_url_options_are_invalid_input(server_url: Callable[[str], str]) -> None:
    for name in ("postgresql", "mysql"):
        url = server_url(name)
        # Refused when the Store is made (MariaDB: it connects at once) or at first use.
        with pytest.raises(InvalidInput):
            store = Store(url + ("&" if "?" in url else "?") + "bogus_option=1")
            try:
                store.get("x")
            finally:
                store.close()


def test_a_lost_connection_is_still_unavailable_not_invalid_input() -> None:
    """The other side of the classification: no server at all stays Unavailable."""
    store = Store(
        "postgresql://postgres@127.0.0.1:1/test", retry=RetryPolicy(max_attempts=2, max_seconds=2)
    )
    with pytest.raises(Unavailable) as info:
        store.put("x", {"a": 1})
    assert not isinstance(info.value, AmbiguousCommit)


def test_the_cli_refuses_bad_input_with_exit_code_8(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from revstore.cli import app

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    cases = [
        ["put", "doc", "9" * 5000, "--db", db],
        ["put", "doc", "[" * 100_000 + "]" * 100_000, "--db", db],
        ["put", "doc", "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "--db", db],
        ["put", "doc", "1e400", "--db", db],
        ["put", "doc", "{}", "--author", "a\x00", "--db", db],
        ["put", "doc\uffff", "{}", "--db", db],
        ["get", "doc", "--db", "postgresql://host:notaport/db"],
        ["get", "doc", "--db", "weird://x"],
    ]
    for args in cases:
        result = CliRunner().invoke(app, args)
        # 8: invalid input, distinct from 2 (a usage error from the parser); docs/cli.md
        assert result.exit_code == 8, (args[:3], result.output, result.exception)
        assert "InvalidInput" in result.output and "Traceback" not in result.output


def _classify(url: str, orig: BaseException, base: type[BaseException]) -> RevstoreError:
    from sqlalchemy.exc import DBAPIError

    from revstore.backends import open_backend

    backend = open_backend(url)
    try:
        wrapped = DBAPIError.instance("SELECT 1", {}, orig, base)
        return backend._translate_any(wrapped)
    finally:
        backend.dispose()


def test_driver_errors_are_classified_by_class_not_by_message() -> None:
    """What each driver raises without a server error code: refused before sending is
    never a lost connection; a failed socket or protocol still is (may have landed)."""
    import sqlite3

    import psycopg
    import pymysql

    from revstore.errors import Retryable

    def lost(err: RevstoreError) -> bool:
        return isinstance(err, Retryable) and err.code == "disconnect"

    pg = "postgresql://nobody@127.0.0.1:1/none"
    my = "mysql://nobody@127.0.0.1:1/none"
    nul = psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    assert isinstance(_classify(pg, nul, psycopg.Error), InvalidInput)
    bad_option = psycopg.ProgrammingError('invalid connection option "x"')
    assert isinstance(_classify(pg, bad_option, psycopg.Error), InvalidInput)
    assert lost(_classify(pg, psycopg.OperationalError("consuming input failed"), psycopg.Error))
    assert lost(_classify(pg, psycopg.errors.AdminShutdown("terminating"), psycopg.Error))
    too_long = psycopg.errors.StringDataRightTruncation("value too long")
    assert isinstance(_classify(pg, too_long, psycopg.Error), InvalidInput)

    assert isinstance(
        _classify(my, pymysql.err.DataError(1406, "Data too long"), pymysql.err.Error),
        InvalidInput,
    )
    closed = pymysql.err.ProgrammingError("Cursor closed")
    err = _classify(my, closed, pymysql.err.Error)
    assert isinstance(err, Unavailable) and not lost(err)
    assert lost(_classify(my, pymysql.err.OperationalError(2013, "Lost"), pymysql.err.Error))
    out_of_sequence = pymysql.err.InternalError("Packet sequence number wrong - got 3 expected 1")
    assert lost(_classify(my, out_of_sequence, pymysql.err.Error))

    lite = "sqlite:////tmp/revstore-classify-never-opened.db"
    too_big = sqlite3.DataError("string or blob too big")
    assert isinstance(_classify(lite, too_big, sqlite3.Error), InvalidInput)
    binding = sqlite3.ProgrammingError("Error binding parameter 1: type 'dict' is not supported")
    assert not lost(_classify(lite, binding, sqlite3.Error))
