"""Health, readiness, metrics, logs, request ids, OpenAPI, and the 500/503 paths."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from service_helpers import PROBLEM, AppFactory, TestClient, assert_problem

from revstore import AsyncStore, RetryPolicy, Store
from revstore.record import Record
from revstore.service import Settings, create_app
from revstore.service.logs import JsonFormatter, log_config

# A port nothing listens on: a database that is really down, not a mock.
DOWN_URL = "postgresql://postgres@127.0.0.1:9/test"


class Lines(logging.Handler):
    """Collects what the service logs, formatted by the service's JSON formatter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]


@pytest.fixture
def logs() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("revstore")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_healthz_readyz(sqlite_client: TestClient) -> None:
    r = sqlite_client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = sqlite_client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def down_store() -> Store:
    return Store(DOWN_URL, retry=RetryPolicy(max_attempts=2, max_seconds=1.0))


def test_database_down_is_503_with_retry_after(
    make_client: AppFactory, logs: Lines, ns: str
) -> None:
    store = down_store()
    try:
        c = make_client(store)
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert_problem(r, 503, "unavailable")
        assert r.headers["retry-after"] == "1"
        r = c.put(f"/v1/records/doc?namespace={ns}", json={"content": 1})
        body = assert_problem(r, 503, "unavailable")
        assert int(r.headers["retry-after"]) >= 1 and body["retry_after"] >= 1
        # With a key: the key cannot be reserved, so nothing runs; still a clean 503.
        r = c.put(
            f"/v1/records/doc?namespace={ns}", json={"content": 1}, headers={"Idempotency-Key": "k"}
        )
        assert_problem(r, 503, "unavailable")
        assert_problem(c.get(f"/v1/records/doc?namespace={ns}"), 503, "unavailable")
        # Logged with the database error code behind it (connecting was retried with
        # backoff for the reconnect window, not by the per-statement retry policy).
        line = logs.events("unavailable")[0]
        assert line["db_code"] == "disconnect" and line["request_id"]
    finally:
        store.close()


class Broken(AsyncStore):
    async def get(self, id: str, *, namespace: str = "default") -> Record:
        raise RuntimeError("secret internals: password=hunter2")


def test_unexpected_error_is_a_500_problem_without_internals(
    sqlite_url: str, make_client: AppFactory, logs: Lines, ns: str
) -> None:
    # A factory: the app makes its AsyncStore in the loop that serves it.
    c = make_client(lambda: Broken(sqlite_url))
    r = c.get(f"/v1/records/doc?namespace={ns}", headers={"X-Request-Id": "req-500"})
    body = assert_problem(r, 500, "internal")
    assert body["request_id"] == "req-500" and "req-500" in body["detail"]
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    [line] = logs.events("error")
    assert line["request_id"] == "req-500" and line["level"] == "error"
    assert "hunter2" in line["stack"] and "Traceback" in line["stack"]
    assert logs.events("request")[-1]["status"] == 500


def test_request_ids(sqlite_client: TestClient) -> None:
    r = sqlite_client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = sqlite_client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert len(r.headers["x-request-id"]) == 32  # replaced by a fresh one
    assert len(sqlite_client.get("/healthz").headers["x-request-id"]) == 32


def test_one_json_log_line_per_request_and_per_conflict(
    sqlite_client: TestClient, logs: Lines, ns: str
) -> None:
    c = sqlite_client
    c.put(f"/v1/records/doc?namespace={ns}", json={"content": 1}, headers={"X-Request-Id": "r1"})
    c.put(
        f"/v1/records/doc?namespace={ns}",
        json={"content": 2},
        headers={"X-Request-Id": "r2", "If-Match": '"7"'},
    )
    c.post(
        f"/v1/streams/s/items?namespace={ns}", json={"items": [1]}, headers={"X-Request-Id": "r3"}
    )
    requests = logs.events("request")
    got = [(x["request_id"], x["status"]) for x in requests]
    assert got == [("r1", 201), ("r2", 412), ("r3", 201)]
    first = requests[0]
    assert first["method"] == "PUT" and first["route"] == "/v1/records/{id}"
    assert first["record_id"] == "doc" and first["latency_ms"] >= 0
    assert first["logger"] == "revstore.http" and first["level"] == "info"
    assert requests[2]["stream_id"] == "s" and requests[2]["route"] == "/v1/streams/{id}/items"
    [conflict] = logs.events("conflict")
    assert conflict["request_id"] == "r2" and conflict["kind"] == "precondition-failed"
    assert conflict["current_revision"] == 1 and conflict["record_id"] == "doc"


def test_retry_lines_carry_the_request(
    sqlite_url: str, make_client: AppFactory, logs: Lines, ns: str
) -> None:
    """A retry logged by the Store (revstore.retry, with its extras) gets the request's
    fields too, and is counted in the metrics."""

    class Flaky(AsyncStore):
        calls = 0

        async def get(self, id: str, *, namespace: str = "default") -> Record:
            from revstore.errors import Retryable

            async def attempt() -> Record:
                self.calls += 1
                if self.calls == 1:
                    raise Retryable("database is busy (injected)", code="SQLITE_BUSY")
                return await super(Flaky, self).get(id, namespace=namespace)

            return await self.retry.run_async(attempt, op="get", key=id, stats=self.stats)

    store = Store(sqlite_url)
    try:
        c = make_client(lambda: Flaky(sqlite_url))
        store.put("doc", 1, namespace=ns)
        r = c.get(f"/v1/records/doc?namespace={ns}", headers={"X-Request-Id": "retry-1"})
        assert r.status_code == 200
        [retry] = logs.events("retry")
        assert retry["request_id"] == "retry-1" and retry["record_id"] == "doc"
        assert retry["op"] == "get" and retry["attempt"] == 1 and retry["db_code"] == "SQLITE_BUSY"
        assert retry["logger"] == "revstore.retry"
        text = c.get("/metrics").text
        assert 'revstore_retries_total{db_code="SQLITE_BUSY",op="get"} 1.0' in text
    finally:
        store.close()


def test_metrics(sqlite_client: TestClient, ns: str, key: str) -> None:
    c = sqlite_client
    c.put(f"/v1/records/doc?namespace={ns}", json={"content": 1})
    c.put(f"/v1/records/doc?namespace={ns}", json={"content": 1, "expected_revision": 5})
    c.put(f"/v1/records/doc?namespace={ns}", json={"content": 2}, headers={"If-Match": '"9"'})
    c.get("/nowhere")
    for _ in range(2):
        c.put(
            f"/v1/records/k?namespace={ns}", json={"content": 1}, headers={"Idempotency-Key": key}
        )
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in (
        'revstore_http_requests_total{method="PUT",route="/v1/records/{id}",status="201"} 3.0',
        'revstore_http_requests_total{method="PUT",route="/v1/records/{id}",status="409"} 1.0',
        'revstore_http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0',
        'revstore_conflicts_total{kind="version-conflict",route="/v1/records/{id}"} 1.0',
        'revstore_conflicts_total{kind="precondition-failed",route="/v1/records/{id}"} 1.0',
        'revstore_idempotency_requests_total{outcome="new"} 1.0',
        'revstore_idempotency_requests_total{outcome="replayed"} 1.0',
    ):
        assert line in text, line
    assert 'revstore_http_request_duration_seconds_bucket{le="0.005",method="PUT",' in text
    assert "revstore_http_requests_in_progress" in text


def test_openapi_documents_every_route_and_error(sqlite_client: TestClient) -> None:
    spec = sqlite_client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        "/v1/records/{id}": {"get", "put", "patch", "delete"},
        "/v1/records": {"get"},
        "/v1/records/{id}/versions": {"get"},
        "/v1/records/{id}/versions/{n}": {"get"},
        "/v1/records/{id}/diff": {"get"},
        "/v1/records/{id}/restore": {"post"},
        "/v1/streams/{id}/items": {"get", "post"},
        "/v1/streams/{id}": {"get"},
        "/v1/streams": {"get"},
        "/v1/retention": {"get", "put"},
        "/v1/retention/apply": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
    for path, item in paths.items():
        for method, op in item.items():
            responses = op["responses"]
            errors = {"404", "405", "422", "500", "503"} if path.startswith("/v1/") else set()
            if method in ("put", "patch", "delete", "post"):
                # Retention policies are replaced whole: nothing to conflict with.
                errors |= (
                    {"413", "415"} if path.startswith("/v1/retention") else {"409", "413", "415"}
                )
            if path.startswith("/v1/records") and method != "get":
                errors |= {"412", "428"}
            if path.startswith("/v1/retention") and method != "get":
                errors |= {"403"}
            if path in ("/v1/records/{id}/versions/{n}", "/v1/records/{id}/diff"):
                errors |= {"410"}
            assert errors <= set(responses), (path, method, set(responses))
            for status in errors:
                content = responses[status]["content"]
                assert list(content) == [PROBLEM], (path, method, status)
                assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
    put = paths["/v1/records/{id}"]["put"]
    assert {"200", "201"} <= set(put["responses"])
    headers = {p["name"] for p in put["parameters"] if p["in"] == "header"}
    assert headers == {"if-match", "if-none-match", "idempotency-key"}
    patch = paths["/v1/records/{id}"]["patch"]
    assert list(patch["requestBody"]["content"]) == ["application/merge-patch+json"]
    assert "content" not in paths["/v1/records/{id}"]["get"]["responses"]["304"]
    assert sqlite_client.get("/docs").status_code == 200
    assert "swagger" in sqlite_client.get("/docs").text.lower()


def test_app_from_url_owns_its_store(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'own.db'}"
    with TestClient(create_app(url, Settings())) as c:
        assert c.get("/readyz").status_code == 200
        assert c.put("/v1/records/a", json={"content": 1}).status_code == 201
    store = Store(url)
    try:
        assert store.get("a").content == 1
    finally:
        store.close()


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(url="sqlite:///x.db", require_if_match=True, max_body_bytes=5, pool_size=3)
    for k, v in s.to_env().items():
        monkeypatch.setenv(k, v)
    back = Settings.from_env()
    assert back == s
    with pytest.raises(ValueError):
        Settings(max_body_bytes=0)
    cfg = log_config("warning")
    assert cfg["handlers"]["stderr"]["level"] == "WARNING"


def test_every_route_is_a_coroutine() -> None:
    """Routes await the AsyncStore on the event loop: FastAPI would run a plain ``def``
    route in its thread pool (a thread hop per request)."""
    from fastapi.routing import APIRoute

    from revstore.service.routes import router

    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) == 19
    for route in routes:
        assert inspect.iscoroutinefunction(route.endpoint), route.path


def test_an_async_store_passed_in_is_served_and_left_open(sqlite_url: str, ns: str) -> None:
    class Counted(AsyncStore):
        closed = 0

        async def close(self) -> None:
            self.closed += 1
            await super().close()

    async def run() -> None:
        store = Counted(sqlite_url)
        app = create_app(store, Settings())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                r = await c.put(f"/v1/records/doc?namespace={ns}", json={"content": 1})
                assert r.status_code == 201
            svc = app.state.services
            assert svc.store is store and not svc.owns_store
        # Still the caller's after shutdown: open, and usable on its loop.
        assert store.closed == 0
        assert (await store.get("doc", namespace=ns)).content == 1
        await store.close()

    asyncio.run(run())


def test_a_request_on_another_event_loop_is_refused_clearly(
    sqlite_client: TestClient, logs: Lines, ns: str
) -> None:
    """The app's AsyncStore belongs to the loop that opened it (the client's, here); a
    request served on another loop gets a 500 whose log line says why."""
    assert sqlite_client.put(f"/v1/records/doc?namespace={ns}", json={"content": 1}).is_success
    app = sqlite_client.app

    async def elsewhere() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get(f"/v1/records/doc?namespace={ns}")).status_code

    assert asyncio.run(elsewhere()) == 500
    [line] = logs.events("error")
    assert "serves another event loop" in line["stack"]
    assert sqlite_client.get(f"/v1/records/doc?namespace={ns}").status_code == 200


def test_the_app_closes_the_store_it_opened(sqlite_url: str) -> None:
    app = create_app(sqlite_url, Settings())
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        opened = app.state.services.store
        assert app.state.services.owns_store
    with pytest.raises(RuntimeError, match="start it first"):
        app.state.services.store  # noqa: B018
    # A new start (a restarted lifespan) opens another one.
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        assert app.state.services.store is not opened
