"""The FastAPI application over a :class:`revstore.AsyncStore`.

``create_app(store, settings)`` builds one; ``app_factory()`` builds one from the
environment and is what ``revstore serve`` hands to uvicorn (as an import string, so
that every worker process builds its own app, whose lifespan opens its own AsyncStore
on the worker's event loop). Routes are ``async def`` and await the store: no request
is handed to a thread pool.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

import revstore
from revstore.errors import RevstoreError
from revstore.service.auth import CACHE_SECONDS, PROTECTED_PREFIX, AuthMiddleware, KeyCache
from revstore.service.context import Services, StoreSource, services
from revstore.service.fastlane import FastLane
from revstore.service.metrics import MULTIPROC_ENV, Metrics, install_retry_counter
from revstore.service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from revstore.service.problems import MEDIA_TYPE
from revstore.service.routes import router
from revstore.service.routing import problem_response
from revstore.service.settings import Settings

log = logging.getLogger("revstore.service")

DESCRIPTION = """\
Versioned records and sequenced streams over revstore.

* `ETag` is the record revision (strong, e.g. `"3"`): send it back in `If-Match` for a
  conditional write (412 on mismatch), `If-None-Match: *` to create only.
* `Idempotency-Key` on any write: a re-send returns the first response and never writes
  twice, even after a lost connection or a crashed worker (the key commits with the write).
* Errors are RFC 9457 `application/problem+json`; types are `urn:revstore:problem:<kind>`.
"""

TAGS: list[dict[str, Any]] = [
    {"name": "records", "description": "Versioned JSON records: head, history, diff, restore."},
    {"name": "streams", "description": "Append-only streams numbered without gaps."},
    {"name": "retention", "description": "How many versions a namespace keeps (admin)."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
]

SECURITY_SCHEME = "bearerAuth"
SECURITY_SCHEMES: dict[str, Any] = {
    # Always declared, so generated clients can send a token; each /v1 operation lists
    # it as required when the service checks keys (Settings.auth), none when it does
    # not (the document says what this process does).
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`revstore keys create`) sent as "
        "`Authorization: Bearer <token>`. Required on /v1 routes when the service runs "
        "with auth on: read keys read, write and admin keys also write, each in its "
        "namespace (or every namespace for a `*` key).",
    }
}
AUTH_RESPONSES: dict[str, Any] = {
    "401": {
        "description": "No API key, or one that is not valid (unknown or revoked); "
        "with `WWW-Authenticate: Bearer`.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "403": {"description": "The API key is for another namespace, or may not write."},
}

UI_PATH = "/ui"
UI_DIR = Path(__file__).with_name("ui")

DOCS_ASSETS = "/docs/assets"
"""Where Swagger UI's and ReDoc's scripts and styles are served from (the
fastapi-offline package ships them), so /docs and /redoc work without internet."""


def create_app(store: StoreSource = None, settings: Settings | None = None) -> FastAPI:
    """An app over ``store``: an ``AsyncStore``, a function returning one, a sync
    ``Store`` (served through an ``AsyncStore`` with its URL, strategy, limits and
    retry policy), or a database URL (None: ``settings.url``).

    The app opens its store in the event loop that runs it (in its lifespan, or at the
    first request under a server without one) and closes it at shutdown; an
    ``AsyncStore`` passed in stays the caller's to close, and must serve only this
    app's loop. Run the app on one loop: under uvicorn, or ``with TestClient(app)``.
    """
    settings = settings or Settings()
    svc = Services(store, settings, Metrics())
    install_retry_counter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.start()
        log.info(
            "auth %s",
            "required: /v1 requests need an API key" if settings.auth else "off",
            extra={"event": "startup", "auth": "required" if settings.auth else "off"},
        )
        try:
            yield
        finally:
            await svc.stop()
            if svc.metrics.multiprocess:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    app = FastAPIOffline(
        title="revstore",
        version=revstore.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=TAGS,
        static_url=DOCS_ASSETS,
        # Swagger UI would otherwise send the document to an online validator.
        swagger_ui_parameters={"validatorUrl": None},
        generate_unique_id_function=operation_id,
    )
    app.state.services = svc
    app.include_router(router)
    # The history browser: static files of this package, calling the /v1 API from the
    # browser (with the API key the user enters), so it needs no route of its own.
    app.mount(UI_PATH, StaticFiles(directory=UI_DIR, html=True), name="ui")

    # Errors raised outside the routes (unknown path, wrong method) use the same bodies.
    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
            # Starlette names only the first route matching the path; list them all.
            allowed = _allowed_methods(request.url.path)
            exc = StarletteHTTPException(405, exc.detail, headers={"Allow": ", ".join(allowed)})
        return problem_response(request, services(request), exc)

    app.add_exception_handler(StarletteHTTPException, on_error)
    app.add_exception_handler(RequestValidationError, on_error)
    app.add_exception_handler(RevstoreError, on_error)

    # The last one added is the outermost: the fast lane is innermost, so the request
    # id, log line, metrics, auth and body limit apply to both of its paths.
    if settings.fast_lane:
        app.add_middleware(FastLane, routes=_lane_routes(app))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.auth:
        # Before the body is read and before any route (or its idempotency layer) runs.
        app.add_middleware(
            AuthMiddleware,
            keys=KeyCache(lambda: svc.store, CACHE_SECONDS),
            retry_after=settings.retry_after,
        )
    app.add_middleware(RequestContextMiddleware, metrics=svc.metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problem_media_types(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                    tags=app.openapi_tags,
                )
            )
            _declare_security(app.openapi_schema, required=settings.auth)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _lane_routes(app: FastAPI) -> list[Any]:
    """The app's routes in the order its router tries them, with the routes of an
    included router in its place (FastAPI >= 0.16x keeps the router whole instead of
    copying its routes into the app; a router the lane cannot see into keeps the lane
    from serving any path it matches)."""
    out: list[Any] = []
    for route in app.router.routes:
        included = getattr(route, "original_router", None)
        prefix = getattr(getattr(route, "include_context", None), "prefix", "")
        if included is router and not prefix:
            out.extend(router.routes)
        else:
            out.append(route)
    return out


def _allowed_methods(path: str) -> list[str]:
    methods: set[str] = set()
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


def operation_id(route: APIRoute) -> str:
    """The fallback for a route declared without ``operation_id``: its function name in
    camelCase (``put_record`` -> ``putRecord``), not FastAPI's path-and-method id, so
    that generated clients get readable method names."""
    head, *rest = route.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _declare_security(schema: dict[str, Any], *, required: bool) -> None:
    """Declare the bearer scheme; when keys are checked, require it on every /v1
    operation (the others stay open) and document its 401 and 403."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    for name, scheme in SECURITY_SCHEMES.items():
        schemes.setdefault(name, scheme)
    if not required:
        return
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, path_item in schema.get("paths", {}).items():
        if not path.startswith(PROTECTED_PREFIX):
            continue
        for operation in path_item.values():
            operation["security"] = [{SECURITY_SCHEME: []}]
            responses = operation.setdefault("responses", {})
            for status, response in AUTH_RESPONSES.items():
                responses.setdefault(
                    status, {**response, "content": {MEDIA_TYPE: {"schema": problem}}}
                )


def _problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses are declared with the Problem model; FastAPI lists them as
    application/json, which is not what is sent."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content")
                if not content:
                    continue
                if str(status).isdigit() and int(status) >= 400 and "application/json" in content:
                    content[MEDIA_TYPE] = content.pop("application/json")
                elif str(status) in ("204", "304"):
                    response.pop("content")
    return schema


def app_factory() -> FastAPI:
    """For ``uvicorn --factory revstore.service.app:app_factory`` (settings from the
    environment: REVSTORE_URL, REVSTORE_REQUIRE_IF_MATCH, REVSTORE_MAX_BODY_BYTES,
    REVSTORE_MAX_PAGE_BYTES, REVSTORE_IDEMPOTENCY_TTL, REVSTORE_POOL_SIZE,
    REVSTORE_MAX_OVERFLOW)."""
    settings = Settings.from_env()
    if os.environ.get(MULTIPROC_ENV):
        log.info("prometheus multiprocess mode", extra={"dir": os.environ[MULTIPROC_ENV]})
    return create_app(settings.url, settings)
