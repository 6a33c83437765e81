"""Where the test servers are, and whether each is required (REVSTORE_TEST_REQUIRE).

A plain module rather than part of ``conftest.py``: test modules import it by name,
and ``conftest`` is ambiguous on ``sys.path`` (tests/service has one too).

Under pytest-xdist (``make test`` runs ``-n 2``) each worker gets databases of its own
on each server: ``<database>_<worker>`` (``test_gw0``, ``test_gw1``), created when
absent. Tests drop and recreate tables and kill every session of their database; two
workers in one database would see each other's tables vanish and sessions die.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from revstore import Store
from revstore.errors import RevstoreError

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
"""``gw0``, ``gw1``, … in a pytest-xdist worker; empty in a plain run."""


def worker_database(url: str) -> str:
    """``url`` with the database of this xdist worker (unchanged outside xdist)."""
    if not WORKER:
        return url
    u = make_url(url)
    return u.set(database=f"{u.database}_{WORKER}").render_as_string(hide_password=False)


POSTGRES_URL = worker_database(
    os.environ.get("REVSTORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
MYSQL_URL = worker_database(
    os.environ.get("REVSTORE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
)
PGBOUNCER_URL = worker_database(
    os.environ.get("REVSTORE_TEST_PGBOUNCER_URL", "postgresql://postgres@127.0.0.1:6432/test")
)
REQUIRE = os.environ.get("REVSTORE_TEST_REQUIRE", "")

BACKENDS = ["sqlite", "postgresql", "mysql"]
POOLED_BACKENDS = [*BACKENDS, "pgbouncer"]
"""``pgbouncer``: the PostgreSQL backend reached through PgBouncer (transaction mode)."""
SERVER_URLS = {"postgresql": POSTGRES_URL, "mysql": MYSQL_URL, "pgbouncer": PGBOUNCER_URL}
HINTS = {"pgbouncer": " (start it with `make pgbouncer`)"}

_reachable: dict[str, str | None] = {}


def _required(name: str) -> bool:
    wanted = {w.strip() for w in REQUIRE.split(",") if w.strip()}
    return "all" in wanted or name in wanted


def require_server(name: str) -> str:
    """The URL of a server backend, or skip/fail (per REVSTORE_TEST_REQUIRE) if it is down."""
    url = SERVER_URLS[name]
    if name not in _reachable:
        try:
            if WORKER:
                _create_database(url)
            store = Store(url)
            store.ping()
            store.create_schema()
            store.close()
            _reachable[name] = None
        except (RevstoreError, SQLAlchemyError) as exc:
            _reachable[name] = f"{name} at {url} is not reachable: {exc}{HINTS.get(name, '')}"
    reason = _reachable[name]
    if reason is not None:
        if _required(name):
            pytest.fail(f"REVSTORE_TEST_REQUIRE={REQUIRE}: {reason}", pytrace=False)
        pytest.skip(f"SKIPPING {name.upper()} TESTS: {reason}")
    return url


def backend_url_for(name: str, sqlite_url: str) -> str:
    """The URL of backend ``name`` (one of POOLED_BACKENDS), or skip/fail if it is down."""
    if name == "sqlite":
        return sqlite_url
    return require_server(name)


def _create_database(url: str) -> None:
    """Create the database of ``url`` on its server when absent (an xdist worker's own)."""
    u = make_url(url)
    db = u.database
    assert db and db.replace("_", "").isalnum(), db  # a name spliced into DDL below
    if u.drivername.startswith("postgresql"):
        # CREATE DATABASE cannot run in a transaction; through PgBouncer too, in autocommit.
        admin = u.set(drivername="postgresql+psycopg", database="postgres")
        exists = "SELECT 1 FROM pg_database WHERE datname = :d"
        create = f'CREATE DATABASE "{db}"'
    else:
        # set(database=None) would keep the (absent) database: the server's own instead.
        admin = u.set(drivername="mysql+pymysql", database="information_schema")
        exists = "SELECT 1 FROM information_schema.schemata WHERE schema_name = :d"
        create = f"CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if conn.execute(text(exists), {"d": db}).first() is None:
                conn.execute(text(create))
    finally:
        engine.dispose()


def mysql_connection(store: Store, autocommit: bool) -> Any:
    """A PyMySQL connection of the test's own to ``store``'s MariaDB database (not from
    the store's pool): to hold rows, change them behind its back, or add triggers."""
    import pymysql

    from revstore.config import parse_url

    u = make_url(parse_url(store.url).sqlalchemy())
    return pymysql.connect(
        host=u.host,
        port=u.port or 3306,
        user=u.username,
        password=u.password or "",
        database=u.database,
        autocommit=autocommit,
    )
