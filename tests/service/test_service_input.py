"""Bad input over HTTP is a 4xx problem, never a 500: entity tags, numbers, nesting,
encodings, duplicate members and the text rule (on every backend where the database
matters)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from service_helpers import TestClient, assert_problem

from revstore.content import MAX_DEPTH, MAX_INT_DIGITS
from revstore.service.conditions import ETag

JSON = {"Content-Type": "application/json"}
MERGE = {"Content-Type": "application/merge-patch+json"}


def _put(client: TestClient, path: str, body: bytes, **headers: str) -> object:
    return client.put(path, content=body, headers={**JSON, **headers})


# ---------------------------------------------------------------- entity tags


def _raw(client: TestClient, method: str, path: str, tag: bytes, header: bytes) -> Any:
    """Send a header's bytes as they are (the TestClient re-encodes them as UTF-8; a
    real client may send any byte, which the server decodes as latin-1)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            headers = [(header, tag)]
            content = None
            if method in ("PUT", "PATCH"):
                ctype = b"application/json" if method == "PUT" else MERGE["Content-Type"].encode()
                headers.append((b"content-type", ctype))
                content = b'{"content": 2}' if method == "PUT" else b'{"a": 1}'
            return await http.request(method, path, headers=headers, content=content)

    # On the started client's loop: the app's AsyncStore serves that loop only.
    assert client.portal is not None
    return client.portal.call(send)


@pytest.mark.parametrize(
    "tag",
    [
        b'"\xb2"',  # superscript two, as latin-1: str.isdigit() is true, int() refuses it
        b'"\xb9\xb3"',
        b'"\xbc"',  # vulgar fraction: isnumeric
        '"\u0663"'.encode(),  # Arabic-Indic three, as UTF-8 bytes
        b'"01"',  # another entity tag than "1"
        b'"+1"',
        b'"1_0"',
        b'"99999999999999999999999"',
        b'W/"1"',
    ],
)
def test_if_match_tags_that_are_not_our_etags_never_match(
    sqlite_client: TestClient, tag: bytes
) -> None:
    ns = f"etag-{tag.hex()}"
    path = f"/v1/records/r?namespace={ns}"
    assert _put(sqlite_client, path, b'{"content": 1}').status_code == 201
    for method in ("PUT", "PATCH", "DELETE"):
        body = assert_problem(
            _raw(sqlite_client, method, path, tag, b"if-match"), 412, "precondition-failed"
        )
        assert body["current_revision"] == 1
    # On a missing record too; on GET, If-None-Match simply does not match.
    missing = f"/v1/records/missing?namespace={ns}"
    assert_problem(
        _raw(sqlite_client, "PUT", missing, tag, b"if-match"), 412, "precondition-failed"
    )
    resp = _raw(sqlite_client, "GET", path, tag, b"if-none-match")
    assert resp.status_code == (304 if tag == b'W/"1"' else 200)


def test_non_ascii_digits_are_not_revisions() -> None:
    for opaque in ("\u0663", "\xb2", "\uff13", "\U0001d7d1", "01", "0", "-1", "9" * 19):
        assert ETag(False, opaque).revision() is None
    assert ETag(False, "1").revision() == 1
    assert ETag(False, str(2**63 - 2)[:18]).revision() == int(str(2**63 - 2)[:18])


def test_if_match_zero_never_creates(client: TestClient, ns: str) -> None:
    """RFC 9110 §13.1.1: If-Match is false when there is no current representation.
    Create-only is If-None-Match: *."""
    path = f"/v1/records/new?namespace={ns}"
    for tag in ('"0"', '"0", "1"', "*"):
        resp = client.put(path, json={"content": 1}, headers={"If-Match": tag})
        body = assert_problem(resp, 412, "precondition-failed")
        assert body["current_revision"] == 0
    assert_problem(client.get(path), 404, "not-found")
    resp = client.put(path, json={"content": 1}, headers={"If-None-Match": "*"})
    assert resp.status_code == 201
    assert_problem(
        client.put(path, json={"content": 2}, headers={"If-Match": '"0"'}),
        412,
        "precondition-failed",
    )
    # After a delete there is no representation either.
    assert client.delete(path, headers={"If-Match": '"1"'}).status_code == 204
    assert_problem(
        client.put(path, json={"content": 3}, headers={"If-Match": '"0"'}),
        412,
        "precondition-failed",
    )


# ---------------------------------------------------------------- numbers


def test_integers_over_the_digit_limit_are_422(sqlite_client: TestClient) -> None:
    too_long = b"9" * (MAX_INT_DIGITS + 1)
    for body in (
        b'{"content": ' + too_long + b"}",
        b'{"content": [-' + too_long + b"]}",
        b'{"content": 1, "expected_revision": ' + too_long + b"}",
    ):
        body_json = assert_problem(_put(sqlite_client, "/v1/records/n", body), 422, "invalid-input")
        assert str(MAX_INT_DIGITS) in body_json["detail"]
    resp = sqlite_client.post(
        "/v1/streams/n/items",
        content=b'{"items": [1], "expected_sequence": ' + too_long + b"}",
        headers=JSON,
    )
    assert_problem(resp, 422, "invalid-input")
    resp = sqlite_client.patch("/v1/records/n", content=b'{"a": ' + too_long + b"}", headers=MERGE)
    assert_problem(resp, 422, "invalid-input")
    for path in (
        "/v1/records?limit=",
        "/v1/records/n/versions?after=",
        "/v1/records/n/versions/",
        "/v1/streams/n/items?after=",
        "/v1/records/n/diff?from=1&to=",
    ):
        assert_problem(sqlite_client.get(path + "9" * 5000), 422, "invalid-input")
    # At the limit: stored and read back exactly.
    biggest = b"9" * MAX_INT_DIGITS
    assert _put(sqlite_client, "/v1/records/n", b'{"content": ' + biggest + b"}").status_code == 201
    assert sqlite_client.get("/v1/records/n").content.count(biggest) == 1


@pytest.mark.parametrize(
    "number", [b"1e400", b"-1e400", b"1e99999999999999999999", b"1" + b"0" * 400 + b".0"]
)
def test_floats_out_of_range_are_422(sqlite_client: TestClient, number: bytes) -> None:
    body = assert_problem(
        _put(sqlite_client, "/v1/records/f", b'{"content": {"x": ' + number + b"}}"),
        422,
        "invalid-input",
    )
    assert "NaN/Infinity" in body["detail"]


def test_negative_zero_and_tiny_floats_round_trip(sqlite_client: TestClient) -> None:
    resp = _put(sqlite_client, "/v1/records/z", b'{"content": [-0.0, 1e-400, 5e-324, 1e308]}')
    assert resp.status_code == 201
    assert sqlite_client.get("/v1/records/z").json()["content"] == [-0.0, 0.0, 5e-324, 1e308]


# ---------------------------------------------------------------- structure and encoding


def test_nesting_limit_over_http_is_exact(sqlite_client: TestClient) -> None:
    def nested(n: int) -> bytes:
        return b"[" * n + b"]" * n

    ok = _put(sqlite_client, "/v1/records/d", b'{"content": ' + nested(MAX_DEPTH) + b"}")
    assert ok.status_code == 201
    for depth in (MAX_DEPTH + 1, 100_000):
        body = b'{"content": ' + nested(depth) + b"}"
        assert_problem(_put(sqlite_client, "/v1/records/d", body), 422, "invalid-input")
        resp = sqlite_client.post(
            "/v1/streams/d/items", content=b'{"items": [' + nested(depth) + b"]}", headers=JSON
        )
        assert_problem(resp, 422, "invalid-input")
    resp = sqlite_client.patch(
        "/v1/records/d", content=b'{"a": ' + nested(MAX_DEPTH) + b"}", headers=MERGE
    )
    assert_problem(resp, 422, "invalid-input")


@pytest.mark.parametrize(
    "body",
    [
        '{"content": "é"}'.encode("latin-1"),
        '{"content": "é"}'.encode("utf-16"),
        '{"content": "é"}'.encode("utf-32"),
        b'{"content": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
        b'{"content": "\xc0\xaf"}',  # overlong
        b"\xef\xbb\xbf" + b'{"content": 1}',  # UTF-8 BOM
    ],
)
def test_bodies_that_are_not_utf8_json_are_422(sqlite_client: TestClient, body: bytes) -> None:
    assert_problem(_put(sqlite_client, "/v1/records/e", body), 422, "invalid-input")
    assert_problem(sqlite_client.get("/v1/records/e"), 404, "not-found")


def test_duplicate_members_are_422(sqlite_client: TestClient) -> None:
    for body in (
        b'{"content": 1, "content": 2}',
        b'{"content": {"a": 1, "a": 1}}',
        b'{"content": [{"x": {"k": 1, "k": 2}}]}',
    ):
        detail = assert_problem(_put(sqlite_client, "/v1/records/u", body), 422, "invalid-input")
        assert "twice" in detail["detail"]
    resp = sqlite_client.post(
        "/v1/streams/u/items", content=b'{"items": [{"a": 1, "a": 2}]}', headers=JSON
    )
    assert_problem(resp, 422, "invalid-input")


@pytest.mark.parametrize(
    "url",
    [
        "/v1/records/%FF",
        "/v1/records/a%C0%AF",
        "/v1/records/a%ED%A0%80",
        "/v1/records/a?namespace=%FF",
        "/v1/records?prefix=%FE",
        "/v1/streams/%FF/items",
    ],
)
def test_urls_that_are_not_utf8_are_422(sqlite_client: TestClient, url: str) -> None:
    assert_problem(sqlite_client.get(url), 422, "invalid-input")


# ---------------------------------------------------------------- the text rule


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("put", "/v1/records/r?namespace={ns}", b'{"content": 1, "author": "a\\u0000b"}'),
        ("put", "/v1/records/r?namespace={ns}", b'{"content": 1, "summary": "\\u0000"}'),
        ("put", "/v1/records/r?namespace={ns}", b'{"content": 1, "author": "\\ufffe"}'),
        ("put", "/v1/records/r?namespace={ns}", b'{"content": 1, "author": "\\ud800"}'),
        ("put", "/v1/records/r%00?namespace={ns}", b'{"content": 1}'),
        ("put", "/v1/records/r%EF%BF%BF?namespace={ns}", b'{"content": 1}'),
        ("put", "/v1/records/r?namespace={ns}%00", b'{"content": 1}'),
        ("patch", "/v1/records/r?namespace={ns}&author=%00", b'{"a": 1}'),
        ("patch", "/v1/records/r?namespace={ns}&summary=%EF%BF%BE", b'{"a": 1}'),
        ("post", "/v1/records/r/restore?namespace={ns}", b'{"version": 1, "author": "\\u0000"}'),
        ("post", "/v1/streams/s/items?namespace={ns}", b'{"items": [1], "item_ids": ["\\u0000"]}'),
        ("post", "/v1/streams/s%00/items?namespace={ns}", b'{"items": [1]}'),
        ("get", "/v1/records?namespace={ns}&prefix=%00", b""),
        ("get", "/v1/records?namespace={ns}&after=a%00", b""),
    ],
)
def test_text_fields_refuse_nul_and_noncharacters_with_422(
    client: TestClient, ns: str, method: str, url: str, body: bytes
) -> None:
    assert client.put(f"/v1/records/r?namespace={ns}", json={"content": 0}).status_code == 201
    headers = MERGE if method == "patch" else JSON
    resp = client.request(method.upper(), url.format(ns=ns), content=body or None, headers=headers)
    assert_problem(resp, 422, "invalid-input")
    assert client.get(f"/v1/records/r?namespace={ns}").json()["revision"] == 1


def test_content_with_nul_round_trips_over_http(client: TestClient, ns: str) -> None:
    body = b'{"content": {"a\\u0000": ["\\u0000", "\\u001f"]}}'
    resp = client.put(f"/v1/records/nul?namespace={ns}", content=body, headers=JSON)
    assert resp.status_code == 201
    expected = {"a\x00": ["\x00", "\x1f"]}
    assert resp.json()["content"] == expected
    assert client.get(f"/v1/records/nul?namespace={ns}").json()["content"] == expected
