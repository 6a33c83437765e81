"""Retention over HTTP, on every backend: a policy set and read back, applied at once
by an admin route and within seconds of a write by the service itself; a removed
version is a 410 problem carrying the oldest kept version; only admin keys may set or
apply a policy when auth is on."""

from __future__ import annotations

import time

from service_helpers import AppFactory, TestClient, assert_problem

from revstore import Store
from revstore.service import Settings


def put(client: TestClient, ns: str, rid: str, n: int) -> None:
    r = client.put(f"/v1/records/{rid}", params={"namespace": ns}, json={"content": {"n": n}})
    assert r.status_code in (200, 201), r.text


def versions(client: TestClient, ns: str, rid: str) -> list[int]:
    r = client.get(f"/v1/records/{rid}/versions", params={"namespace": ns, "limit": 100})
    assert r.status_code == 200, r.text
    return [v["version"] for v in r.json()["versions"]]


def test_policy_apply_and_410(client: TestClient, ns: str) -> None:
    q = {"namespace": ns}
    none = client.get("/v1/retention", params=q).json()
    assert (none["keep_last"], none["max_age_seconds"], none["updated_at"]) == (None, None, None)
    for n in range(6):
        put(client, ns, "doc", n)
    r = client.put("/v1/retention", params=q, json={"keep_last": 2})
    assert r.status_code == 200 and r.json()["keep_last"] == 2, r.text
    assert client.get("/v1/retention", params=q).json()["keep_last"] == 2
    report = client.post("/v1/retention/apply", params=q).json()
    assert report["versions_removed"] >= 4  # the service may already have done some
    assert versions(client, ns, "doc") == [5, 6]
    gone = client.get("/v1/records/doc/versions/1", params=q)
    body = assert_problem(gone, 410, "version-compacted")
    assert body["oldest_version"] == 5
    restore = client.post("/v1/records/doc/restore", params=q, json={"version": 2})
    assert_problem(restore, 410, "version-compacted")
    diff = client.get("/v1/records/doc/diff", params={**q, "from": 1, "to": 6})
    assert_problem(diff, 410, "version-compacted")
    assert client.get("/v1/records/doc/versions/5", params=q).status_code == 200
    # Both null removes the policy.
    cleared = client.put("/v1/retention", params=q, json={"keep_last": None})
    assert cleared.json()["keep_last"] is None
    bad = client.put("/v1/retention", params=q, json={"keep_last": 0})
    assert_problem(bad, 422, "invalid-input")
    typo = client.put("/v1/retention", params=q, json={"keep_lats": 3})
    assert_problem(typo, 422, "invalid-input")


def test_the_service_compacts_within_seconds_of_a_write(
    store: Store, make_client: AppFactory, ns: str
) -> None:
    client = make_client(store, Settings(retention_interval=0.2))
    store.set_retention(ns, keep_last=3)
    for n in range(8):
        put(client, ns, "doc", n)
    deadline = time.monotonic() + 20
    while versions(client, ns, "doc") != [6, 7, 8]:
        assert time.monotonic() < deadline, versions(client, ns, "doc")
        time.sleep(0.1)
    # A namespace without a policy is left alone.
    other = f"{ns}-free"
    for n in range(5):
        put(client, other, "doc", n)
    time.sleep(0.6)
    assert versions(client, other, "doc") == [1, 2, 3, 4, 5]


def test_only_admin_keys_set_or_apply_retention(
    sqlite_store: Store, make_client: AppFactory, ns: str
) -> None:
    client = make_client(sqlite_store, Settings(auth=True))
    tokens = {
        role: sqlite_store.api_keys.create(ns, role).token for role in ("read", "write", "admin")
    }
    q = {"namespace": ns}
    for role in ("read", "write"):
        h = {"Authorization": f"Bearer {tokens[role]}"}
        assert_problem(
            client.put("/v1/retention", params=q, json={"keep_last": 1}, headers=h),
            403,
            "forbidden",
        )
        assert_problem(client.post("/v1/retention/apply", params=q, headers=h), 403, "forbidden")
        assert client.get("/v1/retention", params=q, headers=h).status_code == 200
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    assert (
        client.put("/v1/retention", params=q, json={"keep_last": 1}, headers=admin).status_code
        == 200
    )
    assert client.post("/v1/retention/apply", params=q, headers=admin).status_code == 200
    other = {"namespace": f"{ns}-x"}
    assert_problem(
        client.put("/v1/retention", params=other, json={"keep_last": 1}, headers=admin),
        403,
        "forbidden",
    )
