"""The real thing: ``revstore serve`` in a subprocess, over loopback.

The slow tests run two workers on one database (SQLite, PostgreSQL) under 64
concurrent clients for a few seconds: blind PUTs and If-Match writers on one hot
record, stream appends with re-sends, Idempotency-Key re-sends; then check the
database: no 5xx, numbers unique and gapless, every acknowledged write present once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from revstore import Store

STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve(
    db: str, tmp: Path, *args: str, env: dict[str, str] | None = None, workers: int = 1
) -> Iterator[tuple[str, Path]]:
    """Start ``revstore serve`` on a free loopback port; yield its URL and log file.

    With several workers, wait until every one of them has started: /readyz is
    answered by whichever worker is up first, and load sent before the others
    start would all land on that one.
    """
    port = free_port()
    log = tmp / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "revstore.cli", "serve", "--db", db, "--port", str(port), *args]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("REVSTORE_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready and len(started_workers(log)) >= workers:
                break
            assert time.monotonic() < deadline, "server did not start:\n" + log.read_text()
            time.sleep(0.1)
        yield base, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def started_workers(log: Path) -> set[int]:
    return {x["pid"] for x in log_lines(log) if x.get("message") == "Application startup complete."}


def request_pids(log: Path) -> set[int]:
    return {x["pid"] for x in log_lines(log) if x.get("event") == "request"}


def reach_every_worker(base: str, log: Path, workers: int, tries: int = 300) -> set[int]:
    """Pids of the workers that served requests, after fresh connections if needed.

    The kernel hands each new connection to one worker, so a load whose
    keep-alive connections were all accepted by one worker proves nothing about
    the other; a few hundred fresh connections reach every live worker.
    """
    for i in range(tries):
        if i % 20 == 0 and len(request_pids(log)) >= workers:
            break
        with httpx.Client(base_url=base, timeout=5) as c:
            c.get("/healthz")
    time.sleep(0.2)  # let the last access-log lines reach the file
    return request_pids(log)


def log_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        with suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def test_serve_smoke(sqlite_url: str, tmp_path: Path) -> None:
    """One worker: the command starts, answers, and logs one JSON line per request."""
    ns = f"t-{uuid.uuid4().hex[:12]}"
    with serve(sqlite_url, tmp_path, "--max-body-bytes", "2000") as (base, log):
        r = httpx.put(
            f"{base}/v1/records/doc?namespace={ns}",
            json={"content": {"a": 1}},
            headers={"X-Request-Id": "smoke-1"},
        )
        assert r.status_code == 201 and r.headers["etag"] == '"1"'
        r = httpx.put(f"{base}/v1/records/doc?namespace={ns}", json={"content": "x" * 3000})
        assert r.status_code == 413
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "revstore"
        time.sleep(0.2)
    [line] = [x for x in log_lines(log) if x.get("request_id") == "smoke-1"]
    assert line["event"] == "request" and line["status"] == 201
    assert line["route"] == "/v1/records/{id}" and line["record_id"] == "doc"


def test_serve_refuses_a_bad_url(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "revstore.cli", "serve", "--db", "nosuchdb://x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 8 and "unsupported database" in r.stderr


# ---------------------------------------------------------------- load


@dataclass
class Tally:
    statuses: dict[int, int] = field(default_factory=dict)
    writes: list[tuple[int, int, Any]] = field(default_factory=list)
    """(revision, version, content) of every acknowledged record write."""
    items: dict[str, int] = field(default_factory=dict)
    """item_id -> sequence of every acknowledged stream item."""
    replays: int = 0
    duplicates: int = 0
    put_requests: int = 0

    reads: dict[int, int] = field(default_factory=dict)

    def count(self, r: httpx.Response, read: bool = False) -> None:
        tally = self.reads if read else self.statuses
        tally[r.status_code] = tally.get(r.status_code, 0) + 1


async def blind_writer(c: httpx.AsyncClient, ns: str, w: int, until: float, t: Tally) -> None:
    i = 0
    while time.monotonic() < until:
        content = {"w": w, "i": i, "kind": "blind"}
        key = f"{ns}-b{w}-{i}" if w % 2 else None
        headers = {"Idempotency-Key": key} if key else {}
        r = await c.put(
            f"/v1/records/hot?namespace={ns}", json={"content": content}, headers=headers
        )
        t.put_requests += 1
        t.count(r)
        assert r.status_code in (200, 201), r.text
        body = r.json()
        t.writes.append((body["revision"], body["version"], content))
        if key and random.random() < 0.3:
            # A re-send, as after a lost reply: the first answer, nothing written again.
            again = await c.put(
                f"/v1/records/hot?namespace={ns}", json={"content": content}, headers=headers
            )
            t.put_requests += 1
            t.count(again)
            assert again.status_code == r.status_code and again.content == r.content
            assert again.headers["idempotent-replayed"] == "true"
            t.replays += 1
        i += 1


async def if_match_writer(c: httpx.AsyncClient, ns: str, w: int, until: float, t: Tally) -> None:
    r = await c.get(f"/v1/records/hot?namespace={ns}")
    t.count(r, read=True)
    etag = r.headers.get("etag")
    i = 0
    while time.monotonic() < until:
        content = {"w": w, "i": i, "kind": "if-match"}
        headers = {"If-Match": etag} if etag else {"If-None-Match": "*"}
        r = await c.put(
            f"/v1/records/hot?namespace={ns}", json={"content": content}, headers=headers
        )
        t.put_requests += 1
        t.count(r)
        if r.status_code == 412:
            # Lost the race: the 412 names the current revision; re-read and retry.
            r = await c.get(f"/v1/records/hot?namespace={ns}")
            t.count(r, read=True)
            etag = r.headers.get("etag") if r.status_code == 200 else None
            continue
        assert r.status_code in (200, 201), r.text
        body = r.json()
        t.writes.append((body["revision"], body["version"], content))
        etag = r.headers["etag"]
        i += 1


async def appender(c: httpx.AsyncClient, ns: str, w: int, until: float, t: Tally) -> None:
    i = 0
    while time.monotonic() < until:
        n = 1 + i % 3
        ids = [f"a{w}-{i}-{k}" for k in range(n)]
        batch = {"items": [{"w": w, "i": i, "k": k} for k in range(n)], "item_ids": ids}
        r = await c.post(f"/v1/streams/hot/items?namespace={ns}", json=batch)
        t.count(r)
        assert r.status_code == 201, r.text
        seqs = [it["sequence"] for it in r.json()["items"]]
        assert seqs == list(range(seqs[0], seqs[0] + n))  # a contiguous range
        t.items.update(zip(ids, seqs, strict=True))
        if random.random() < 0.3:
            again = await c.post(f"/v1/streams/hot/items?namespace={ns}", json=batch)
            t.count(again)
            assert again.status_code == 200 and again.json()["duplicate"] is True
            assert [it["sequence"] for it in again.json()["items"]] == seqs
            t.duplicates += 1
        i += 1


async def load(base: str, ns: str, seconds: float) -> Tally:
    t = Tally()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as c:
        until = time.monotonic() + seconds
        tasks = (
            [blind_writer(c, ns, w, until, t) for w in range(16)]
            + [if_match_writer(c, ns, w, until, t) for w in range(16)]
            + [appender(c, ns, w, until, t) for w in range(32)]
        )
        await asyncio.gather(*tasks)
    return t


def check_history(url: str, ns: str, t: Tally) -> None:
    store = Store(url)
    try:
        head = store.get("hot", namespace=ns)
        versions = []
        after = 0
        while True:
            page = store.history("hot", after=after, limit=1000, namespace=ns)
            versions += page.versions
            if page.next_after is None:
                break
            after = page.next_after
        # Gapless and unique: versions 1..N, and every write made a version.
        assert [v.version for v in versions] == list(range(1, len(versions) + 1))
        assert [v.revision for v in versions] == list(range(1, len(versions) + 1))
        assert head.revision == head.version == len(versions)
        # Every acknowledged write is there exactly once, with its content.
        assert len(t.writes) == len(versions)
        by_revision = {v.revision: v.content for v in versions}
        assert len({rev for rev, _, _ in t.writes}) == len(t.writes)
        for revision, version, content in t.writes:
            assert revision == version and by_revision[revision] == content

        items = []
        after = 0
        while True:
            rp = store.read("hot", after=after, limit=1000, namespace=ns)
            items += rp.items
            if rp.next_after is None:
                break
            after = rp.next_after
        assert [it.sequence for it in items] == list(range(1, len(items) + 1))
        stored = {it.item_id: it.sequence for it in items}
        assert len(stored) == len(items)  # no item id stored twice
        assert stored == t.items  # every acknowledged item, at its acknowledged place
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend_url", ["sqlite", "postgresql"], indirect=True)
def test_two_workers_under_64_clients(backend_url: str, tmp_path: Path) -> None:
    ns = f"t-{uuid.uuid4().hex[:12]}"
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with serve(backend_url, tmp_path, env=env, workers=2) as (base, log):
        t = asyncio.run(load(base, ns, seconds=6.0))
        metrics = httpx.get(f"{base}/metrics").text
        pids = reach_every_worker(base, log, workers=2)
    print(
        f"\n{backend_url.split(':')[0]}: writes {t.statuses}, reads {t.reads}, "
        f"{len(t.writes)} record writes, "
        f"{len(t.items)} items, {t.replays} key replays, {t.duplicates} batch re-sends"
    )
    assert set(t.statuses) <= {200, 201, 412}, t.statuses  # no 5xx, no surprise
    assert set(t.reads) <= {200, 404}, t.reads  # 404: the hot record before its first write
    assert t.writes and t.items and t.replays and t.duplicates
    check_history(backend_url, ns, t)
    # Both workers served requests, and /metrics adds them up (multiprocess mode).
    assert len(pids) == 2, pids
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('revstore_http_requests_total{method="PUT"')
    )
    assert served == t.put_requests
