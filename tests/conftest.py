"""Shared fixtures: every contract test runs on SQLite (a file), PostgreSQL and MariaDB.

Servers are found through REVSTORE_TEST_POSTGRES_URL and REVSTORE_TEST_MYSQL_URL
(defaults: the standard local ports). An absent server skips its tests with a loud
reason, unless REVSTORE_TEST_REQUIRE=all (as in CI), which turns that into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from revstore import Store
from revstore.errors import RevstoreError

POSTGRES_URL = os.environ.get(
    "REVSTORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("REVSTORE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REQUIRE = os.environ.get("REVSTORE_TEST_REQUIRE", "")

BACKENDS = ["sqlite", "postgresql", "mysql"]

_reachable: dict[str, str | None] = {}


def _required(name: str) -> bool:
    wanted = {w.strip() for w in REQUIRE.split(",") if w.strip()}
    return "all" in wanted or name in wanted


def require_server(name: str) -> str:
    """The URL of a server backend, or skip/fail (per REVSTORE_TEST_REQUIRE) if it is down."""
    url = POSTGRES_URL if name == "postgresql" else MYSQL_URL
    if name not in _reachable:
        try:
            store = Store(url)
            store.ping()
            store.create_schema()
            store.close()
            _reachable[name] = None
        except RevstoreError as exc:
            _reachable[name] = f"{name} at {url} is not reachable: {exc}"
    reason = _reachable[name]
    if reason is not None:
        if _required(name):
            pytest.fail(f"REVSTORE_TEST_REQUIRE={REQUIRE}: {reason}", pytrace=False)
        pytest.skip(f"SKIPPING {name.upper()} TESTS: {reason}")
    return url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "revstore-test.db"
    return f"sqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """The URL of each backend in turn (the parametrised engine fixture)."""
    name: str = request.param
    if name == "sqlite":
        return sqlite_url
    return require_server(name)


@pytest.fixture
def server_url() -> Callable[[str], str]:
    """``server_url("postgresql" | "mysql")``: the server's URL, or skip/fail if it is down."""
    return require_server


@pytest.fixture
def store(backend_url: str) -> Iterator[Store]:
    s = Store(backend_url)
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def ns() -> str:
    """A fresh namespace per test, so tests never see each other's rows."""
    return f"t-{uuid.uuid4().hex[:12]}"
