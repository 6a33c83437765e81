"""Shared fixtures: every contract test runs on SQLite (a file), PostgreSQL and MariaDB.

Servers are found through REVSTORE_TEST_POSTGRES_URL and REVSTORE_TEST_MYSQL_URL
(defaults: the standard local ports). An absent server skips its tests with a loud
reason, unless REVSTORE_TEST_REQUIRE=all (as in CI), which turns that into a failure.

The concurrency tests also run through PgBouncer in transaction pooling mode in front
of the PostgreSQL server (REVSTORE_TEST_PGBOUNCER_URL, default port 6432; start it
with ``make pgbouncer``; required by REVSTORE_TEST_REQUIRE=all or ``pgbouncer``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apis import APIS, open_store
from revstore import Store
from testdbs import (
    BACKENDS,
    POOLED_BACKENDS,
    REQUIRE,
    _required,
    backend_url_for,
    require_server,
)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "revstore-test.db"
    return f"sqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """The URL of each backend in turn (the parametrised engine fixture)."""
    return backend_url_for(request.param, sqlite_url)


PGBOUNCER_SUITES = {"test_concurrency_contract", "test_records_contract", "test_streams_contract"}
"""The contract suites: their ``backend_url`` also runs PostgreSQL through PgBouncer."""


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A parametrize mark on a test replaces its fixture's own params; added here,
    # before pytest reads the marks, as if each test of those suites carried it.
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in API_SUITES and "api" in metafunc.fixturenames:
        metafunc.definition.add_marker(pytest.mark.parametrize("api", APIS, indirect=True))
    if module in PGBOUNCER_SUITES and "backend_url" in metafunc.fixturenames:
        metafunc.definition.add_marker(
            pytest.mark.parametrize("backend_url", POOLED_BACKENDS, indirect=True)
        )


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    """Give ``item`` the node id ``nodeid``: pytest >= 9.2 keeps structured ids in
    ``_id`` (its ``nodeid`` is ``str(_id)``); earlier ones kept the string in ``_nodeid``."""
    if hasattr(item, "_id"):
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(nodeid)
    else:
        item._nodeid = nodeid


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Schemathesis makes one item per API operation, named test[GET /path]; on pytest 9.2
    # they all get the function's bare node id. xdist sends tests by node id (loadgroup
    # keys its work by it): one of the 18 would run. The id pytest 8 gave them instead.
    for item in items:
        if not item.nodeid.endswith(f"::{item.name}") and item.parent is not None:
            _set_nodeid(item, f"{item.parent.nodeid}::{item.name}")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker sends the collected ids
def pytest_collection_finish(session: pytest.Session) -> None:
    items = session.items
    # pytest-xdist <= 3.8 groups (--dist loadgroup) by writing "@<group>" into
    # item._nodeid, which pytest 9.2 no longer reads (pytest-xdist#1386): the groups
    # would be scattered over the workers. Write the id xdist meant.
    for item in items:
        meant = getattr(item, "_nodeid", None)
        if isinstance(meant, str) and meant != item.nodeid:
            _set_nodeid(item, meant)
    # Loudly, not silently: a test sharing its node id with another is not run by xdist,
    # and a grouped test without its group may run beside a sibling it must follow.
    seen: set[str] = set()
    for item in items:
        if item.nodeid in seen:
            raise pytest.UsageError(f"two tests with the node id {item.nodeid}")
        seen.add(item.nodeid)
        grouped = any(item.iter_markers("xdist_group"))
        loadgroup = session.config.getoption("dist", None) == "loadgroup"
        if grouped and loadgroup and "@" not in item.nodeid:
            raise pytest.UsageError(f"{item.nodeid}: xdist_group without its @group")


@pytest.fixture
def server_url() -> Callable[[str], str]:
    """``server_url("postgresql" | "mysql" | "pgbouncer")``: the server's URL, or
    skip/fail if it is down."""
    return require_server


@pytest.fixture
def throwaway_kind() -> Callable[[str], str]:
    """``throwaway_kind("postgresql" | "mariadb")``: the kind, when this machine can run
    a throwaway server of it (``revstore.lab.servers``), else skip loudly (fail when
    the server's backend is required by REVSTORE_TEST_REQUIRE)."""
    from revstore.lab.servers import ServerError, throwaway_server

    def check(kind: str) -> str:
        try:
            throwaway_server(kind).cleanup()  # finds the binaries, makes and removes a folder
        except (ServerError, OSError, KeyError) as exc:
            backend = "postgresql" if kind == "postgresql" else "mysql"
            reason = f"cannot run a throwaway {kind} server here: {exc}"
            if _required(backend):
                pytest.fail(f"REVSTORE_TEST_REQUIRE={REQUIRE}: {reason}", pytrace=False)
            pytest.skip(f"SKIPPING THROWAWAY {kind.upper()} TESTS: {reason}")
        return kind

    return check


API_SUITES = {
    "test_bounded_contract",
    "test_concurrency_contract",
    "test_idempotency_contract",
    "test_input_contract",
    "test_input_properties",
    "test_records_contract",
    "test_retention_contract",
    "test_streams_contract",
}
"""The contract suites: each of their tests runs on ``Store`` and on ``AsyncStore``."""


@pytest.fixture
def api(request: pytest.FixtureRequest) -> str:
    """The store API of the test: "sync" (``Store``) or "async" (``AsyncStore``, through
    ``apis.BlockingAsyncStore``); both in turn in the contract suites (API_SUITES)."""
    return str(getattr(request, "param", "sync"))


@pytest.fixture
def make_store(api: str) -> Callable[..., Any]:
    """``make_store(url, **options)``: a store of the test's API (close it yourself)."""
    return functools.partial(open_store, api)


@pytest.fixture
def store(backend_url: str, make_store: Callable[..., Any]) -> Iterator[Store]:
    """A store of each API on each backend, with its schema made."""
    s = make_store(backend_url)
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def ns() -> str:
    """A fresh namespace per test, so tests never see each other's rows."""
    return f"t-{uuid.uuid4().hex[:12]}"
