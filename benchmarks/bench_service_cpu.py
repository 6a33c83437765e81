"""CPU per request of the service's app, in-process: no server, no network, no load
generator; raw ASGI requests straight into ``create_app``'s app, one at a time.

It isolates what the app itself costs per request (routing, validation, the store,
the reply, the log line and metrics), which an HTTP benchmark on 2 cores mixes with
uvicorn and the load generator. Each configuration is an app of its own, measured in
alternating rounds in one process, so a slower moment of the machine hits each alike:

* ``lane``: the default app (``Settings()``, the fast lane on);
* ``no-lane``: ``Settings(fast_lane=False)``, every request down FastAPI's path.

    python benchmarks/bench_service_cpu.py                         # SQLite file
    python benchmarks/bench_service_cpu.py --url postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/bench_service_cpu.py --requests 3000 --rounds 3 --json out.json

Requests: GET of one record, PUT over 1,000 records (a new body each time). Logs go to
/dev/null through the service's JSON formatter (the line is still built and written).
Reported: the median over rounds of CPU µs per request (``time.process_time``: every
thread of the process, the store's included) and lane ÷ no-lane.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
from typing import Any

from revstore.service import Settings, create_app
from revstore.service.logs import JsonFormatter


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _call(app: Any, method: str, path: str, body: bytes = b"") -> int:
    headers = []
    if body:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    given = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal given
        if given:
            raise RuntimeError("the app asked for the body twice")
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(method, path, headers), receive, send)
    return status


class _Lifespan:
    """Runs an app's lifespan (its AsyncStore opens in this loop)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.started = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        async def receive() -> dict[str, Any]:
            return await self.inbox.get()

        async def send(message: dict[str, Any]) -> None:
            if message["type"].startswith("lifespan.startup"):
                self.started.set()

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.get_running_loop().create_task(self.app(scope, receive, send))
        await self.inbox.put({"type": "lifespan.startup"})
        await self.started.wait()
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        assert self.task is not None
        await self.task


async def _round(app: Any, kind: str, n: int, seq: int) -> float:
    start = time.process_time()
    for i in range(n):
        if kind == "get":
            status = await _call(app, "GET", "/v1/records/hot")
        else:
            body = json.dumps({"content": {"n": seq * n + i, "text": "x" * 40}}).encode()
            status = await _call(app, "PUT", f"/v1/records/r{i % 1000:04d}", body)
        if status >= 300:
            raise RuntimeError(f"{kind} answered {status}")
    return (time.process_time() - start) / n * 1e6


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url
    if url is None:
        url = f"sqlite:///{tempfile.mkdtemp(prefix='bench-service-cpu-')}/bench.db"
    configs = {
        "lane": Settings(url=url, retention_interval=0),
        "no-lane": Settings(url=url, retention_interval=0, fast_lane=False),
    }
    apps = {name: create_app(url, s) for name, s in configs.items()}
    results: dict[str, dict[str, list[float]]] = {k: {n: [] for n in apps} for k in ("get", "put")}
    async with _Lifespan(apps["lane"]) as lane, _Lifespan(apps["no-lane"]) as plain:
        live = {"lane": lane, "no-lane": plain}
        body = json.dumps({"content": {"n": 0}}).encode()
        assert await _call(lane, "PUT", "/v1/records/hot", body) < 300
        for app in live.values():  # warm-up: connections, caches, compiled statements
            await _round(app, "get", 200, 0)
            await _round(app, "put", 200, 0)
        seq = 1
        for r in range(args.rounds):
            for kind in ("get", "put"):
                order = list(live.items())
                if r % 2:
                    order.reverse()
                for name, app in order:
                    seq += 1
                    results[kind][name].append(await _round(app, kind, args.requests, seq))
    out: dict[str, Any] = {
        "url": url.split("@")[-1],
        "requests": args.requests,
        "rounds": args.rounds,
    }
    for kind, per in results.items():
        med = {name: statistics.median(v) for name, v in per.items()}
        out[kind] = {"cpu_us": med, "rounds_us": per, "ratio": med["no-lane"] / med["lane"]}
        print(
            f"{kind}: lane {med['lane']:.0f} µs/req, no-lane {med['no-lane']:.0f} µs/req "
            f"-> lane uses {med['lane'] / med['no-lane']:.2f}x the CPU "
            f"({med['no-lane'] / med['lane']:.2f}x the requests per CPU second)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="database URL (default: a new SQLite file)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the run
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("revstore")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    print(f"load average before: {os.getloadavg()}")
    out = asyncio.run(main_async(args))
    out["load_after"] = os.getloadavg()
    print(f"load average after: {out['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
