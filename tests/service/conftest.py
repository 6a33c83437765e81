"""Fixtures of the HTTP service tests: an app over the shared ``store`` fixture (so
write paths run on SQLite, PostgreSQL and MariaDB), or over a SQLite file only where
the backend does not matter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from service_helpers import AppFactory, TestClient

from revstore import Store
from revstore.service import Settings, create_app
from revstore.service.context import StoreSource


@pytest.fixture
def make_client() -> Iterator[AppFactory]:
    """Build a started TestClient over a Store, an AsyncStore factory or a URL, with
    optional settings. Started: one event loop serves all its requests (the app's
    AsyncStore belongs to it) and the app's lifespan runs."""
    clients: list[TestClient] = []

    def make(store: StoreSource, settings: Settings | None = None, **options: object) -> TestClient:
        if settings is None:
            settings = Settings(**options)  # type: ignore[arg-type]
        app: FastAPI = create_app(store, settings)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(store: Store, make_client: AppFactory) -> TestClient:
    """On every backend (parametrised through the shared ``store`` fixture)."""
    return make_client(store)


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    s = Store(sqlite_url)
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def sqlite_client(sqlite_store: Store, make_client: AppFactory) -> TestClient:
    """SQLite only: for behaviour that lives in the HTTP layer, not the database."""
    return make_client(sqlite_store)


@pytest.fixture
def key() -> str:
    """A fresh Idempotency-Key (keys are global, not per namespace)."""
    return f"k-{uuid.uuid4().hex}"
