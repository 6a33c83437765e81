"""Writers that race the examples (examples/ at the repository root), importable by
spawned worker processes (which inherit this process's sys.path)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.prompt_manager import PromptManager, make_engine  # noqa: E402

TAG_SETS = (("system",), ("system", "tone"), ("short", "tone"), ())
"""Each write sets one of these tag sets along with its text (write i: set i % 4)."""


def prompt_writes(url: str, prompt_id: int, tag: str, count: int) -> list[Any]:
    """``count`` saves of one prompt, text and tags, no expectation: all must succeed.
    Returns ("ok", token, revision, version, tags) per save, or ("error", text)."""
    manager = PromptManager(make_engine(url))
    acked: list[Any] = []
    try:
        for i in range(count):
            token = f"{tag}-{i}"
            tags = TAG_SETS[i % len(TAG_SETS)]
            try:
                saved = manager.update(prompt_id, text=token, tags=tags, author=tag)
                acked.append(("ok", token, saved.revision, saved.version, sorted(tags)))
            except Exception as exc:  # reported, and the test fails on it
                acked.append(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        manager.engine.dispose()
    return acked


def prompt_process(url: str, prompt_id: int, tag: str, threads: int, count: int) -> list[Any]:
    """A worker process: ``threads`` threads, each making ``count`` saves."""
    results: list[Any] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        got = prompt_writes(url, prompt_id, f"{tag}t{n}", count)
        with lock:
            results.extend(got)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


# ----------------------------------------------------------------- block editor


def editor_session(client: Any, block_id: int, tag: str, count: int) -> list[Any]:
    """One editor: ``count`` rounds of load, autosave (no expectation: always lands),
    load, then save with the revision it loaded (409 when someone wrote in between).
    Returns ("autosave"|"save", body, status, revision or current_revision, expected)."""
    out: list[Any] = []
    for i in range(count):
        body = f"{tag}-{i}-auto"
        r = client.put(f"/blocks/{block_id}/autosave", json={"body": body})
        out.append(("autosave", body, r.status_code, r.json().get("revision"), None))
        loaded = client.get(f"/blocks/{block_id}")
        expected = loaded.json()["revision"]
        body = f"{tag}-{i}-save"
        r = client.post(
            f"/blocks/{block_id}/save",
            json={"body": body, "summary": body},
            headers={"If-Match": f'"{expected}"'},
        )
        doc = r.json()
        got = doc.get("revision") if r.status_code == 200 else doc.get("current_revision")
        out.append(("save", body, r.status_code, got, expected))
    return out


def editor_process(url: str, block_id: int, tag: str, threads: int, count: int) -> list[Any]:
    """A worker process: its own app and TestClient on the shared database, with
    ``threads`` editors."""
    from examples.block_editor import create_app
    from examples.block_editor import make_engine as block_engine
    from fastapi.testclient import TestClient

    engine = block_engine(url)
    results: list[Any] = []
    lock = threading.Lock()
    try:
        with TestClient(create_app(engine)) as client:

            def run(n: int) -> None:
                try:
                    got = editor_session(client, block_id, f"{tag}t{n}", count)
                except Exception as exc:  # reported, and the test fails on it
                    got = [("error", f"{type(exc).__name__}: {exc}", 0, None, None)]
                with lock:
                    results.extend(got)

            workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
    finally:
        engine.dispose()
    return results


# ----------------------------------------------------------------- chat backend


def chat_clients(base_url: str, chat_id: int, tag: str, threads: int, count: int) -> list[Any]:
    """``threads`` clients posting ``count`` messages each to one chat; clients 2k and
    2k+1 send the same item ids (a re-send racing the original). Returns (item_id,
    status, sequence, duplicate) per request."""
    import httpx

    results: list[Any] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        got: list[Any] = []
        with httpx.Client(base_url=base_url, timeout=60) as client:
            for i in range(count):
                item = f"{tag}-pair{n // 2}-{i}"
                try:
                    r = client.post(
                        f"/chats/{chat_id}/messages",
                        json={"item_id": item, "role": "user", "text": f"{item} from {n}"},
                    )
                    doc = r.json()
                    got.append((item, r.status_code, doc.get("sequence"), doc.get("duplicate")))
                except Exception as exc:  # reported, and the test fails on it
                    got.append((item, f"{type(exc).__name__}: {exc}", None, None))
        with lock:
            results.extend(got)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results
