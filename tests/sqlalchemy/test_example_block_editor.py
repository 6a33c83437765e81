"""examples/block_editor.py through FastAPI's TestClient: autosave moves the head only,
a save makes a version, and a save that lost the race gets 409 with the current
revision; raced by threads of several processes on one block, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pytest
from example_workers import editor_process, editor_session
from examples.block_editor import Base, create_app, make_engine
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

PROCESSES = 2
THREADS = 3
ROUNDS = 5


@pytest.fixture
def engine(backend_url: str) -> Iterator[Engine]:
    # The example's table has a fixed name: start from none, leave none.
    eng = make_engine(backend_url)
    Base.metadata.drop_all(eng)
    Base.metadata.create_all(eng)
    yield eng
    Base.metadata.drop_all(eng)
    eng.dispose()


def test_autosave_save_and_conflict(engine: Engine) -> None:
    with TestClient(create_app(engine)) as client:
        r = client.post("/blocks", json={"document": "doc-1", "body": "Hello"})
        assert r.status_code == 201 and r.headers["etag"] == '"1"'
        block = r.json()
        url = f"/blocks/{block['id']}"
        assert (block["revision"], block["version"]) == (1, 1)

        # Autosaves: the head and its revision move, no new version.
        for n, body in enumerate(["Hello w", "Hello wor"], start=2):
            r = client.put(f"{url}/autosave", json={"body": body, "expected_revision": n - 1})
            assert r.status_code == 200
            assert (r.json()["revision"], r.json()["version"]) == (n, 1)
        assert [v["body"] for v in client.get(f"{url}/versions").json()["versions"]] == ["Hello"]

        # An explicit save at the revision this editor last saw: version 2.
        r = client.post(
            f"{url}/save",
            json={"body": "Hello world", "summary": "done"},
            headers={"If-Match": '"3"'},
        )
        assert r.status_code == 200
        assert (r.json()["revision"], r.json()["version"]) == (4, 2)

        # Another editor, still at revision 1, saves: 409 with the current revision.
        r = client.post(f"{url}/save", json={"body": "Hi", "expected_revision": 1})
        assert r.status_code == 409
        assert r.json()["current_revision"] == 4 and r.json()["current_version"] == 2
        assert r.headers["etag"] == '"4"'
        # It merges and saves at revision 4: accepted.
        r = client.post(f"{url}/save", json={"body": "Hi world", "expected_revision": 4})
        assert (r.status_code, r.json()["revision"], r.json()["version"]) == (200, 5, 3)
        versions = client.get(f"{url}/versions").json()["versions"]
        assert [(v["version"], v["revision"], v["body"]) for v in versions] == [
            (1, 1, "Hello"),
            (2, 4, "Hello world"),
            (3, 5, "Hi world"),
        ]
        assert versions[1]["summary"] == "done"

        assert client.get("/blocks/999999").status_code == 404
        assert (
            client.post(f"{url}/save", json={"body": "x", "expected_revision": -1}).status_code
            == 422
        )
        bad = client.post(f"{url}/save", json={"body": "x"}, headers={"If-Match": "*"})
        assert bad.status_code == 400


def test_editors_in_threads_and_processes_on_one_block(backend_url: str, engine: Engine) -> None:
    results: list[Any] = []
    with TestClient(create_app(engine)) as client:
        block_id = client.post("/blocks", json={"document": "d", "body": "start"}).json()["id"]
        with ProcessPoolExecutor(PROCESSES, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(editor_process, backend_url, block_id, f"p{n}", THREADS, ROUNDS)
                for n in range(PROCESSES)
            ]
            results.extend(editor_session(client, block_id, "main", ROUNDS))
            for f in futures:
                results.extend(f.result(timeout=240))
        versions = client.get(f"/blocks/{block_id}/versions?limit=1000").json()["versions"]
        head = client.get(f"/blocks/{block_id}").json()

    unexpected = [r for r in results if r[0] == "error" or r[2] not in (200, 409)]
    assert not unexpected, unexpected[:5]
    autosaves = [r for r in results if r[0] == "autosave"]
    saved = [r for r in results if r[0] == "save" and r[2] == 200]
    refused = [r for r in results if r[0] == "save" and r[2] == 409]
    editors = PROCESSES * THREADS + 1
    assert len(autosaves) == editors * ROUNDS and all(r[2] == 200 for r in autosaves)
    assert len(saved) + len(refused) == editors * ROUNDS
    # A refusal names a head that moved past what the editor loaded.
    assert all(r[3] > r[4] for r in refused)
    # An accepted save replaced exactly the revision the editor had loaded.
    assert all(r[3] == r[4] + 1 for r in saved)
    # Every write that landed took its own consecutive revision.
    landed = autosaves + saved
    assert sorted(r[3] for r in landed) == list(range(2, len(landed) + 2))
    assert head["revision"] == len(landed) + 1
    # The history: gapless, each accepted save once, no autosave.
    assert [v["version"] for v in versions] == list(range(1, len(saved) + 2))
    recorded = {(v["body"], v["revision"]) for v in versions[1:]}
    assert recorded == {(r[1], r[3]) for r in saved}
    assert head["version"] == len(saved) + 1
