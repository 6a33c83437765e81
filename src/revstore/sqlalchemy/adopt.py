"""Adopting an existing, populated table for a ``Versioned`` model.

``adopt(engine, Model)`` adds ``revision`` and ``version`` (BIGINT NOT NULL, 1 for the
rows already there) to the model's table, creates ``<table>_versions``, and records
each row's current state as version 1. ``adopt_rows(connection, Model)`` is the last
step alone, for an Alembic migration that adds the columns and the table itself
(docs/sqlalchemy.md, "Adopting an existing table").

Every step is idempotent: a column that exists is left alone, the history table is
created only if absent, and only rows without any snapshot are recorded, so running it
again (or after an interruption) does nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    create_engine,
    func,
    inspect,
    select,
    text,
    tuple_,
)
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError

from revstore.config import MAX_AUTHOR, MAX_SUMMARY, parse_url
from revstore.content import canonical_json, content_hash, optional_text
from revstore.errors import InvalidInput, NotFound, Unavailable
from revstore.sqlalchemy.versioned import (
    COLLECTIONS,
    VersionedInfo,
    _pk_clause,
    _read_collections,
    content_of,
    versioned_info,
)

DEFAULT_BATCH = 1000
MAX_BATCH = 10_000
ADOPT_SUMMARY = "adopted"
NUMBER_COLUMNS = ("revision", "version")
MAX_REDO = 5
"""Batches re-run after a concurrent adopter's duplicate snapshot, before giving up."""


@dataclass(slots=True)
class AdoptProgress:
    """Where an adoption is, passed to the ``progress`` callback after every batch."""

    table: str
    rows_seen: int
    """Rows of the table scanned so far (in primary-key order)."""
    rows_total: int
    """The table's row count when the scan started (rows added meanwhile may pass it)."""
    snapshots: int
    """Version-1 snapshots written so far (rows that had one already are skipped)."""


@dataclass(slots=True)
class AdoptResult:
    table: str
    history_table: str
    columns_added: list[str] = field(default_factory=list)
    history_created: bool = False
    rows: int = 0
    """Rows scanned."""
    snapshots: int = 0
    """Snapshots written (0 when run again: the adoption was already complete)."""


OnProgress = Callable[[AdoptProgress], None]


# ----------------------------------------------------------------- connections


@contextmanager
def _connection(bind: Engine | Connection) -> Iterator[tuple[Connection, bool]]:
    """(connection, owned): an owned connection commits after every step; a
    connection already inside a transaction (Alembic's ``op.get_bind()``) is only
    used, and its owner commits."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            yield conn, True
    elif isinstance(bind, Connection):
        yield bind, not bind.in_transaction()
    else:
        raise InvalidInput(f"adopt needs an Engine or a Connection, got {type(bind).__name__}")


def _step_done(conn: Connection, owned: bool) -> None:
    if owned:
        conn.commit()


def _batch_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise InvalidInput(f"batch_size must be an integer from 1 to {MAX_BATCH}, got {value!r}")
    return value


# ----------------------------------------------------------------- the schema steps


def _existing_columns(conn: Connection, info: VersionedInfo) -> set[str]:
    table = info.table
    insp = inspect(conn)
    if not insp.has_table(table.name, schema=table.schema):
        raise NotFound(
            f"table {table.name!r} does not exist: there is nothing to adopt (a new "
            "table is created with metadata.create_all)"
        )
    return {c["name"] for c in insp.get_columns(table.name, schema=table.schema)}


def _check_columns(info: VersionedInfo, existing: set[str]) -> None:
    wanted = {c.name for c in info.table.columns if c.name not in NUMBER_COLUMNS}
    missing = sorted(wanted - existing)
    if missing:
        raise InvalidInput(
            f"table {info.table.name!r} lacks the model's column(s) {', '.join(missing)}: "
            "migrate the table to the model first, then adopt it"
        )


def add_number_columns(
    conn: Connection, info: VersionedInfo, existing: set[str], owned: bool = True
) -> list[str]:
    """``ALTER TABLE … ADD COLUMN revision/version BIGINT NOT NULL DEFAULT 1`` for each
    that is absent. The DEFAULT fills the existing rows in the same statement (no
    window where they are NULL); it is dropped afterwards where the database can
    (PostgreSQL, MariaDB/MySQL), so an INSERT that bypasses the model fails rather
    than create a row without history. SQLite cannot drop a default: it stays."""
    added: list[str] = []
    dialect = conn.dialect
    prep = dialect.identifier_preparer
    table_sql = prep.format_table(info.table)
    bigint = BigInteger().compile(dialect=dialect)
    for name in NUMBER_COLUMNS:
        if name in existing:
            continue
        col = prep.quote(name)
        try:
            conn.execute(
                text(f"ALTER TABLE {table_sql} ADD COLUMN {col} {bigint} NOT NULL DEFAULT 1")
            )
        except (OperationalError, ProgrammingError):
            if not owned:
                raise
            # Another adopter may have added it since we looked: fine if it is there now.
            conn.rollback()
            if name in _existing_columns(conn, info):
                continue
            raise
        if dialect.name != "sqlite":
            conn.execute(text(f"ALTER TABLE {table_sql} ALTER COLUMN {col} DROP DEFAULT"))
        added.append(name)
    return added


def create_history_table(conn: Connection, info: VersionedInfo) -> bool:
    """Create ``<table>_versions`` unless it exists; True when it was created."""
    hist = info.history
    if inspect(conn).has_table(hist.name, schema=hist.schema):
        return False
    hist.create(conn, checkfirst=True)
    return True


# ----------------------------------------------------------------- the rows


def adopt_rows(
    bind: Engine | Connection,
    model: type[Any],
    *,
    batch_size: int = DEFAULT_BATCH,
    author: str | None = None,
    summary: str | None = ADOPT_SUMMARY,
    progress: OnProgress | None = None,
) -> AdoptResult:
    """Record every row of ``model``'s table that has no snapshot yet as a snapshot of
    its current state (version 1 on a freshly adopted table), ``batch_size`` rows at a
    time in primary-key order. The table must already have ``revision``/``version`` and
    the history table must exist (``adopt`` does both; an Alembic migration does them
    with ``op.add_column`` / ``op.create_table``).

    Given an Engine, or a Connection outside a transaction, every batch is committed on
    its own, so an interrupted run keeps its work and a re-run continues. Given a
    Connection inside a transaction (Alembic's ``op.get_bind()``), all batches run in
    that transaction and its owner commits."""
    info = versioned_info(model)
    batch_size = _batch_size(batch_size)
    author = optional_text(author, "author", MAX_AUTHOR)
    summary = optional_text(summary, "summary", MAX_SUMMARY)
    result = AdoptResult(table=info.table.name, history_table=info.history.name)
    with _connection(bind) as (conn, owned):
        existing = _existing_columns(conn, info)
        missing = [n for n in NUMBER_COLUMNS if n not in existing]
        if missing:
            raise InvalidInput(
                f"table {info.table.name!r} has no column(s) {', '.join(missing)}: add them "
                "first (adopt() does, or op.add_column in a migration)"
            )
        if not inspect(conn).has_table(info.history.name, schema=info.history.schema):
            raise NotFound(f"history table {info.history.name!r} does not exist: create it first")
        _record_rows(conn, owned, info, batch_size, author, summary, progress, result)
    return result


def _record_rows(
    conn: Connection,
    owned: bool,
    info: VersionedInfo,
    batch_size: int,
    author: str | None,
    summary: str | None,
    progress: OnProgress | None,
    result: AdoptResult,
) -> None:
    table = info.table
    total = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    _step_done(conn, owned)
    pk = info.pk
    pk_names = [c.name for c in pk]
    last: tuple[Any, ...] | None = None
    redone = 0
    while True:
        stmt = select(*table.columns).order_by(*pk).limit(batch_size)
        if last is not None:
            # Keyset paging: each batch starts after the last key, so batches stay cheap
            # on a large table and rows inserted meanwhile are not scanned twice.
            stmt = stmt.where(tuple_(*pk) > tuple_(*last) if len(pk) > 1 else pk[0] > last[0])
        if conn.dialect.name != "sqlite":
            # Lock the batch's rows: a Versioned writer of one of them waits until its
            # snapshot is written, and a second adopter waits rather than duplicate it.
            stmt = stmt.with_for_update()
        try:
            rows = [
                {c.name: v for c, v in zip(table.columns, row, strict=True)}
                for row in conn.execute(stmt)
            ]
            if not rows:
                _step_done(conn, owned)
                break
            written = _snapshot_batch(conn, info, rows, author, summary)
            _step_done(conn, owned)
        except IntegrityError:
            # A concurrent adopter (SQLite has no row locks) recorded some of these rows
            # first: redo the batch, which now skips them.
            if not owned or redone >= MAX_REDO:
                raise
            conn.rollback()
            redone += 1
            continue
        last = tuple(rows[-1][n] for n in pk_names)
        result.rows += len(rows)
        result.snapshots += written
        if progress is not None:
            progress(AdoptProgress(table.name, result.rows, total, result.snapshots))
        if len(rows) < batch_size:
            break


def _snapshot_batch(
    conn: Connection,
    info: VersionedInfo,
    rows: list[dict[str, Any]],
    author: str | None,
    summary: str | None,
) -> int:
    hist = info.history
    meta = info.meta
    pk_names = [c.name for c in info.pk]
    keys = [tuple(r[n] for n in pk_names) for r in rows]
    hist_pk = [hist.c[n] for n in pk_names]
    # Only rows with no snapshot at all: adopted before, or written through the model
    # since (version 0 too: a row autosaved with create_version=False has no snapshot on
    # purpose), are left alone. This is what makes a re-run a no-op.
    known = {tuple(r) for r in conn.execute(select(*hist_pk).where(_pk_clause(hist_pk, keys)))}
    todo = [(k, r) for k, r in zip(keys, rows, strict=True) if k not in known and r["version"]]
    if not todo:
        return 0
    collections = _read_collections(conn, info, [k for k, _ in todo])
    now = datetime.now(UTC)
    snapshots: list[dict[str, Any]] = []
    for key, row in todo:
        colls = collections.get(key, {rel.key: [] for rel in info.m2m})
        doc = content_of(info, row, colls)
        values = {name: value for name, value in row.items() if name in hist.c}
        values.update(
            {
                meta["version"]: row["version"],
                meta["revision"]: row["revision"],
                meta["author"]: author,
                meta["summary"]: summary,
                meta["created_at"]: now,
                meta["content_hash"]: content_hash(canonical_json(doc)),
                meta[COLLECTIONS]: colls or None,
            }
        )
        snapshots.append(values)
    conn.execute(hist.insert(), snapshots)
    return len(snapshots)


# ----------------------------------------------------------------- all of it


def adopt(
    bind: Engine | Connection,
    model: type[Any],
    *,
    batch_size: int = DEFAULT_BATCH,
    author: str | None = None,
    summary: str | None = ADOPT_SUMMARY,
    progress: OnProgress | None = None,
) -> AdoptResult:
    """Adopt ``model``'s existing, populated table: add ``revision``/``version`` (1 for
    every existing row), create ``<table>_versions``, and record each row's current
    state as version 1 (``adopt_rows``). Idempotent; safe to re-run after an
    interruption. Run it before code that writes through the ``Versioned`` model is
    deployed: a row that model changes first starts its history at version 2."""
    info = versioned_info(model)
    batch_size = _batch_size(batch_size)
    with _connection(bind) as (conn, owned):
        existing = _existing_columns(conn, info)
        _check_columns(info, existing)
        _step_done(conn, owned)
        # Each DDL step commits on its own (MariaDB commits DDL implicitly anyway).
        added = add_number_columns(conn, info, existing, owned)
        _step_done(conn, owned)
        created = create_history_table(conn, info)
        _step_done(conn, owned)
        result = adopt_rows(
            conn,
            model,
            batch_size=batch_size,
            author=author,
            summary=summary,
            progress=progress,
        )
    result.columns_added = added
    result.history_created = created
    return result


def run_adopt_command(
    url: str, model: type[Any], *, batch_size: int, console: Console
) -> AdoptResult:
    """``revstore adopt``: ``adopt`` on a revstore URL, with a Rich progress bar when
    ``console`` is a terminal; a database that cannot be reached is ``Unavailable``."""
    versioned_info(model)  # a clear InvalidInput before any connection
    parsed = parse_url(url)
    engine = create_engine(parsed.sqlalchemy())
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[snapshots]} snapshots"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        ) as bar:
            task = bar.add_task(model.__name__, total=None, snapshots=0)

            def show(p: AdoptProgress) -> None:
                bar.update(
                    task,
                    completed=p.rows_seen,
                    total=max(p.rows_total, p.rows_seen),
                    snapshots=p.snapshots,
                )

            return adopt(engine, model, batch_size=batch_size, progress=show)
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable(f"database {parsed.backend}: {exc.orig or exc}") from exc
    finally:
        engine.dispose()


__all__ = [
    "ADOPT_SUMMARY",
    "DEFAULT_BATCH",
    "AdoptProgress",
    "AdoptResult",
    "add_number_columns",
    "adopt",
    "adopt_rows",
    "create_history_table",
]
