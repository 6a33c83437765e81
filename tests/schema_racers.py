"""Worker processes for the schema contract tests: several processes released at the
same instant, each making its first call on a database nobody has set up yet.
Importable by spawned worker processes."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from revstore import Store

# Hang guards only (a dead sibling would otherwise block the others forever); nothing
# here asserts how long anything takes.
WAIT = 600.0


Outcome = tuple[int, str, str, Any]
"""(caller index, record id, "ok" or "error", the revision written or the error)."""


@dataclass(frozen=True)
class Job:
    url: str
    namespace: str
    record_id: str


def _serve(index: int, jobs: Any, start: Any, results: Any) -> None:
    """One worker: for every job, open a Store (no database call yet), wait for the
    others at the barrier, then make the first call: a put that creates the schema."""
    while True:
        job: Job | None = jobs.get()
        if job is None:
            return
        store: Store | None = None
        outcome: tuple[str, Any]
        try:
            store = Store(job.url)
        except Exception as exc:
            outcome = ("error", f"opening: {type(exc).__name__}: {exc}")
        # Every worker reaches the barrier, failed or not, so none is left waiting.
        start.wait(WAIT)
        if store is not None:
            try:
                rec = store.put(
                    job.record_id, {"writer": index, "pid": os.getpid()}, namespace=job.namespace
                )
                outcome = ("ok", rec.revision)
            except Exception as exc:
                outcome = ("error", f"{type(exc).__name__}: {exc}")
            finally:
                store.close()
        results.put((index, job.record_id, *outcome))


class FirstCallers:
    """``n`` spawned processes, reused round after round: each round sends every
    process one job and releases them together through a barrier."""

    def __init__(self, n: int) -> None:
        ctx = get_context("spawn")
        self.n = n
        self._start = ctx.Barrier(n)
        self._results = ctx.Queue()
        self._jobs = [ctx.Queue() for _ in range(n)]
        self._procs = [
            ctx.Process(
                target=_serve, args=(i, self._jobs[i], self._start, self._results), daemon=True
            )
            for i in range(n)
        ]
        for p in self._procs:
            p.start()

    def round(self, url: str, namespace: str) -> list[Outcome]:
        """Every process makes its first call on ``url`` at once; their outcomes."""
        for i, q in enumerate(self._jobs):
            q.put(Job(url, namespace, f"first-{i}"))
        out = [self._results.get(timeout=WAIT) for _ in range(self.n)]
        return sorted(out)

    def close(self) -> None:
        for q in self._jobs:
            q.put(None)
        for p in self._procs:
            p.join(WAIT)
            if p.is_alive():
                p.kill()


@contextmanager
def first_callers(n: int) -> Iterator[FirstCallers]:
    pool = FirstCallers(n)
    try:
        yield pool
    finally:
        pool.close()


def in_threads(fns: list[Callable[[], Any]]) -> list[Outcome]:
    """Run each function in its own thread, released together by a barrier; each one's
    outcome, as the processes report theirs (record id ``first-<index>``)."""
    start = threading.Barrier(len(fns))
    out: list[Outcome] = [(i, f"first-{i}", "error", "did not finish") for i in range(len(fns))]

    def run(i: int) -> None:
        start.wait(WAIT)
        try:
            out[i] = (i, f"first-{i}", "ok", fns[i]())
        except Exception as exc:
            out[i] = (i, f"first-{i}", "error", f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    return out
