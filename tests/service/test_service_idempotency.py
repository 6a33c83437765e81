"""Idempotency-Key: replay, mismatch, races between requests and between app
instances (each with its own Store, as separate service processes would have), and
the life cycle of a key. On every backend: the key table is shared through the database."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from typing import Any

import httpx
import pytest
from service_helpers import AppFactory, TestClient, assert_problem

from revstore import AmbiguousCommit, AsyncStore, Record, Store
from revstore.service import Settings, create_app
from revstore.service.idempotency import (
    IdempotencyStore,
    StoredResponse,
    new_owner,
    request_hash,
)


def hash_of(req: httpx.Request) -> str:
    """The request hash the service computes (for reserving a key as another process)."""
    conditions = "\0".join(req.headers.get(h, "") for h in ("if-match", "if-none-match"))
    return request_hash(req.method, req.url.path, req.url.query.decode(), conditions, req.content)


def reserve(store: Store, key: str, req_hash: str, owner: str, lease: float = 60) -> Any:
    """Reserve ``key`` as another service process would (its outcome)."""
    return store.keys.reserve(key, req_hash, owner, lease=lease).outcome


def rec_url(id: str, ns: str) -> str:
    return f"/v1/records/{id}?namespace={ns}"


def test_replay_returns_the_first_response(client: TestClient, ns: str, key: str) -> None:
    h = {"Idempotency-Key": key}
    first = client.put(rec_url("doc", ns), json={"content": {"v": 1}}, headers=h)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # Someone else writes in between: the re-send still answers the first response.
    client.put(rec_url("doc", ns), json={"content": {"v": 2}})
    again = client.put(rec_url("doc", ns), json={"content": {"v": 1}}, headers=h)
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"] == '"1"'
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == "application/json"
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    # Nothing was written again.
    assert client.get(rec_url("doc", ns)).json()["content"] == {"v": 2}
    assert len(client.get(rec_url("doc", ns).replace("?", "/versions?")).json()["versions"]) == 2


def test_same_key_different_request_is_422(client: TestClient, ns: str, key: str) -> None:
    h = {"Idempotency-Key": key}
    assert client.put(rec_url("doc", ns), json={"content": 1}, headers=h).status_code == 201
    for method, path, body in (
        ("PUT", rec_url("doc", ns), {"content": 2}),  # other body
        ("PUT", rec_url("other", ns), {"content": 1}),  # other path
        ("PUT", rec_url("doc", ns + "x"), {"content": 1}),  # other namespace (query)
        ("POST", f"/v1/streams/doc/items?namespace={ns}", {"items": [1]}),
    ):
        r = client.request(method, path, json=body, headers=h)
        assert_problem(r, 422, "idempotency-key-reused")
    r = client.put(rec_url("doc", ns), json={"content": 1}, headers={**h, "If-Match": '"1"'})
    assert_problem(r, 422, "idempotency-key-reused")
    assert client.get(rec_url("doc", ns)).json()["revision"] == 1


def test_every_write_route_is_idempotent(client: TestClient, ns: str) -> None:
    n = itertools.count()

    def twice(method: str, path: str, **kw: Any) -> httpx.Response:
        h = {"Idempotency-Key": f"{ns}-{next(n)}", **kw.pop("headers", {})}
        a: httpx.Response = client.request(method, path, headers=h, **kw)
        b: httpx.Response = client.request(method, path, headers=h, **kw)
        assert (a.status_code, a.content) == (b.status_code, b.content), (a.text, b.text)
        assert b.headers["idempotent-replayed"] == "true"
        return a

    twice("PUT", rec_url("doc", ns), json={"content": {"a": 1}})
    r = twice(
        "PATCH",
        rec_url("doc", ns),
        content=b'{"b": 2}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.json()["revision"] == 2
    assert (
        twice("POST", rec_url("doc", ns).replace("?", "/restore?"), json={"version": 1}).json()[
            "revision"
        ]
        == 3
    )
    # A stream append without item ids: the key alone keeps it from landing twice.
    r = twice("POST", f"/v1/streams/s/items?namespace={ns}", json={"items": [1, 2]})
    assert r.status_code == 201
    assert client.get(f"/v1/streams/s?namespace={ns}").json()["item_count"] == 2
    assert twice("DELETE", rec_url("doc", ns)).status_code == 204
    # Client errors are answers too: replayed, not re-run.
    r = twice("PUT", rec_url("doc", ns), json={"content": 1, "expected_revision": 7})
    assert r.status_code == 409
    assert client.get(rec_url("doc", ns)).status_code == 404


async def _race(apps: list[Any], n: int, method: str, path: str, **kw: Any) -> list[httpx.Response]:
    async with contextlib.AsyncExitStack() as stack:
        for a in apps:
            # httpx's ASGI transport runs no lifespan: run it here, so each app opens
            # (and closes) its AsyncStore on this loop.
            await stack.enter_async_context(a.router.lifespan_context(a))
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://t")
            for a in apps
        ]
        try:
            return list(
                await asyncio.gather(
                    *(clients[i % len(clients)].request(method, path, **kw) for i in range(n))
                )
            )
        finally:
            for c in clients:
                await c.aclose()


def test_racing_requests_with_one_key_write_once(backend_url: str, ns: str, key: str) -> None:
    """12 identical requests at once, spread over two app instances with separate
    Stores (two service processes): exactly one append, one answer for all."""
    stores = [Store(backend_url), Store(backend_url)]
    try:
        apps = [create_app(s, Settings(idempotency_wait=20)) for s in stores]
        responses = asyncio.run(
            _race(
                apps,
                12,
                "POST",
                f"/v1/streams/race/items?namespace={ns}",
                json={"items": [{"n": 1}, {"n": 2}]},
                headers={"Idempotency-Key": key},
            )
        )
        assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
        assert len({r.content for r in responses}) == 1
        assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
        info = stores[0].stream_info("race", namespace=ns)
        assert info.last_sequence == 2 and info.item_count == 2
    finally:
        for s in stores:
            s.close()


def test_racing_puts_with_one_key_write_once(backend_url: str, ns: str, key: str) -> None:
    stores = [Store(backend_url), Store(backend_url)]
    try:
        stores[0].put("doc", {"v": 0}, namespace=ns)
        apps = [create_app(s, Settings(idempotency_wait=20)) for s in stores]
        responses = asyncio.run(
            _race(
                apps,
                8,
                "PATCH",
                rec_url("doc", ns),
                content=b'{"v": 1}',
                headers={"Idempotency-Key": key, "Content-Type": "application/merge-patch+json"},
            )
        )
        assert {r.status_code for r in responses} == {200}
        assert {r.json()["revision"] for r in responses} == {2}
        assert stores[0].get("doc", namespace=ns).revision == 2
    finally:
        for s in stores:
            s.close()


class AmbiguousOnce(AsyncStore):
    """Fails the first put as if the connection died during COMMIT, after writing."""

    failed = False

    async def put(self, id: str, content: Any, **kw: Any) -> Record:
        rec = await super().put(id, content, **kw)
        if not self.failed:
            self.failed = True
            raise AmbiguousCommit("connection lost during COMMIT (injected)")
        return rec


def test_ambiguous_commit_is_503_and_the_resend_gets_the_first_result(
    backend_url: str, make_client: AppFactory, ns: str, key: str
) -> None:
    c = make_client(lambda: AmbiguousOnce(backend_url))
    h = {"Idempotency-Key": key}
    r = c.put(rec_url("doc", ns), json={"content": {"v": 1}}, headers=h)
    body = assert_problem(r, 503, "ambiguous-commit")
    assert body["may_have_landed"] is True and "may have landed" in body["detail"]
    assert int(r.headers["retry-after"]) >= 1
    # A 5xx is not stored, but the write had landed with its key applied: the
    # re-send is answered with the write's own result (201, created), not re-run.
    r = c.put(rec_url("doc", ns), json={"content": {"v": 1}}, headers=h)
    assert r.status_code == 201 and r.json()["unchanged"] is False
    assert r.json()["revision"] == 1 and r.headers["idempotent-replayed"] == "true"
    assert r.headers["location"] == f"/v1/records/doc?namespace={ns}"


def test_waits_for_the_first_request_then_replays(
    sqlite_store: Store, make_client: AppFactory, ns: str, key: str
) -> None:
    c = make_client(sqlite_store, idempotency_wait=10)
    path = f"/v1/streams/s/items?namespace={ns}"
    owner = new_owner()
    req = c.build_request("POST", path, json={"items": [1]}, headers={"Idempotency-Key": key})
    # Reserve the key as "another process" with the hash this request will have.
    assert reserve(sqlite_store, key, hash_of(req), owner).value == "reserved"

    def finish() -> None:
        time.sleep(0.3)
        body = '{"answer": "from the first request"}'
        headers = '{"content-type": "application/json"}'
        assert sqlite_store.keys.answer(key, owner, 201, headers, body, keep_for=60)

    t = threading.Thread(target=finish)
    t.start()
    r = c.send(req)
    t.join()
    assert r.status_code == 201 and r.json() == {"answer": "from the first request"}
    assert r.headers["idempotent-replayed"] == "true"


def test_in_progress_after_the_wait_is_409(
    sqlite_store: Store, make_client: AppFactory, ns: str, key: str
) -> None:
    c = make_client(sqlite_store, idempotency_wait=0.2)
    path = f"/v1/streams/s/items?namespace={ns}"
    req = c.build_request("POST", path, json={"items": [1]}, headers={"Idempotency-Key": key})
    reserve(sqlite_store, key, hash_of(req), new_owner())
    r = c.send(req)
    body = assert_problem(r, 409, "idempotency-in-progress")
    assert r.headers["retry-after"] == "1" and body["retry_after"] == 1
    assert_problem(c.get(path), 404, "not-found")  # nothing appended


def test_a_dead_reservation_is_taken_over_after_its_lease(
    sqlite_store: Store, make_client: AppFactory, ns: str, key: str
) -> None:
    c = make_client(sqlite_store, idempotency_wait=5, idempotency_lease=0.3)
    path = f"/v1/streams/s/items?namespace={ns}"
    req = c.build_request("POST", path, json={"items": [1]}, headers={"Idempotency-Key": key})
    reserve(sqlite_store, key, hash_of(req), new_owner(), lease=0.3)
    r = c.send(req)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers


def test_keys_expire(backend_url: str, make_client: AppFactory, ns: str, key: str) -> None:
    store = Store(backend_url)
    try:
        c = make_client(store, idempotency_ttl=0.5)
        path = f"/v1/streams/s/items?namespace={ns}"
        h = {"Idempotency-Key": key}
        assert c.post(path, json={"items": [1]}, headers=h).json()["first_sequence"] == 1
        assert c.post(path, json={"items": [1]}, headers=h).json()["first_sequence"] == 1
        time.sleep(0.7)
        # Expired: the same key is a new request (here, a second append).
        r = c.post(path, json={"items": [1]}, headers=h)
        assert r.status_code == 201 and r.json()["first_sequence"] == 2
    finally:
        store.close()


def test_purge_deletes_expired_keys(sqlite_url: str, key: str) -> None:
    async def check() -> None:
        async with AsyncStore(sqlite_url) as store:
            keys = IdempotencyStore(store, ttl=0.1, lease=0.1)
            owner = new_owner()
            assert (await keys.reserve(key, "h", owner)).outcome.value == "reserved"
            assert await keys.complete(key, owner, StoredResponse(200, {}, b"{}"))
            assert await keys.lookup(key, "h") is not None
            await asyncio.sleep(0.2)
            assert await keys.lookup(key, "h") is None  # expired rows are ignored when read
            assert await keys.purge_expired() >= 1  # and deleted by the periodic purge

    asyncio.run(check())


@pytest.mark.parametrize("bad", [b"", b"x" * 256, "caf\u00e9".encode()])
def test_invalid_keys_are_422(sqlite_client: TestClient, ns: str, bad: bytes) -> None:
    headers = {"Idempotency-Key": bad}
    r = sqlite_client.put(rec_url("doc", ns), json={"content": 1}, headers=headers)
    assert_problem(r, 422, "invalid-input")
    assert_problem(sqlite_client.get(rec_url("doc", ns)), 404, "not-found")


def test_key_is_ignored_on_reads(sqlite_client: TestClient, ns: str, key: str) -> None:
    sqlite_client.put(rec_url("doc", ns), json={"content": 1})
    r = sqlite_client.get(rec_url("doc", ns), headers={"Idempotency-Key": key})
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    # The key is still free for a write.
    r = sqlite_client.put(rec_url("doc", ns), json={"content": 2}, headers={"Idempotency-Key": key})
    assert r.status_code == 200
