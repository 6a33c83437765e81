"""Property-based fuzzing of the API from its own OpenAPI (schemathesis): whatever
the generated request, no 5xx, and every response conforms to the documented schema
(status code, content type, headers, body). A quick pass in the default run; the
6,000-request run is ``test_service_schemathesis.py`` (``-m slow``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fuzz_schema import CHECKS, app_schema
from hypothesis import HealthCheck, settings

from revstore import Store

# The schema is loaded at collection (schemathesis' lazy fixture loader does not work
# with pytest 9), so the app and its SQLite file are made here and removed at the end.
_dir = Path(tempfile.mkdtemp(prefix="revstore-fuzz-"))
_store = Store(f"sqlite:///{_dir / 'fuzz.db'}")
schema = app_schema(_store, idempotency_wait=0.5)

# One xdist worker runs the whole module (``--dist loadgroup``): the module's store is
# closed and its folder removed when its fixture ends, which must be after the last case.
pytestmark = pytest.mark.xdist_group("fuzz")


@pytest.fixture(scope="module", autouse=True)
def _seeded() -> Iterator[None]:
    # Existing ids ("a", "b") so that reads and writes hit real records and streams.
    for id in ("a", "b"):
        _store.put(id, {"seed": id})
        _store.put(id, {"seed": id, "v": 2})
        _store.append(id, [1, 2, 3])
    yield
    _store.close()
    shutil.rmtree(_dir, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi(case: schemathesis.Case[Any]) -> None:
    """A quick pass on every operation (the default test run)."""
    case.call_and_validate(checks=CHECKS)
