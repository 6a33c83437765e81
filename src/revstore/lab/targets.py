"""Targets: where the writers run and what they talk to.

- :class:`InProcessTarget`: threads in this process sharing one ``Store`` (or the
  naive strategy), any backend.
- :class:`ProcessTarget`: N worker processes (spawned), each with its threads and its
  own ``Store``: the multi-pod case. Workers record to per-worker files.
- :class:`HttpTarget`: threads in this process, one HTTP client each, against a running
  revstore service.

Each target feeds the ops of its writers into a :class:`History` and hands out a client
to read the final state with.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from revstore.errors import (
    AmbiguousCommit,
    DuplicateItem,
    NotFound,
    SequenceConflict,
    Unavailable,
    VersionConflict,
)
from revstore.lab.client import (
    Appended,
    Client,
    Head,
    Item,
    OutcomeUnknown,
    ServerError,
    Snapshot,
    item_of,
    token_of,
)
from revstore.lab.history import FileRecorder, FileTail, History
from revstore.lab.naive import STRATEGIES as NAIVE_STRATEGIES
from revstore.lab.naive import UNSUPPORTED as NAIVE_UNSUPPORTED
from revstore.lab.naive import NaiveClient
from revstore.lab.workload import Budget, Workload, Writer
from revstore.store import Store

PAGE = 1000


# ------------------------------------------------------------------------- clients


class StoreClient:
    """The library in-process (thread-safe: one Store shared by every writer)."""

    def __init__(self, store: Store, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def put(
        self,
        key: str,
        content: Mapping[str, Any],
        *,
        expected_revision: int | None = None,
        create_version: bool = True,
    ) -> Head:
        rec = self.store.put(
            key,
            dict(content),
            expected_revision=expected_revision,
            create_version=create_version,
            namespace=self.namespace,
        )
        return Head(rec.revision, rec.version, token_of(rec.content))

    def patch(self, key: str, patch: Mapping[str, Any]) -> Head:
        rec = self.store.patch(key, dict(patch), namespace=self.namespace)
        return Head(rec.revision, rec.version, token_of(rec.content))

    def get(self, key: str) -> Head:
        rec = self.store.get(key, namespace=self.namespace)
        return Head(rec.revision, rec.version, token_of(rec.content))

    def append(
        self, stream: str, items: Sequence[Mapping[str, Any]], item_ids: Sequence[str]
    ) -> Appended:
        res = self.store.append(
            stream, [dict(i) for i in items], item_ids=list(item_ids), namespace=self.namespace
        )
        return Appended(res.first_sequence, res.last_sequence, res.duplicate)

    def read(self, stream: str, after: int, limit: int) -> list[Item]:
        page = self.store.read(stream, after=after, limit=limit, namespace=self.namespace)
        return [item_of(i.sequence, i.item_id, i.body) for i in page]

    def history(self, key: str) -> list[Snapshot]:
        out: list[Snapshot] = []
        after = 0
        while True:
            page = self.store.history(key, after=after, limit=PAGE, namespace=self.namespace)
            out.extend(Snapshot(v.version, v.revision, token_of(v.content)) for v in page)
            if page.next_after is None:
                return out
            after = page.next_after

    def read_all(self, stream: str) -> list[Item]:
        out: list[Item] = []
        after = 0
        while True:
            page = self.store.read(stream, after=after, limit=PAGE, namespace=self.namespace)
            out.extend(item_of(i.sequence, i.item_id, i.body) for i in page)
            if page.next_after is None:
                return out
            after = page.next_after

    def close(self) -> None:
        self.store.close()


class HttpClient:
    """The HTTP service (one per writer thread). Maps statuses back to revstore's
    errors; a request that may have been sent but got no answer is OutcomeUnknown."""

    def __init__(self, base_url: str, timeout: float = 10.0, namespace: str | None = None):
        import httpx  # only the HTTP target needs it

        self._httpx = httpx
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.params: dict[str, str] = {"namespace": namespace} if namespace else {}

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = self._httpx
        params = {**self.params, **kwargs.pop("params", {})}
        try:
            response = self.http.request(method, path, params=params, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Never connected: the request was not sent.
            raise Unavailable(f"cannot connect: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise OutcomeUnknown(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise OutcomeUnknown(f"connection lost: {type(exc).__name__}: {exc}") from exc
        if response.status_code < 300:
            return response.json()
        self._raise(response)

    def _raise(self, response: Any) -> None:
        status = int(response.status_code)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        kind = str(body.get("type", "")).rsplit(":", 1)[-1]
        detail = str(body.get("detail", response.text[:200]))
        if status == 404:
            raise NotFound(detail)
        if status == 412 or (status == 409 and kind == "version-conflict"):
            exc = VersionConflict(detail, None)
            # The problem body tells the current revision: no re-read needed.
            exc.revision_hint = body.get("current_revision")  # type: ignore[attr-defined]
            raise exc
        if status == 409 and kind == "sequence-conflict":
            raise SequenceConflict(detail, int(body.get("current_sequence") or 0))
        if status == 409 and kind == "duplicate-item":
            raise DuplicateItem(detail, list(body.get("item_ids") or []))
        if status == 503:
            if kind == "ambiguous-commit" or body.get("may_have_landed"):
                raise AmbiguousCommit(detail)
            raise Unavailable(detail)
        raise ServerError(status, f"{kind or 'error'}: {detail}")

    @staticmethod
    def _record_path(key: str) -> str:
        return f"/v1/records/{quote(key, safe='')}"

    @staticmethod
    def _stream_path(key: str) -> str:
        return f"/v1/streams/{quote(key, safe='')}/items"

    @staticmethod
    def _head(body: Any) -> Head:
        return Head(int(body["revision"]), int(body["version"]), token_of(body.get("content")))

    def put(
        self,
        key: str,
        content: Mapping[str, Any],
        *,
        expected_revision: int | None = None,
        create_version: bool = True,
    ) -> Head:
        headers = {}
        if expected_revision == 0:
            headers["If-None-Match"] = "*"
        elif expected_revision is not None:
            headers["If-Match"] = f'"{expected_revision}"'
        body = {"content": dict(content), "create_version": create_version}
        return self._head(self._send("PUT", self._record_path(key), json=body, headers=headers))

    def patch(self, key: str, patch: Mapping[str, Any]) -> Head:
        import json

        return self._head(
            self._send(
                "PATCH",
                self._record_path(key),
                content=json.dumps(dict(patch)),
                headers={"Content-Type": "application/merge-patch+json"},
            )
        )

    def get(self, key: str) -> Head:
        return self._head(self._send("GET", self._record_path(key)))

    def append(
        self, stream: str, items: Sequence[Mapping[str, Any]], item_ids: Sequence[str]
    ) -> Appended:
        body = {"items": [dict(i) for i in items], "item_ids": list(item_ids)}
        out = self._send("POST", self._stream_path(stream), json=body)
        return Appended(
            int(out["first_sequence"]), int(out["last_sequence"]), bool(out.get("duplicate"))
        )

    def read(self, stream: str, after: int, limit: int) -> list[Item]:
        out = self._send(
            "GET", self._stream_path(stream), params={"after": str(after), "limit": str(limit)}
        )
        return [item_of(int(i["sequence"]), i.get("item_id"), i.get("body")) for i in out["items"]]

    def history(self, key: str) -> list[Snapshot]:
        snaps: list[Snapshot] = []
        after = 0
        while True:
            out = self._send(
                "GET",
                f"{self._record_path(key)}/versions",
                params={"after": str(after), "limit": str(PAGE)},
            )
            snaps.extend(
                Snapshot(int(v["version"]), int(v["revision"]), token_of(v.get("content")))
                for v in out["versions"]
            )
            if out.get("next_after") is None:
                return snaps
            after = int(out["next_after"])

    def read_all(self, stream: str) -> list[Item]:
        items: list[Item] = []
        after = 0
        while True:
            out = self._send(
                "GET", self._stream_path(stream), params={"after": str(after), "limit": str(PAGE)}
            )
            items.extend(
                item_of(int(i["sequence"]), i.get("item_id"), i.get("body")) for i in out["items"]
            )
            if out.get("next_after") is None:
                return items
            after = int(out["next_after"])

    def close(self) -> None:
        self.http.close()


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """How to reach the target; plain data so worker processes can rebuild it."""

    db: str | None = None
    url: str | None = None
    strategy: str | None = None
    namespace: str = "revstore-lab"
    timeout: float = 10.0

    @property
    def naive(self) -> bool:
        return self.strategy in NAIVE_STRATEGIES

    @property
    def unsupported(self) -> set[str]:
        return set(NAIVE_UNSUPPORTED) if self.naive else set()


@dataclass(slots=True)
class SharedClient:
    """A client for a whole process plus its retry counter (the Store's RetryStats)."""

    client: Client
    retries: Callable[[], int]
    backend: str
    strategy: str


def open_db_client(spec: TargetSpec, pool_size: int = 16) -> SharedClient:
    assert spec.db is not None
    if spec.naive:
        assert spec.strategy is not None
        naive = NaiveClient(spec.db, spec.namespace, spec.strategy, pool_size=pool_size)
        return SharedClient(naive, lambda: 0, naive.engine.dialect.name, spec.strategy)
    # Strategies other than naive are the Store's own: the lab is thin over the core.
    store = Store(spec.db, strategy=spec.strategy, pool_size=pool_size)
    store.create_schema()
    return SharedClient(
        StoreClient(store, spec.namespace),
        lambda: store.stats.retries,
        store.backend_name,
        store.strategy,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    writers: int
    """Threads (per process for ProcessTarget)."""
    seed: int
    ops: int | None
    """Ops in all (None: only the deadline or Ctrl-C stops the writers)."""


# ------------------------------------------------------------------------- targets


class Target:
    """Runs writers and feeds their ops into a History."""

    description = "target"
    backend = "?"
    strategy = "?"

    def prepare(self, history: History, workload: Workload, plan: Plan) -> None:
        """Get ready to run (worker processes start and connect here)."""
        raise NotImplementedError

    def go(self, t0: float, deadline: float | None) -> None:
        """Start the writers: op times are relative to ``t0``; they stop at ``deadline``
        (a time.monotonic() value; None: only --ops or Ctrl-C stops them)."""
        raise NotImplementedError

    def poll(self) -> None:
        """Collect what writers recorded since the last poll (process workers)."""

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def join(self, timeout: float) -> None:
        raise NotImplementedError

    def retries(self) -> int:
        return 0

    def incidents(self) -> list[str]:
        """Problems of the run itself (a worker that crashed), reported as failures."""
        return []

    def final_client(self) -> Client:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the target holds."""


class ThreadTarget(Target):
    """Writers as threads in this process, each with a client from ``client_for``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._history: History | None = None
        self._workload: Workload | None = None
        self._plan: Plan | None = None

    def client_for(self, writer: int) -> Client:
        raise NotImplementedError

    def prepare(self, history: History, workload: Workload, plan: Plan) -> None:
        self._history, self._workload, self._plan = history, workload, plan

    def go(self, t0: float, deadline: float | None) -> None:
        history, workload, plan = self._history, self._workload, self._plan
        assert history is not None and workload is not None and plan is not None
        budget = Budget(plan.ops)

        def should_stop() -> bool:
            return self._stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

        for n in range(plan.writers):
            writer = Writer(self.client_for(n), history, workload, f"w{n}", plan.seed, t0)
            thread = threading.Thread(
                target=writer.run, args=(should_stop, budget), name=f"lab-w{n}", daemon=True
            )
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._history is not None and self.alive():
            # A writer stuck in a call: its op's effect is unknown.
            self._history.close_pending("Abandoned", "still in flight when the run ended")


class InProcessTarget(ThreadTarget):
    def __init__(self, spec: TargetSpec, writers: int) -> None:
        super().__init__()
        self.spec = spec
        self.shared = open_db_client(spec, pool_size=max(4, writers))
        self.backend, self.strategy = self.shared.backend, self.shared.strategy
        self.description = f"in-process threads, {self.backend}"

    def client_for(self, writer: int) -> Client:
        return self.shared.client

    def retries(self) -> int:
        return self.shared.retries()

    def final_client(self) -> Client:
        return self.shared.client

    def close(self) -> None:
        self.shared.client.close()


class HttpTarget(ThreadTarget):
    def __init__(self, spec: TargetSpec) -> None:
        super().__init__()
        assert spec.url is not None
        self.spec = spec
        self.url = spec.url
        self.backend, self.strategy = "http", "service"
        self.description = f"HTTP service at {self.url}"
        self._clients: list[HttpClient] = []

    def client_for(self, writer: int) -> Client:
        client = HttpClient(self.url, self.spec.timeout, self.spec.namespace)
        self._clients.append(client)
        return client

    def final_client(self) -> Client:
        client = HttpClient(self.url, max(self.spec.timeout, 30.0), self.spec.namespace)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for c in self._clients:
            c.close()


# ------------------------------------------------------------------------- processes


def _worker_main(
    spec: TargetSpec,
    workload: Workload,
    name: str,
    writers: int,
    seed: int,
    ops: int | None,
    clock: Any,
    go: Any,
    stop: Any,
    path: str,
) -> None:
    """Entry point of a worker process (spawned: it imports this module afresh)."""
    # Ctrl-C goes to the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    recorder = FileRecorder(Path(path))
    shared = open_db_client(spec, pool_size=max(4, writers))
    budget = Budget(ops)
    recorder.ready(name)
    # Start together: a worker still importing must not shorten the others' run.
    while not go.wait(0.5):
        if stop.is_set():
            return
    t0, end = float(clock[0]), float(clock[1])
    deadline = None if end < 0 else end

    def should_stop() -> bool:
        return bool(stop.is_set()) or (deadline is not None and time.monotonic() >= deadline)

    threads = []
    for n in range(writers):
        writer = Writer(shared.client, recorder, workload, f"{name}w{n}", seed, t0)
        threads.append(threading.Thread(target=writer.run, args=(should_stop, budget), daemon=True))
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        recorder.stats(name, shared.retries())
        for t in threads:
            t.join(0.25)
    recorder.stats(name, shared.retries())
    recorder.close()
    shared.client.close()


@dataclass(slots=True)
class _Worker:
    name: str
    process: BaseProcess
    tail: FileTail
    ops: int | None
    killed: bool = False


class ProcessTarget(Target):
    """Worker processes (spawn), each with ``writers`` threads and its own Store."""

    def __init__(self, spec: TargetSpec, processes: int) -> None:
        self.spec = spec
        self.processes = processes
        # Opened here once: creates the schema before workers race to, and reads the
        # final state afterwards.
        self.shared = open_db_client(spec, pool_size=4)
        self.backend, self.strategy = self.shared.backend, self.shared.strategy
        self.description = f"{processes} worker processes, {self.backend}"
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = self._ctx.Event()
        self._go = self._ctx.Event()
        self._clock = self._ctx.Array("d", [0.0, -1.0])
        self._dir = Path(tempfile.mkdtemp(prefix="revstore-lab-"))
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._next = 0
        self._history: History | None = None
        self._workload: Workload | None = None
        self._plan: Plan | None = None

    def _spawn(self, ops: int | None) -> _Worker:
        assert self._history and self._workload and self._plan
        name = f"p{self._next}"
        self._next += 1
        path = self._dir / f"{name}.jsonl"
        plan = self._plan
        process = self._ctx.Process(
            target=_worker_main,
            args=(
                self.spec,
                self._workload,
                name,
                plan.writers,
                plan.seed,
                ops,
                self._clock,
                self._go,
                self._stop,
                str(path),
            ),
            name=f"revstore-lab-{name}",
            daemon=True,
        )
        process.start()
        worker = _Worker(name, process, FileTail(path, self._history), ops)
        self._workers.append(worker)
        return worker

    def prepare(self, history: History, workload: Workload, plan: Plan) -> None:
        self._history, self._workload, self._plan = history, workload, plan
        with self._lock:
            for n in range(self.processes):
                share = (
                    None
                    if plan.ops is None
                    else plan.ops // self.processes + (1 if n < plan.ops % self.processes else 0)
                )
                self._spawn(share)
        # Wait until every worker has imported, connected and created its Store.
        limit = time.monotonic() + 120
        while time.monotonic() < limit:
            self.poll()
            names = {w.name for w in self._workers}
            if names <= history.ready or not all(w.process.is_alive() for w in self._workers):
                return
            time.sleep(0.05)

    def go(self, t0: float, deadline: float | None) -> None:
        self._clock[0] = t0
        self._clock[1] = -1.0 if deadline is None else deadline
        self._go.set()

    def poll(self) -> None:
        with self._lock:
            for w in self._workers:
                w.tail.poll()

    def alive(self) -> bool:
        with self._lock:
            return any(w.process.is_alive() for w in self._workers)

    def stop(self) -> None:
        self._stop.set()

    def kill_random_worker(self, rng: random.Random) -> str | None:
        """kill -9 one live worker and start a replacement with what is left of its
        budget. Its ops in flight stay pending: indeterminate."""
        with self._lock:
            live = self._running_workers()
            if not live or self._stop.is_set():
                return None
            victim = rng.choice(live)
            self._kill(victim)
            self._spawn(self._left(victim))
            return victim.name

    def restart_workers(self, timeout: float = 120.0) -> list[str]:
        """kill -9 every running worker at once, then start as many new ones, each with
        what is left of the budget of the one it replaces, and wait (up to ``timeout``)
        until they run: SQLite's "restart the database" (it lives inside the writers).
        Returns the names of the killed."""
        with self._lock:
            live = self._running_workers()
            if not live or self._stop.is_set():
                return []
            # All killed before any is replaced: no writer of the old generation
            # overlaps the new one, as when a server goes down and comes back.
            for victim in live:
                self._kill(victim)
            started = [self._spawn(self._left(victim)) for victim in live]
        assert self._history is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            self.poll()
            if all(w.name in self._history.ready or not w.process.is_alive() for w in started):
                break
            time.sleep(0.05)
        return [w.name for w in live]

    def _running_workers(self) -> list[_Worker]:
        """Workers that are running ops: killing one still starting proves nothing."""
        assert self._history is not None
        return [
            w
            for w in self._workers
            if w.process.is_alive() and not w.killed and w.name in self._history.ready
        ]

    def _kill(self, victim: _Worker) -> None:
        pid = victim.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        victim.process.join(5)
        victim.killed = True
        victim.tail.poll()

    def _left(self, victim: _Worker) -> int | None:
        """What is left of a killed worker's op budget (None: no budget)."""
        assert self._history is not None
        if victim.ops is None:
            return None
        done = self._history.completed_by(self._clients_of(victim.name))
        return max(0, victim.ops - done)

    def _clients_of(self, name: str) -> set[str]:
        assert self._plan is not None
        return {f"{name}w{n}" for n in range(self._plan.writers)}

    def join(self, timeout: float) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for w in list(self._workers):
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()  # stuck: its in-flight ops become indeterminate
                w.process.join(5)
        self.poll()
        assert self._history is not None
        for w in self._workers:
            if w.killed:
                self._history.close_pending(
                    "WorkerKilled", "in flight when its worker was killed", self._clients_of(w.name)
                )
        self._history.close_pending("Abandoned", "in flight when the run ended")

    def retries(self) -> int:
        assert self._history is not None
        return sum(self._history.store_retries.values())

    def incidents(self) -> list[str]:
        return [
            f"worker process {w.name} exited with status {w.process.exitcode} "
            "(not killed by the lab): its writers did not run to the end"
            for w in self._workers
            if not w.killed and w.process.exitcode not in (0, None)
        ]

    def final_client(self) -> Client:
        return self.shared.client

    @property
    def killed(self) -> int:
        return sum(1 for w in self._workers if w.killed)

    def close(self) -> None:
        self.shared.client.close()
        shutil.rmtree(self._dir, ignore_errors=True)
