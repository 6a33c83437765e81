"""Schema versions: create a new database, upgrade an older one in place, refuse a
newer one.

Every database records its schema version in ``revstore_schema`` (one row). A
database made by the release before versions were recorded has the five tables and
no ``revstore_schema``: it is version 1. :class:`Migrator` runs on one connection
*inside the backend's schema lock* (see ``SqlBackend.create_schema``), so only one
process at a time looks at the version and changes tables, and every other process
finds the work done when it gets the lock.

Adding a migration (a later release):

1. change the tables in ``revstore.schema`` (a fresh database is made from them) and
   bump ``schema.SCHEMA_VERSION``;
2. append ``Migration(<that version>, "<what it does>", <function>)`` to
   :data:`MIGRATIONS`. The function gets the locked connection and turns the previous
   version into the new one, keeping every row (e.g. :func:`add_column`). It must
   check before it changes (a table may already be in its new shape: made by step 2
   from today's definitions, or by a step cut short on MySQL).

On PostgreSQL and SQLite DDL is transactional: all steps and their version bumps
commit together or not at all. On MySQL/MariaDB each DDL statement commits by itself,
so a step can be cut short after its DDL and before its version bump, and is then run
again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, Table, insert, inspect, select, update
from sqlalchemy.schema import CreateColumn

from revstore import schema
from revstore.errors import SchemaMismatch

log = logging.getLogger("revstore.schema")

V = schema.schema_version

LEGACY_VERSION = 1
"""A database with revstore's tables but no ``revstore_schema``."""
CREATING = 0
"""Recorded before a first creation starts: seen only if it was cut short (MySQL)."""

LEGACY_TABLES = frozenset(
    {
        "revstore_records",
        "revstore_versions",
        "revstore_streams",
        "revstore_stream_items",
        "revstore_idempotency",
    }
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: turns schema ``version - 1`` into ``version``, keeping every row."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _record_schema_version(conn: Connection) -> None:
    # Release 1 created its tables one by one, unlocked: a creation cut short (or lost
    # to a racing creator) left some missing, and release 1 would have made them on its
    # next call. Made here from today's definitions; later steps check before they
    # change anything, so they leave such a table as it is.
    legacy = [t for t in schema.metadata.sorted_tables if t.name in LEGACY_TABLES]
    schema.metadata.create_all(conn, tables=legacy, checkfirst=True)
    # The version row itself is written by the Migrator right after this step.
    V.create(conn, checkfirst=True)


def add_column(table: str, column: Column[Any]) -> Callable[[Connection], None]:
    """A step that adds ``column`` to ``table`` unless it is there already (so it can
    run again after a cut-short attempt on MySQL). Give a NOT NULL column a
    ``server_default``: existing rows need a value."""

    def apply(conn: Connection) -> None:
        present = {c["name"] for c in inspect(conn).get_columns(table)}
        if column.name in present:
            return
        preparer = conn.dialect.identifier_preparer
        spec = CreateColumn(column).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(table)} ADD COLUMN {spec}")

    return apply


def create_table(*tables: Table) -> Callable[[Connection], None]:
    """A step that creates ``tables`` (from today's definitions) unless they exist: a
    database made from today's definitions, or a step cut short on MySQL, has them."""

    def apply(conn: Connection) -> None:
        for table in tables:
            table.create(conn, checkfirst=True)

    return apply


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        "complete the release-1 tables; record the schema version in revstore_schema",
        _record_schema_version,
    ),
    Migration(3, "add revstore_api_keys (hashed API keys)", create_table(schema.api_keys)),
    Migration(
        4,
        "add revstore_retention and revstore_compacted (retention policies)",
        create_table(schema.retention, schema.compacted),
    ),
    # Append the next step here (and bump schema.SCHEMA_VERSION).
)

if MIGRATIONS[-1].version != schema.SCHEMA_VERSION:  # pragma: no cover - a packaging error
    raise RuntimeError("revstore.migrations.MIGRATIONS must end at schema.SCHEMA_VERSION")


def _now() -> datetime:
    return datetime.now(UTC)


class Migrator:
    """Brings one database to the newest version of ``migrations``, under the caller's
    schema lock. Tests inject a longer list to prove the upgrade path."""

    def __init__(self, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        steps = tuple(migrations)
        for expected, step in enumerate(steps, start=LEGACY_VERSION + 1):
            if step.version != expected:
                raise ValueError(
                    f"migration {step.description!r} is numbered {step.version}; "
                    f"expected {expected} (steps are consecutive from {LEGACY_VERSION + 1})"
                )
        if not steps or steps[-1].version < schema.SCHEMA_VERSION:
            raise ValueError(f"migrations must reach schema version {schema.SCHEMA_VERSION}")
        self.migrations = steps
        self.target = steps[-1].version

    @staticmethod
    def found_version(conn: Connection) -> int | None:
        """The database's schema version; ``None`` when it has no revstore table."""
        names = set(inspect(conn).get_table_names())
        if V.name in names:
            version = conn.execute(select(V.c.version).where(V.c.id == 1)).scalar()
            if version is not None:
                return int(version)
            # No row: migration 2 was cut short after creating the table (MySQL), or
            # a first creation right after it; the other tables tell which.
        return LEGACY_VERSION if names & LEGACY_TABLES else None

    def ensure(self, conn: Connection) -> int:
        """Create, upgrade or refuse; the version the database is at when done."""
        found = self.found_version(conn)
        if found is None or found == CREATING:
            self._create(conn)
            found = schema.SCHEMA_VERSION
        if found > self.target:
            raise SchemaMismatch(found, self.target)
        for step in self.migrations:
            if step.version <= found:
                continue
            log.warning(
                "upgrading the revstore schema from version %d to %d: %s",
                step.version - 1,
                step.version,
                step.description,
                extra={"event": "schema_migration", "schema_version": step.version},
            )
            step.apply(conn)
            # In the same transaction as the step where DDL is transactional.
            self._set_version(conn, step.version)
        return self.target

    def _create(self, conn: Connection) -> None:
        # The version table comes first, marked "creating", so that on MySQL (where
        # each CREATE commits by itself) a creation cut short is finished by the next
        # process rather than taken for a release-1 database.
        V.create(conn, checkfirst=True)
        self._set_version(conn, CREATING)
        schema.metadata.create_all(conn, checkfirst=True)
        self._set_version(conn, schema.SCHEMA_VERSION)

    @staticmethod
    def _set_version(conn: Connection, version: int) -> None:
        values = {"version": version, "updated_at": _now()}
        changed = conn.execute(update(V).where(V.c.id == 1).values(**values)).rowcount
        if not changed:
            conn.execute(insert(V).values(id=1, **values))
