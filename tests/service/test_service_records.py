"""Record routes over HTTP: statuses, headers and problem bodies. Write paths run on
every backend; pure HTTP-layer behaviour on SQLite."""

from __future__ import annotations

from typing import Any

from service_helpers import AppFactory, TestClient, assert_problem

from revstore import Store


def url(id: str, ns: str, suffix: str = "") -> str:
    return f"/v1/records/{id}{suffix}?namespace={ns}"


# ---------------------------------------------------------------- PUT (every backend)


def test_put_creates_then_updates_then_unchanged(client: TestClient, ns: str) -> None:
    r = client.put(url("doc", ns), json={"content": {"text": "hi"}, "author": "ann"})
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == '"1"'
    assert r.headers["location"] == f"/v1/records/doc?namespace={ns}"
    body = r.json()
    assert body["revision"] == 1 and body["version"] == 1 and body["unchanged"] is False
    assert body["content"] == {"text": "hi"} and body["namespace"] == ns

    r = client.put(url("doc", ns), json={"content": {"text": "ho"}, "summary": "edit"})
    assert r.status_code == 200 and r.headers["etag"] == '"2"'
    assert r.json()["version"] == 2 and r.json()["unchanged"] is False

    # Same content in another key order: a no-op that says so.
    r = client.put(url("doc", ns), json={"content": {"text": "ho"}})
    assert r.status_code == 200 and r.json()["unchanged"] is True
    assert r.headers["etag"] == '"2"'

    # Autosave: the revision moves, the version does not.
    r = client.put(url("doc", ns), json={"content": {"text": "h"}, "create_version": False})
    assert r.status_code == 200 and r.json()["revision"] == 3 and r.json()["version"] == 2

    versions = client.get(url("doc", ns, "/versions")).json()["versions"]
    assert [(v["version"], v["author"], v["summary"]) for v in versions] == [
        (1, "ann", None),
        (2, None, "edit"),
    ]


def test_if_match(client: TestClient, ns: str) -> None:
    client.put(url("doc", ns), json={"content": 1})
    r = client.put(url("doc", ns), json={"content": 2}, headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.headers["etag"] == '"2"'

    r = client.put(url("doc", ns), json={"content": 3}, headers={"If-Match": '"1"'})
    body = assert_problem(r, 412, "precondition-failed")
    assert body["current_revision"] == 2 and body["current_version"] == 2
    assert r.headers["etag"] == '"2"'
    assert client.get(url("doc", ns)).json()["content"] == 2


def test_if_none_match_star_creates_only(client: TestClient, ns: str) -> None:
    r = client.put(url("new", ns), json={"content": {}}, headers={"If-None-Match": "*"})
    assert r.status_code == 201
    r = client.put(url("new", ns), json={"content": {"a": 1}}, headers={"If-None-Match": "*"})
    body = assert_problem(r, 412, "precondition-failed")
    assert body["current_revision"] == 1


def test_expected_revision_in_body_is_409_with_current_record(client: TestClient, ns: str) -> None:
    client.put(url("doc", ns), json={"content": {"v": 1}})
    r = client.put(url("doc", ns), json={"content": {"v": 2}, "expected_revision": 5})
    body = assert_problem(r, 409, "version-conflict")
    assert body["current_revision"] == 1 and body["current_version"] == 1
    assert body["current"]["content"] == {"v": 1} and body["current"]["revision"] == 1
    r = client.put(url("doc", ns), json={"content": {"v": 2}, "expected_revision": 1})
    assert r.status_code == 200 and r.json()["revision"] == 2
    # expected_revision 0: create-only, conflict names no current record when absent.
    r = client.put(url("other", ns), json={"content": 1, "expected_revision": 3})
    body = assert_problem(r, 409, "version-conflict")
    assert body["current_revision"] == 0 and body["current"] is None


# ---------------------------------------------------------------- PATCH (every backend)


def test_merge_patch(client: TestClient, ns: str) -> None:
    client.put(url("doc", ns), json={"content": {"a": 1, "b": {"c": 2, "d": 3}}})
    r = client.patch(
        url("doc", ns) + "&author=bob&summary=tweak",
        content=b'{"b": {"c": null, "e": 5}, "f": true}',
        headers={"Content-Type": "application/merge-patch+json", "If-Match": '"1"'},
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"] == {"a": 1, "b": {"d": 3, "e": 5}, "f": True}
    assert r.headers["etag"] == '"2"'
    v = client.get(url("doc", ns, "/versions/2")).json()
    assert v["author"] == "bob" and v["summary"] == "tweak"

    r = client.patch(
        url("doc", ns) + "&create_version=false",
        content=b'{"a": 2}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.json()["revision"] == 3 and r.json()["version"] == 2

    r = client.patch(
        url("doc", ns),
        content=b'{"a": 9}',
        headers={"Content-Type": "application/merge-patch+json", "If-Match": '"1"'},
    )
    assert assert_problem(r, 412, "precondition-failed")["current_revision"] == 3

    r = client.patch(
        url("missing", ns), content=b"{}", headers={"Content-Type": "application/merge-patch+json"}
    )
    assert_problem(r, 404, "not-found")


def test_patch_needs_merge_patch_media_type(sqlite_client: TestClient, ns: str) -> None:
    sqlite_client.put(url("doc", ns), json={"content": {}})
    r = sqlite_client.patch(url("doc", ns), json={"a": 1})
    assert_problem(r, 415, "unsupported-media-type")
    assert r.headers["accept-patch"] == "application/merge-patch+json"


# ---------------------------------------------------------------- GET / DELETE / list


def test_get_etag_and_304(client: TestClient, ns: str) -> None:
    client.put(url("doc", ns), json={"content": {"x": 1}})
    r = client.get(url("doc", ns))
    assert r.status_code == 200 and r.headers["etag"] == '"1"'
    assert r.json()["content"] == {"x": 1} and "unchanged" not in r.json()
    for inm in ('"1"', 'W/"1"', '"7", "1"', "*"):
        r = client.get(url("doc", ns), headers={"If-None-Match": inm})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == '"1"'
    assert client.get(url("doc", ns), headers={"If-None-Match": '"2"'}).status_code == 200
    assert_problem(client.get(url("nope", ns)), 404, "not-found")


def test_delete(client: TestClient, ns: str) -> None:
    client.put(url("doc", ns), json={"content": 1})
    client.put(url("doc", ns), json={"content": 2})
    r = client.delete(url("doc", ns), headers={"If-Match": '"1"'})
    assert assert_problem(r, 412, "precondition-failed")["current_revision"] == 2
    r = client.delete(url("doc", ns), headers={"If-Match": '"2"'})
    assert r.status_code == 204 and r.content == b""
    assert_problem(client.get(url("doc", ns)), 404, "not-found")
    assert_problem(client.delete(url("doc", ns)), 404, "not-found")
    # A PUT revives it (201: it exists again); the numbers carry on.
    r = client.put(url("doc", ns), json={"content": 3})
    assert r.status_code == 201 and r.json()["revision"] == 4 and r.json()["version"] == 3


def test_list_pages(sqlite_client: TestClient, ns: str) -> None:
    for i in range(5):
        sqlite_client.put(url(f"p-{i}", ns), json={"content": i})
    sqlite_client.put(url("q", ns), json={"content": "q"})
    r = sqlite_client.get(f"/v1/records?namespace={ns}&prefix=p-&limit=2")
    page = r.json()
    assert [x["id"] for x in page["records"]] == ["p-0", "p-1"] and page["next_after"] == "p-1"
    page = sqlite_client.get(
        f"/v1/records?namespace={ns}&prefix=p-&limit=10&after={page['next_after']}"
    ).json()
    assert [x["id"] for x in page["records"]] == ["p-2", "p-3", "p-4"]
    assert page["next_after"] is None
    all_ids = [x["id"] for x in sqlite_client.get(f"/v1/records?namespace={ns}").json()["records"]]
    assert all_ids == ["p-0", "p-1", "p-2", "p-3", "p-4", "q"]


def test_namespaces_are_separate(sqlite_client: TestClient, ns: str) -> None:
    sqlite_client.put(url("doc", ns), json={"content": "a"})
    sqlite_client.put(url("doc", ns + "-b"), json={"content": "b"})
    assert sqlite_client.get(url("doc", ns)).json()["content"] == "a"
    assert sqlite_client.get(url("doc", ns + "-b")).json()["content"] == "b"


def test_default_namespace(sqlite_client: TestClient) -> None:
    import uuid

    id = f"d-{uuid.uuid4().hex}"
    assert sqlite_client.put(f"/v1/records/{id}", json={"content": 1}).status_code == 201
    assert sqlite_client.get(f"/v1/records/{id}?namespace=default").json()["namespace"] == "default"


# ---------------------------------------------------------------- history, diff, restore


def test_versions_diff_restore(client: TestClient, ns: str) -> None:
    for n in range(1, 5):
        client.put(url("doc", ns), json={"content": {"n": n, "keep": True}})
    page = client.get(url("doc", ns, "/versions") + "&limit=3").json()
    assert [v["version"] for v in page["versions"]] == [1, 2, 3] and page["next_after"] == 3
    page = client.get(url("doc", ns, "/versions") + "&after=3").json()
    assert [v["version"] for v in page["versions"]] == [4] and page["next_after"] is None

    v2 = client.get(url("doc", ns, "/versions/2")).json()
    assert v2["content"] == {"n": 2, "keep": True} and v2["revision"] == 2
    assert_problem(client.get(url("doc", ns, "/versions/9")), 404, "not-found")

    d = client.get(url("doc", ns, "/diff") + "&from=1&to=4").json()
    assert d == {
        "from_version": 1,
        "to_version": 4,
        "patch": [{"op": "replace", "path": "/n", "value": 4}],
    }

    r = client.post(url("doc", ns, "/restore"), json={"version": 2}, headers={"If-Match": '"1"'})
    assert assert_problem(r, 412, "precondition-failed")["current_revision"] == 4
    r = client.post(url("doc", ns, "/restore"), json={"version": 2, "author": "ann"})
    assert r.status_code == 200 and r.headers["etag"] == '"5"'
    assert r.json()["content"] == {"n": 2, "keep": True} and r.json()["version"] == 5
    v5 = client.get(url("doc", ns, "/versions/5")).json()
    assert v5["summary"] == "restore version 2" and v5["author"] == "ann"
    assert_problem(client.post(url("doc", ns, "/restore"), json={"version": 99}), 404, "not-found")
    assert_problem(client.get(url("nope", ns, "/versions")), 404, "not-found")


# ---------------------------------------------------------------- preconditions


def test_if_match_star_and_lists(sqlite_client: TestClient, ns: str) -> None:
    c = sqlite_client
    r = c.put(url("doc", ns), json={"content": 1}, headers={"If-Match": "*"})
    assert assert_problem(r, 412, "precondition-failed")["current_revision"] == 0
    c.put(url("doc", ns), json={"content": 1})
    assert c.put(url("doc", ns), json={"content": 2}, headers={"If-Match": "*"}).status_code == 200
    r = c.put(url("doc", ns), json={"content": 3}, headers={"If-Match": '"1", "2"'})
    assert r.status_code == 200 and r.headers["etag"] == '"3"'
    # If-Match compares strongly: a weak tag never matches.
    r = c.put(url("doc", ns), json={"content": 4}, headers={"If-Match": 'W/"3"'})
    assert_problem(r, 412, "precondition-failed")
    r = c.put(url("doc", ns), json={"content": 4}, headers={"If-Match": '"abc"'})
    assert_problem(r, 412, "precondition-failed")


def test_precondition_errors(sqlite_client: TestClient, ns: str) -> None:
    c = sqlite_client
    c.put(url("doc", ns), json={"content": 1})
    r = c.put(
        url("doc", ns), json={"content": 2, "expected_revision": 2}, headers={"If-Match": '"1"'}
    )
    assert_problem(r, 422, "invalid-input")
    r = c.put(url("doc", ns), json={"content": 2}, headers={"If-Match": "1"})
    assert_problem(r, 422, "invalid-input")
    r = c.put(url("doc", ns), json={"content": 2}, headers={"If-None-Match": '"1"'})
    assert_problem(r, 422, "invalid-input")
    r = c.put(
        url("doc", ns), json={"content": 2}, headers={"If-None-Match": "*", "If-Match": '"1"'}
    )
    assert_problem(r, 422, "invalid-input")


def test_require_if_match_gives_428(sqlite_store: Store, make_client: AppFactory, ns: str) -> None:
    c = make_client(sqlite_store, require_if_match=True)
    merge = {"Content-Type": "application/merge-patch+json"}
    assert_problem(c.put(url("doc", ns), json={"content": 1}), 428, "precondition-required")
    r = c.put(url("doc", ns), json={"content": 1}, headers={"If-None-Match": "*"})
    assert r.status_code == 201
    r = c.put(url("doc", ns), json={"content": 2, "expected_revision": 1})
    assert r.status_code == 200
    assert_problem(
        c.patch(url("doc", ns), content=b"{}", headers=merge), 428, "precondition-required"
    )
    r = c.patch(url("doc", ns), content=b'{"a": 1}', headers={**merge, "If-Match": '"2"'})
    assert r.status_code == 200
    assert_problem(
        c.post(url("doc", ns, "/restore"), json={"version": 1}), 428, "precondition-required"
    )
    assert_problem(c.delete(url("doc", ns)), 428, "precondition-required")
    assert c.delete(url("doc", ns), headers={"If-Match": '"3"'}).status_code == 204
    # Streams have their own expectation (expected_sequence) and are not concerned.
    assert c.post(f"/v1/streams/s/items?namespace={ns}", json={"items": [1]}).status_code == 201


# ---------------------------------------------------------------- refusals at the edge


def test_invalid_input_is_422_never_500(sqlite_client: TestClient, ns: str) -> None:
    c = sqlite_client
    json_type = {"Content-Type": "application/json"}
    cases: list[tuple[str, bytes | None, Any]] = [
        (url("doc", ns), b"{", None),  # not JSON
        (url("doc", ns), b"", None),  # empty
        (url("doc", ns), b"[1, 2]", None),  # not an object
        (url("doc", ns), None, {"contnet": 1}),  # typo: unknown field
        (url("doc", ns), None, {}),  # content missing
        (url("doc", ns), b'{"content": NaN}', None),  # not JSON for the store
        (url("doc", ns), b'{"content": "\\ud800"}', None),  # lone surrogate
        (url("doc", ns), b'{"content": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),  # deep
        (url("doc", ns), b'{"content": ' + b"[" * 150 + b"]" * 150 + b"}", None),  # > 100
        (url("doc", ns), None, {"content": 1, "create_version": "yes"}),
        (url("doc", ns), None, {"content": 1, "expected_revision": -1}),
        (url("doc", ns), None, {"content": 1, "expected_revision": 2**70}),
        (url("doc", ns), None, {"content": 1, "expected_revision": "3"}),
        (url("doc", ns), None, {"content": 1, "author": "a" * 256}),
        (url("x" * 256, ns), None, {"content": 1}),  # id too long
        (url("a%01b", ns), None, {"content": 1}),  # control character
        (url("doc", "n" * 256), None, {"content": 1}),  # namespace too long
    ]
    for path, raw, obj in cases:
        if raw is not None:
            r = c.put(path, content=raw, headers=json_type)
        else:
            r = c.put(path, json=obj)
        assert_problem(r, 422, "invalid-input")
        assert "Traceback" not in r.text
    body = assert_problem(c.put(url("doc", ns), json={"contnet": 1}), 422, "invalid-input")
    assert {"loc": ["body", "contnet"], "msg": "Extra inputs are not permitted",
            "type": "extra_forbidden"} in body["errors"]  # fmt: skip
    for bad in ("limit=0", "limit=1001", "after=-1", "limit=x"):
        assert_problem(c.get(url("doc", ns, "/versions") + "&" + bad), 422, "invalid-input")
    assert_problem(c.get(url("doc", ns, "/diff") + "&from=1"), 422, "invalid-input")
    assert_problem(c.get(url("doc", ns, "/versions/0")), 422, "invalid-input")
    # Nothing was written by any of these.
    assert_problem(c.get(url("doc", ns)), 404, "not-found")


def test_media_type_415(sqlite_client: TestClient, ns: str) -> None:
    c = sqlite_client
    r = c.put(url("doc", ns), content=b'{"content": 1}', headers={"Content-Type": "text/plain"})
    assert_problem(r, 415, "unsupported-media-type")
    r = c.put(url("doc", ns), content=b'{"content": 1}')
    assert_problem(r, 415, "unsupported-media-type")
    r = c.post(url("doc", ns, "/restore"), content=b"x", headers={"Content-Type": "text/xml"})
    assert_problem(r, 415, "unsupported-media-type")
    r = c.put(
        url("doc", ns),
        content=b'{"content": 1}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 201


def test_body_limit_413_before_parsing(
    sqlite_store: Store, make_client: AppFactory, ns: str
) -> None:
    c = make_client(sqlite_store, max_body_bytes=1000)
    big = b'{"content": "' + b"x" * 2000 + b'"}'
    # Declared length over the limit: refused at once, even with a media type never parsed.
    r = c.put(url("doc", ns), content=big, headers={"Content-Type": "application/json"})
    assert_problem(r, 413, "payload-too-large")
    # Streamed (chunked, no Content-Length): counted as it arrives.
    chunks = iter([big[:600], big[600:]])
    r = c.put(url("doc", ns), content=chunks, headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "payload-too-large")
    r = c.post(f"/v1/streams/s/items?namespace={ns}", content=big, headers={"Content-Type": "x/y"})
    assert_problem(r, 413, "payload-too-large")
    assert_problem(c.get(url("doc", ns)), 404, "not-found")
    r = c.put(
        url("doc", ns),
        content=b'{"content": "small"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 201


def test_default_body_limit_is_one_mib(
    sqlite_client: TestClient, sqlite_store: Store, make_client: AppFactory, ns: str
) -> None:
    body = b'{"content": "' + b"x" * (1024 * 1024) + b'"}'
    r = sqlite_client.put(
        url("doc", ns), content=body, headers={"Content-Type": "application/json"}
    )
    assert_problem(r, 413, "payload-too-large")
    # A larger body limit, but content over the Store's own limit (1 MiB): 422.
    c = make_client(sqlite_store, max_body_bytes=2 * 1024 * 1024)
    body = b'{"content": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = c.put(url("doc", ns), content=body, headers={"Content-Type": "application/json"})
    assert_problem(r, 422, "invalid-input")


def test_404_405_routes(sqlite_client: TestClient) -> None:
    assert_problem(sqlite_client.get("/v2/nothing"), 404, "not-found")
    r = sqlite_client.post("/v1/records/doc")
    assert_problem(r, 405, "method-not-allowed")
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "PUT", "PATCH", "DELETE"}
