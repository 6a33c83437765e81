"""Idempotency-Key survives what happens between a write's COMMIT and the storing of
its reply: a worker killed right after the write, a connection lost during COMMIT
(whether or not the COMMIT landed), a database session killed mid-write, and many
re-sends at once. In every case a re-send with the same key writes nothing twice; a
stream batch without item ids (which nothing else deduplicates) is the sharpest case."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from cut_proxy import CutProxy
from service_helpers import AppFactory, TestClient, assert_problem
from sqlalchemy import create_engine, text

from revstore import RetryPolicy, Store
from revstore.idempotency import lease_for
from revstore.service import Settings, create_app
from revstore.service.idempotency import CALLS_PER_REQUEST, IdempotencyStore

LEASE = 0.5
"""A short lease, so a test can show that even an expired lease re-runs nothing."""

BATCH = {"items": [{"n": 1}, {"n": 2}]}


def stream_url(ns: str, stream: str = "s") -> str:
    return f"/v1/streams/{stream}/items?namespace={ns}"


# ---------------------------------------------------------------- a worker killed

_KILLED_WORKER = """
import json, os, signal, sys
from fastapi.testclient import TestClient
from revstore import AsyncStore
from revstore.service import Settings, create_app

url, ns, key, op, lease, batch = sys.argv[1:7]

class DiesAfterWriting(AsyncStore):
    # The write (and its key) committed; the worker dies before storing the reply.
    async def append(self, *a, **kw):
        await super().append(*a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)

    async def put(self, *a, **kw):
        await super().put(*a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)

app = create_app(lambda: DiesAfterWriting(url), Settings(idempotency_lease=float(lease)))
with TestClient(app) as client:
    headers = {"Idempotency-Key": key}
    if op == "append":
        client.post(f"/v1/streams/s/items?namespace={ns}", json=json.loads(batch), headers=headers)
    else:
        client.put(f"/v1/records/doc?namespace={ns}", json={"content": {"v": 1}}, headers=headers)
print("the worker survived its write", flush=True)
sys.exit(3)
"""


def _run_killed_worker(url: str, ns: str, key: str, op: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WORKER, url, ns, key, op, str(LEASE), json.dumps(BATCH)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr[-2000:])


@pytest.mark.parametrize("op", ["append", "put"])
def test_a_worker_killed_after_its_write_is_answered_from_the_stored_result(
    backend_url: str, make_client: AppFactory, ns: str, key: str, op: str
) -> None:
    _run_killed_worker(backend_url, ns, key, op)
    time.sleep(LEASE + 0.3)  # the dead worker's lease is over: nothing may re-run anyway
    store = Store(backend_url)
    try:
        c = make_client(store, idempotency_lease=LEASE, idempotency_wait=10)
        h = {"Idempotency-Key": key}

        def send() -> httpx.Response:
            if op == "append":
                return c.post(stream_url(ns), json=BATCH, headers=h)
            return c.put(f"/v1/records/doc?namespace={ns}", json={"content": {"v": 1}}, headers=h)

        r = send()
        if op == "append":
            assert r.status_code == 201, r.text
            body = r.json()
            assert (body["first_sequence"], body["last_sequence"]) == (1, 2)
            assert [i["body"] for i in body["items"]] == BATCH["items"]
            info = store.stream_info("s", namespace=ns)
            assert (info.last_sequence, info.item_count) == (2, 2)
        else:
            assert r.status_code == 201, r.text
            assert r.headers["etag"] == '"1"' and r.json()["revision"] == 1
            assert r.headers["location"] == f"/v1/records/doc?namespace={ns}"
            assert store.get("doc", namespace=ns).revision == 1
        assert r.headers["idempotent-replayed"] == "true"
        # The rebuilt reply is now stored: later re-sends get the same bytes.
        again = send()
        assert (again.status_code, again.content) == (r.status_code, r.content)
    finally:
        store.close()


def test_concurrent_resends_after_a_killed_worker_write_nothing(
    backend_url: str, ns: str, key: str
) -> None:
    _run_killed_worker(backend_url, ns, key, "append")
    stores = [Store(backend_url), Store(backend_url)]
    clients = [
        TestClient(create_app(s, Settings(idempotency_lease=LEASE)), raise_server_exceptions=False)
        for s in stores
    ]
    for c in clients:
        c.__enter__()  # one loop per app, serving every thread's requests
    try:
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(
                    lambda i: clients[i % 2].post(
                        stream_url(ns), json=BATCH, headers={"Idempotency-Key": key}
                    ),
                    range(16),
                )
            )
        assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
        assert len({r.content for r in responses}) == 1
        assert all(r.headers["idempotent-replayed"] == "true" for r in responses)
        assert stores[0].stream_info("s", namespace=ns).item_count == 2
    finally:
        for c in clients:
            c.__exit__(None, None, None)
        for s in stores:
            s.close()


# ---------------------------------------------------------------- a connection lost


@pytest.fixture(params=["postgresql", "mysql"])
def proxy(request: pytest.FixtureRequest, server_url: Any) -> Iterator[CutProxy]:
    p = CutProxy(server_url(request.param))
    yield p
    p.close()


@pytest.mark.parametrize("cut", ["reply", "request"])
def test_a_connection_lost_during_commit_never_writes_twice(
    proxy: CutProxy, make_client: AppFactory, ns: str, key: str, cut: str
) -> None:
    """``reply``: the COMMIT landed but its reply was lost; ``request``: it never
    arrived. Either way the client sees a 503 that "may have landed", and the re-send
    with the same key leaves exactly one batch."""
    store = Store(proxy.url)
    try:
        c = make_client(store)
        store.create_schema()
        h = {"Idempotency-Key": key}
        proxy.arm(cut)
        r = c.post(stream_url(ns), json=BATCH, headers=h)
        assert proxy.cuts == 1
        body = assert_problem(r, 503, "ambiguous-commit")
        assert body["may_have_landed"] is True
        again = c.post(stream_url(ns), json=BATCH, headers=h)
        assert again.status_code == 201, again.text
        assert again.json()["first_sequence"] == 1 and again.json()["last_sequence"] == 2
        # Landed: the write's own result, replayed. Not landed: the first real run.
        replayed = again.headers.get("idempotent-replayed") == "true"
        assert replayed is (cut == "reply")
        info = store.stream_info("s", namespace=ns)
        assert (info.last_sequence, info.item_count) == (2, 2)
        third = c.post(stream_url(ns), json=BATCH, headers=h)
        assert (third.status_code, third.content) == (201, again.content)
        assert store.stream_info("s", namespace=ns).item_count == 2
    finally:
        store.close()


def _holder_and_killer(url: str, backend: str, ns: str) -> tuple[Any, str, str, str]:
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
            "mysql://", "mysql+pymysql://", 1
        )
    )
    if backend == "postgresql":
        # Other tests share the server: only the session our holder blocks.
        find = (
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'revstore' "
            "AND :holder = ANY(pg_blocking_pids(pid))"
        )
        kill = "SELECT pg_terminate_backend(:pid)"
        alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"
    else:
        # PyMySQL sends the values inline: the namespace singles our session out.
        find = (
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE "
            f"'%revstore_streams%{ns}%' AND ID <> CONNECTION_ID() "
            "AND :holder = :holder"
        )
        kill = "KILL CONNECTION :pid"
        alive = "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = :pid"
    return engine, find, kill, alive


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_session_killed_mid_write_writes_once(
    server_url: Any, make_client: AppFactory, ns: str, key: str, backend: str
) -> None:
    """The keyed append waits on the stream's row lock (held by another session); its
    database session is killed there (pg_terminate_backend / KILL). The Store re-runs
    the transaction on a fresh connection: one batch, one applied key."""
    url = server_url(backend)
    store = Store(url)
    store.append("s", [{"n": 0}], namespace=ns)  # the stream row exists: lock it
    engine, find, kill, alive = _holder_and_killer(url, backend, ns)
    holder = engine.connect()
    killer = engine.connect()
    holder_id = holder.execute(
        text("SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()")
    ).scalar()
    result: dict[str, httpx.Response] = {}
    try:
        c = make_client(store)
        holder.execute(
            text("SELECT last_sequence FROM revstore_streams WHERE namespace = :ns FOR UPDATE"),
            {"ns": ns},
        )
        t = threading.Thread(
            target=lambda: result.setdefault(
                "r", c.post(stream_url(ns), json=BATCH, headers={"Idempotency-Key": key})
            )
        )
        t.start()
        victims: list[int] = []
        for _ in range(400):
            victims = [int(r[0]) for r in killer.execute(text(find), {"holder": holder_id})]
            # A new transaction per look: PostgreSQL's pg_stat_activity is a snapshot
            # taken once per transaction, and the app may connect after the first look.
            killer.rollback()
            if victims:
                break
            time.sleep(0.05)
        assert len(victims) == 1, victims
        killer.execute(text(kill.replace(":pid", str(victims[0]))))
        killer.commit()
        # Termination is asynchronous: keep the lock until the session is gone, so the
        # killed attempt can only have failed before its COMMIT.
        for _ in range(400):
            if not killer.execute(text(alive), {"pid": victims[0]}).scalar():
                break
            killer.commit()
            time.sleep(0.05)
        else:
            raise AssertionError("the killed session is still there")
        holder.rollback()  # release the lock: the re-run goes through
        t.join(60)
        r = result["r"]
        assert r.status_code == 201, r.text
        assert (r.json()["first_sequence"], r.json()["last_sequence"]) == (2, 3)
        again = c.post(stream_url(ns), json=BATCH, headers={"Idempotency-Key": key})
        assert again.content == r.content and again.headers["idempotent-replayed"] == "true"
        assert store.stream_info("s", namespace=ns).item_count == 3
    finally:
        holder.close()
        killer.close()
        engine.dispose()
        store.close()


# ---------------------------------------------------------------- the rebuilt reply


REQUESTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "create": ("PUT", "/v1/records/new", {"json": {"content": {"v": 1}}}),
    "put": ("PUT", "/v1/records/doc", {"json": {"content": {"v": 2}, "author": "ann"}}),
    "unchanged": ("PUT", "/v1/records/doc", {"json": {"content": {"v": 1}}}),
    "patch": (
        "PATCH",
        "/v1/records/doc",
        {
            "content": b'{"w": [1, 2.5, "\\u00e9"]}',
            "headers": {"Content-Type": "application/merge-patch+json"},
        },
    ),
    "restore": ("POST", "/v1/records/doc/restore", {"json": {"version": 1}}),
    "delete": ("DELETE", "/v1/records/doc", {}),
    "append": ("POST", "/v1/streams/s/items", {"json": {"items": [{"a": 1}, [2], "3", None]}}),
    "append-ids": ("POST", "/v1/streams/s/items", {"json": {"items": [1], "item_ids": ["i"]}}),
    "append-resent": ("POST", "/v1/streams/t/items", {"json": {"items": [0], "item_ids": ["x"]}}),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_rebuilt_reply_is_the_first_reply(
    store: Store, make_client: AppFactory, ns: str, key: str, name: str, monkeypatch: Any
) -> None:
    """The first request's reply is never stored (as if its worker died right after
    answering): the re-send's reply, rebuilt from the stored result, is the same
    status, headers and body bytes."""
    store.put("doc", {"v": 1}, namespace=ns)
    store.append("t", [0], item_ids=["x"], namespace=ns)
    c = make_client(store)
    method, path, options = REQUESTS[name]
    kw = dict(options)
    headers = {"Idempotency-Key": key, **kw.pop("headers", {})}
    url = f"{path}?namespace={ns}"

    async def lost(*a: Any) -> bool:
        return True

    with monkeypatch.context() as m:
        m.setattr(IdempotencyStore, "complete", lost)
        first = c.request(method, url, headers=headers, **kw)
    assert first.status_code < 300 and "idempotent-replayed" not in first.headers
    again = c.request(method, url, headers=headers, **kw)
    assert again.headers["idempotent-replayed"] == "true"
    assert (again.status_code, again.content) == (first.status_code, first.content)
    for h in ("etag", "location", "content-type"):
        assert again.headers.get(h) == first.headers.get(h), h


def test_the_lease_is_computed_from_the_retry_policy(sqlite_url: str) -> None:
    """A live request must never lose its key to a re-send: the default lease
    outlives every retry budget of the Store calls a request makes while holding it."""
    for policy in (RetryPolicy(), RetryPolicy(max_seconds=100, max_wait=2)):
        store = Store(sqlite_url, retry=policy)
        try:
            # The app's AsyncStore (opened at startup) takes the Store's policy.
            app = create_app(store, Settings())
            with TestClient(app):
                lease = app.state.services.idempotency.lease
            assert lease == lease_for(policy, CALLS_PER_REQUEST)
            assert lease > CALLS_PER_REQUEST * policy.budget > policy.max_seconds
            # An explicit lease (tests, special deployments) wins.
            explicit = create_app(store, Settings(idempotency_lease=7))
            with TestClient(explicit):
                assert explicit.state.services.idempotency.lease == 7
        finally:
            store.close()
