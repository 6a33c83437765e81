"""``AsyncStore`` on PostgreSQL, in-process: client CPU per operation and throughput, beside
the code before (``--baseline REF``), the sync ``Store`` in threads, and a hand-written
psycopg asyncio loop (the statements of ``benchmarks/peer_app.py``: one upsert + snapshot
CTE per put, one SELECT per get).

Each variant runs in its own process (two versions of revstore cannot share one), on the
same database, in a namespace (or peer table rows) of its own seeded with ``hot`` and
r0000..r0999. Per scenario it runs a warm-up, then ``--n`` operations from
``--concurrency`` asyncio tasks (threads for the sync Store), and reports operations per
second (wall) and the process's CPU (user + system) per operation:

* get-hot: 1 record; get-spread: over 1,000 records;
* put-hot: 1 record; put-spread: over 1,000 records (every body new: every put writes a
  version).

The CPU figure is the client's only (the server's is not counted): what the library
costs its caller. Variants alternate order between repeats; the median run is reported.

    python benchmarks/bench_async_store.py --postgres-url postgresql://postgres@127.0.0.1/db
    python benchmarks/bench_async_store.py --baseline main --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_http_peer import baseline_src

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_PG_URL = os.environ.get(
    "REVSTORE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SCENARIOS = ("get-hot", "get-spread", "put-hot", "put-spread")
RECORDS = 1000


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def key_of(scenario: str, i: int) -> str:
    return "hot" if scenario.endswith("hot") else f"r{i % RECORDS:04d}"


def body_of(i: int) -> dict[str, Any]:
    return {"title": f"document {i}", "n": i, "tags": ["a", "b"], "ok": True}


def warmup(count: int) -> int:
    """Operations run before a measured window."""
    return max(count // 5, 50)


def measured(c0: float, t0: float, n: int) -> dict[str, float]:
    return {"ops": n, "wall": time.perf_counter() - t0, "cpu": cpu() - c0}


# ---------------------------------------------------------------- workers (one process each)


async def tasks(concurrency: int, count: int, op: Any) -> None:
    """``count`` calls of ``op(i)`` spread over ``concurrency`` tasks."""
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            await op(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def scenarios_async(
    get: Any, put: Any, scenarios: list[str], n: int, concurrency: int
) -> dict[str, Any]:
    """Seed, then each scenario: a warm-up, then ``n`` operations measured."""
    await put("hot", body_of(0))
    await tasks(concurrency, RECORDS, lambda i: put(f"r{i:04d}", body_of(i)))
    seq = iter(range(RECORDS, 10**9))
    out: dict[str, Any] = {}
    for scenario in scenarios:
        if scenario.startswith("get"):

            async def op(i: int, s: str = scenario) -> None:
                await get(key_of(s, i))
        else:

            async def op(i: int, s: str = scenario) -> None:
                await put(key_of(s, i), body_of(next(seq)))

        await tasks(concurrency, warmup(n), op)
        c0, t0 = cpu(), time.perf_counter()
        await tasks(concurrency, n, op)
        out[scenario] = measured(c0, t0, n)
    return out


def worker_async_store(url: str, scenarios: list[str], n: int, concurrency: int) -> dict[str, Any]:
    from revstore import AsyncStore

    ns = f"bench-{uuid.uuid4().hex[:8]}"

    async def main() -> dict[str, Any]:
        async with AsyncStore(url) as store:
            await store.create_schema()
            return await scenarios_async(
                lambda key: store.get(key, namespace=ns),
                lambda key, body: store.put(key, body, namespace=ns),
                scenarios,
                n,
                concurrency,
            )

    return asyncio.run(main())


def worker_sync_store(url: str, scenarios: list[str], n: int, concurrency: int) -> dict[str, Any]:
    from revstore import Store

    ns = f"bench-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {}
    with Store(url) as store, ThreadPoolExecutor(concurrency) as pool:
        store.create_schema()
        store.put("hot", body_of(0), namespace=ns)
        list(pool.map(lambda i: store.put(f"r{i:04d}", body_of(i), namespace=ns), range(RECORDS)))
        seq = iter(range(RECORDS, 10**9))
        lock = threading.Lock()

        def new_body() -> dict[str, Any]:
            with lock:
                return body_of(next(seq))

        for scenario in scenarios:
            if scenario.startswith("get"):

                def op(i: int, s: str = scenario) -> None:
                    store.get(key_of(s, i), namespace=ns)
            else:

                def op(i: int, s: str = scenario) -> None:
                    store.put(key_of(s, i), new_body(), namespace=ns)

            list(pool.map(op, range(warmup(n))))
            c0, t0 = cpu(), time.perf_counter()
            list(pool.map(op, range(n)))
            out[scenario] = measured(c0, t0, n)
    return out


def worker_peer(url: str, scenarios: list[str], n: int, concurrency: int) -> dict[str, Any]:
    """The hand-written loop: ``peer_app``'s pool settings and statements."""
    import hashlib

    os.environ["PEER_DB"] = url
    sys.path.insert(0, str(HERE))
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    import peer_app

    ns = f"bench-{uuid.uuid4().hex[:8]}"

    async def main() -> dict[str, Any]:
        kwargs = {"row_factory": dict_row, "autocommit": True}
        async with AsyncConnectionPool(url, min_size=16, kwargs=kwargs, open=False) as pool:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(4242)")
                for ddl in peer_app.TABLES:
                    await conn.execute(ddl)

            async def put(key: str, content: Any) -> dict[str, Any]:
                text = json.dumps(content, sort_keys=True, separators=(",", ":"))
                args = (ns, key, text, hashlib.sha256(text.encode()).hexdigest())
                async with pool.connection() as conn:
                    row = await (await conn.execute(peer_app.PG_PUT, args)).fetchone()
                assert row is not None
                return dict(row)

            async def get(key: str) -> dict[str, Any]:
                async with pool.connection() as conn:
                    row = await (await conn.execute(peer_app.GET, (ns, key))).fetchone()
                assert row is not None
                return dict(row)

            return await scenarios_async(get, put, scenarios, n, concurrency)

    return asyncio.run(main())


WORKERS = {"async": worker_async_store, "sync": worker_sync_store, "peer": worker_peer}


# ---------------------------------------------------------------- orchestration


def run_variant(kind: str, src: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--postgres-url",
        args.postgres_url,
        "--n",
        str(args.n),
        "--concurrency",
        str(args.concurrency),
        "--scenarios",
        args.scenarios,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    p.add_argument("--n", type=int, default=3000, help="operations per scenario")
    p.add_argument("--concurrency", type=int, default=24, help="tasks (threads for sync)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--baseline", help="also run AsyncStore with src/ as of this git ref")
    p.add_argument("--variants", default="async,baseline,sync,peer")
    p.add_argument("--json", help="write the raw runs here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    scenarios = args.scenarios.split(",")

    if args.worker:
        out = WORKERS[args.worker](args.postgres_url, scenarios, args.n, args.concurrency)
        print(json.dumps(out))
        return

    tmp = Path(tempfile.mkdtemp(prefix="revstore-bench-async-"))
    variants: dict[str, tuple[str, Path]] = {}
    for name in args.variants.split(","):
        if name == "async":
            variants["AsyncStore"] = ("async", ROOT / "src")
        elif name == "baseline" and args.baseline:
            variants[f"AsyncStore@{args.baseline}"] = ("async", baseline_src(args.baseline, tmp))
        elif name == "sync":
            variants["Store (threads)"] = ("sync", ROOT / "src")
        elif name == "peer":
            variants["psycopg by hand"] = ("peer", ROOT / "src")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    load_before = Path("/proc/loadavg").read_text().split()[0]
    order = list(variants)
    for rep in range(args.repeat):
        for name in order if rep % 2 == 0 else order[::-1]:
            kind, src = variants[name]
            print(f"# {name} (run {rep + 1})", file=sys.stderr, flush=True)
            runs[name].append(run_variant(kind, src, args))
    load_after = Path("/proc/loadavg").read_text().split()[0]

    def median(name: str, scenario: str, what: str) -> float:
        vals = []
        for r in runs[name]:
            m = r[scenario]
            vals.append(m["ops"] / m["wall"] if what == "rate" else m["cpu"] / m["ops"] * 1e6)
        return statistics.median(vals)

    ref = "psycopg by hand"
    print(
        f"n={args.n} per scenario, {args.concurrency} tasks, repeat={args.repeat}, "
        f"load1 {load_before} -> {load_after}\n"
    )
    head = "| scenario | variant | ops/s | client CPU µs/op |"
    if ref in runs:
        head += " ops/s ÷ peer | CPU ÷ peer |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for scenario in scenarios:
        for name in variants:
            rate, us = median(name, scenario, "rate"), median(name, scenario, "cpu")
            line = f"| {scenario} | {name} | {rate:,.0f} | {us:,.0f} |"
            if ref in runs:
                line += (
                    f" {rate / median(ref, scenario, 'rate'):.2f} |"
                    f" {us / median(ref, scenario, 'cpu'):.2f} |"
                )
            print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
