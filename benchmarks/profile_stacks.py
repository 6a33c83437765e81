"""Where the CPU of ``revstore serve`` goes: reads py-spy's raw folded stacks (as written
by ``bench_http_peer.py --py-spy DIR``: ``--gil``, so only the thread holding the GIL is
sampled, i.e. Python CPU time) and ranks the samples by category. With the number of
requests served while sampling, each category is also given in µs per request.

Each sample is charged to one category:

* if its stack passes through an *owning* category (logging, metrics, JSON, pydantic /
  FastAPI validation, the database driver), the outermost such frame decides, so that
  e.g. ``json.dumps`` inside the log formatter counts as logging;
* else the innermost frame that is not generic standard library (re, datetime, enum,
  functools, ...) decides: SQLAlchemy, revstore's Store, revstore's service layer, the
  middleware, FastAPI/Starlette, the threadpool hop (anyio, threading, queue), the HTTP
  server and event loop (uvicorn, asyncio).

SQLite runs in C under SQLAlchemy's ``do_execute``/``do_commit``: a sample whose
innermost Python frame is one of those counts as the driver.

    python benchmarks/profile_stacks.py /tmp/prof/postgresql-put-spread.txt --requests 7360
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")

OWNERS: list[tuple[str, tuple[str, ...]]] = [
    ("logging", ("logging/", "revstore/service/logs.py")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("driver (psycopg / sqlite3)", ("psycopg/", "psycopg_pool/", "psycopg_binary/")),
    ("pydantic + FastAPI validation", ("pydantic/", "pydantic_core/", "fastapi/dependencies/",
                                       "fastapi/_compat")),
    ("JSON encode/decode", ("json/", "fastapi/encoders.py", "JSONResponse.render")),
]  # fmt: skip

LEAVES: list[tuple[str, tuple[str, ...]]] = [
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("revstore Store (core, backends)", ("revstore/",)),  # after the service entries below
    ("threadpool hop (anyio, threads, queue)", ("anyio/", "starlette/concurrency.py",
                                                "threading.py", "queue.py", "concurrent/")),
    ("HTTP server + event loop (uvicorn, asyncio)", ("uvicorn/", "asyncio/", "httptools",
                                                     "uvloop", "selectors.py", "socket.py")),
    ("FastAPI / Starlette routing", ("fastapi/", "starlette/")),
]  # fmt: skip
SERVICE = {
    "revstore/service/middleware.py": "revstore middleware",
}
TRANSPARENT = (
    "re/", "datetime.py", "enum.py", "functools.py", "typing.py", "abc.py", "contextlib.py",
    "copy.py", "uuid.py", "hashlib.py", "collections/", "urllib/", "email/", "http/",
    "weakref.py", "inspect.py", "dataclasses.py", "types.py", "operator.py", "<frozen",
    "_weakrefset.py", "base64.py", "string.py", "random.py", "traceback.py", "linecache.py",
)  # fmt: skip
DRIVER_CALLS = ("do_execute", "do_commit", "do_rollback", "do_begin", "connect")


def parse(frame: str) -> tuple[str, str]:
    m = FRAME.match(frame)
    return (m["func"], m["file"]) if m else (frame, "")


def category(frames: list[tuple[str, str]]) -> str:
    for func, file in frames:  # root -> leaf: the outermost owning frame decides
        for name, keys in OWNERS:
            if any(file.startswith(k) or func == k for k in keys):
                return name
    for func, file in reversed(frames):  # leaf -> root
        if not file or file.startswith(TRANSPARENT):
            continue
        if file.startswith("sqlalchemy/engine/default.py") and func.endswith(DRIVER_CALLS):
            return "driver (psycopg / sqlite3)"
        if file in SERVICE:
            return SERVICE[file]
        if file.startswith("revstore/service/"):
            return "revstore service layer (routes, routing, conditions, replies)"
        for name, keys in LEAVES:
            if file.startswith(keys):
                return name
        return f"other ({file.split('/')[0]})"
    return "other (C / unknown)"


def load(path: Path) -> tuple[Counter[str], Counter[str], int]:
    cats: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = [parse(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        total += count
        cats[category(frames)] += count
        for func, file in {
            (f, fl) for f, fl in frames if fl.startswith(("revstore/", "fastapi/", "starlette/"))
        }:
            inclusive[f"{func} ({file})"] += count
    return cats, inclusive, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument(
        "--requests", type=int, nargs="*", help="requests served while sampling, per file"
    )
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15, help="inclusive frames to list")
    args = p.parse_args()
    for i, path in enumerate(args.files):
        cats, inclusive, total = load(path)
        reqs = args.requests[i] if args.requests and i < len(args.requests) else None
        # One sample stands for 1/rate s of (GIL-holding) time in one process.
        us_per = 1e6 / args.rate / reqs if reqs else None
        head = f"\n### {path.name}: {total:,} samples"
        if us_per:
            head += f", {reqs:,} requests, {total * us_per:,.0f} µs sampled per request"
        print(head)
        print("\n| rank | where | share | µs/request |\n|---:|---|---:|---:|")
        for rank, (name, n) in enumerate(cats.most_common(), 1):
            us = f"{n * us_per:,.0f}" if us_per else ""
            print(f"| {rank} | {name} | {100 * n / total:.1f} % | {us} |")
        print("\nInclusive, revstore / FastAPI / Starlette frames:\n")
        print("| frame | share |\n|---|---:|")
        for name, n in inclusive.most_common(args.top):
            print(f"| `{name}` | {100 * n / total:.1f} % |")


if __name__ == "__main__":
    main()
