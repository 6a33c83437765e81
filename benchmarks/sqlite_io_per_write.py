"""What a SQLite write costs the file: bytes written and commits, per write, for the
raw loop (one write per ``BEGIN IMMEDIATE … COMMIT``) and for ``Store`` (group commit),
on one hot record and on spread records. One process, ``--threads`` writer threads,
``--writes`` writes each way, on a fresh file per run; the file is checkpointed (and its
WAL truncated) before each run and once more inside it, so the pages written back to the
database file count too.

Bytes come from ``/proc/self/io``: ``wchar`` (bytes passed to ``write``/``pwrite``: the
WAL frames and the checkpoint's pages) and ``write_bytes`` (what reached the block
layer). A WAL frame is one page plus 24 bytes, so ``wchar`` per commit shows how many
pages each commit wrote.

    python benchmarks/sqlite_io_per_write.py --writes 4000 --threads 16
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench_store import RawSqlite, record_content
from revstore import Store


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def checkpoint(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()


def run(mode: str, keys: int, writes: int, threads: int, directory: str) -> dict[str, Any]:
    path = os.path.join(directory, f"{mode}-{keys}-{uuid.uuid4().hex[:6]}.db")
    store = Store(f"sqlite:///{path}", group_commit=mode == "store")
    store.create_schema()
    ns, tag = "io", uuid.uuid4().hex[:6]
    names = [f"r{i}" for i in range(keys)]
    for k in names:
        store.put(k, record_content(0, tag), namespace=ns)
    raw = RawSqlite(path, threads) if mode == "raw" else None
    task = {"namespace": ns, "batch": 1, "kind": "records"}
    ops: list[Callable[[str, int], Any]] = [
        raw.op(task, t, tag)
        if raw is not None
        else (lambda key, n: store.put(key, record_content(n, tag), namespace=ns))
        for t in range(threads)
    ]
    checkpoint(path)
    stats = store.backend.batches.stats if store.backend.batches is not None else None
    commits_before = (stats.batches + stats.solo_writes) if stats is not None else 0
    each = writes // threads

    def writer(t: int) -> None:
        for n in range(each):
            ops[t](names[(t * each + n) % keys], n + 1)

    before, start = proc_io(), time.perf_counter()
    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    checkpoint(path)
    os.sync()
    seconds, after = time.perf_counter() - start, proc_io()
    done = each * threads
    commits = (stats.batches + stats.solo_writes - commits_before) if stats is not None else done
    if raw is not None:
        raw.close()
    store.close()
    return {
        "mode": mode,
        "keys": keys,
        "writes": done,
        "commits": commits,
        "seconds": seconds,
        "wchar_per_write": (after["wchar"] - before["wchar"]) / done,
        "wchar_per_commit": (after["wchar"] - before["wchar"]) / commits,
        "write_bytes_per_write": (after["write_bytes"] - before["write_bytes"]) / done,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writes", type=int, default=4000)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--spread", type=int, default=1000)
    args = p.parse_args()
    print(
        "| records | writer | writes | commits | writes/commit | wchar B/write | "
        "wchar B/commit | block-layer B/write | writes/s |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    with tempfile.TemporaryDirectory(prefix="revstore-io-") as directory:
        for keys in (1, args.spread):
            for mode in ("raw", "store"):
                r = run(mode, keys, args.writes, args.threads, directory)
                print(
                    f"| {'1 hot' if keys == 1 else keys} | "
                    f"{'raw loop' if mode == 'raw' else 'Store'} | {r['writes']:,} | "
                    f"{r['commits']:,} | {r['writes'] / r['commits']:.1f} | "
                    f"{r['wchar_per_write']:,.0f} | {r['wchar_per_commit']:,.0f} | "
                    f"{r['write_bytes_per_write']:,.0f} | {r['writes'] / r['seconds']:,.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
