"""The fast lane answers exactly as FastAPI's path does.

Two apps, one with the lane and one without (``Settings(fast_lane=False)``), each on its
own SQLite file, get the same sequences of raw ASGI requests (Hypothesis: every route
shape, methods, odd paths and percent-escapes, repeated and invalid query values,
preconditions, idempotency keys, content types and bodies). Every response must be the
same: status, headers and body, once the request id and the timestamps (which differ
between two writes by nature) are set aside.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from revstore.service import Settings, create_app
from revstore.service.fastlane import FastLane

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

Raw = tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes]
Reply = tuple[int, list[tuple[str, str]], Any]

IDS = ["a", "b", "%FF", "%2F", "caf%C3%A9", "x" * 255, "x" * 256, "%20", "a%00b", "~!$&'()*+,;="]
TEMPLATES = [
    "/v1/records/{id}",
    "/v1/records/{id}/",
    "/v1/records/{id}/versions",
    "/v1/records/{id}/versions/{n}",
    "/v1/records/{id}/diff",
    "/v1/records/{id}/restore",
    "/v1/records",
    "/v1/streams/{id}/items",
    "/v1/streams/{id}",
    "/v1/streams",
    "/v1/retention",
    "/v1/retention/apply",
    "/v1//{id}",
    "/v1/{id}",
    "/healthz",
]
NUMBERS = ["1", "2", "0", "-1", "abc", "99999999999999999999", "1.5", ""]
QUERY_KEYS = ["namespace", "after", "limit", "prefix", "create_version", "author", "from", "x"]
QUERY_VALUES = ["", "default", "ns2", "1", "0", "-1", "abc", "true", "n" * 256, "%FF", "%C3%A9"]
TAGS = [None, '"1"', '"2"', '"0"', "*", "garbage", 'W/"1"', '"1", "2"', '"' + "9" * 30 + '"']
KEYS = [None, "k1", "k2", "", "k" * 256, "k\x7f"]
TYPES = [
    None,
    "application/json",
    "application/json",
    "application/json",
    "application/merge-patch+json",
    "text/plain",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/vnd.x+json",
]
BODIES = [
    b"",
    b"",
    b" ",
    b"null",
    b"[1]",
    b'{"content": 1}',
    b'{"content": {"a": [1, 2], "b": null}}',
    b'{"content": 1, "x": 2}',
    b'{"content": 2, "expected_revision": 1}',
    b'{"content": 3, "expected_revision": 0}',
    b'{"content": 1, "create_version": "yes"}',
    b'{"content": 1, "create_version": false}',
    b'{"content": 1, "author": "ada", "summary": "s"}',
    b'{"content": 1, "author": ""}',
    b'{"items": [{"content": 1}]}',
    b'{"items": [{"content": 1, "id": "i1"}], "expected_sequence": 0}',
    b'{"items": []}',
    b'{"version": 1}',
    b'{"keep_versions": 3}',
    b'{"a": 1, "a": 2}',
    b"not json",
    b'{"content": "\\ud800"}',
    b'{"content": 1e999}',
    b'\xff\xfe{"content": 1}',
]


# Requests each route accepts (method, path, content type, bodies), so that writes and
# reads succeed and change state often, not only the refusals.
VALID: list[tuple[str, str, str | None, list[bytes]]] = [
    (
        "PUT",
        "/v1/records/{id}",
        "application/json",
        [
            b'{"content": {"n": 1}}',
            b'{"content": [1, "two"], "author": "ada"}',
            b'{"content": {"n": 1}, "create_version": false}',
            b'{"content": 5, "expected_revision": 1}',
            b'{"content": 6, "expected_revision": 0}',
        ],
    ),
    (
        "PATCH",
        "/v1/records/{id}",
        "application/merge-patch+json",
        [
            b'{"n": 2}',
            b'{"n": null, "m": [1]}',
        ],
    ),
    ("GET", "/v1/records/{id}", None, [b""]),
    ("DELETE", "/v1/records/{id}", None, [b""]),
    ("GET", "/v1/records/{id}/versions", None, [b""]),
    ("GET", "/v1/records/{id}/versions/{n}", None, [b""]),
    ("POST", "/v1/records/{id}/restore", "application/json", [b'{"version": 1}']),
    ("GET", "/v1/records", None, [b""]),
    (
        "POST",
        "/v1/streams/{id}/items",
        "application/json",
        [
            b'{"items": [{"t": 1}]}',
            b'{"items": [1, 2], "item_ids": ["i1", "i2"]}',
            b'{"items": [3], "expected_sequence": 2}',
        ],
    ),
    ("GET", "/v1/streams/{id}/items", None, [b""]),
    ("GET", "/v1/streams/{id}", None, [b""]),
    ("GET", "/v1/streams", None, [b""]),
    ("PUT", "/v1/retention", "application/json", [b'{"keep_last": 3}']),
    ("GET", "/v1/retention", None, [b""]),
    ("POST", "/v1/retention/apply", None, [b""]),
]


@st.composite
def valid_requests(draw: st.DrawFn) -> Raw:
    method, template, ctype, bodies = draw(st.sampled_from(VALID))
    path = template.replace("{id}", draw(st.sampled_from(["a", "b", "caf%C3%A9"])))
    path = path.replace("{n}", draw(st.sampled_from(["1", "2"])))
    namespace = draw(st.sampled_from([None, "default", "ns2"]))
    query = b"" if namespace is None else f"namespace={namespace}".encode()
    headers: list[tuple[bytes, bytes]] = []
    if ctype is not None:
        headers.append((b"content-type", ctype.encode()))
    for name, choices in (
        (b"if-match", [None, None, '"1"', '"2"', "*"]),
        (b"if-none-match", [None, None, None, "*", '"1"']),
        (b"idempotency-key", [None, None, *(f"k{n}" for n in range(40))]),
    ):
        value = draw(st.sampled_from(choices))
        if value is not None:
            headers.append((name, value.encode()))
    return method, path.encode(), query, headers, draw(st.sampled_from(bodies))


@st.composite
def raw_requests(draw: st.DrawFn) -> Raw:
    method = draw(st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "POST", "HEAD", "OPTIONS"]))
    template = draw(st.sampled_from(TEMPLATES))
    ident = draw(st.sampled_from(IDS) | st.text("abcXYZ09-_.%", min_size=1, max_size=6))
    path = template.replace("{id}", ident).replace("{n}", draw(st.sampled_from(NUMBERS)))
    pairs = draw(
        st.lists(st.tuples(st.sampled_from(QUERY_KEYS), st.sampled_from(QUERY_VALUES)), max_size=3)
    )
    query = "&".join(f"{k}={v}" for k, v in pairs).encode()
    headers: list[tuple[bytes, bytes]] = []
    for name, choices in (
        (b"if-match", TAGS),
        (b"if-none-match", TAGS),
        (b"idempotency-key", KEYS),
        (b"content-type", TYPES),
    ):
        value = draw(st.sampled_from(choices))
        if value is not None:
            headers.append((name, value.encode("latin-1")))
    if draw(st.booleans()):  # a repeated header: FastAPI reads the first
        headers.append((b"if-match", b'"1"'))
    body = draw(st.sampled_from(BODIES)) if method in ("PUT", "PATCH", "POST") else b""
    return method, path.encode(), query, headers, body


async def call(app: Any, raw: Raw) -> Reply:
    """One request straight into the app, as uvicorn would hand it over."""
    method, raw_path, query, headers, body = raw
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        # A server would block here until the client leaves: an app that waits for
        # the body twice (one it already consumed) would hang.
        raise AssertionError("the app asked for the body again after it was given")

    status = 0
    out_headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers.extend((k.decode(), v.decode("latin-1")) for k, v in message["headers"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, out_headers, b"".join(chunks)


_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")


def normalized(reply: Reply) -> Reply:
    """Without what differs between two equal requests to two apps: the request id,
    the timestamps of the writes (and the body length they change)."""
    status, headers, body = reply
    kept = sorted((k, v) for k, v in headers if k not in ("x-request-id", "content-length"))
    try:
        parsed = json.loads(body)
    except ValueError:
        return status, kept, body

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "<id>" if k == "request_id" else scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str) and _STAMP.match(value):
            return "<time>"
        return value

    return status, kept, scrub(parsed)


@pytest.fixture(scope="module")
def apps(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, Any, TestClient, Any]]:
    root: Path = tmp_path_factory.mktemp("fastlane")
    fast = create_app(f"sqlite:///{root / 'fast.db'}", Settings(retention_interval=0))
    slow = create_app(
        f"sqlite:///{root / 'slow.db'}", Settings(retention_interval=0, fast_lane=False)
    )
    # Each client runs its app's lifespan and requests on a loop of its own (its
    # portal): an app's AsyncStore belongs to one loop, as under one uvicorn worker.
    with TestClient(fast) as fast_client, TestClient(slow) as slow_client:
        yield fast_client, fast, slow_client, slow


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(
        st.one_of(valid_requests(), valid_requests(), raw_requests()), min_size=1, max_size=8
    )
)
def test_same_answers_with_and_without_the_lane(apps: Any, batch: list[Raw]) -> None:
    fast_client, fast, slow_client, slow = apps
    for raw in batch:
        got = fast_client.portal.call(call, fast, raw)
        want = slow_client.portal.call(call, slow, raw)
        assert normalized(got) == normalized(want), raw
        assert got[0] != 500, (raw, got)
        event(f"{raw[0]} {got[0]}")


def test_the_lane_serves_the_hot_routes(apps: Any) -> None:
    """The lane is not silently declining: it picks the route Starlette would for
    every served route shape, and leaves the rest to FastAPI."""
    _, fast, _, _ = apps
    lane = fast.middleware_stack
    while lane is not None and not isinstance(lane, FastLane):
        lane = getattr(lane, "app", None)
    assert isinstance(lane, FastLane)

    def picked(method: str, path: str) -> str | None:
        found = lane.match({"type": "http", "method": method, "path": path})
        return None if found is None else found[0].path_format

    assert picked("GET", "/v1/records/a") == "/v1/records/{id}"
    assert picked("PUT", "/v1/records/a") == "/v1/records/{id}"
    assert picked("DELETE", "/v1/records/a") == "/v1/records/{id}"
    assert picked("POST", "/v1/streams/s/items") == "/v1/streams/{id}/items"
    assert picked("GET", "/v1/streams/s/items") == "/v1/streams/{id}/items"
    assert picked("GET", "/v1/records/a/versions/3") == "/v1/records/{id}/versions/{n}"
    assert picked("GET", "/v1/records") == "/v1/records"
    # FastAPI answers these: 405, HEAD, 404, a redirect, docs.
    assert picked("POST", "/v1/records/a") is None
    assert picked("HEAD", "/v1/records/a") is None
    assert picked("GET", "/v1/nothing/here/at/all") is None
    assert picked("GET", "/v1/records/a/") is None
    assert picked("GET", "/docs") is None
