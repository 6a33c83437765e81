"""Where the test servers are, and whether each is required (REVSTORE_TEST_REQUIRE).

A plain module rather than part of ``conftest.py``: test modules import it by name,
and ``conftest`` is ambiguous on ``sys.path`` (tests/service has one too).
"""

from __future__ import annotations

import os

import pytest

from revstore import Store
from revstore.errors import RevstoreError

POSTGRES_URL = os.environ.get(
    "REVSTORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("REVSTORE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
PGBOUNCER_URL = os.environ.get(
    "REVSTORE_TEST_PGBOUNCER_URL", "postgresql://postgres@127.0.0.1:6432/test"
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
            store = Store(url)
            store.ping()
            store.create_schema()
            store.close()
            _reachable[name] = None
        except RevstoreError as exc:
            _reachable[name] = f"{name} at {url} is not reachable: {exc}{HINTS.get(name, '')}"
    reason = _reachable[name]
    if reason is not None:
        if _required(name):
            pytest.fail(f"REVSTORE_TEST_REQUIRE={REQUIRE}: {reason}", pytrace=False)
        pytest.skip(f"SKIPPING {name.upper()} TESTS: {reason}")
    return url
