"""The driver values of an executemany: the rows of one batch share a timestamp object,
whose bind processor runs once (``compiled.memoized``); every row must still get exactly
the values it would get alone, whichever values are shared and whichever are not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine.interfaces import Dialect as SADialect

from revstore.backends.compiled import StatementCache
from revstore.backends.protocol import _INSERT_ITEMS

DIALECTS = {
    "sqlite": sqlite.pysqlite.dialect(),
    "mariadb": mysql.pymysql.dialect(is_mariadb=True),
}


def _item(sequence: int, at: datetime) -> dict[str, Any]:
    return {
        "namespace": "ns",
        "stream_id": "s",
        "sequence": sequence,
        "item_id": None if sequence % 2 else f"i{sequence}",
        "body": '{"k":1}',
        "body_hash": "0" * 64,
        "created_at": at,
    }


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_each_row_of_an_executemany_gets_the_values_it_gets_alone(name: str) -> None:
    dialect: SADialect = DIALECTS[name]
    cache = StatementCache(dialect)
    base = datetime(2026, 12, 1, 10, 30, 15, 123456, tzinfo=UTC)
    shared = base + timedelta(seconds=1)
    # One object shared by several rows, equal values in distinct objects, distinct
    # values, a shared one again after the others.
    stamps = [shared, shared, base, base + timedelta(0), base + timedelta(microseconds=1), shared]
    rows = [_item(n, at) for n, at in enumerate(stamps, 1)]
    _sql, many_params, many, _ = cache.prepare(_INSERT_ITEMS, rows)
    assert many and len(many_params) == len(rows)
    alone = [cache.prepare(_INSERT_ITEMS, row)[1] for row in rows]
    assert many_params == alone
    # The timestamps went through the processor: as the driver takes them, distinct.
    texts = {str(p) for p in many_params}
    assert len(texts) == len(rows)
