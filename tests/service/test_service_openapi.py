"""The OpenAPI document as client generators and people read it: readable and stable
operation ids, tags, summaries, an example for every request body, problem+json for
every error, the bearer scheme declared; /docs and /redoc served without internet."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from service_helpers import PROBLEM, AppFactory, TestClient

from revstore import Store
from revstore.service import Settings
from revstore.service import models as m

# Clients are generated from these names: changing one breaks every caller's code.
OPERATIONS = {
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
    ("put", "/v1/records/{id}"): "putRecord",
    ("get", "/v1/records/{id}"): "getRecord",
    ("patch", "/v1/records/{id}"): "patchRecord",
    ("delete", "/v1/records/{id}"): "deleteRecord",
    ("get", "/v1/records"): "listRecords",
    ("get", "/v1/records/{id}/versions"): "getHistory",
    ("get", "/v1/records/{id}/versions/{n}"): "getVersion",
    ("get", "/v1/records/{id}/diff"): "diffVersions",
    ("post", "/v1/records/{id}/restore"): "restoreVersion",
    ("post", "/v1/streams/{id}/items"): "appendItems",
    ("get", "/v1/streams/{id}/items"): "readItems",
    ("get", "/v1/streams/{id}"): "getStream",
}
CAMEL = re.compile(r"[a-z]+(?:[A-Z][a-z0-9]*)*")
METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


@pytest.fixture
def spec(sqlite_client: TestClient) -> dict[str, Any]:
    resp = sqlite_client.get("/openapi.json")
    assert resp.status_code == 200
    out: dict[str, Any] = resp.json()
    return out


def test_operation_ids_are_stable_unique_camel_case_names(
    spec: dict[str, Any], sqlite_client: TestClient
) -> None:
    ops = operations(spec)
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids)), ids
    for key, op in ops.items():
        assert CAMEL.fullmatch(op["operationId"]), (key, op["operationId"])
    # Stable: the documented names, whatever the Python functions are called.
    assert {k: ops[k]["operationId"] for k in OPERATIONS if k in ops} == OPERATIONS


def test_a_route_without_an_explicit_id_gets_its_name_in_camel_case() -> None:
    from fastapi.routing import APIRoute

    from revstore.service.app import operation_id

    def append_many_items() -> None: ...

    assert operation_id(APIRoute("/x", append_many_items)) == "appendManyItems"


def test_every_operation_has_one_declared_tag_a_summary_and_a_description(
    spec: dict[str, Any],
) -> None:
    declared = {t["name"]: t for t in spec["tags"]}
    assert {"records", "streams", "operations"} <= set(declared)
    assert all(t.get("description") for t in declared.values())
    for key, op in operations(spec).items():
        assert len(op.get("tags", [])) == 1 and op["tags"][0] in declared, key
        assert op.get("summary"), key
        assert op.get("description"), key
    by_tag = {key: op["tags"][0] for key, op in operations(spec).items()}
    assert by_tag[("put", "/v1/records/{id}")] == "records"
    assert by_tag[("post", "/v1/streams/{id}/items")] == "streams"
    assert by_tag[("get", "/metrics")] == "operations"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    target: dict[str, Any] = spec
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def test_every_request_body_has_a_valid_example(spec: dict[str, Any]) -> None:
    bodies = {
        ("put", "/v1/records/{id}"): m.PutRecord,
        ("post", "/v1/records/{id}/restore"): m.RestoreRecord,
        ("post", "/v1/streams/{id}/items"): m.AppendItems,
        ("patch", "/v1/records/{id}"): None,
    }
    with_body = {k for k, op in operations(spec).items() if "requestBody" in op}
    assert set(bodies) <= with_body
    for key in with_body:
        (media,) = operations(spec)[key]["requestBody"]["content"].values()
        schema = _resolve(spec, media["schema"])
        examples = schema.get("examples") or [
            e["value"] for e in media.get("examples", {}).values()
        ]
        assert examples, key
        model = bodies.get(key)
        for example in examples:
            if model is not None:
                model.model_validate(example)  # an example a client can send as it is
            else:
                assert isinstance(example, dict) and example, key


def test_every_error_response_is_a_problem(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    for key, op in operations(spec).items():
        responses = op["responses"]
        assert "500" in responses, key
        for status, response in responses.items():
            assert response.get("description"), (key, status)
            if int(status) >= 400:
                assert response["content"] == {
                    PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (key, status)
            elif "content" in response:
                assert PROBLEM not in response["content"], (key, status)
    writes = [k for k in operations(spec) if k[0] != "get"]
    for key in writes:
        responses = operations(spec)[key]["responses"]
        # Retention policies are replaced whole: nothing to conflict with.
        conflicts = set() if key[1].startswith("/v1/retention") else {"409"}
        assert {"413", "422", "503"} | conflicts <= set(responses), key
        assert "Retry-After" in responses["503"]["headers"], key
    get_record = operations(spec)[("get", "/v1/records/{id}")]["responses"]
    assert "ETag" in get_record["200"]["headers"]


def test_bearer_scheme_is_declared_and_required_only_when_auth_is_on(
    spec: dict[str, Any], sqlite_store: Store, make_client: AppFactory
) -> None:
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    # Auth off (the default of create_app, and of serve on loopback): no operation
    # claims a requirement the service does not check.
    assert "security" not in spec
    assert all("security" not in op for op in operations(spec).values())
    assert all("401" not in op["responses"] for op in operations(spec).values())

    on = make_client(sqlite_store, Settings(auth=True)).get("/openapi.json").json()
    assert on["components"]["securitySchemes"]["bearerAuth"] == scheme
    ops = operations(on)
    assert {k for k, op in ops.items() if op.get("security")} == {
        k for k in ops if k[1].startswith("/v1/")
    }
    for (method, path), op in ops.items():
        if not path.startswith("/v1/"):
            assert "security" not in op and "401" not in op["responses"], path
            continue
        assert op["security"] == [{"bearerAuth": []}], (method, path)
        for status in ("401", "403"):
            content = op["responses"][status]["content"]
            assert content == {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]


class _Urls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.urls.append(value)


ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_same_origin_assets(sqlite_client: TestClient, page: str) -> None:
    resp = sqlite_client.get(page)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    html = resp.text
    # No CDN, no web fonts: an offline host renders the page (no "://" at all).
    assert "://" not in html, html
    parser = _Urls()
    parser.feed(html)
    assets = [u for u in parser.urls if not u.endswith("/openapi.json")]
    assert any(u.endswith(".js") for u in assets), parser.urls
    if page == "/docs":
        assert any(u.endswith(".css") for u in assets), parser.urls
        assert "url: '/openapi.json'" in html
        assert '"validatorUrl": null' in html  # Swagger UI would call out to validate
    else:
        assert "/openapi.json" in parser.urls
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        got = sqlite_client.get(url)
        assert got.status_code == 200, url
        suffix = url[url.rfind(".") :]
        assert got.headers["content-type"].startswith(ASSET_TYPES[suffix]), url
        assert len(got.content) > 1000, url
    assert sqlite_client.get("/docs/oauth2-redirect").status_code == 200
    missing = sqlite_client.get("/docs/assets/missing.js")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
