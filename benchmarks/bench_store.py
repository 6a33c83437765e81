"""Write throughput of revstore, per backend and strategy, beside pgbench's ceiling.

Records: writes/s of ``Store.put`` with 16 concurrent writers on one record ("hot") and
on 1,000 records ("spread"). Streams: items/s of ``Store.append`` in batches of 1 and
10 items, on one stream and on 1,000 streams. On PostgreSQL the same run also drives
``pgbench -M prepared`` with 16 clients through a script of the very statement one
revstore write sends (benchmarks/pgbench/*.sql): the database's own ceiling for that
work. Every revstore figure on PostgreSQL is reported as a ratio to it.

``--raw`` adds, on each backend, the loop a user writes by hand with the same driver
(sqlite3, PyMySQL, psycopg: one write per transaction, same durability) on the same
tables, and reports every revstore rate divided by it; ``counter-solo`` is the counter
strategy with ``group_commit=False``. With group commit, the batch sizes of the window
are reported too; after each run its rows are checked for gaps and lost writes.

The writers are worker processes (``--layouts``, PROCSxTHREADS), each with its own
``Store``: Python's GIL would cap a single process far below what the database can
take. Each scenario creates its records/streams under a fresh namespace, warms up,
then counts the operations that complete inside the measured window.

CPU is accounted per process from /proc (Linux): the client processes (workers or
pgbench), the PostgreSQL backends serving them, and whatever else ran on the machine
meanwhile ("other"), so a figure taken while another program used the CPU is visible
as such, and can be re-measured (``--attempts``).

Run ``python benchmarks/bench_store.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
PGBENCH_DIR = HERE / "pgbench"

DEFAULT_PG_URL = os.environ.get(
    "REVSTORE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
DEFAULT_MYSQL_URL = os.environ.get("REVSTORE_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")

BACKENDS = ("sqlite", "postgresql", "mysql")
STRATEGIES = ("counter", "lock", "optimistic")
FLOOR = "psycopg-only"
"""Pseudo-strategy of --raw on PostgreSQL: the fast-path statements through psycopg alone."""
RAW = {"postgresql": FLOOR, "sqlite": "sqlite3-only", "mysql": "pymysql-only"}
"""The raw loop per backend (--raw, alias --floor): the write a user codes by hand with
the same Python driver revstore uses, one write per transaction, the same durability."""
SOLO = "-solo"
"""Strategy suffix: that strategy with ``Store(..., group_commit=False)`` (e.g.
``counter-solo``), the code before group commit, beside it in the same run."""
ASYNC = "-async"
"""Strategy suffix: that strategy through ``AsyncStore`` (e.g. ``counter-async``). Each
worker process runs its writers as tasks of one event loop instead of threads, as an
asyncio service would: ``2x8`` is two processes of eight tasks."""

# Payloads: a record of ~190 bytes of canonical JSON, stream items of ~90 bytes. The
# pgbench scripts are given the same texts (with the per-write counter at 0).
RECORD_BODY = "x" * 120
ITEM_BODY = "y" * 64


def record_content(n: int, tag: str) -> dict[str, Any]:
    return {"author": "bench", "body": RECORD_BODY, "n": n, "tags": ["a", "b"], "w": tag}


def item_content(n: int, tag: str) -> dict[str, Any]:
    return {"body": ITEM_BODY, "k": n, "w": tag}


def canonical(value: Any) -> str:
    """The canonical JSON text revstore stores (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "records" | "streams"
    keys: int  # 1 = hot; N = spread over N records / streams
    batch: int = 1  # items per append (streams)

    @property
    def unit(self) -> str:
        return "writes/s" if self.kind == "records" else "items/s"


def scenarios(spread: int) -> list[Scenario]:
    return [
        Scenario("records-hot", "records", 1),
        Scenario("records-spread", "records", spread),
        Scenario("streams-hot-b1", "streams", 1, 1),
        Scenario("streams-hot-b10", "streams", 1, 10),
        Scenario("streams-spread-b1", "streams", spread, 1),
        Scenario("streams-spread-b10", "streams", spread, 10),
    ]


# ------------------------------------------------------------------------- workers


@dataclass
class RunResult:
    """What one worker process measured inside the window."""

    ops: int = 0
    items: int = 0
    acked: int = 0  # every operation that succeeded, in the window or not (--check)
    errors: Counter[str] = field(default_factory=Counter)
    warmup_errors: Counter[str] = field(default_factory=Counter)
    warmup_ops: int = 0
    latencies: list[float] = field(default_factory=list)
    retries: int = 0
    # Group-commit counters inside the window (GroupCommitStats), None without it.
    batch_stats: dict[str, int] | None = None


class AsyncWorkerStore:
    """An ``AsyncStore`` on an event loop of its own thread, with what the worker reads
    of a store (``backend``, ``stats``) and a blocking ``call``."""

    def __init__(self, url: str, strategy: str, threads: int) -> None:
        from revstore import AsyncStore  # imported in the worker, after the spawn

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> Any:
            # Made inside the loop: its connections and locks belong to it.
            return AsyncStore(url, strategy=strategy, pool_size=threads, max_overflow=threads)

        self.aio = self.call(make())
        self.backend, self.stats = self.aio.backend, self.aio.stats
        self.backend_name = self.aio.backend_name

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        try:
            self.call(self.aio.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


def _open_store(url: str, strategy: str | None, threads: int) -> Any:
    from revstore import Store  # imported in the worker, after the spawn

    if strategy is not None and strategy.endswith(ASYNC):
        return AsyncWorkerStore(url, strategy.removesuffix(ASYNC), max(threads, 1))
    options: dict[str, Any] = {}
    if strategy is not None and strategy.endswith(SOLO):
        # Only passed when asked: older trees (--baseline) may not know the option.
        strategy, options["group_commit"] = strategy.removesuffix(SOLO), False
    # One pooled connection per thread (the default pool is larger than needed).
    return Store(url, strategy=strategy, pool_size=max(threads, 1), max_overflow=threads, **options)


BATCH_FIELDS = (
    "batches",
    "batched_writes",
    "chains",  # PostgreSQL: statements for several writes of one record / stream
    "chained_writes",
    "solo_writes",
    "locked_writes",
    "splits",
)


def _batchers(store: Any) -> list[Any]:
    """The store's group-commit instances: SqlBackend.batches (SQLite, MariaDB) and the
    PostgreSQL backend's puts / appends; none with group_commit=False or older code."""
    found = []
    for name in ("batches", "_puts", "_appends"):
        stats = getattr(getattr(store.backend, name, None), "stats", None)
        if stats is not None:
            found.append(stats)
    return found


def _batch_counts(store: Any, reset_largest: bool = False) -> dict[str, int] | None:
    """The summed counters now (read without the library's lock: indicative, as its
    docstring says). ``reset_largest`` starts a new maximum, for the measured window."""
    batchers = _batchers(store) if store is not None else []
    if not batchers:
        return None
    counts = {f: sum(getattr(b, f, 0) for b in batchers) for f in BATCH_FIELDS}
    counts["largest"] = max(getattr(b, "largest", 0) for b in batchers)
    if reset_largest:
        for b in batchers:
            b.largest = 0
    return counts


def writes_per_batch(stats: dict[str, int] | None) -> float | None:
    """Mean writes per group commit (a batch or a chain); a write sent alone is a batch
    of one."""
    if not stats:
        return None
    commits = stats["batches"] + stats["chains"] + stats["solo_writes"]
    writes = stats["batched_writes"] + stats["chained_writes"] + stats["solo_writes"]
    return writes / commits if commits else None


def _prepare(store: Any, task: dict[str, Any], index: int, procs: int) -> int:
    """Create this worker's share of the scenario's records / streams (ids 1..keys)."""
    ns, kind, keys = task["namespace"], task["kind"], task["keys"]
    made = 0
    for k in range(1 + index, keys + 1, procs):
        if kind == "records":
            store.put(str(k), record_content(0, "prepare"), namespace=ns)
        else:
            store.append(str(k), [item_content(0, "prepare")], namespace=ns)
        made += 1
    return made


def _server_pids(store: Any, threads: int) -> list[int]:
    """PostgreSQL backend pids of the pooled connections the writer threads will use.

    All ``threads`` connections are checked out at once, so the pool then holds exactly
    the connections the run reuses (one writer thread never holds two)."""
    if store.backend_name != "postgresql":
        return []
    if isinstance(store, AsyncWorkerStore):
        return [int(pid) for pid in store.call(_async_server_pids(store, threads))]
    conns = [store.backend.engine.connect() for _ in range(threads)]
    try:
        return [int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar()) for c in conns]
    finally:
        for c in conns:
            c.close()


async def _async_server_pids(store: AsyncWorkerStore, threads: int) -> list[Any]:
    """The same for an ``AsyncStore``: ``threads`` reads at once, each holding its pooled
    connection for a moment, so that they are ``threads`` different connections."""
    from revstore.backends.ops import Raw

    def step() -> Any:
        rows = yield Raw("SELECT pg_backend_pid() FROM pg_sleep(0.05)")
        return rows.first()[0]

    return list(await asyncio.gather(*(store.backend.run(step()) for _ in range(threads))))


Op = Callable[[str, int], object]


def _store_op(store: Any, task: dict[str, Any], tag: str) -> Op:
    ns, batch = task["namespace"], task["batch"]
    if task["kind"] == "records":
        # A new content each time: a write equal to the head would be a no-op.
        return lambda key, n: store.put(key, record_content(n, tag), namespace=ns)
    return lambda key, n: store.append(
        key, [item_content(n * batch + j, tag) for j in range(batch)], namespace=ns
    )


class RawLoop:
    """A raw loop (--raw): one driver connection per writer thread, no revstore."""

    def __init__(self, threads: int) -> None:
        # Retries per thread (each thread writes only its own slot).
        self.retried = [0] * threads

    @property
    def retries(self) -> int:
        return sum(self.retried)

    def pids(self) -> list[int]:
        return []

    def close(self) -> None:
        raise NotImplementedError

    def op(self, task: dict[str, Any], thread: int, tag: str) -> Op:
        raise NotImplementedError


class RawPostgres(RawLoop):
    """The floor: the very statements of the PostgreSQL fast paths sent with psycopg
    alone (no revstore, no SQLAlchemy), one connection per thread, with only the work
    any client must do per write: canonical JSON, SHA-256, one execute."""

    def __init__(self, conninfo: str, threads: int) -> None:
        super().__init__(threads)
        import psycopg

        from revstore.backends.postgresql import _APPEND, _PUT

        self.put_sql, self.append_sql = _PUT, _APPEND
        self.conns = [
            psycopg.connect(conninfo, autocommit=True, application_name="revstore-bench-floor")
            for _ in range(threads)
        ]

    def pids(self) -> list[int]:
        return [c.info.backend_pid for c in self.conns]

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def op(self, task: dict[str, Any], thread: int, tag: str) -> Op:
        cur = self.conns[thread].cursor()
        ns, batch = task["namespace"], task["batch"]

        def put(key: str, n: int) -> None:
            text = canonical(record_content(n, tag))
            params = {
                "bump": 1,
                "content": text,
                "hash": hashlib.sha256(text.encode()).hexdigest(),
                "now": datetime.now(UTC),
                "ns": ns,
                "id": key,
                "exp": None,
                "author": None,
                "summary": None,
            }
            cur.execute(self.put_sql, params)
            if cur.fetchone() is None:
                raise LookupError("no row updated")

        def append(key: str, n: int) -> None:
            texts = [canonical(item_content(n * batch + j, tag)) for j in range(batch)]
            params = {
                "n": batch,
                "now": datetime.now(UTC),
                "ns": ns,
                "id": key,
                "exp": None,
                # text[] literals, as the fast path sends them (psycopg's own list
                # adaptation costs ~5x more client CPU for a batch of 10)
                "bodies": pg_array(texts),
                "hashes": pg_array([hashlib.sha256(t.encode()).hexdigest() for t in texts]),
            }
            cur.execute(self.append_sql, params)
            if not cur.fetchall():
                raise LookupError("no row updated")

        return put if task["kind"] == "records" else append


RAW_SQLITE_PUT = """
UPDATE revstore_records
   SET revision = revision + 1, version = version + 1,
       content = ?, content_hash = ?, updated_at = ?
 WHERE namespace = ? AND id = ?
RETURNING revision, version
"""
RAW_SQLITE_APPEND = """
UPDATE revstore_streams
   SET last_sequence = last_sequence + ?, item_count = item_count + ?, updated_at = ?
 WHERE namespace = ? AND id = ?
RETURNING last_sequence
"""
RAW_SQLITE_VERSION = """
INSERT INTO revstore_versions
    (namespace, record_id, version, revision, content, content_hash, author, summary,
     created_at)
VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?)
"""
RAW_SQLITE_ITEM = """
INSERT INTO revstore_stream_items
    (namespace, stream_id, sequence, item_id, body, body_hash, created_at)
VALUES (?, ?, ?, NULL, ?, ?, ?)
"""
RAW_MYSQL_PUT = """
UPDATE revstore_records
   SET revision = LAST_INSERT_ID(revision + 1), version = version + 1,
       content = %s, content_hash = %s, updated_at = %s
 WHERE namespace = %s AND id = %s
"""
RAW_MYSQL_APPEND = """
UPDATE revstore_streams
   SET last_sequence = LAST_INSERT_ID(last_sequence + %s), item_count = item_count + %s,
       updated_at = %s
 WHERE namespace = %s AND id = %s
"""
# PyMySQL's executemany sends "INSERT … VALUES (…)" as one multi-row INSERT.
RAW_MYSQL_VERSION = (
    "INSERT INTO revstore_versions (namespace, record_id, version, revision, content, "
    "content_hash, author, summary, created_at) VALUES (%s, %s, %s, %s, %s, %s, NULL, NULL, %s)"
)
RAW_MYSQL_ITEM = (
    "INSERT INTO revstore_stream_items (namespace, stream_id, sequence, item_id, body, "
    "body_hash, created_at) VALUES (%s, %s, %s, NULL, %s, %s, %s)"
)
RAW_MAX_TRIES = 1000
"""A hand-written loop retries a lost lock race until it wins; this only bounds it."""


def _hashed(texts: list[str]) -> list[tuple[str, str]]:
    return [(t, hashlib.sha256(t.encode()).hexdigest()) for t in texts]


def _sqlite_now() -> str:
    # The text SQLAlchemy stores for revstore's timestamps on SQLite (naive UTC), so
    # that revstore (and the lab's checker) read these rows like its own.
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S.%f}"


class RawSqlite(RawLoop):
    """The SQLite raw loop: sqlite3 alone, one connection per thread, WAL,
    ``synchronous=FULL`` and revstore's busy timeout; per write ``BEGIN IMMEDIATE``,
    ``UPDATE … RETURNING``, ``INSERT``, ``COMMIT``. A lock not obtained within the busy
    timeout ('database is locked') is rolled back and retried, and counted."""

    def __init__(self, path: str, threads: int) -> None:
        import sqlite3

        from revstore.config import SQLITE_BUSY_TIMEOUT_MS

        super().__init__(threads)
        self.sqlite3 = sqlite3
        self.conns = []
        for _ in range(threads):
            # isolation_level=None: the driver never opens transactions by itself.
            conn = sqlite3.connect(
                path,
                timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self.conns.append(conn)

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def op(self, task: dict[str, Any], thread: int, tag: str) -> Op:
        conn = self.conns[thread]
        cur = conn.cursor()
        ns, batch = task["namespace"], task["batch"]
        locked = self.sqlite3.OperationalError

        def transaction(body: Callable[[], None]) -> None:
            for _ in range(RAW_MAX_TRIES):
                try:
                    cur.execute("BEGIN IMMEDIATE")
                    body()
                    cur.execute("COMMIT")
                    return
                except locked as exc:
                    if conn.in_transaction:
                        cur.execute("ROLLBACK")
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    self.retried[thread] += 1
                except BaseException:
                    if conn.in_transaction:
                        cur.execute("ROLLBACK")
                    raise
            raise TimeoutError(f"database still locked after {RAW_MAX_TRIES} tries")

        def put(key: str, n: int) -> None:
            ((text, digest),) = _hashed([canonical(record_content(n, tag))])
            now = _sqlite_now()

            def body() -> None:
                row = cur.execute(RAW_SQLITE_PUT, (text, digest, now, ns, key)).fetchone()
                if row is None:
                    raise LookupError("no row updated")
                revision, version = row
                cur.execute(RAW_SQLITE_VERSION, (ns, key, version, revision, text, digest, now))

            transaction(body)

        def append(key: str, n: int) -> None:
            items = _hashed([canonical(item_content(n * batch + j, tag)) for j in range(batch)])
            now = _sqlite_now()

            def body() -> None:
                row = cur.execute(RAW_SQLITE_APPEND, (batch, batch, now, ns, key)).fetchone()
                if row is None:
                    raise LookupError("no row updated")
                first = int(row[0]) - batch + 1
                cur.executemany(
                    RAW_SQLITE_ITEM,
                    [(ns, key, first + j, t, h, now) for j, (t, h) in enumerate(items)],
                )

            transaction(body)

        return put if task["kind"] == "records" else append


class RawMysql(RawLoop):
    """The MariaDB/MySQL raw loop: PyMySQL alone (revstore's driver), one connection per
    thread, the server's default isolation, autocommit off; per write ``UPDATE …
    LAST_INSERT_ID(n + 1)`` (the new number comes back in the OK packet, as
    ``cursor.lastrowid``), ``INSERT``, ``COMMIT``. Deadlocks (1213) and lock wait
    timeouts (1205) are rolled back and retried, and counted."""

    RETRIED = (1205, 1213)

    def __init__(self, url: str, threads: int) -> None:
        import pymysql
        from sqlalchemy.engine import make_url

        super().__init__(threads)
        self.pymysql = pymysql
        u = make_url(url)
        self.conns = [
            pymysql.connect(
                host=u.host or "127.0.0.1",
                port=u.port or 3306,
                user=u.username or "root",
                password=u.password or "",
                database=u.database,
                charset="utf8mb4",  # as revstore: every code point
                autocommit=False,
            )
            for _ in range(threads)
        ]

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.close()

    def op(self, task: dict[str, Any], thread: int, tag: str) -> Op:
        conn = self.conns[thread]
        cur = conn.cursor()
        ns, batch = task["namespace"], task["batch"]
        failed = self.pymysql.err.OperationalError

        def transaction(body: Callable[[], None]) -> None:
            for _ in range(RAW_MAX_TRIES):
                try:
                    body()
                    conn.commit()
                    return
                except failed as exc:
                    conn.rollback()
                    if not exc.args or exc.args[0] not in self.RETRIED:
                        raise
                    self.retried[thread] += 1
                except BaseException:
                    conn.rollback()
                    raise
            raise TimeoutError(f"still deadlocked after {RAW_MAX_TRIES} tries")

        def put(key: str, n: int) -> None:
            ((text, digest),) = _hashed([canonical(record_content(n, tag))])
            now = datetime.now(UTC)

            def body() -> None:
                if cur.execute(RAW_MYSQL_PUT, (text, digest, now, ns, key)) != 1:
                    raise LookupError("no row updated")
                # version = revision: these rows were made by one put (1, 1) and every
                # write since bumps both, so one number is all a hand-written loop
                # tracks (were it wrong, the versions table's keys would refuse it).
                revision = cur.lastrowid
                cur.execute(RAW_MYSQL_VERSION, (ns, key, revision, revision, text, digest, now))

            transaction(body)

        def append(key: str, n: int) -> None:
            items = _hashed([canonical(item_content(n * batch + j, tag)) for j in range(batch)])
            now = datetime.now(UTC)

            def body() -> None:
                if cur.execute(RAW_MYSQL_APPEND, (batch, batch, now, ns, key)) != 1:
                    raise LookupError("no row updated")
                first = int(cur.lastrowid) - batch + 1
                cur.executemany(
                    RAW_MYSQL_ITEM,
                    [(ns, key, first + j, t, h, now) for j, (t, h) in enumerate(items)],
                )

            transaction(body)

        return put if task["kind"] == "records" else append


class _Tally:
    """One writer's counts, kept apart from the others' until it is done."""

    def __init__(self, task: dict[str, Any], seed: int) -> None:
        self.rng = random.Random(seed)
        self.task = task
        self.n = self.ops = self.items = self.warm_ops = self.acked = 0
        self.errors: Counter[str] = Counter()
        self.warm_errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.t0 = 0.0  # when the write in progress started

    def delay(self) -> float:
        return float(self.task["start"] - time.time())

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """Each write's key and number, until the run's end has passed; the writer
        reports each one's outcome (``done``) before it asks for the next."""
        keys = self.task["keys"]
        while (t0 := time.time()) < self.task["end"]:
            self.n += 1
            self.t0 = t0
            yield ("1" if keys == 1 else str(self.rng.randint(1, keys))), self.n

    def done(self, failure: BaseException | None = None) -> None:
        """The last write's outcome: acknowledged, or ``failure``."""
        t0, t1 = self.t0, time.time()
        measure, end = self.task["measure"], self.task["end"]
        error = None if failure is None else type(failure).__name__
        if error is None:
            self.acked += 1
        if t1 < measure:
            if error is None:
                self.warm_ops += 1
            else:
                self.warm_errors[error] += 1
        elif t1 < end:
            if error is None:
                self.ops += 1
                self.items += self.task["batch"]
                self.latencies.append(t1 - t0)
            else:
                self.errors[error] += 1

    def add_to(self, out: RunResult, lock: threading.Lock) -> None:
        with lock:
            out.ops += self.ops
            out.acked += self.acked
            out.items += self.items
            out.warmup_ops += self.warm_ops
            out.errors.update(self.errors)
            out.warmup_errors.update(self.warm_errors)
            out.latencies.extend(self.latencies)


def _writer(
    op: Op,
    task: dict[str, Any],
    seed: int,
    out: RunResult,
    lock: threading.Lock,
) -> None:
    tally = _Tally(task, seed)
    if tally.delay() > 0:
        time.sleep(tally.delay())
    for write in tally:
        try:
            op(*write)
        except Exception as exc:
            tally.done(exc)
        else:
            tally.done()
    tally.add_to(out, lock)


async def _async_writer(
    op: Op,
    task: dict[str, Any],
    seed: int,
    out: RunResult,
    lock: threading.Lock,
) -> None:
    """``_writer`` as a task: ``op`` returns the store's coroutine."""
    tally = _Tally(task, seed)
    if tally.delay() > 0:
        await asyncio.sleep(tally.delay())
    for write in tally:
        try:
            await cast(Awaitable[object], op(*write))
        except Exception as exc:
            tally.done(exc)
        else:
            tally.done()
    tally.add_to(out, lock)


def _run(
    store: Any, raw: RawLoop | None, task: dict[str, Any], index: int, threads: int
) -> RunResult:
    out = RunResult()
    lock = threading.Lock()
    retries: dict[str, int] = {}
    batches: dict[str, dict[str, int] | None] = {}

    def retries_at(when: float, name: str) -> None:
        delay = when - time.time()
        if delay > 0:
            time.sleep(delay)
        if store is not None:
            retries[name] = store.stats.retries
        else:
            retries[name] = raw.retries if raw is not None else 0
        batches[name] = _batch_counts(store, reset_largest=name == "measure")

    def op(t: int) -> Op:
        tag = f"{os.getpid()}-{t}"
        if raw is not None:
            return raw.op(task, t, tag)
        return _store_op(getattr(store, "aio", store), task, tag)

    meters = [
        threading.Thread(target=retries_at, args=(task["measure"], "measure")),
        threading.Thread(target=retries_at, args=(task["end"], "end")),
    ]
    seeds = [hash((task["seed"], index, t)) for t in range(threads)]
    if isinstance(store, AsyncWorkerStore):
        aio = store

        async def tasks() -> None:
            await asyncio.gather(
                *(_async_writer(op(t), task, seeds[t], out, lock) for t in range(threads))
            )

        writers = [threading.Thread(target=lambda: aio.call(tasks()))]
    else:
        writers = [
            threading.Thread(target=_writer, args=(op(t), task, seeds[t], out, lock))
            for t in range(threads)
        ]
    for th in meters + writers:
        th.start()
    for th in meters + writers:
        th.join()
    out.retries = retries["end"] - retries["measure"]
    first, last = batches["measure"], batches["end"]
    if first is not None and last is not None:
        out.batch_stats = {f: last[f] - first[f] for f in BATCH_FIELDS}
        out.batch_stats["largest"] = last["largest"]
    return out


def worker_main(
    index: int,
    procs: int,
    threads: int,
    inbox: Queue[Any],
    outbox: Queue[Any],
    code_path: str | None = None,
    nice: int = 0,
) -> None:
    """A worker process: open / run / close messages, one Store per scenario."""
    if nice:
        os.nice(nice)
    # Retries and exhausted retries are counted by this benchmark; their log lines
    # would only flood the terminal.
    logging.getLogger("revstore").setLevel(logging.ERROR)
    # psycopg logs the aborted pipelines of the optimistic strategy's lost races.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
    if code_path is not None:
        # A baseline: import revstore from an exported older tree (see --baseline).
        sys.path.insert(0, code_path)
        import revstore

        assert revstore.__file__ is not None and revstore.__file__.startswith(code_path)
    store: Any = None
    raw: RawLoop | None = None
    parent = os.getppid()
    while True:
        try:
            msg = inbox.get(timeout=2)
        except queue.Empty:
            if os.getppid() != parent:
                break  # the benchmark was killed: do not linger
            continue
        if msg is None:
            break
        op, task = msg
        try:
            if op == "open":
                # Rows are created with the backend's default strategy (SQLite's
                # optimistic one cannot even create 1,000 streams under 16 writers).
                maker = _open_store(task["url"], None, 1)
                try:
                    maker.create_schema()
                    made = _prepare(maker, task, index, procs)
                finally:
                    maker.close()
                if task["strategy"] == RAW["postgresql"]:
                    raw = RawPostgres(task["conninfo"], threads)
                    result: Any = (made, raw.pids())
                elif task["strategy"] == RAW["sqlite"]:
                    raw = RawSqlite(task["path"], threads)
                    result = (made, [])
                elif task["strategy"] == RAW["mysql"]:
                    raw = RawMysql(task["url"], threads)
                    result = (made, [])
                else:
                    store = _open_store(task["url"], task["strategy"], threads)
                    result = (made, _server_pids(store, threads))
            elif op == "run":
                result = _run(store, raw, task, index, threads)
            elif op == "close":
                if store is not None:
                    store.close()
                if raw is not None:
                    raw.close()
                store, raw = None, None
                result = None
            else:
                raise ValueError(f"unknown message {op!r}")
            outbox.put((index, True, result))
        except BaseException as exc:
            outbox.put((index, False, f"{type(exc).__name__}: {exc}"))
    if store is not None:
        store.close()
    if raw is not None:
        raw.close()


class WorkerPool:
    """``procs`` spawned processes, each running ``threads`` writer threads per run."""

    def __init__(
        self, procs: int, threads: int, code_path: str | None = None, nice: int = 0
    ) -> None:
        ctx = mp.get_context("spawn")
        self.procs, self.threads, self.nice = procs, threads, nice
        self.closed = False
        self.outbox: Queue[Any] = ctx.Queue()
        self.inboxes: list[Queue[Any]] = [ctx.Queue() for _ in range(procs)]
        self.processes: list[BaseProcess] = [
            ctx.Process(
                target=worker_main,
                args=(i, procs, threads, self.inboxes[i], self.outbox, code_path, nice),
                daemon=True,
                name=f"bench-worker-{i}",
            )
            for i in range(procs)
        ]
        for p in self.processes:
            p.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def call(self, op: str, task: dict[str, Any], timeout: float) -> list[Any]:
        self.send(op, task)
        return self.collect(op, timeout)

    def send(self, op: str, task: dict[str, Any]) -> None:
        for inbox in self.inboxes:
            inbox.put((op, task))

    def collect(self, op: str, timeout: float) -> list[Any]:
        results: list[Any] = [None] * self.procs
        failures: list[str] = []
        deadline = time.time() + timeout
        for _ in range(self.procs):
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TimeoutError(f"workers did not answer {op!r} within {timeout:.0f}s")
            index, ok, value = self.outbox.get(timeout=remaining)
            if ok:
                results[index] = value
            else:
                failures.append(f"worker {index}: {value}")
        if failures:
            raise RuntimeError(f"{op} failed: " + "; ".join(failures))
        return results

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for inbox in self.inboxes:
            inbox.put(None)
        for p in self.processes:
            p.join(timeout=15)
        for p in self.processes:
            if p.is_alive():
                p.terminate()  # only our own children, by handle
                p.join(timeout=5)


# ------------------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CORES = os.cpu_count() or 1


def machine_jiffies() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux only)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [float(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def process_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system, all threads) used so far by ``pids`` that still run."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def pids_named(*names: str) -> list[int]:
    """Pids of the processes whose command name is one of ``names`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


@dataclass
class CpuSnap:
    at: float
    machine: tuple[float, float] | None
    client: float
    server: float


def cpu_snap(client: Sequence[int], server: Sequence[int]) -> CpuSnap:
    return CpuSnap(time.time(), machine_jiffies(), process_cpu(client), process_cpu(server))


@dataclass
class CpuUse:
    """Average cores used during a window."""

    busy: float | None
    client: float
    server: float | None

    @property
    def other(self) -> float | None:
        if self.busy is None:
            return None
        return max(0.0, self.busy - self.client - (self.server or 0.0))


def cpu_use(a: CpuSnap, b: CpuSnap, server_known: bool) -> CpuUse:
    wall = max(b.at - a.at, 1e-6)
    busy = None
    if a.machine is not None and b.machine is not None and b.machine[1] > a.machine[1]:
        busy = (b.machine[0] - a.machine[0]) / (b.machine[1] - a.machine[1]) * CORES
    return CpuUse(
        busy=busy,
        client=(b.client - a.client) / wall,
        server=(b.server - a.server) / wall if server_known else None,
    )


def background_cores(seconds: float = 0.5) -> float | None:
    """Busy cores while this benchmark is idle: load from other programs on the machine."""
    a = machine_jiffies()
    time.sleep(seconds)
    b = machine_jiffies()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * CORES


def wait_for_quiet(threshold: float, max_wait: float) -> float | None:
    """Wait (at most ``max_wait`` s) until other programs use under ``threshold`` cores."""
    deadline = time.time() + max_wait
    while True:
        load = background_cores()
        if load is None or load < threshold or time.time() >= deadline:
            return load


# ------------------------------------------------------------------------- results


@dataclass
class Row:
    scenario: str
    unit: str
    backend: str
    strategy: str
    layout: str
    rate: float
    ops_per_s: float
    mean_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]
    retries: int | None
    busy_cores: float | None
    client_cores: float
    server_cores: float | None
    other_cores: float | None
    seconds: float
    attempt: int = 1
    round: int = 1
    ratio: float | None = None
    note: str = ""
    raw_ratio: float | None = None
    """This rate ÷ the raw loop's (same backend, scenario, layout and round)."""
    batch_stats: dict[str, int] | None = None
    """Group-commit counters of all workers inside the window (``largest``: the largest
    batch); None when the Store has no group commit."""
    writes_per_batch: float | None = None
    """Mean writes per commit (or per statement on PostgreSQL), solo writes included."""
    history: str | None = None
    """``ok``, or what the check of the rows written found wrong (see check_history)."""

    @property
    def client_us(self) -> float | None:
        return self.client_cores / self.ops_per_s * 1e6 if self.ops_per_s else None

    @property
    def server_us(self) -> float | None:
        if self.server_cores is None or not self.ops_per_s:
            return None
        return self.server_cores / self.ops_per_s * 1e6


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Settings:
    run_id: str
    seconds: float
    warmup: float
    quiet_threshold: float
    quiet_wait: float
    checkpoints: bool = True
    round: int = 1
    check: bool = True

    @property
    def prefix(self) -> str:
        """Namespace prefix of everything this run writes (removed at the end)."""
        return f"bstore-{self.run_id}"

    def checkpoint(self, url: str) -> None:
        """CHECKPOINT before a PostgreSQL run, so that every run starts from the same
        state (the full-page writes that follow a checkpoint are paid by all alike)."""
        if not self.checkpoints:
            return
        import psycopg

        try:
            with psycopg.connect(pg_conninfo(url)[3], autocommit=True) as conn:
                conn.execute("CHECKPOINT")
        except psycopg.Error as exc:
            print(f"# CHECKPOINT not possible ({exc}); runs continue without", file=sys.stderr)
            self.checkpoints = False


def run_revstore(
    pool: WorkerPool,
    backend: str,
    url: str,
    strategy: str,
    sc: Scenario,
    cfg: Settings,
    label: str = "",
    attempt: int = 1,
) -> Row:
    code = f"-{hashlib.sha1(label.encode()).hexdigest()[:4]}" if label else ""
    short = strategy[:3] + next((x for x in (SOLO, ASYNC) if strategy.endswith(x)), "")
    # The layout too: each layout's runs start from fresh rows (and --check sees its own).
    layout = f"{pool.procs}x{pool.threads}"
    ns = f"{cfg.prefix}-r{cfg.round}-{layout}-{backend[:2]}-{short}{code}-{sc.name}-{attempt}"
    task: dict[str, Any] = {
        "url": url,
        "strategy": strategy,
        "namespace": ns,
        "kind": sc.kind,
        "keys": sc.keys,
        "batch": sc.batch,
    }
    if strategy == FLOOR:
        task["conninfo"] = pg_conninfo(url)[3]
    if strategy == RAW["sqlite"]:
        task["path"] = url.removeprefix("sqlite:///")
    opened = pool.call("open", task, timeout=300)
    server_pids = [pid for _, pids in opened for pid in pids]
    if backend == "mysql":
        # One server process for every session (its other clients' CPU included).
        server_pids = pids_named("mariadbd", "mysqld")
    if backend == "postgresql":
        cfg.checkpoint(url)
    wait_for_quiet(cfg.quiet_threshold, cfg.quiet_wait)
    start = time.time() + 0.3
    task |= {
        "start": start,
        "measure": start + cfg.warmup,
        "end": start + cfg.warmup + cfg.seconds,
        "seed": random.getrandbits(32),
    }
    pool.send("run", task)
    time.sleep(max(0.0, task["measure"] - time.time()))
    a = cpu_snap(pool.pids, server_pids)
    time.sleep(max(0.0, task["end"] - time.time()))
    b = cpu_snap(pool.pids, server_pids)
    # In-flight operations may run past the end (a retrying write stops within the
    # retry policy's 10 s budget); they are not counted.
    results: list[RunResult] = pool.collect("run", timeout=60)
    pool.call("close", {}, timeout=60)
    use = cpu_use(a, b, server_known=bool(server_pids))
    ops = sum(r.ops for r in results)
    items = sum(r.items for r in results)
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    for r in results:
        errors.update(r.errors)
        latencies.extend(r.latencies)
    warm_errors = sum(sum(r.warmup_errors.values()) for r in results)
    p99 = percentile(latencies, 0.99)
    history = None
    if cfg.check:
        history = check_history(url, ns, sc, sum(r.acked for r in results))
    batch_stats: dict[str, int] | None = None
    for r in results:
        if r.batch_stats is not None:
            batch_stats = batch_stats or dict.fromkeys((*BATCH_FIELDS, "largest"), 0)
            for f in BATCH_FIELDS:
                batch_stats[f] += r.batch_stats[f]
            batch_stats["largest"] = max(batch_stats["largest"], r.batch_stats["largest"])
    return Row(
        scenario=sc.name,
        unit=sc.unit,
        backend=backend,
        strategy=f"{strategy} {label}".strip(),
        layout=f"{pool.procs}x{pool.threads}" + (f" nice {pool.nice}" if pool.nice else ""),
        rate=(items if sc.kind == "streams" else ops) / cfg.seconds,
        ops_per_s=ops / cfg.seconds,
        mean_ms=sum(latencies) / len(latencies) * 1000 if latencies else None,
        p99_ms=p99 * 1000 if p99 is not None else None,
        errors=dict(errors),
        retries=sum(r.retries for r in results),
        busy_cores=use.busy,
        client_cores=use.client,
        server_cores=use.server,
        other_cores=use.other,
        seconds=cfg.seconds,
        attempt=attempt,
        note=f"{warm_errors} errors during warm-up" if warm_errors else "",
        batch_stats=batch_stats,
        writes_per_batch=writes_per_batch(batch_stats),
        history=history,
    )


_RECORDS_CHECK = """
SELECT COUNT(*), COALESCE(SUM(r.revision), 0),
       COALESCE(SUM(CASE WHEN v.n IS NULL OR v.n <> r.revision OR v.top <> r.revision
                          OR v.low <> 1 OR r.version <> r.revision
                         THEN 1 ELSE 0 END), 0)
  FROM revstore_records r
  LEFT JOIN (SELECT record_id, COUNT(*) AS n, MAX(revision) AS top, MIN(revision) AS low
               FROM revstore_versions WHERE namespace = :ns GROUP BY record_id) v
    ON v.record_id = r.id
 WHERE r.namespace = :ns
"""
_STREAMS_CHECK = """
SELECT COUNT(*), COALESCE(SUM(s.last_sequence), 0),
       COALESCE(SUM(CASE WHEN i.n IS NULL OR i.n <> s.last_sequence OR i.top <> s.last_sequence
                          OR i.low <> 1 OR s.item_count <> s.last_sequence
                         THEN 1 ELSE 0 END), 0)
  FROM revstore_streams s
  LEFT JOIN (SELECT stream_id, COUNT(*) AS n, MAX(sequence) AS top, MIN(sequence) AS low
               FROM revstore_stream_items WHERE namespace = :ns GROUP BY stream_id) i
    ON i.stream_id = s.id
 WHERE s.namespace = :ns
"""


def check_history(url: str, ns: str, sc: Scenario, acked: int) -> str:
    """Whether the rows of a run hold every acknowledged write exactly once, without
    gaps: per record, versions 1..revision (every write here makes a snapshot, so
    version = revision); per stream, items 1..last_sequence; in all, one revision (or
    ``batch`` items) per acknowledged operation beyond what the preparation made (one
    put / one item per key). Unique keys rule out duplicates. Returns "ok" or what is
    wrong; a write whose outcome was unknown (an error after its commit) shows here."""
    from sqlalchemy import text

    from revstore import Store

    store = Store(url)
    try:
        with store.backend.engine.connect() as conn:
            query = _RECORDS_CHECK if sc.kind == "records" else _STREAMS_CHECK
            keys, total, broken = conn.execute(text(query), {"ns": ns}).one()
    finally:
        store.close()
    problems = []
    if keys != sc.keys:
        problems.append(f"{keys} of {sc.keys} keys")
    if broken:
        problems.append(f"{broken} with gaps or mismatched heads")
    expected = sc.keys + acked * (sc.batch if sc.kind == "streams" else 1)
    if total != expected:
        problems.append(f"{total - sc.keys} writes stored, {expected - sc.keys} acknowledged")
    return "; ".join(problems) or "ok"


# ------------------------------------------------------------------------- pgbench


def pg_conninfo(url: str) -> tuple[list[str], dict[str, str], str, str]:
    """pgbench arguments, environment, database name and a libpq conninfo for a URL."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    host, port = u.host or "127.0.0.1", str(u.port or 5432)
    args = ["-h", host, "-p", port]
    conninfo = f"host={host} port={port} dbname={u.database or 'postgres'}"
    if u.username:
        args += ["-U", u.username]
        conninfo += f" user={u.username}"
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
        conninfo += f" password={u.password}"
    return args, env, u.database or "postgres", conninfo


def pg_array(values: Sequence[str]) -> str:
    """A PostgreSQL text[] literal."""
    quoted = ['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
    return "{" + ",".join(quoted) + "}"


_PROGRESS = re.compile(r"^progress: ([0-9.]+) s, ([0-9.]+) tps, lat ([0-9.]+) ms", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_ABORTED = re.compile(r"client \d+ aborted")


def pgbench_defines(sc: Scenario, ns: str) -> tuple[Path, dict[str, str]]:
    if sc.kind == "records":
        return PGBENCH_DIR / "record_put.sql", {
            "ns": ns,
            "records": str(sc.keys),
            "content": canonical(record_content(0, "pgbench")),
            "bump": "1",
            "exp": "none",
        }
    bodies = [canonical(item_content(j, "pgbench")) for j in range(sc.batch)]
    hashes = [hashlib.sha256(b.encode()).hexdigest() for b in bodies]
    return PGBENCH_DIR / "stream_append.sql", {
        "ns": ns,
        "streams": str(sc.keys),
        "n": str(sc.batch),
        "bodies": pg_array(bodies),
        "hashes": pg_array(hashes),
        "exp": "none",
    }


def _backend_pids(conninfo: str, appname: str, expected: int, deadline: float) -> list[int]:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (appname,)
            ).fetchall()
            if len(rows) >= expected or time.time() >= deadline:
                return [int(r[0]) for r in rows]
            time.sleep(0.05)


def run_pgbench(
    pgbench: str,
    pool: WorkerPool,
    url: str,
    sc: Scenario,
    cfg: Settings,
    clients: int,
    jobs: int,
    nice: int = 0,
    attempt: int = 1,
) -> Row:
    ns = f"{cfg.prefix}-r{cfg.round}-{pool.procs}x{pool.threads}-pgbench-{sc.name}-{attempt}"
    script, defines = pgbench_defines(sc, ns)
    # The rows pgbench updates are created by revstore itself, as for the revstore runs.
    pool.call(
        "open",
        {
            "url": url,
            "strategy": "counter",
            "namespace": ns,
            "kind": sc.kind,
            "keys": sc.keys,
            "batch": sc.batch,
        },
        timeout=300,
    )
    pool.call("close", {}, timeout=60)
    conn_args, env, dbname, conninfo = pg_conninfo(url)
    appname = f"pgbench-{ns}"
    env["PGAPPNAME"] = appname
    warm = max(1, round(cfg.warmup))
    total = warm + max(1, round(cfg.seconds))
    cmd = [pgbench, *conn_args, "-n", "-M", "prepared", "-c", str(clients), "-j", str(jobs)]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    cmd += ["-T", str(total), "-P", "1", "-f", str(script)]
    for k, v in defines.items():
        cmd += ["-D", f"{k}={v}"]
    cmd.append(dbname)
    cfg.checkpoint(url)
    wait_for_quiet(cfg.quiet_threshold, cfg.quiet_wait)
    t0 = time.time()
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        # The same window as the revstore runs: after the warm-up, until just before
        # pgbench disconnects (its last progress second is still inside).
        server = _backend_pids(conninfo, appname, clients, t0 + warm)
        time.sleep(max(0.0, t0 + warm - time.time()))
        a = cpu_snap([proc.pid], server)
        time.sleep(max(0.0, t0 + total - 0.3 - time.time()))
        b = cpu_snap([proc.pid], server)
        try:
            out, _ = proc.communicate(timeout=total + 120)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by handle
            out, _ = proc.communicate()
    use = cpu_use(a, b, server_known=True)
    seconds_tps = [
        (float(m.group(1)), float(m.group(2)), float(m.group(3))) for m in _PROGRESS.finditer(out)
    ]
    window = [(tps, lat) for t, tps, lat in seconds_tps if t > warm + 0.5]
    if not window:
        raise RuntimeError(f"pgbench failed (exit {proc.returncode}):\n{out[-2000:]}")
    tps = sum(t for t, _ in window) / len(window)
    lat = sum(t * lat for t, lat in window) / max(sum(t for t, _ in window), 1e-9)
    errors: dict[str, int] = {}
    failed = _FAILED.search(out)
    if failed and int(failed.group(1)):
        errors["failed transactions"] = int(failed.group(1))
    aborted = len(_ABORTED.findall(out))
    if aborted:
        errors["clients aborted"] = aborted
    if proc.returncode != 0 and not errors:
        errors[f"exit {proc.returncode}"] = 1
    return Row(
        scenario=sc.name,
        unit=sc.unit,
        backend="postgresql",
        strategy="pgbench",
        layout=f"{clients}c/{jobs}j" + (f" nice {nice}" if nice else ""),
        rate=tps * sc.batch,
        ops_per_s=tps,
        mean_ms=lat,
        p99_ms=None,
        errors=errors,
        retries=None,
        busy_cores=use.busy,
        client_cores=use.client,
        server_cores=use.server,
        other_cores=use.other,
        seconds=float(len(window)),
        attempt=attempt,
        note=f"{script.name}, -M prepared, errors over the whole run",
    )


def measured(
    fn: Any, threshold: float, attempts: int, *args: Any, **kwargs: Any
) -> tuple[Row, list[Row]]:
    """Run ``fn`` up to ``attempts`` times while other programs disturb it (more than
    ``threshold`` cores of "other" CPU); keep the least disturbed run."""
    tries: list[Row] = []
    for attempt in range(1, attempts + 1):
        row: Row = fn(*args, attempt=attempt, **kwargs)
        tries.append(row)
        if row.other_cores is None or row.other_cores <= threshold:
            break
        _progress(row, prefix="(disturbed) ")
    best = min(tries, key=lambda r: r.other_cores or 0.0)
    if len(tries) > 1:
        best.note = (best.note + "; " if best.note else "") + (
            f"least disturbed of {len(tries)} attempts "
            f"(others: {', '.join(f'{r.rate:,.0f}' for r in tries if r is not best)})"
        )
    return best, tries


# ------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def markdown(rows: list[Row]) -> str:
    head = (
        "| scenario | backend | strategy | writers | rate | ops/s | mean ms | p99 ms "
        "| errors | retries | client µs/op | server µs/op | busy cores | other cores "
        "| vs pgbench | ÷ raw | writes/batch | history |\n"
        "|---|---|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n"
    )
    lines = []
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) if r.errors else "0"
        ratio = f"**{r.ratio:.2f}**" if r.ratio is not None else ""
        raw_ratio = f"**{r.raw_ratio:.2f}**" if r.raw_ratio is not None else ""
        lines.append(
            f"| {r.scenario} | {r.backend} | {r.strategy} | {r.layout} "
            f"| {r.rate:,.0f} {r.unit} | {r.ops_per_s:,.0f} | {_fmt(r.mean_ms, 2)} "
            f"| {_fmt(r.p99_ms, 2)} | {errors} | {'' if r.retries is None else r.retries} "
            f"| {_fmt(r.client_us, 0)} | {_fmt(r.server_us, 0)} "
            f"| {_fmt(r.busy_cores, 2)} | {_fmt(r.other_cores, 2)} | {ratio} | {raw_ratio} "
            f"| {_batches(r)} | {r.history or ''} |"
        )
    return head + "\n".join(lines) + "\n"


def _batches(r: Row) -> str:
    """Mean writes per commit and the largest batch, e.g. ``5.3 (max 16)``."""
    if r.batch_stats is None or r.writes_per_batch is None:
        return ""
    # GroupCommitStats.largest counts batches of two or more; a solo write is one.
    largest = max(r.batch_stats["largest"], 1 if r.batch_stats["solo_writes"] else 0)
    return f"{r.writes_per_batch:.1f} (max {largest})"


def medians(rows: list[Row]) -> str:
    """Median rate and ratio per scenario / backend / strategy / layout over the rounds."""
    groups: dict[tuple[str, str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.scenario, r.backend, r.strategy, r.layout), []).append(r)
    lines = [
        "| scenario | backend | strategy | writers | median rate | rounds | errors "
        "| ratios to pgbench | median ratio | ratios to raw | median ÷ raw |",
        "|---|---|---|---|--:|--:|---|---|--:|---|--:|",
    ]
    for (scenario, backend, strategy, layout), group in groups.items():
        errors: Counter[str] = Counter()
        for r in group:
            errors.update(r.errors)
        ratios = [r.ratio for r in group if r.ratio is not None]
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        median_ratio = f"**{statistics.median(ratios):.2f}**" if ratios else ""
        raws = [r.raw_ratio for r in group if r.raw_ratio is not None]
        raw_shown = ", ".join(f"{x:.2f}" for x in raws)
        median_raw = f"**{statistics.median(raws):.2f}**" if raws else ""
        error_text = ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"
        lines.append(
            f"| {scenario} | {backend} | {strategy} | {layout} "
            f"| {statistics.median(r.rate for r in group):,.0f} {group[0].unit} | {len(group)} "
            f"| {error_text} | {shown} | {median_ratio} | {raw_shown} | {median_raw} |"
        )
    return "\n".join(lines) + "\n"


def _progress(row: Row, prefix: str = "") -> None:
    errors = sum(row.errors.values())
    ratio = f" ({row.ratio:.2f}x pgbench)" if row.ratio is not None else ""
    if row.raw_ratio is not None:
        ratio += f" ({row.raw_ratio:.2f}x raw)"
    if row.writes_per_batch is not None:
        ratio += f" [{_batches(row)} writes/batch]"
    if row.history not in (None, "ok"):
        ratio += f" HISTORY: {row.history}"
    other = f", other load {row.other_cores:.2f} cores" if row.other_cores is not None else ""
    print(
        f"  {prefix}{row.scenario:<20} {row.backend:<10} {row.strategy:<16} {row.layout:<6} "
        f"{row.rate:>10,.0f} {row.unit}{ratio}, errors {errors}{other}",
        file=sys.stderr,
        flush=True,
    )


# ------------------------------------------------------------------------- main


def parse_layouts(text: str) -> list[tuple[int, int]]:
    layouts = []
    for part in text.split(","):
        procs, _, threads = part.strip().partition("x")
        layouts.append((int(procs), int(threads or "1")))
    return layouts


def choose(text: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in chosen if c not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return chosen


def remove_rows(url: str, prefix: str) -> None:
    """Delete what this run wrote (namespaces ``prefix-*``); on PostgreSQL also VACUUM
    those tables, since a server may run without autovacuum (this one does)."""
    from sqlalchemy import text

    from revstore import Store

    tables = ("revstore_versions", "revstore_records", "revstore_stream_items", "revstore_streams")
    store = Store(url)
    try:
        with store.backend.engine.connect() as conn:
            for table in tables:
                conn.execute(
                    text(f"DELETE FROM {table} WHERE namespace LIKE :p"), {"p": prefix + "-%"}
                )
            if store.backend_name == "postgresql":
                for table in tables:
                    conn.exec_driver_sql(f"VACUUM {table}")
    except Exception as exc:
        print(f"# could not remove the rows of {prefix}-* from {url}: {exc}", file=sys.stderr)
    finally:
        store.close()


def create_schema(url: str) -> None:
    """Create the tables once, before 16 processes open the database at the same moment
    (on a fresh SQLite file their first-use creations race: see docs/benchmarks.md)."""
    from revstore import Store

    store = Store(url)
    try:
        store.create_schema()
    finally:
        store.close()


def export_tree(ref: str, paths: Sequence[str], stack: contextlib.ExitStack) -> str:
    """A copy of the working tree's src/revstore with ``paths`` as of git ``ref``, in a
    temporary directory (git is only read). Returns the directory to put on sys.path."""
    repo = HERE.parent
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="revstore-baseline-"))
    shutil.copytree(
        repo / "src" / "revstore",
        Path(tmp) / "src" / "revstore",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for path in paths:
        old = subprocess.run(
            ["git", "-C", str(repo), "show", f"{ref}:{path}"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        (Path(tmp) / path).write_bytes(old)
    return os.path.join(tmp, "src")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "revstore write throughput per backend and strategy (16 writers, hot and "
            "spread records, streams in batches of 1 and 10), beside pgbench running the "
            "same statements on PostgreSQL. Prints a markdown table."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each run")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --seconds 2 --warmup 1 --attempts 1 --quiet-wait 0 unless given",
    )
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma list of backends")
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=(
            "comma list of strategies; NAME-solo (e.g. counter-solo) runs NAME with "
            "Store(group_commit=False), the code before group commit, in the same run; "
            "NAME-async (e.g. counter-async) runs it through AsyncStore, each worker's "
            "writers as tasks of one event loop"
        ),
    )
    p.add_argument(
        "--scenarios",
        default=",".join(s.name for s in scenarios(1000)),
        help="comma list of scenarios",
    )
    p.add_argument("--spread", type=int, default=1000, help="records / streams in spread runs")
    p.add_argument(
        "--layouts",
        default="2x8",
        help=(
            "writer layouts PROCSxTHREADS, comma separated (e.g. 16x1,4x4,2x8); 2x8, the "
            "shape of pgbench -c 16 -j 2, saturates best on 2 cores (docs/benchmarks.md)"
        ),
    )
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.3,
        help="cores other programs may use before a run waits / is repeated",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="seconds to wait, before each run, for other programs to go below that load",
    )
    p.add_argument(
        "--attempts",
        type=int,
        default=2,
        help="runs of a measurement disturbed by other programs; the least disturbed is kept",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help=(
            "niceness of the client processes (revstore workers and pgbench alike): "
            "with clients and server on the same cores, lets the server run first"
        ),
    )
    p.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    p.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL)
    p.add_argument(
        "--sqlite-path", default=None, help="SQLite file (default: a fresh temporary file)"
    )
    p.add_argument("--pgbench", default=shutil.which("pgbench") or "/usr/bin/pgbench")
    p.add_argument("--no-pgbench", action="store_true", help="skip the pgbench reference runs")
    p.add_argument("--pgbench-clients", type=int, default=16)
    p.add_argument("--pgbench-jobs", type=int, default=2, help="pgbench threads (-j)")
    p.add_argument(
        "--baseline",
        metavar="GIT_REF",
        default=None,
        help=(
            "also run the counter strategy (and counter-async, when chosen) with "
            "--baseline-paths as of this git ref (the rest "
            "of src/revstore as in the working tree, copied to a temporary directory), "
            "interleaved with the current code: before/after in one run"
        ),
    )
    p.add_argument(
        "--baseline-paths",
        default="src/revstore/backends/postgresql.py",
        help="comma list of files taken from --baseline",
    )
    p.add_argument(
        "--compare-tree",
        metavar="SRC_DIR",
        default=None,
        help=(
            "also run the counter strategy with revstore imported from SRC_DIR (a directory "
            "holding a revstore package, e.g. a patched copy of src/): what-if experiments"
        ),
    )
    p.add_argument(
        "--raw",
        "--floor",
        dest="raw",
        action="store_true",
        help=(
            "also run the raw loop on every backend chosen, from the same worker processes, "
            "and report each revstore rate divided by it (÷ raw): "
            f"'{RAW['sqlite']}' (BEGIN IMMEDIATE, UPDATE … RETURNING, INSERT, COMMIT), "
            f"'{RAW['mysql']}' (UPDATE … LAST_INSERT_ID(n + 1), INSERT, COMMIT), "
            f"'{RAW['postgresql']}' (the counter statement through bare psycopg)"
        ),
    )
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="do not issue CHECKPOINT before each PostgreSQL run (it needs superuser or "
        "pg_checkpoint)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check, after each revstore / raw run, that its rows hold every "
        "acknowledged write once, without gaps (the 'history' column)",
    )
    p.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the rows written (namespaces bstore-<run id>-*) instead of deleting them",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the whole scenario list (pgbench and revstore interleaved in each); "
        "with more than 1, a table of medians follows",
    )
    p.add_argument("--json", type=Path, default=None, help="also write raw results here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (and SIGINT, which a background job may ignore) unwind through the
    # ExitStack below, which stops the worker processes.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    given = " ".join(argv if argv is not None else sys.argv[1:])
    if args.quick:
        defaults = {"seconds": 2.0, "warmup": 1.0, "attempts": 1, "quiet_wait": 0.0}
        for name, value in defaults.items():
            if f"--{name.replace('_', '-')}" not in given:
                setattr(args, name, value)
    backends = choose(args.backends, BACKENDS, "backend")
    variants = [s + x for s in STRATEGIES for x in (SOLO, ASYNC)]
    strategies = choose(args.strategies, [*STRATEGIES, *variants], "strategy")
    all_scenarios = {s.name: s for s in scenarios(args.spread)}
    chosen = [all_scenarios[n] for n in choose(args.scenarios, list(all_scenarios), "scenario")]
    layouts = parse_layouts(args.layouts)
    cfg = Settings(
        run_id=uuid.uuid4().hex[:8],
        seconds=args.seconds,
        warmup=args.warmup,
        quiet_threshold=args.max_other_load,
        quiet_wait=args.quiet_wait,
        checkpoints=not args.no_checkpoint,
        check=not args.no_check,
    )
    attempts = max(1, args.attempts)

    with contextlib.ExitStack() as stack:
        sqlite_path = args.sqlite_path
        if sqlite_path is None and "sqlite" in backends:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="revstore-bench-"))
            sqlite_path = os.path.join(tmp, "bench.db")
        urls = {
            "sqlite": f"sqlite:///{sqlite_path}",
            "postgresql": args.postgres_url,
            "mysql": args.mysql_url,
        }
        started = datetime.now(UTC)
        print(
            f"# revstore bench {cfg.run_id}: {started:%Y-%m-%d %H:%M} UTC, {CORES} cores, "
            f"{cfg.seconds:g} s per run after {cfg.warmup:g} s warm-up",
            file=sys.stderr,
        )
        for backend in backends:
            create_schema(urls[backend])
            if backend != "sqlite" and not args.keep_data:
                stack.callback(remove_rows, urls[backend], cfg.prefix)
        # Other code trees run beside the current one with the counter strategy (and
        # counter-async; on every backend chosen), right after it: before/after in one run.
        trees: list[tuple[str, str]] = []
        if args.baseline is not None:
            paths = [p.strip() for p in args.baseline_paths.split(",") if p.strip()]
            trees.append((f"@{args.baseline}", export_tree(args.baseline, paths, stack)))
        if args.compare_tree is not None:
            path = os.path.abspath(args.compare_tree)
            trees.append((f"@{os.path.basename(os.path.dirname(path))}", path))
        rows: list[Row] = []
        every_try: list[Row] = []
        for procs, threads in layouts:
            pool = WorkerPool(procs, threads, nice=args.nice)
            stack.callback(pool.close)
            other_pools: list[tuple[str, WorkerPool]] = []
            if trees:
                for label, path in trees:
                    other = WorkerPool(procs, threads, path, nice=args.nice)
                    stack.callback(other.close)
                    other_pools.append((label, other))
            for round_, sc in [(r, sc) for r in range(1, args.repeat + 1) for sc in chosen]:
                cfg.round = round_
                reference: Row | None = None
                if "postgresql" in backends and not args.no_pgbench:
                    reference, tries = measured(
                        run_pgbench,
                        args.max_other_load,
                        attempts,
                        args.pgbench,
                        pool,
                        urls["postgresql"],
                        sc,
                        cfg,
                        args.pgbench_clients,
                        args.pgbench_jobs,
                        args.nice,
                    )
                    reference.round = round_
                    rows.append(reference)
                    every_try += tries
                    _progress(reference)
                for backend in backends:
                    # The raw loop first: every row after it gets its ratio at once.
                    chosen_strategies = ([RAW[backend]] if args.raw else []) + strategies
                    raw_row: Row | None = None
                    for strategy in chosen_strategies:
                        runs = [(pool, "")]
                        if strategy in ("counter", "counter-async"):
                            runs += [(other, label) for label, other in other_pools]
                        for run_pool, label in runs:
                            row, tries = measured(
                                run_revstore,
                                args.max_other_load,
                                attempts,
                                run_pool,
                                backend,
                                urls[backend],
                                strategy,
                                sc,
                                cfg,
                                label,
                            )
                            if backend == "postgresql" and reference is not None:
                                row.ratio = row.rate / reference.rate if reference.rate else None
                            if strategy == RAW[backend]:
                                raw_row = row
                            elif raw_row is not None and raw_row.rate:
                                row.raw_ratio = row.rate / raw_row.rate
                            row.round = round_
                            rows.append(row)
                            every_try += tries
                            _progress(row)
            pool.close()
            for _, other in other_pools:
                other.close()
        print(markdown(rows))
        if args.repeat > 1:
            print(f"Medians over {args.repeat} rounds:\n")
            print(medians(rows))
        notes = [f"- {r.scenario} / {r.backend} / {r.strategy}: {r.note}" for r in rows if r.note]
        if notes:
            print("\n".join(notes) + "\n")
        if args.json is not None:
            args.json.write_text(
                json.dumps(
                    {
                        "run_id": cfg.run_id,
                        "started": started.isoformat(),
                        "cores": CORES,
                        "argv": sys.argv,
                        "rows": [asdict(r) for r in rows],
                        "all_attempts": [asdict(r) for r in every_try],
                    },
                    indent=2,
                )
            )
    return 0


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
