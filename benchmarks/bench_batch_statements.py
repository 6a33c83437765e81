"""Where one batch of puts spends its time: batches of ``--batch`` puts, sent straight
to the executor's ``_commit_together`` from one thread (no queueing, no other writer),
each statement timed on the driver's cursor. Prints, per kind of statement, its median
and mean, and the CPU and wall time per write.

    python benchmarks/bench_batch_statements.py --keys 1000   # spread records
    python benchmarks/bench_batch_statements.py --keys 1      # one hot record

SQLite by default (a fresh temporary file); ``--url`` for another database. On SQLite
the raw loop's transactions follow on the same file (``--raw``, the same number of
writes, one per ``BEGIN IMMEDIATE … COMMIT``), timed the same way.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from typing import Any

import revstore.backends.compiled as compiled
import revstore.backends.sql as sql
from bench_store import (
    RAW_SQLITE_PUT,
    RAW_SQLITE_VERSION,
    _hashed,
    _sqlite_now,
    canonical,
    record_content,
)
from revstore import Store
from revstore.backends.batch import Pending
from revstore.content import Canonical
from revstore.operations import write_intent
from revstore.record import Mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--keys", type=int, default=1000, help="records written (1: hot)")
    parser.add_argument("--batch", type=int, default=8, help="puts per batch")
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--raw", action="store_true", help="SQLite: the raw loop after")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{tempfile.mkdtemp()}/batch.db"
    store = Store(url, strategy="counter")
    ns = "bench" + uuid.uuid4().hex[:8]
    for k in range(args.keys):
        store.put(f"k{k}", record_content(0, "prepare"), namespace=ns)
    backend: Any = store.backend

    def pending(n: int) -> Pending[Any]:
        key = f"k{random.randrange(args.keys)}"
        body = Canonical(record_content(n, "bench"), max_bytes=1 << 20)
        intent = write_intent(Mode.PUT, ns, key, None, True, None, None, body)
        return Pending(
            (ns, key),
            lambda: backend.strategy.record_write(backend.protocol, intent, None, None),
            intent,
        )

    batches = [
        [pending(i * args.batch + j) for j in range(args.batch)] for i in range(args.batches)
    ]
    times: dict[str, list[float]] = defaultdict(list)
    send = compiled.on_cursor

    def timed(conn: Any, text: str, params: Any, many: bool, *rest: Any) -> Any:
        started = time.perf_counter()
        try:
            return send(conn, text, params, many, *rest)
        finally:
            kind = text.split()[0] + (" (executemany)" if many else "")
            times[kind].append(time.perf_counter() - started)

    sql.on_cursor = timed  # type: ignore[assignment]  # the executor's reference
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        backend._commit_together(batch)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sql.on_cursor = send  # type: ignore[assignment]
    store.close()
    writes = args.batch * args.batches
    print(f"{store.backend_name}: {args.batches} batches of {args.batch} puts, {args.keys} keys")
    report(times, cpu, wall, writes)
    if args.raw and url.startswith("sqlite:///"):
        print(f"the raw loop: {writes} puts, one per transaction")
        report(*raw_loop(url.removeprefix("sqlite:///"), ns, args.keys, writes), writes)


def report(times: dict[str, list[float]], cpu: float, wall: float, writes: int) -> None:
    print("| statement | count | median µs | mean µs |")
    print("|---|--:|--:|--:|")
    for kind, spent in times.items():
        print(
            f"| {kind} | {len(spent)} | {statistics.median(spent) * 1e6:,.0f} "
            f"| {statistics.fmean(spent) * 1e6:,.0f} |"
        )
    print(f"per write: CPU {cpu / writes * 1e6:,.0f} µs, wall {wall / writes * 1e6:,.0f} µs")


def raw_loop(
    path: str, ns: str, keys: int, writes: int
) -> tuple[dict[str, list[float]], float, float]:
    """``bench_store.RawSqlite``'s put, timed per statement."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    cur = conn.cursor()
    times: dict[str, list[float]] = defaultdict(list)

    def run(kind: str, text: str, params: Any = ()) -> Any:
        started = time.perf_counter()
        try:
            return cur.execute(text, params).fetchall()
        finally:
            times[kind].append(time.perf_counter() - started)

    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(writes):
        key = f"k{random.randrange(keys)}"
        ((text, digest),) = _hashed([canonical(record_content(n, "raw"))])
        now = _sqlite_now()
        run("BEGIN", "BEGIN IMMEDIATE")
        ((revision, version),) = run("UPDATE", RAW_SQLITE_PUT, (text, digest, now, ns, key))
        run("INSERT", RAW_SQLITE_VERSION, (ns, key, version, revision, text, digest, now))
        run("COMMIT", "COMMIT")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    conn.close()
    return times, cpu, wall


if __name__ == "__main__":
    main()
