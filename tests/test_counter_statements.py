"""MariaDB/MySQL's counter put (``mysql.MysqlDialect.bump_head``): both new numbers come
back packed in the UPDATE's ``LAST_INSERT_ID`` and the record's ``created_at`` is the
one the statement checked, so a put reads nothing back. These tests change the row
behind the store's back, from a connection of their own, to reach the cases where that
does not hold: numbers too large to pack, and a ``created_at`` that is not the one the
store saw. Every put must still return exactly what the database holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from apis import APIS, open_store
from testdbs import mysql_connection, require_server


@pytest.fixture(params=APIS)
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    s = open_store(request.param, require_server("mysql"))
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def ns() -> str:
    return "counter-" + uuid.uuid4().hex[:8]


def behind_its_back(store: Any, sql: str, *args: Any) -> None:
    """Run ``sql`` on a connection that is not the store's, and commit it."""
    conn = mysql_connection(store, autocommit=True)
    try:
        with conn.cursor() as cur:
            assert cur.execute(sql, args) == 1
    finally:
        conn.close()


def stored(store: Any, ns: str, record: str) -> tuple[int, int, Any]:
    head = store.get(record, namespace=ns)
    return head.revision, head.version, head.created_at


def check_put(store: Any, ns: str, n: int) -> None:
    """A put returns the numbers and created_at it left in the row, and its snapshot."""
    put = store.put("r", {"n": n}, namespace=ns)
    assert (put.revision, put.version, put.created_at) == stored(store, ns, "r")
    last = store.history("r", namespace=ns).versions[-1]
    assert (last.version, last.revision, last.content) == (put.version, put.revision, {"n": n})


def test_puts_return_what_the_row_holds(store: Any, ns: str) -> None:
    first = store.put("r", {"n": 0}, namespace=ns)
    for n in range(1, 4):
        check_put(store, ns, n)
    # A put without a version, then with: revision and version part ways.
    unversioned = store.put("r", {"n": 4}, create_version=False, namespace=ns)
    assert (unversioned.revision, unversioned.version) == (5, 4)
    check_put(store, ns, 5)
    assert store.get("r", namespace=ns).created_at == first.created_at


@pytest.mark.parametrize(
    ("column", "value"),
    [("revision", 2**31 - 2), ("revision", 2**31 + 7), ("version", 2**32 - 2), ("version", 2**40)],
    ids=["revision-last-packed", "revision-too-large", "version-last-packed", "version-too-large"],
)
def test_numbers_too_large_to_pack_are_read_back(
    store: Any, ns: str, column: str, value: int
) -> None:
    store.put("r", {"n": 0}, namespace=ns)
    check_put(store, ns, 1)
    behind_its_back(
        store,
        f"UPDATE revstore_records SET {column} = %s WHERE namespace = %s AND id = 'r'",
        value,
        ns,
    )
    for n in range(2, 5):
        check_put(store, ns, n)
    revision, version, _ = stored(store, ns, "r")
    assert (revision, version) == ((value + 3, 5) if column == "revision" else (5, value + 3))


def test_a_created_at_changed_elsewhere_is_not_trusted(store: Any, ns: str) -> None:
    store.put("r", {"n": 0}, namespace=ns)
    check_put(store, ns, 1)  # the store has seen this record's created_at now
    behind_its_back(
        store,
        "UPDATE revstore_records SET created_at = '2001-02-03 04:05:06.789012' "
        "WHERE namespace = %s AND id = 'r'",
        ns,
    )
    put = store.put("r", {"n": 2}, namespace=ns)
    assert put.created_at.isoformat() == "2001-02-03T04:05:06.789012+00:00"
    assert (put.revision, put.version) == (3, 3)
    check_put(store, ns, 3)


def test_two_stores_writing_one_record_each_get_their_own_numbers(ns: str) -> None:
    url = require_server("mysql")
    a, b = open_store("sync", url), open_store("sync", url)
    try:
        a.create_schema()
        seen = []
        for n in range(8):
            s = (a, b)[n % 2]
            put = s.put("r", {"n": n}, namespace=ns)
            assert (put.revision, put.version, put.created_at) == stored(s, ns, "r")
            seen.append(put.revision)
        assert seen == list(range(1, 9))
    finally:
        a.close()
        b.close()
