"""Stream routes over HTTP, on every backend."""

from __future__ import annotations

from typing import Any

from service_helpers import TestClient, assert_problem


def items_url(id: str, ns: str) -> str:
    return f"/v1/streams/{id}/items?namespace={ns}"


def test_append_read_info(client: TestClient, ns: str) -> None:
    r = client.post(items_url("chat", ns), json={"items": [{"m": "hi"}, {"m": "ho"}]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["first_sequence"], body["last_sequence"], body["duplicate"]) == (1, 2, False)
    assert body["stream"] == "chat" and body["namespace"] == ns
    assert [(i["sequence"], i["item_id"], i["body"]) for i in body["items"]] == [
        (1, None, {"m": "hi"}),
        (2, None, {"m": "ho"}),
    ]
    r = client.post(items_url("chat", ns), json={"items": ["x"], "expected_sequence": 2})
    assert r.status_code == 201 and r.json()["first_sequence"] == 3

    page = client.get(items_url("chat", ns) + "&limit=2").json()
    assert [i["sequence"] for i in page["items"]] == [1, 2] and page["next_after"] == 2
    page = client.get(items_url("chat", ns) + "&after=2").json()
    assert [i["body"] for i in page["items"]] == ["x"] and page["next_after"] is None

    info = client.get(f"/v1/streams/chat?namespace={ns}").json()
    assert info["last_sequence"] == 3 and info["item_count"] == 3 and info["id"] == "chat"


def test_expected_sequence_conflict(client: TestClient, ns: str) -> None:
    client.post(items_url("s", ns), json={"items": [1, 2]})
    r = client.post(items_url("s", ns), json={"items": [3], "expected_sequence": 1})
    assert assert_problem(r, 409, "sequence-conflict")["current_sequence"] == 2
    # expected_sequence 0 on a new stream: the first writer.
    r = client.post(items_url("new", ns), json={"items": [1], "expected_sequence": 0})
    assert r.status_code == 201


def test_resend_is_answered_from_storage(client: TestClient, ns: str) -> None:
    batch = {"items": [{"n": 1}, {"n": 2}], "item_ids": ["a", "b"]}
    first = client.post(items_url("s", ns), json=batch)
    assert first.status_code == 201
    again = client.post(items_url("s", ns), json=batch)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert [i["sequence"] for i in again.json()["items"]] == [1, 2]
    assert client.get(f"/v1/streams/s?namespace={ns}").json()["item_count"] == 2

    # Same id, other body: 409 naming the ids and the current sequence.
    r = client.post(items_url("s", ns), json={"items": [{"n": 9}], "item_ids": ["a"]})
    body = assert_problem(r, 409, "duplicate-item")
    assert body["item_ids"] == ["a"] and body["current_sequence"] == 2
    # Stored and new ids mixed in one batch: 409 too.
    r = client.post(items_url("s", ns), json={"items": [{"n": 1}, 3], "item_ids": ["a", "c"]})
    assert assert_problem(r, 409, "duplicate-item")["item_ids"] == ["a"]


def test_stream_errors(sqlite_client: TestClient, ns: str) -> None:
    c = sqlite_client
    assert_problem(c.get(items_url("nope", ns)), 404, "not-found")
    assert_problem(c.get(f"/v1/streams/nope?namespace={ns}"), 404, "not-found")
    bad: dict[str, Any]
    for bad in (
        {"items": []},
        {"items": "abc"},
        {"items": [1], "item_ids": ["a", "b"]},
        {"items": [1, 2], "item_ids": ["a", "a"]},
        {"items": [1], "item_ids": [""]},
        {"items": [1], "expected_sequence": -1},
        {"items": [1] * 1001},
        {"items": [1], "extra": True},
    ):
        assert_problem(c.post(items_url("s", ns), json=bad), 422, "invalid-input")
    r = c.post(
        items_url("s", ns), content=b'{"items": [1]}', headers={"Content-Type": "text/plain"}
    )
    assert_problem(r, 415, "unsupported-media-type")
    assert_problem(c.get(items_url("s", ns)), 404, "not-found")
    assert_problem(c.get(items_url("s", ns) + "&limit=0"), 422, "invalid-input")
