"""Property-based fuzzing of the API from its own OpenAPI (schemathesis): whatever
the generated request, no 5xx, and every response conforms to the documented schema
(status code, content type, headers, body). A quick pass in the default run; the
10,000-request run is ``test_service_schemathesis.py`` (``-m slow``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from revstore import Store
from revstore.service import Settings, create_app

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]

# The schema is loaded at collection (schemathesis' lazy fixture loader does not work
# with pytest 9), so the app and its SQLite file are made here and removed at the end.
_dir = Path(tempfile.mkdtemp(prefix="revstore-fuzz-"))
_store = Store(f"sqlite:///{_dir / 'fuzz.db'}")
# A small body limit keeps generated bodies cheap without hiding the 413 path.
_app = create_app(_store, Settings(max_body_bytes=64 * 1024, idempotency_wait=0.5))
# A request the schema forbids must be refused with a 4xx; 413 (body too large) is one.
_config = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 404, 405, 409, 412, 413, 415, 422, 428]
            }
        }
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", _app, config=_config)


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
