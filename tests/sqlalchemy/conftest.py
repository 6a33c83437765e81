"""Fixtures of the revstore.sqlalchemy tests: the versioned models, and an engine with
their tables (created for the test, dropped after it). A module may define its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from versioned_models import Models, make_engine, make_models


@pytest.fixture
def models() -> Models:
    return make_models()


@pytest.fixture
def engine(backend_url: str, models: Models) -> Iterator[Engine]:
    eng = make_engine(backend_url)
    models.metadata.create_all(eng)
    yield eng
    models.metadata.drop_all(eng)
    eng.dispose()
