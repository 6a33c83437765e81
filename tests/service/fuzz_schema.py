"""What the two schemathesis runs share (imported by module name: pytest puts this
directory on sys.path): the checks every response must pass, and the app's schema
with the 4xx a forbidden request may get."""

from __future__ import annotations

from schemathesis import checks, openapi
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.schemas import OpenApiSchema

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


def app_schema(store: Store, idempotency_wait: float) -> OpenApiSchema:
    """The OpenAPI schema of an app over ``store``, loaded in-process (ASGI)."""
    # A small body limit keeps generated bodies cheap without hiding the 413 path.
    app = create_app(store, Settings(max_body_bytes=64 * 1024, idempotency_wait=idempotency_wait))
    config = SchemathesisConfig.from_dict(
        {
            "checks": {
                # A request the schema forbids must be refused with a 4xx (413: too large).
                "negative_data_rejection": {
                    "expected-statuses": [400, 404, 405, 409, 412, 413, 415, 422, 428]
                }
            }
        }
    )
    return openapi.from_asgi("/openapi.json", app, config=config)
