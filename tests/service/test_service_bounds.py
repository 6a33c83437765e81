"""Bounded work per request over HTTP.

Byte-bounded pages, on every backend: versions, stream items and record lists end a
page before ``max_page_bytes`` of content (at least one per page), and ``next_after``
walks to the end with every item exactly once. Metrics keep a bounded label set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_helpers import AppFactory, TestClient

from revstore import Store
from revstore.service import Settings, create_app

BUDGET = 1000


@pytest.fixture
def small_client(backend_url: str, make_client: AppFactory) -> Iterator[TestClient]:
    store = Store(backend_url, max_page_bytes=BUDGET)
    store.create_schema()
    yield make_client(store)
    store.close()


def body(n: int, pad: int) -> dict[str, Any]:
    return {"n": n, "t": "x" * pad}


def walk(client: TestClient, url: str, key: str, **params: Any) -> list[list[int]]:
    pages: list[list[int]] = []
    after: Any = params.pop("after", None)
    for _ in range(100):
        query = dict(params)
        if after is not None:
            query["after"] = after
        resp = client.get(url, params=query)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        pages.append([entry["content" if key != "items" else "body"]["n"] for entry in data[key]])
        after = data["next_after"]
        if after is None:
            return pages
    raise AssertionError("next_after never ended")


SIZES = [400, 400, 400, 3000, 100, 100, 100, 850]
EXPECTED = [[0, 1], [2], [3], [4, 5, 6], [7]]
"""Pages for SIZES of padding (each document is the padding plus 14 bytes): two of
~414 fit 1000 bytes, a third does not; the 3014-byte one comes alone."""


def test_versions_page_by_bytes(small_client: TestClient, ns: str) -> None:
    for n, pad in enumerate(SIZES):
        resp = small_client.put(f"/v1/records/doc?namespace={ns}", json={"content": body(n, pad)})
        assert resp.status_code in (200, 201)
    pages = walk(small_client, "/v1/records/doc/versions", "versions", namespace=ns, limit=10)
    assert pages == EXPECTED


def test_items_page_by_bytes(small_client: TestClient, ns: str) -> None:
    items = [body(n, pad) for n, pad in enumerate(SIZES)]
    resp = small_client.post(f"/v1/streams/chat/items?namespace={ns}", json={"items": items})
    assert resp.status_code == 201
    pages = walk(small_client, "/v1/streams/chat/items", "items", namespace=ns, limit=10)
    assert pages == EXPECTED
    # A limit smaller than what fits still cuts by count.
    pages = walk(small_client, "/v1/streams/chat/items", "items", namespace=ns, limit=1)
    assert pages == [[n] for n in range(len(SIZES))]


def test_records_page_by_bytes(small_client: TestClient, ns: str) -> None:
    for n, pad in enumerate(SIZES):
        resp = small_client.put(f"/v1/records/r.{n}?namespace={ns}", json={"content": body(n, pad)})
        assert resp.status_code == 201
    pages = walk(small_client, "/v1/records", "records", namespace=ns, prefix="r.", limit=10)
    assert pages == EXPECTED


def test_settings_configure_the_page_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="max_page_bytes"):
        Settings(max_page_bytes=0)
    settings = Settings(url=f"sqlite:///{tmp_path / 'own.db'}", max_page_bytes=BUDGET)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings
    with TestClient(create_app(None, settings)) as client:
        for n in range(3):
            client.put("/v1/records/doc", json={"content": body(n, 600)})
        page = client.get("/v1/records/doc/versions").json()
        assert ([v["version"] for v in page["versions"]], page["next_after"]) == ([1], 1)


def test_invented_methods_share_one_metrics_label(sqlite_client: TestClient) -> None:
    for k in range(20):
        assert sqlite_client.request(f"FOO{k}", "/v1/records/x").status_code == 405
    text = sqlite_client.get("/metrics").text
    assert "FOO" not in text
    assert (
        'revstore_http_requests_total{method="<other>",route="/v1/records/{id}",status="405"} 20.0'
        in text
    )
