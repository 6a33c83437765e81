"""API keys over HTTP: both sides of every rule, on every backend where the database is
involved (keys live there), and ``revstore serve``'s default by address.

Rules: no or a bad token -> 401 with ``WWW-Authenticate: Bearer``; a key for another
namespace, or a read key that writes -> 403; a key of the right namespace and role ->
the route's own answer; admin and ``*`` keys; a revoked key -> 401 within
``CACHE_SECONDS``; a write naming no author is authored by the key's name; tokens never
reach the logs; auth is off by default on loopback and required elsewhere.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest
from service_helpers import AppFactory, TestClient, assert_problem
from test_service_server import log_lines, serve

from revstore import NotFound, Store
from revstore.service import Settings
from revstore.service.auth import CACHE_SECONDS, auth_required, is_loopback
from revstore.service.logs import JsonFormatter


@pytest.fixture
def auth_client(store: Store, make_client: AppFactory) -> TestClient:
    """Auth on, over the shared ``store`` (SQLite, PostgreSQL, MariaDB)."""
    return make_client(store, Settings(auth=True))


@pytest.fixture
def sqlite_auth_client(sqlite_store: Store, make_client: AppFactory) -> TestClient:
    return make_client(sqlite_store, Settings(auth=True))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_for(store: Store, namespace: str, role: str, name: str | None = None) -> str:
    return store.api_keys.create(namespace, role, name=name).token


def put(client: TestClient, ns: str, rid: str, token: str | None, **body: object) -> httpx.Response:
    headers = bearer(token) if token else {}
    return client.put(
        f"/v1/records/{rid}",
        params={"namespace": ns},
        json={"content": {"n": 1}, **body},
        headers=headers,
    )


def assert_401(resp: httpx.Response, invalid: bool) -> None:
    assert_problem(resp, 401, "unauthorized")
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) is invalid


# ---------------------------------------------------------------- 401


def test_missing_token_is_401_on_every_v1_route(sqlite_auth_client: TestClient, ns: str) -> None:
    c = sqlite_auth_client
    q = {"namespace": ns}
    for resp in (
        c.get("/v1/records", params=q),
        c.get("/v1/records/doc", params=q),
        c.get("/v1/records/doc/versions", params=q),
        c.get("/v1/streams/s", params=q),
        c.put("/v1/records/doc", params=q, json={"content": {}}),
        c.post("/v1/streams/s/items", params=q, json={"items": [{}]}),
        c.delete("/v1/records/doc", params=q),
        # Another scheme is no bearer token.
        c.get("/v1/records", params=q, headers={"Authorization": "Basic YTpi"}),
        c.get("/v1/records", params=q, headers={"Authorization": "Bearer "}),
    ):
        assert_401(resp, invalid=False)
    # Operations and documents stay open: probes and scrapers carry no token.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert c.get(path).status_code == 200, path


def test_bad_token_is_401(auth_client: TestClient, store: Store, ns: str) -> None:
    good = token_for(store, ns, "write")
    key_id = good.split("_")[1]
    other_secret = token_for(store, ns, "write").split("_", 2)[2]
    for bad in (
        "nonsense",
        good[:-1],  # malformed: one character short
        f"rsk_{uuid.uuid4().hex[:16]}_{other_secret}",  # well-formed, unknown id
        f"rsk_{key_id}_{other_secret}",  # a real id with another key's secret
    ):
        assert_401(put(auth_client, ns, "doc", bad), invalid=True)
        assert_401(
            auth_client.get("/v1/records", params={"namespace": ns}, headers=bearer(bad)), True
        )
    assert put(auth_client, ns, "doc", good).status_code == 201
    # None of the refused writes landed.
    assert store.get("doc", namespace=ns).revision == 1


def test_refused_request_never_touches_its_idempotency_key(
    auth_client: TestClient, store: Store, ns: str, key: str
) -> None:
    """Auth runs before the idempotency layer: a refused request neither stores its
    401 as the key's answer nor gets the answer a key already has."""
    token = token_for(store, ns, "write")
    body = {"content": {"n": 1}}
    url, q = "/v1/records/doc", {"namespace": ns}
    assert_401(auth_client.put(url, params=q, json=body, headers={"Idempotency-Key": key}), False)
    first = auth_client.put(
        url, params=q, json=body, headers={**bearer(token), "Idempotency-Key": key}
    )
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = auth_client.put(url, params=q, json=body, headers={"Idempotency-Key": key})
    assert_401(again, invalid=False)


def test_an_idempotency_key_belongs_to_its_api_key(
    auth_client: TestClient, store: Store, ns: str, key: str
) -> None:
    """The same Idempotency-Key and body from another API key is another request (its
    author differs): refused as a reuse, never answered with the first key's reply."""
    ann = token_for(store, ns, "write", name="ann")
    bob = token_for(store, ns, "write", name="bob")
    url, q, body = "/v1/records/doc", {"namespace": ns}, {"content": {"n": 1}}
    first = auth_client.put(
        url, params=q, json=body, headers={**bearer(ann), "Idempotency-Key": key}
    )
    assert first.status_code == 201
    again = auth_client.put(
        url, params=q, json=body, headers={**bearer(ann), "Idempotency-Key": key}
    )
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    other = auth_client.put(
        url, params=q, json=body, headers={**bearer(bob), "Idempotency-Key": key}
    )
    assert_problem(other, 422, "idempotency-key-reused")
    assert [v.author for v in store.history("doc", namespace=ns).versions] == ["ann"]


# ---------------------------------------------------------------- 403


def test_key_for_another_namespace_is_403(auth_client: TestClient, store: Store, ns: str) -> None:
    other = f"{ns}-other"
    token = token_for(store, ns, "write")
    assert put(auth_client, ns, "doc", token).status_code == 201
    assert_problem(put(auth_client, other, "doc", token), 403, "forbidden")
    read = auth_client.get("/v1/records/doc", params={"namespace": other}, headers=bearer(token))
    assert_problem(read, 403, "forbidden")
    # No namespace parameter means "default", which this key is not for.
    assert_problem(auth_client.get("/v1/records", headers=bearer(token)), 403, "forbidden")
    # Every namespace the query names must be allowed, whichever one a parser keeps.
    for pair in (
        [("namespace", ns), ("namespace", other)],
        [("namespace", other), ("namespace", ns)],
    ):
        both = auth_client.get("/v1/records", params=pair, headers=bearer(token))
        assert_problem(both, 403, "forbidden")
    with pytest.raises(NotFound):
        store.get("doc", namespace=other)
    ok = auth_client.get("/v1/records/doc", params={"namespace": ns}, headers=bearer(token))
    assert ok.status_code == 200 and ok.json()["content"] == {"n": 1}


def test_read_key_reads_but_may_not_write(auth_client: TestClient, store: Store, ns: str) -> None:
    store.put("doc", {"n": 1}, namespace=ns)
    store.append("s", [{"i": 1}], namespace=ns)
    token = token_for(store, ns, "read")
    h, q = bearer(token), {"namespace": ns}
    c = auth_client
    for resp in (
        c.get("/v1/records/doc", params=q, headers=h),
        c.get("/v1/records", params=q, headers=h),
        c.get("/v1/records/doc/versions", params=q, headers=h),
        c.get("/v1/records/doc/versions/1", params=q, headers=h),
        c.get("/v1/records/doc/diff", params={**q, "from": 1, "to": 1}, headers=h),
        c.get("/v1/streams/s", params=q, headers=h),
        c.get("/v1/streams/s/items", params=q, headers=h),
    ):
        assert resp.status_code == 200, resp.text
    for resp in (
        put(c, ns, "doc", token),
        c.patch(
            "/v1/records/doc",
            params=q,
            content=b'{"n": 2}',
            headers={**h, "Content-Type": "application/merge-patch+json"},
        ),
        c.post("/v1/records/doc/restore", params=q, json={"version": 1}, headers=h),
        c.delete("/v1/records/doc", params=q, headers=h),
        c.post("/v1/streams/s/items", params=q, json={"items": [{"i": 2}]}, headers=h),
    ):
        body = assert_problem(resp, 403, "forbidden")
        assert "read role" in body["detail"]
    assert store.get("doc", namespace=ns).revision == 1
    assert store.stream_info("s", namespace=ns).last_sequence == 1


def test_write_and_admin_keys_write_in_their_namespace(
    auth_client: TestClient, store: Store, ns: str
) -> None:
    for role in ("write", "admin"):
        token = token_for(store, ns, role)
        rid = f"doc-{role}"
        assert put(auth_client, ns, rid, token).status_code == 201
        appended = auth_client.post(
            f"/v1/streams/s-{role}/items",
            params={"namespace": ns},
            json={"items": [{"i": 1}]},
            headers=bearer(token),
        )
        assert appended.status_code == 201
        gone = auth_client.delete(
            f"/v1/records/{rid}", params={"namespace": ns}, headers=bearer(token)
        )
        assert gone.status_code == 204
        # An admin is an admin of its namespace only.
        assert_problem(put(auth_client, f"{ns}-x", rid, token), 403, "forbidden")


def test_star_keys_cover_every_namespace_with_their_role(
    auth_client: TestClient, store: Store, ns: str
) -> None:
    reader = token_for(store, "*", "read")
    admin = token_for(store, "*", "admin")
    for namespace in (ns, f"{ns}-b", "default"):
        assert put(auth_client, namespace, f"doc-{ns}", admin).status_code in (200, 201)
        got = auth_client.get(
            f"/v1/records/doc-{ns}", params={"namespace": namespace}, headers=bearer(reader)
        )
        assert got.status_code == 200
        assert_problem(
            put(auth_client, namespace, f"doc-{ns}", reader, content={"n": 2}), 403, "forbidden"
        )


# ---------------------------------------------------------------- revocation, author


def test_revoked_key_is_refused_within_the_cache_time(
    auth_client: TestClient, store: Store, make_client: AppFactory, ns: str
) -> None:
    new = store.api_keys.create(ns, "write")
    h, q = bearer(new.token), {"namespace": ns}
    assert auth_client.get("/v1/records", params=q, headers=h).status_code == 200  # cached now
    store.api_keys.revoke(new.key.id)
    # A process that has not seen the key refuses it at once...
    fresh = make_client(store, Settings(auth=True))
    assert_401(fresh.get("/v1/records", params=q, headers=h), invalid=True)
    # ...and one that cached it refuses it within CACHE_SECONDS.
    revoked_at = time.monotonic()
    while auth_client.get("/v1/records", params=q, headers=h).status_code != 401:
        assert time.monotonic() - revoked_at < CACHE_SECONDS + 1.0, "revoked key still accepted"
        time.sleep(0.1)
    assert_401(put(auth_client, ns, "doc", new.token), invalid=True)
    # Another key of the namespace still works.
    assert put(auth_client, ns, "doc", token_for(store, ns, "write")).status_code == 201


def test_write_without_author_is_authored_by_the_key_name(
    auth_client: TestClient, store: Store, ns: str
) -> None:
    token = token_for(store, ns, "write", name="editor-ann")
    h, q = bearer(token), {"namespace": ns}
    assert put(auth_client, ns, "doc", token).status_code == 201
    assert put(auth_client, ns, "doc", token, content={"n": 2}, author="bob").status_code == 200
    patched = auth_client.patch(
        "/v1/records/doc",
        params=q,
        content=b'{"n": 3}',
        headers={**h, "Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200
    restored = auth_client.post("/v1/records/doc/restore", params=q, json={"version": 1}, headers=h)
    assert restored.status_code == 200
    versions = store.history("doc", namespace=ns).versions
    assert [v.author for v in versions] == ["editor-ann", "bob", "editor-ann", "editor-ann"]
    # Unnamed keys are named after their id.
    unnamed = store.api_keys.create(ns, "write")
    assert put(auth_client, ns, "other", unnamed.token).status_code == 201
    assert store.get_version("other", 1, namespace=ns).author == f"key-{unnamed.key.id}"


def test_auth_off_names_no_author(client: TestClient, store: Store, ns: str) -> None:
    """The other side: without auth, tokens are ignored and the author stays unset."""
    token = token_for(store, ns, "read", name="reader")
    assert put(client, ns, "doc", token).status_code == 201
    assert put(client, f"{ns}-elsewhere", "doc", None).status_code == 201
    assert store.get_version("doc", 1, namespace=ns).author is None


# ---------------------------------------------------------------- logs


class Lines(logging.Handler):
    """Every record as the service prints it (JSON, with the request's context fields,
    which are only there while the request runs)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_tokens_never_reach_the_logs(
    sqlite_auth_client: TestClient, sqlite_store: Store, ns: str
) -> None:
    good = sqlite_store.api_keys.create(ns, "read")
    wrong_secret = f"rsk_{good.key.id}_{'A' * 43}"
    handler = Lines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        for token in (good.token, wrong_secret):
            for namespace in (ns, f"{ns}-other"):
                sqlite_auth_client.get(
                    "/v1/records", params={"namespace": namespace}, headers=bearer(token)
                )
                put(sqlite_auth_client, namespace, "doc", token)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    requests = [r for r in map(json.loads, handler.lines) if r.get("event") == "request"]
    # The access log saw all eight requests, and names the key by its id.
    assert len(requests) == 8, handler.lines
    assert sorted({r["status"] for r in requests}) == [200, 401, 403]
    assert any(r.get("key_id") == good.key.id for r in requests)
    secrets = (good.token, good.token.split("_", 2)[2], wrong_secret, "A" * 43)
    for line in handler.lines:
        assert not any(s in line for s in secrets), line


# ---------------------------------------------------------------- defaults of serve


def test_auth_default_follows_the_bind_address() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and not auth_required(None, host), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host) and auth_required(None, host), host
    assert auth_required("required", "127.0.0.1") and not auth_required("off", "0.0.0.0")
    with pytest.raises(ValueError, match="required, off"):
        auth_required("maybe", "127.0.0.1")


@pytest.mark.parametrize(
    ("args", "expected"),
    [((), "off"), (("--host", "0.0.0.0"), "required"), (("--auth", "required"), "required")],
)
def test_serve_auth_default_and_startup_log(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    db = f"sqlite:///{tmp_path / 'auth.db'}"
    with serve(db, tmp_path, *args) as (base, log):
        resp = httpx.get(f"{base}/v1/records", timeout=10)
        assert resp.status_code == (401 if expected == "required" else 200)
        if expected == "required":
            assert resp.headers["www-authenticate"].startswith("Bearer")
            with Store(db) as store:
                token = store.api_keys.create("default", "read").token
            ok = httpx.get(f"{base}/v1/records", headers=bearer(token), timeout=10)
            assert ok.status_code == 200
        startup = [x for x in log_lines(log) if x.get("event") == "startup" and "auth" in x]
        assert [x["auth"] for x in startup] == [expected], log.read_text()
