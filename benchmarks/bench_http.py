"""What the HTTP layer costs: PUT throughput and latency through ``revstore serve``
beside the same writes made in-process through the library, in the same run.

For each backend (SQLite file, PostgreSQL) and each scenario (one hot record; 1,000
records), 64 concurrent clients write for a fixed window:

* HTTP: ``revstore serve --workers 2`` on a loopback port; the 64 clients are threads
  with one keep-alive connection each (http.client), spread over client processes.
* library: the same 64 writers as threads, ``Store.put`` in-process, spread over the
  same number of processes (two, like the two server workers) so the GIL does not
  cap the library alone.

Every write has new content (so none is a no-op) and creates a version. Only writes
that complete inside the measured window (after a warm-up) are counted; latency is
per write as the client saw it. The machine's load average is printed with the
table: on a shared machine a figure taken under someone else's load is visible.

    python benchmarks/bench_http.py          # sqlite and postgresql, 3 x 5 s per figure
    python benchmarks/bench_http.py --backends sqlite --seconds 3 --repeat 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revstore import RevstoreError

DEFAULT_PG_URL = os.environ.get(
    "REVSTORE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
BODY = "x" * 120


def content(n: int, tag: str) -> dict[str, Any]:
    return {"author": "bench", "body": BODY, "n": n, "tags": ["a", "b"], "w": tag}


def target(scenario: str, rng: random.Random, records: int) -> str:
    return "hot" if scenario == "hot" else f"r{rng.randrange(records):04d}"


@dataclass
class Job:
    mode: str  # "http" or "library"
    scenario: str  # "hot" or "spread"
    url: str  # base URL (http) or database URL (library)
    namespace: str
    clients: int  # in this process
    start: float  # wall-clock time at which everyone starts
    warmup: float
    seconds: float
    records: int
    tag: str


def run_job(job: Job, out: Any) -> None:
    """One client process: returns (latencies in the window, errors)."""
    out.put(_threads(job, _http_writer if job.mode == "http" else _library_writer))


Writer = Callable[[Job], Callable[[str, dict[str, Any]], bool]]


def _http_writer(job: Job) -> Callable[[str, dict[str, Any]], bool]:
    """A PUT over one keep-alive connection (http.client: a light client, so the
    figures are the server's, not the client library's)."""
    host, port = job.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json"}

    def put(id: str, value: dict[str, Any]) -> bool:
        body = json.dumps({"content": value})
        conn.request("PUT", f"/v1/records/{id}?namespace={job.namespace}", body, headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status < 300

    return put


def _library_writer(job: Job) -> Callable[[str, dict[str, Any]], bool]:
    store = _stores[job.url]

    def put(id: str, value: dict[str, Any]) -> bool:
        try:
            store.put(id, value, namespace=job.namespace)
            return True
        except RevstoreError:
            return False

    return put


_stores: dict[str, Any] = {}


def _threads(job: Job, make: Writer) -> tuple[list[float], int]:
    """``job.clients`` threads writing in a loop; the latencies inside the window."""
    if job.mode == "library":
        from revstore import Store

        _stores[job.url] = Store(job.url, pool_size=job.clients, max_overflow=0)
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    writers = [make(job) for _ in range(job.clients)]
    time.sleep(max(0.0, job.start - time.time()))
    t0 = time.monotonic()
    begin, end = t0 + job.warmup, t0 + job.warmup + job.seconds

    def client(k: int) -> None:
        nonlocal errors
        put = writers[k]
        rng = random.Random(f"{job.tag}-{k}")
        mine: list[float] = []
        bad = 0
        n = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            ok = put(target(job.scenario, rng, job.records), content(n, f"{job.tag}-{k}"))
            done = time.monotonic()
            if not ok:
                bad += 1
            elif now >= begin and done <= end:
                mine.append(done - now)
            n += 1
        with lock:
            lat.extend(mine)
            errors += bad

    threads = [threading.Thread(target=client, args=(k,)) for k in range(job.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in _stores.values():
        store.close()
    return lat, errors


@dataclass
class Row:
    backend: str
    scenario: str
    mode: str
    ops: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


def measure(mode: str, scenario: str, url: str, args: argparse.Namespace) -> Row:
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = args.client_procs
    per = [args.clients // procs + (1 if i < args.clients % procs else 0) for i in range(procs)]
    start = time.time() + 2.0  # time for the spawned processes to import and connect
    jobs = [
        Job(
            mode, scenario, url, ns, per[i], start, args.warmup, args.seconds, args.records, f"p{i}"
        )
        for i in range(procs)
    ]
    workers = [ctx.Process(target=run_job, args=(j, out)) for j in jobs]
    for w in workers:
        w.start()
    lat: list[float] = []
    errors = 0
    for _ in workers:
        got, bad = out.get(timeout=args.warmup + args.seconds + 120)
        lat += got
        errors += bad
    for w in workers:
        w.join()
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return Row(
        args.current_backend, scenario, mode, len(lat), args.seconds, pct(0.50), pct(0.99), errors
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "revstore.cli",
        "serve",
        "--db",
        url,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                time.sleep(2.0)  # let every worker finish starting, not only the first
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"revstore serve did not start on {url}")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--scenarios", default="hot,spread")
    p.add_argument("--seconds", type=float, default=5.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--client-procs", type=int, default=2, help="client processes")
    p.add_argument("--records", type=int, default=1000, help="records in the spread scenario")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    p.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="revstore-bench-http-"))
    rows: list[Row] = []
    load_before = loadavg()
    try:
        for backend in args.backends.split(","):
            url = f"sqlite:///{tmp / 'bench.db'}" if backend == "sqlite" else args.postgres_url
            args.current_backend = backend
            from revstore import Store

            Store(url).create_schema()
            for scenario in args.scenarios.split(","):
                # HTTP and library runs alternate, so a burst of outside load hits both
                # alike; the median run of each is reported. The server is stopped
                # during library runs: its pooled connections would count against the
                # database's connection limit (PostgreSQL: max_connections).
                runs: dict[str, list[Row]] = {"http": [], "library": []}
                for _ in range(args.repeat):
                    proc, base = start_server(url, args.workers)
                    try:
                        runs["http"].append(measure("http", scenario, base, args))
                    finally:
                        proc.terminate()
                        proc.wait(timeout=20)
                    runs["library"].append(measure("library", scenario, url, args))
                    for mode in ("http", "library"):
                        print(_fmt(runs[mode][-1]), file=sys.stderr)
                for mode in ("http", "library"):
                    ordered = sorted(runs[mode], key=lambda r: r.rate)
                    rows.append(ordered[len(ordered) // 2])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nPUT, {args.clients} concurrent clients, {args.workers} server workers, "
        f"{args.client_procs} client processes, {args.seconds:g} s window after "
        f"{args.warmup:g} s warm-up, median of {args.repeat} alternating runs; "
        f"{os.cpu_count()} CPUs; "
        f"load average {load_before} before, {loadavg()} after\n"
    )
    print("| backend | scenario | path | writes/s | p50 ms | p99 ms | errors | HTTP / library |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    lib = {(r.backend, r.scenario): r for r in rows if r.mode == "library"}
    for r in rows:
        ratio = ""
        if r.mode == "http" and (r.backend, r.scenario) in lib:
            ratio = f"{r.rate / lib[(r.backend, r.scenario)].rate:.2f}"
        scen = "1 hot record" if r.scenario == "hot" else f"{args.records:,} records"
        print(
            f"| {r.backend} | {scen} | {r.mode} | {r.rate:,.0f} | {r.p50_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.errors} | {ratio} |"
        )


def _fmt(r: Row) -> str:
    return (
        f"{r.backend:10} {r.scenario:6} {r.mode:7} {r.rate:8,.0f} writes/s "
        f"p50 {r.p50_ms:6.1f} ms p99 {r.p99_ms:7.1f} ms errors {r.errors}"
    )


if __name__ == "__main__":
    main()
