"""SQLAlchemy Core statements run on a driver cursor without SQLAlchemy's ``Connection``:
compiled once per statement shape, their parameters and results processed as
SQLAlchemy does, and a small result offering the ``Result`` API the protocols use.

Why: on asyncio, ``AsyncConnection.execute`` costs a greenlet switch per statement and
SQLAlchemy's execution context and ``CursorResult`` per call, together more CPU than the
driver itself on a one-row read. The sync executor (``sql.SqlBackend.drive``: SQLite's
sqlite3, MariaDB's PyMySQL) sends its statements the same way: there the execution
context and result were half of a batched write's client CPU. The steps here are the ones of
``Connection._execute_clauseelement`` and ``DefaultExecutionContext._init_compiled``
that apply to revstore's statements (no schema translation, no RETURNING with
executemany, no insertmanyvalues: the psycopg dialect sends executemany as it is): the
same compiled cache key, the same compiled text, the same bound values and types, so the
server receives what it did through SQLAlchemy.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.engine.row import Row
from sqlalchemy.exc import (
    DBAPIError,
    InvalidRequestError,
    MultipleResultsFound,
    NoResultFound,
    ResourceClosedError,
)
from sqlalchemy.sql import compiler
from sqlalchemy.util import LRUCache

Params = dict[str, Any] | list[dict[str, Any]] | None

KNOWN_STATEMENTS = 256
"""Bound on the statement objects whose compiled form ``StatementCache`` keeps by identity."""


class Shape:
    """What a compiled statement always needs: its text unless it has parameters
    expanded per call (``IN``), how to turn its values into the driver's, and its
    result columns. Worked out once per compiled form."""

    __slots__ = (
        "binds",
        "compiled",
        "escaped",
        "expanding",
        "key_to_index",
        "keys",
        "metadata",
        "positions",
        "prefetch",
        "processors",
        "result_processors",
        "sql",
        "text_metadata",
    )

    def __init__(self, compiled: compiler.SQLCompiler) -> None:
        self.compiled = compiled
        # A positional driver (sqlite3's qmark) takes the values in this order.
        self.positions: list[str] | None = (
            list(compiled.positiontup or ()) if compiled.positional else None
        )
        self.sql: str = compiled.string
        self.expanding = bool(compiled.literal_execute_params or compiled.post_compile_params)
        self.processors: dict[str, Any] = dict(compiled._bind_processors)
        self.escaped: dict[str, str] = dict(compiled.escaped_bind_names or {})
        prefetch = compiled.insert_prefetch or compiled.update_prefetch
        self.prefetch: list[tuple[str, Any]] = []
        for column in prefetch:
            key_of = compiled._within_exec_param_key_getter
            default: Any = column.default if compiled.insert_prefetch else column.onupdate
            if default is None or not default.is_scalar:
                # revstore's schema has scalar defaults only (``deleted``).
                raise NotImplementedError(f"column default of {column} is not a constant")
            self.prefetch.append((key_of(column), default.arg))
        # Each bind's (parameter key, name), when the values of a call can be taken from
        # its parameters alone (the first case of ``construct_params``, for every bind),
        # that is, with nothing rendered or collected at compile time.
        self.binds: list[tuple[str, str]] | None = (
            None
            if compiled._render_postcompile or getattr(compiled, "_collect_params", False)
            else [(b.key, name) for b, name in compiled.bind_names.items()]
        )
        self.keys = [c.keyname for c in compiled._result_columns]
        self.metadata = SimpleResultMetaData(self.keys)
        self.key_to_index: dict[Any, int] = self.metadata._key_to_index
        self.result_processors: list[Any] | None = None
        self.text_metadata: SimpleResultMetaData | None = None

    def driver_params(
        self, compiled_params: dict[str, Any], processors: dict[str, Any] | None = None
    ) -> tuple[str, Any]:
        """The text and the driver's values for one set of compiled parameters (a dict,
        or a tuple for a positional driver). ``processors``: the bind processors to use
        instead of the statement's (``memoized``)."""
        for key, value in self.prefetch:
            compiled_params[key] = value
        sql, positions = self.sql, self.positions
        if processors is None:
            processors = self.processors
        if self.expanding:
            expanded = self.compiled._process_parameters_for_postcompile(compiled_params)
            sql = expanded.statement
            processors = {**processors, **expanded.processors}
            if positions is not None:
                positions = list(expanded.positiontup or ())
        if positions is not None:
            return sql, tuple(
                [
                    processors[k](compiled_params[k]) if k in processors else compiled_params[k]
                    for k in positions
                ]
            )
        if not processors and not self.escaped:
            return sql, compiled_params
        escaped = self.escaped
        return sql, {
            escaped.get(k, k): (processors[k](v) if k in processors else v)
            for k, v in compiled_params.items()
        }

    def rows(self, dialect: SADialect, cursor: Any, data: list[Any]) -> list[Any]:
        """``data`` (the driver's tuples) as SQLAlchemy ``Row`` objects, through the
        result processors of the columns' types (none for revstore's types on psycopg:
        it returns aware datetimes, bools, ints and strs itself), chosen once from the
        first result's column types."""
        processors = self.result_processors
        if processors is None:
            found = [
                rc.type._cached_result_processor(dialect, d[1])
                for rc, d in zip(self.compiled._result_columns, cursor.description, strict=False)
            ]
            processors = self.result_processors = found if any(found) else []
        if not self.keys:
            # A text() statement: keyed by the names the server sent, as SQLAlchemy does
            # (this shape is of one dialect: the same text may get other names elsewhere).
            if self.text_metadata is None:
                self.text_metadata = SimpleResultMetaData([d[0] for d in cursor.description])
            text_metadata = self.text_metadata
            text_index = text_metadata._key_to_index
            return [Row(text_metadata, None, text_index, t) for t in data]
        metadata, key_to_index = self.metadata, self.key_to_index
        procs = processors or None
        return [Row(metadata, procs, key_to_index, t) for t in data]


class StatementCache:
    """Compiled statements of one (initialised) SQLAlchemy dialect, cached as SQLAlchemy's
    engine caches them: by the statement's cache key (memoized on a statement object that
    is reused, so a prebuilt statement costs a dictionary lookup), the parameter names
    and whether it is an executemany."""

    def __init__(self, dialect: SADialect, size: int = 500) -> None:
        self.dialect = dialect
        self._compiled: LRUCache[Any, Any] = LRUCache(size)
        self._shapes: weakref.WeakKeyDictionary[Any, Shape] = weakref.WeakKeyDictionary()
        self._linting = dialect.compiler_linting | compiler.WARN_LINTING
        self.driver_shapes: dict[str, SimpleResultMetaData] = {}
        """``driver_rows``' names of the driver SQL run on this dialect."""
        # The prebuilt statements (run with parameters, the same object every time):
        # their compiled form by the object itself, without computing its cache key.
        # A statement object never changes (SQLAlchemy's are immutable), and the entry
        # holds it, so its id cannot be another's meanwhile.
        self._known: dict[int, tuple[Any, bool, frozenset[str], tuple[Any, Any, Any, Shape]]] = {}

    def _remember(
        self, statement: Any, many: bool, params: dict[str, Any], found: tuple[Any, Any, Any, Shape]
    ) -> None:
        if len(self._known) >= KNOWN_STATEMENTS:
            self._known.clear()  # statements built per call with parameters: start over
        self._known[id(statement)] = (statement, many, frozenset(params), found)

    def prepare(self, statement: Executable, params: Params) -> tuple[str, Any, bool, Shape]:
        """The text, the driver's parameters (a list for an executemany), whether it is
        one, and the statement's shape (for its result)."""
        distilled: list[dict[str, Any]]
        if params is None:
            distilled = []
        elif isinstance(params, list):
            distilled = params
        else:
            distilled = [params]
        many = len(distilled) > 1
        compiled: Any
        known = self._known.get(id(statement)) if distilled else None
        if (
            known is not None
            and known[0] is statement
            and known[1] == many
            and distilled[0].keys() == known[2]
        ):
            compiled, extracted, collected, shape = known[3]
        else:
            compiled, extracted, collected, _ = statement._compile_w_cache(
                dialect=self.dialect,
                compiled_cache=self._compiled,
                column_keys=sorted(distilled[0]) if distilled else [],
                for_executemany=many,
                schema_translate_map=None,
                linting=self._linting,
            )
            found = self._shapes.get(compiled)
            if found is None:
                found = self._shapes[compiled] = Shape(compiled)
            shape = found
            if distilled:
                self._remember(
                    statement, many, distilled[0], (compiled, extracted, collected, shape)
                )
        if not distilled:
            sql, one = shape.driver_params(
                compiled.construct_params(
                    extracted_parameters=extracted,
                    escape_names=False,
                    _collected_params=collected,
                )
            )
            return sql, one, False, shape
        binds = None if collected else shape.binds
        sets = []
        processors = memoized(shape.processors) if many and shape.processors else None
        for group, m in enumerate(distilled):
            try:
                if binds is None:
                    raise KeyError
                # What construct_params gives when every bind has its key in ``m``.
                values = {name: m[key] for key, name in binds}
            except KeyError:
                values = compiled.construct_params(
                    m,
                    escape_names=False,
                    _group_number=group,
                    extracted_parameters=extracted,
                    _collected_params=collected,
                )
            sets.append(shape.driver_params(values, processors))
        if many:
            if shape.expanding:
                raise InvalidRequestError(
                    "'literal_execute' or 'expanding' parameters can't be used with executemany()"
                )
            return sets[0][0], [p for _, p in sets], True, shape
        return sets[0][0], sets[0][1], False, shape


_DRIVER_SHAPES: dict[str, SimpleResultMetaData] = {}


def driver_rows(
    sql: str, cursor: Any, data: list[Any], shapes: dict[str, SimpleResultMetaData] | None = None
) -> list[Any]:
    """Rows of driver SQL (``Raw``) as ``Row`` objects keyed by the column names the
    server sent (``cursor.description``), as ``exec_driver_sql`` keys them. ``shapes``:
    the names of each text already seen, per database (``StatementCache.driver_shapes``:
    ``SELECT 1`` has a column named ``1`` on SQLite, ``?column?`` on PostgreSQL)."""
    if shapes is None:
        shapes = _DRIVER_SHAPES
    metadata = shapes.get(sql)
    if metadata is None:
        # d[0]: the DBAPI's column name (psycopg's ``Column`` is a sequence too).
        metadata = SimpleResultMetaData([d[0] for d in cursor.description])
        if len(shapes) < 64:  # a few fixed statements: it never grows further
            shapes[sql] = metadata
    key_to_index = metadata._key_to_index
    return [Row(metadata, None, key_to_index, t) for t in data]


def on_cursor(
    conn: Connection,
    sql: str,
    params: Any,
    many: bool,
    shape: Shape | None,
    driver_shapes: dict[str, SimpleResultMetaData],
) -> Rows:
    """Send one statement on ``conn``'s driver cursor (its text and driver values from
    ``StatementCache.prepare``, or driver SQL with ``shape`` None) and buffer its result.
    A failure goes through the ``Connection``'s own handling, so it is wrapped, and a
    lost connection invalidated (with the pool), exactly as there."""
    driver: Any = conn.connection.dbapi_connection  # checked out: never None
    cursor = driver.cursor()
    try:
        if many:
            cursor.executemany(sql, params)
        elif params is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, params)
        description = cursor.description
        data = cursor.fetchall() if description is not None else None
        rowcount, lastrowid = cursor.rowcount, cursor.lastrowid
    except BaseException as exc:
        dialect = conn.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        if isinstance(exc, dbapi_error) and not dialect.is_disconnect(exc, driver, cursor):
            # Wrapped as SQLAlchemy would, but not through its handler: seeing no
            # transaction of its own (this one began with driver SQL), the handler
            # would roll back the connection, and with it the writes this transaction
            # made before the failed statement, which the database itself keeps (a
            # failed statement undoes only itself). A batch goes on after a write's
            # own failure; it must not commit without the writes before it.
            raise DBAPIError.instance(
                sql, params, exc, dbapi_error, dialect=dialect, ismulti=many
            ) from exc
        # A lost connection (invalidated, with the pool) or an interruption
        # (KeyboardInterrupt: the connection is dropped), as SQLAlchemy does.
        conn._handle_dbapi_exception(exc, sql, params, cursor, None)
        raise  # unreachable: the handler always raises
    finally:
        cursor.close()
    if data is None:
        return Rows(None, rowcount, lastrowid)
    if shape is not None:
        return Rows(shape.rows(conn.dialect, cursor, data), rowcount, lastrowid)
    return Rows(driver_rows(sql, cursor, data, driver_shapes), rowcount, lastrowid)


def memoized(processors: dict[str, Any]) -> dict[str, Any]:
    """The bind processors, each remembering what it gave for a value it was given
    before (the same object): the rows of one executemany share their timestamp, which
    SQLite's ``DATETIME`` processor then formats once, not once a row."""

    def once(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
        done: dict[int, tuple[Any, Any]] = {}

        def process(value: Any) -> Any:
            seen = done.get(id(value))
            if seen is not None and seen[0] is value:
                return seen[1]
            out = processor(value)
            done[id(value)] = (value, out)  # the value kept: its id is not reused
            return out

        return process

    return {key: once(p) for key, p in processors.items()}


class Rows:
    """A statement's buffered result: the part of SQLAlchemy's ``Result`` the protocols
    use (``first``, ``fetchone``, ``fetchall``, ``all``, ``scalar``, iteration,
    ``one``, ``rowcount``, ``lastrowid``). Rows are SQLAlchemy ``Row`` objects
    (``row[i]``, ``row._mapping[k]``, ``row.name``). A statement that returns no rows
    raises ``ResourceClosedError`` on a fetch, as SQLAlchemy does."""

    __slots__ = ("_pos", "_rows", "lastrowid", "rowcount")

    def __init__(self, rows: list[Any] | None, rowcount: int, lastrowid: Any = None) -> None:
        self._rows = rows
        self._pos = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def _data(self) -> list[Any]:
        if self._rows is None:
            raise ResourceClosedError("This result object does not return rows.")
        return self._rows

    def first(self) -> Any:
        rows = self._data()
        row = rows[self._pos] if self._pos < len(rows) else None
        self._pos = len(rows)
        return row

    def fetchone(self) -> Any:
        rows = self._data()
        if self._pos >= len(rows):
            return None
        self._pos += 1
        return rows[self._pos - 1]

    def fetchall(self) -> list[Any]:
        rows = self._data()
        rest = rows[self._pos :]
        self._pos = len(rows)
        return rest

    all = fetchall

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]

    def one(self) -> Any:
        rows = self.fetchall()
        if len(rows) != 1:
            raise (NoResultFound if not rows else MultipleResultsFound)(
                "No row was found when one was required"
                if not rows
                else "Multiple rows were found when exactly one was required"
            )
        return rows[0]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())
