"""revstore's own statements of a flush, sent on the driver's cursor.

``Versioned`` sends two statements per changed object in the flush of the user's
session (the head UPDATE, the snapshot INSERT). Through ``Connection.execute`` each one
costs SQLAlchemy's execution context and ``CursorResult``, more client CPU than the
driver's own work on SQLite (in-process) and as much as PyMySQL's on MariaDB. Here
they are compiled once per statement shape and sent on the connection's driver cursor
(``revstore.backends.compiled``, as revstore's own executor does): the same text, the
same bound values and types, the same result rows. A failure goes through the
``Connection``'s handling (wrapped, a lost connection invalidated), so the session and
``revstore.sqlalchemy.transaction`` see exactly what they would have.

Only where nothing would notice the difference: a sync driver whose cursor the project
exercises (sqlite3, PyMySQL), no event listener on the connection, its
engine or its dialect (``before_cursor_execute`` tracing, statement counters), no echo,
no ``schema_translate_map``, a live connection inside a transaction. Anything else goes
through ``Connection.execute`` as before.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.engine import Dialect

from revstore.backends.compiled import StatementCache, on_cursor

DRIVERS = frozenset({"pysqlite", "pymysql"})
"""SQLAlchemy driver names whose cursors take a compiled statement's text and values
as ``Connection.execute`` hands them over (no adaptation in the dialect's
``do_execute``)."""

_caches: weakref.WeakKeyDictionary[Dialect, StatementCache] = weakref.WeakKeyDictionary()
_refused: weakref.WeakSet[Executable] = weakref.WeakSet()
"""Statements ``StatementCache`` cannot prepare (a column default computed per call, a
Python ``onupdate``): SQLAlchemy's execution runs them, without asking again."""


def direct(conn: Connection) -> bool:
    """Whether ``conn``'s statements can skip ``Connection.execute`` unnoticed."""
    dialect = conn.dialect
    return (
        dialect.driver in DRIVERS
        and not dialect.is_async
        # Listeners (and echo) must see every statement, as they would through execute.
        and not (conn._has_events or conn.engine._has_events or dialect._has_events)
        and not conn._echo
        # A translated schema changes the compiled text: SQLAlchemy's own path knows it.
        and not conn._execution_options.get("schema_translate_map")
        and not conn.invalidated
        and conn.in_transaction()
    )


def execute(conn: Connection, statement: Executable, params: Any) -> Any:
    """``conn.execute(statement, params)``, on the driver's cursor when ``direct``. The
    result offers ``first()``, ``one()``, ``rowcount`` and ``lastrowid`` either way."""
    if statement in _refused or not direct(conn):
        return conn.execute(statement, params)
    dialect = conn.dialect
    cache = _caches.get(dialect)
    if cache is None:
        cache = _caches.setdefault(dialect, StatementCache(dialect))
    try:
        sql, driver_params, many, shape = cache.prepare(statement, params)
    except NotImplementedError:
        _refused.add(statement)
        return conn.execute(statement, params)
    return on_cursor(conn, sql, driver_params, many, shape, cache.driver_shapes)
