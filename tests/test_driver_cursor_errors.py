"""The class of the lost-write bug of session 8: a statement that fails on the driver's
cursor (``backends/compiled.on_cursor``) inside a transaction the executor opened
with driver SQL must leave that transaction to its owner. The database undoes only
the failed statement; the writes before it stay, uncommitted, until the owner's
COMMIT or ROLLBACK. (SQLAlchemy's own handler, which sees no transaction of its own,
rolled the connection back.)

Every kind of statement failure a batch can meet, on both backends that send their
statements on the driver's cursor: a duplicate key, a value the database refuses, a
statement it cannot run.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from revstore import Store
from revstore.backends.ops import Raw
from testdbs import backend_url_for

FAILURES = {
    # A row already there: the record's primary key again.
    "duplicate key": "INSERT INTO revstore_streams (namespace, id, last_sequence, item_count,"
    " created_at, updated_at) VALUES ('{ns}', 's', 0, 0, '2026-01-01', '2026-01-01')",
    # A value refused: NULL in a NOT NULL column.
    "refused value": "UPDATE revstore_streams SET item_count = NULL WHERE namespace = '{ns}'",
    # A statement the database cannot run.
    "bad statement": "SELECT no_such_column FROM revstore_streams",
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_failed_statement_leaves_the_transaction_and_its_writes(
    backend: str, failure: str, sqlite_url: str
) -> None:
    s = Store(backend_url_for(backend, sqlite_url))
    s.create_schema()
    ns = "cursor-" + uuid.uuid4().hex[:8]
    s.append("s", [{"n": 0}], namespace=ns)
    sql = s.backend  # the sync executor
    conn = sql._connect()
    try:
        send: Any = sql._on_driver
        send(conn, Raw(sql.dialect.begin_write))
        send(
            conn,
            Raw(f"UPDATE revstore_streams SET item_count = 41 WHERE namespace = '{ns}'"),
        )
        with pytest.raises(DBAPIError):
            send(conn, Raw(FAILURES[failure].format(ns=ns)))
        assert not conn.invalidated
        # Still the same transaction: the write before the failure is there, and the
        # owner's COMMIT keeps it.
        rows = send(conn, Raw(f"SELECT item_count FROM revstore_streams WHERE namespace = '{ns}'"))
        assert [tuple(r) for r in rows.all()] == [(41,)]
        send(conn, Raw("COMMIT"))
    finally:
        sql._release(conn)
    assert s.stream_info("s", namespace=ns).item_count == 41
    s.close()
