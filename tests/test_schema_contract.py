"""Schema creation and upgrades, on every backend, each test on a database of its own.

Several processes making their first call at the same instant on a fresh database
must all succeed; the tables record their schema version; a newer schema is refused
with a clear error and an older one is migrated in place, keeping its rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    String,
    create_engine,
    event,
    insert,
    inspect,
    make_url,
    text,
)
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

import revstore
from revstore import RevstoreError, SchemaMismatch, Store, cli, schema
from revstore.backends.sqlite import enable_wal
from revstore.migrations import MIGRATIONS, Migration, Migrator, add_column
from revstore.schema import SCHEMA_VERSION
from revstore.service import create_app
from schema_racers import WAIT, FirstCallers, Outcome, first_callers, in_threads
from testdbs import BACKENDS, _required, require_server

FreshDb = Callable[[], str]

V1_TABLES = {
    "revstore_records",
    "revstore_versions",
    "revstore_streams",
    "revstore_stream_items",
    "revstore_idempotency",
}
V3_TABLES = V1_TABLES | {"revstore_schema", "revstore_api_keys"}
ALL_TABLES = V3_TABLES | {"revstore_retention", "revstore_compacted"}


def _admin_engine(name: str, server: str) -> Engine:
    url = make_url(server)
    if name == "postgresql":
        # CREATE / DROP DATABASE cannot run inside a transaction.
        admin = url.set(drivername="postgresql+psycopg", database="postgres")
    else:
        admin = url.set(drivername="mysql+pymysql", database=None)
    return create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)


PGBOUNCER_URL = os.environ.get(
    "REVSTORE_TEST_PGBOUNCER_URL", "postgresql://postgres@127.0.0.1:6432/test"
)
_pgbouncer: list[str | None] = []


def _require_pgbouncer() -> str:
    """PgBouncer in transaction mode in front of the PostgreSQL server, with a wildcard
    database entry (as ``.ci`` starts it), or skip/fail like any other server."""
    if not _pgbouncer:
        try:
            with Store(PGBOUNCER_URL) as probe:
                probe.ping()
            _pgbouncer.append(None)
        except RevstoreError as exc:
            _pgbouncer.append(f"PgBouncer at {PGBOUNCER_URL} is not reachable: {exc}")
    reason = _pgbouncer[0]
    if reason is not None:
        if _required("pgbouncer"):
            pytest.fail(f"REVSTORE_TEST_REQUIRE: {reason}", pytrace=False)
        pytest.skip(f"SKIPPING PGBOUNCER TESTS: {reason}")
    return PGBOUNCER_URL


@pytest.fixture(params=[*BACKENDS, "pgbouncer"])
def fresh_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FreshDb]:
    """``fresh_db()`` makes a database nobody has touched and returns its URL: a new
    SQLite file, or a new database on the PostgreSQL / MariaDB server (dropped after);
    ``pgbouncer``: a new PostgreSQL database reached through PgBouncer."""
    name: str = request.param
    if name == "sqlite":

        def new_file() -> str:
            return f"sqlite:///{tmp_path / f'fresh-{uuid.uuid4().hex[:8]}.db'}"

        yield new_file
        return

    if name == "pgbouncer":
        server = require_server("postgresql")
        client = _require_pgbouncer()
        name = "postgresql"
    else:
        server = client = require_server(name)
    admin = _admin_engine(name, server)
    made: list[str] = []

    def new_database() -> str:
        db = f"revstore_schema_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            if name == "postgresql":
                conn.exec_driver_sql(f"CREATE DATABASE {db}")
            else:
                conn.exec_driver_sql(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
        made.append(db)
        return make_url(client).set(database=db).render_as_string(hide_password=False)

    try:
        yield new_database
    finally:
        with admin.connect() as conn:
            for db in made:
                if name == "postgresql":
                    # FORCE: PgBouncer may still hold server connections to it.
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {db}")
        admin.dispose()


def _sql(store: Store, statement: str) -> list[tuple[object, ...]]:
    """Run one statement on the store's own database, outside revstore's API."""
    with store.backend.engine.connect() as conn:
        result = conn.execute(text(statement))
        return [tuple(r) for r in result] if result.returns_rows else []


def _stored_version(store: Store) -> int:
    rows = _sql(store, "SELECT version FROM revstore_schema")
    assert len(rows) == 1, rows
    return int(str(rows[0][0]))


def _tables(store: Store) -> set[str]:
    with store.backend.engine.connect() as conn:
        return {t for t in inspect(conn).get_table_names() if t.startswith("revstore_")}


def _make_v1(url: str, ns: str) -> None:
    """A database as the release before schema versions left it: the five tables, no
    ``revstore_schema``, and some rows in each of records, versions, streams, items."""
    with Store(url) as store:
        store.put("doc", {"n": 1}, namespace=ns)
        store.put("doc", {"n": 2}, author="ann", summary="second", namespace=ns)
        store.append("chat", [{"m": "hi"}, {"m": "ho"}], item_ids=["a", "b"], namespace=ns)
        for table in ("revstore_schema", "revstore_api_keys", *ALL_TABLES - V3_TABLES):
            _sql(store, f"DROP TABLE {table}")
        assert _tables(store) == V1_TABLES


def _assert_v1_rows_kept(store: Store, ns: str) -> None:
    doc = store.get("doc", namespace=ns)
    assert (doc.revision, doc.version, doc.content) == (2, 2, {"n": 2})
    history = store.history("doc", namespace=ns)
    assert [(v.version, v.author) for v in history.versions] == [(1, None), (2, "ann")]
    items = store.read("chat", namespace=ns)
    assert [(i.sequence, i.item_id, i.body) for i in items.items] == [
        (1, "a", {"m": "hi"}),
        (2, "b", {"m": "ho"}),
    ]


# ---------------------------------------------------------------- first callers


@pytest.fixture(scope="module")
def callers() -> Iterator[FirstCallers]:
    """8 spawned processes, started once for every backend (starting them is the slow
    part, not the rounds)."""
    with first_callers(8) as pool:
        yield pool


def _check_round(url: str, ns: str, kind: str, outcomes: list[Outcome]) -> None:
    failed = [o for o in outcomes if o[2] != "ok"]
    assert not failed, f"{kind} round on {url}: {failed}"
    with Store(url) as store:
        for index, record_id, _status, revision in outcomes:
            assert revision == 1
            assert store.get(record_id, namespace=ns).content["writer"] == index
        assert _stored_version(store) == SCHEMA_VERSION
        assert _tables(store) == ALL_TABLES
        if kind == "v1":
            _assert_v1_rows_kept(store, ns)


@pytest.mark.slow
# One xdist worker runs every backend's case: they share the module's 8 processes.
@pytest.mark.xdist_group("first-callers")
def test_many_processes_first_call_on_fresh_database(
    fresh_db: FreshDb, ns: str, callers: FirstCallers
) -> None:
    """8 processes, released together, each make their first call (a put) on a database
    nobody has set up; repeated on fresh databases, and once on a release-1 database
    that they must upgrade together. No process fails and every write lands."""
    for kind in ["fresh", "fresh", "fresh", "v1"]:
        url = fresh_db()
        if kind == "v1":
            _make_v1(url, ns)
        _check_round(url, ns, kind, callers.round(url, ns))


def test_many_stores_first_call_at_once(fresh_db: FreshDb, ns: str) -> None:
    """The same race inside one process (quick enough for the default run): 8 Stores,
    each with its own engine and pool as a separate process has, make their first
    call together from 8 threads."""
    for kind in ["fresh", "fresh", "v1"]:
        url = fresh_db()
        if kind == "v1":
            _make_v1(url, ns)
        stores = [Store(url) for _ in range(8)]
        try:
            outcomes = in_threads(
                [
                    (lambda i=i, s=s: s.put(f"first-{i}", {"writer": i}, namespace=ns).revision)
                    for i, s in enumerate(stores)
                ]
            )
        finally:
            for s in stores:
                s.close()
        _check_round(url, ns, kind, outcomes)


# ---------------------------------------------------------------- versions


def test_fresh_database_records_its_schema_version(fresh_db: FreshDb, ns: str) -> None:
    with Store(fresh_db()) as store:
        store.put("doc", {"n": 1}, namespace=ns)
        assert _stored_version(store) == SCHEMA_VERSION
        assert _tables(store) == ALL_TABLES


def test_create_schema_is_idempotent(fresh_db: FreshDb, ns: str) -> None:
    url = fresh_db()
    with Store(url) as store:
        store.create_schema()
        store.put("doc", {"n": 1}, namespace=ns)
        store.create_schema()
        # The backend forgets it is ready: the next call looks again and changes nothing.
        store.backend.schema_version = None
        store.create_schema()
        assert _stored_version(store) == SCHEMA_VERSION
    with Store(url) as again:
        again.create_schema()
        assert again.get("doc", namespace=ns).revision == 1
        assert _stored_version(again) == SCHEMA_VERSION
        assert _tables(again) == ALL_TABLES


def test_newer_schema_is_refused_with_a_clear_error(fresh_db: FreshDb, ns: str) -> None:
    url = fresh_db()
    newer = SCHEMA_VERSION + 1
    with Store(url) as store:
        store.put("doc", {"n": 1}, namespace=ns)
        _sql(store, f"UPDATE revstore_schema SET version = {newer}")
    with Store(url) as old_release:
        with pytest.raises(SchemaMismatch) as caught:
            old_release.get("doc", namespace=ns)
        err = caught.value
        assert isinstance(err, revstore.RevstoreError)
        assert (err.found, err.supported) == (newer, SCHEMA_VERSION)
        message = str(err)
        assert f"version {newer}" in message and str(SCHEMA_VERSION) in message
        assert "Upgrade revstore" in message
        # Refused every time, and nothing was changed.
        with pytest.raises(SchemaMismatch):
            old_release.put("doc", {"n": 2}, namespace=ns)
        assert _stored_version(old_release) == newer
        assert _sql(old_release, "SELECT revision FROM revstore_records") == [(1,)]


def test_release_1_database_is_upgraded_in_place(fresh_db: FreshDb, ns: str) -> None:
    url = fresh_db()
    _make_v1(url, ns)
    with Store(url) as store:
        _assert_v1_rows_kept(store, ns)
        assert _stored_version(store) == SCHEMA_VERSION
        assert _tables(store) == ALL_TABLES
        # Writes go on from the kept heads.
        assert store.put("doc", {"n": 3}, namespace=ns).version == 3
        assert store.append("chat", [{"m": "hu"}], namespace=ns).first_sequence == 3


def test_version_2_database_gets_the_api_key_table(fresh_db: FreshDb, ns: str) -> None:
    """Migration 3 adds revstore_api_keys to a version-2 database, keeping every row;
    a second run (another process) changes nothing."""
    url = fresh_db()
    _make_v1(url, ns)
    with Store(url) as store:
        # What the release of version 2 left: its tables, the version row at 2.
        store.create_schema()
        for table in ("revstore_api_keys", *ALL_TABLES - V3_TABLES):
            _sql(store, f"DROP TABLE {table}")
        _sql(store, "UPDATE revstore_schema SET version = 2")
        assert _tables(store) == V3_TABLES - {"revstore_api_keys"}
    with Store(url) as store:
        _assert_v1_rows_kept(store, ns)
        assert _stored_version(store) == SCHEMA_VERSION == 4
        assert _tables(store) == ALL_TABLES
        new = store.api_keys.create(ns, "write", name="ann")
        assert store.api_keys.verify(new.token) == new.key
    with Store(url) as again:
        again.create_schema()
        assert _stored_version(again) == SCHEMA_VERSION
        assert [k.id for k in again.api_keys.list(ns)] == [new.key.id]


def test_version_3_database_gets_the_retention_tables(fresh_db: FreshDb, ns: str) -> None:
    """Migration 4 adds revstore_retention and revstore_compacted to a version-3
    database, keeping every row; retention then works on it."""
    url = fresh_db()
    _make_v1(url, ns)
    with Store(url) as store:
        store.create_schema()
        for table in ALL_TABLES - V3_TABLES:
            _sql(store, f"DROP TABLE {table}")
        _sql(store, "UPDATE revstore_schema SET version = 3")
        assert _tables(store) == V3_TABLES
    with Store(url) as store:
        _assert_v1_rows_kept(store, ns)
        assert _stored_version(store) == SCHEMA_VERSION == 4
        assert _tables(store) == ALL_TABLES
        store.set_retention(ns, keep_last=1)
        assert store.apply_retention(ns).versions_removed == 1
        assert [v.version for v in store.history("doc", namespace=ns).versions] == [2]


def test_injected_migration_upgrades_in_place_keeping_rows(fresh_db: FreshDb, ns: str) -> None:
    """A later release's step (here: a new nullable column and a NOT NULL one with a
    default) runs once, under the lock, keeps every row, bumps the version; after it,
    this release refuses the database as newer."""
    url = fresh_db()
    _make_v1(url, ns)  # from version 1: migration 2, then the injected 3, in one go
    step = Migration(
        SCHEMA_VERSION + 1,
        "add revstore_records.label and revstore_records.weight",
        _add_two_columns,
    )
    with Store(url) as store:
        store.backend.migrator = Migrator((*MIGRATIONS, step))
        _assert_v1_rows_kept(store, ns)
        assert _stored_version(store) == SCHEMA_VERSION + 1
        assert _sql(store, "SELECT label, weight FROM revstore_records") == [(None, 7)]
        # Running it again (a second process, a restart) changes nothing.
        store.backend.schema_version = None
        store.create_schema()
        assert _stored_version(store) == SCHEMA_VERSION + 1
        assert store.put("doc", {"n": 3}, namespace=ns).version == 3
    with Store(url) as older, pytest.raises(SchemaMismatch):
        older.get("doc", namespace=ns)


def _add_two_columns(conn: Connection) -> None:
    add_column("revstore_records", Column("label", String(50), nullable=True))(conn)
    add_column(
        "revstore_records",
        Column("weight", Integer, nullable=False, server_default=text("7")),
    )(conn)


def test_first_creation_cut_short_is_finished(fresh_db: FreshDb, ns: str) -> None:
    """MySQL commits each CREATE by itself: a process killed mid-creation leaves the
    version row at 0 and some tables. The next one finishes the job."""
    url = fresh_db()
    with Store(url) as store:
        with store.backend.engine.connect() as conn:
            schema.schema_version.create(conn)
            conn.execute(
                insert(schema.schema_version).values(id=1, version=0, updated_at=datetime.now(UTC))
            )
            schema.records.create(conn)
        store.put("doc", {"n": 1}, namespace=ns)
        assert _stored_version(store) == SCHEMA_VERSION
        assert _tables(store) == ALL_TABLES


def test_release_1_creation_cut_short_is_completed(fresh_db: FreshDb, ns: str) -> None:
    """Release 1 created its tables one by one without a lock; one cut short left some
    missing. The upgrade makes them (as release 1 itself would have on its next call)."""
    url = fresh_db()
    with Store(url) as store:
        with store.backend.engine.connect() as conn:
            schema.records.create(conn)
            schema.versions.create(conn)
        store.append("chat", [{"m": "hi"}], namespace=ns)
        store.put("doc", {"n": 1}, namespace=ns)
        assert _stored_version(store) == SCHEMA_VERSION
        assert _tables(store) == ALL_TABLES


def test_table_made_meanwhile_by_an_unlocked_creator(
    fresh_db: FreshDb, ns: str, request: pytest.FixtureRequest
) -> None:
    """A creator that takes no lock (an older release, a DBA) makes a table between
    revstore's look and its CREATE: the "already exists" counts as success, revstore
    looks again under the lock and finishes from what it finds."""
    if request.node.callspec.params["fresh_db"] == "sqlite":
        pytest.skip("SQLite: BEGIN IMMEDIATE shuts every other writer out of the file")
    url = fresh_db()
    made: list[str] = []

    def meanwhile(target: object, connection: Connection, **_: object) -> None:
        if not made:
            made.append("revstore_streams")  # first, as this fires for the intruder too
            # Another connection, committed at once: the CREATE about to run collides.
            with Store(url) as intruder, intruder.backend.engine.connect() as conn:
                schema.streams.create(conn)

    event.listen(schema.streams, "before_create", meanwhile)
    try:
        with Store(url) as store:
            assert store.put("doc", {"n": 1}, namespace=ns).revision == 1
            assert made == ["revstore_streams"]
            assert store.append("chat", [{"m": "hi"}], namespace=ns).first_sequence == 1
            assert _stored_version(store) == SCHEMA_VERSION
            assert _tables(store) == ALL_TABLES
    finally:
        event.remove(schema.streams, "before_create", meanwhile)


def test_migrations_must_be_consecutive() -> None:
    with pytest.raises(ValueError, match="numbered"):
        Migrator((*MIGRATIONS, Migration(SCHEMA_VERSION + 2, "gap", _add_two_columns)))
    with pytest.raises(ValueError, match="reach"):
        Migrator(())


# ---------------------------------------------------------------- around the schema


def test_newer_schema_over_http_is_a_503(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette asks for httpx2; httpx works the same
        from fastapi.testclient import TestClient

    url = f"sqlite:///{tmp_path / 'newer.db'}"
    with Store(url) as store:
        store.put("doc", {"n": 1})
        _sql(store, f"UPDATE revstore_schema SET version = {SCHEMA_VERSION + 1}")
    with Store(url) as store, TestClient(create_app(store)) as client:
        reply = client.get("/v1/records/doc")
        assert reply.status_code == 503
        problem = reply.json()
        assert problem["type"].endswith(":unavailable")
        assert f"version {SCHEMA_VERSION + 1}" in problem["detail"]
        assert "Retry-After" in reply.headers


def test_migrate_command(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    for _ in range(2):  # creates, then finds it done
        result = CliRunner().invoke(cli.app, ["migrate", "--db", db, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"schema_version": SCHEMA_VERSION}
    with Store(db) as store:
        _sql(store, f"UPDATE revstore_schema SET version = {SCHEMA_VERSION + 1}")
    result = CliRunner().invoke(cli.app, ["migrate", "--db", db])
    assert result.exit_code == 7  # schema mismatch (docs/cli.md)
    assert "SchemaMismatch" in result.output


def test_wal_switch_waits_out_a_concurrent_holder(tmp_path: Path) -> None:
    """Processes opening a new SQLite file all switch it to WAL; one that finds the
    file locked (here with no busy handler at all) asks again instead of failing."""
    path = tmp_path / "wal.db"
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("PRAGMA journal_mode=WAL")  # what a single attempt gets
        outcome: list[BaseException | None] = []

        def switch() -> None:
            try:
                enable_wal(other, timeout_s=WAIT)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=switch)
        thread.start()
        time.sleep(0.2)  # let it meet the lock a few times (nothing timed is asserted)
        holder.execute("COMMIT")
        thread.join(WAIT)
        assert outcome == [None]
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        holder.close()
        other.close()
