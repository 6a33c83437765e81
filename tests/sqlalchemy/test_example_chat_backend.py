"""examples/chat_backend.py served by uvicorn with several workers, messages posted by
threads of several client processes, each message re-sent by a second client at the
same time: every message is stored once, the chat's sequence is gapless, and both
senders of a message are told the same sequence."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import pytest
from example_workers import chat_clients
from examples.chat_backend import Base, create_schema
from sqlalchemy import create_engine

from revstore.config import parse_url

ROOT = Path(__file__).resolve().parents[2]
UVICORN_WORKERS = 2
PROCESSES = 2
THREADS = 4  # two pairs of clients per process, each pair sending the same item ids
MESSAGES = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(backend_url: str) -> Iterator[str]:
    # The example's tables have fixed names: start from none, leave none.
    engine = create_engine(parse_url(backend_url).sqlalchemy())
    Base.metadata.drop_all(engine)
    create_schema(backend_url)
    port = free_port()
    env = {
        **os.environ,
        "REVSTORE_URL": backend_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "examples.chat_backend:app_from_env",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(UVICORN_WORKERS),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start in 60 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_workers_append_with_resends(server: str) -> None:
    chat_id = httpx.post(f"{server}/chats", json={"title": "race"}).json()["id"]
    other = httpx.post(f"{server}/chats", json={"title": "other"}).json()["id"]
    results: list[Any] = []
    with ProcessPoolExecutor(PROCESSES, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(chat_clients, server, chat_id, f"p{n}", THREADS, MESSAGES)
            for n in range(PROCESSES)
        ]
        # Another chat at the same time: its numbers are its own.
        results_other = chat_clients(server, other, "o", 2, MESSAGES)
        for f in futures:
            results.extend(f.result(timeout=240))

    bad = [r for r in results + results_other if r[1] != 201]
    assert not bad, bad[:5]
    stored = httpx.get(f"{server}/chats/{chat_id}/messages?limit=1000").json()["messages"]
    items = PROCESSES * (THREADS // 2) * MESSAGES
    assert [m["sequence"] for m in stored] == list(range(1, items + 1)), "gap or duplicate"
    assert len({m["item_id"] for m in stored}) == items
    # Both senders of an item were told the sequence it is stored at; one of them wrote.
    seq_of = {m["item_id"]: m["sequence"] for m in stored}
    by_item: dict[str, list[Any]] = defaultdict(list)
    for item, _, sequence, duplicate in results:
        by_item[item].append((sequence, duplicate))
    assert set(by_item) == set(seq_of)
    for item, answers in by_item.items():
        assert [s for s, _ in answers] == [seq_of[item]] * 2, (item, answers)
        assert sorted(d for _, d in answers) == [False, True], (item, answers)
    mine = httpx.get(f"{server}/chats/{other}/messages?limit=1000").json()["messages"]
    assert [m["sequence"] for m in mine] == list(range(1, MESSAGES + 1))
    assert (
        httpx.post(
            f"{server}/chats/999999/messages", json={"role": "user", "text": "x"}
        ).status_code
        == 404
    )
