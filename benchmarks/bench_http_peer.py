"""``revstore serve`` beside a hand-written FastAPI peer (``benchmarks/peer_app.py``), the
same load generator driving both in the same run.

For each backend (SQLite file, PostgreSQL), each app is started with 2 uvicorn workers
on a loopback port, 1,001 records are written in a fresh namespace (``hot`` and
r0000..r0999), then Debian's ``wrk`` (``benchmarks/wrk_records.lua``; 64 connections,
2 threads) runs, per scenario, a warm-up and a measured window:

* PUT on 1 hot record, PUT over 1,000 records (every body new, so every PUT writes a
  version), GET of 1 hot record, GET over 1,000 records.

The apps alternate (revstore, peer, peer, revstore, ...) so outside load hits both
alike; the median run of each figure is reported, with p50/p99 as wrk saw them, the
non-2xx answers and socket errors (both must be 0), the server's CPU per request
(user+system of the uvicorn processes), and revstore ÷ peer. Both apps run as a user
would start them: ``revstore serve --workers 2`` (one JSON log line per request) and
``uvicorn peer_app:app --workers 2`` (uvicorn's access log on); logs go to files.

Before each app's runs the benchmark waits (up to ``--quiet-wait`` s) for the 1-minute
load average to fall below ``--quiet-below``; the load average is kept with every row.

    python benchmarks/bench_http_peer.py                     # everything, ~20 min
    python benchmarks/bench_http_peer.py --backends sqlite --seconds 3 --repeat 1
    python benchmarks/bench_http_peer.py --baseline HEAD~1   # + revstore as of a commit
    python benchmarks/bench_http_peer.py --py-spy /tmp/prof  # profile revstore only

``--baseline REF`` adds revstore with ``src/`` as of REF (``git archive``) to the
rotation, for before/after in one run. ``--py-spy DIR`` runs revstore alone with
py-spy recording both workers during each measured window (raw folded stacks in DIR);
its figures are slowed by the sampler and marked so. Needs ``wrk`` on PATH
(``make bench-http`` installs it with apt-get when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "wrk_records.lua"
DEFAULT_PG_URL = os.environ.get(
    "REVSTORE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SCENARIOS = ("put-hot", "put-spread", "get-hot", "get-spread")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    backend: str
    app: str
    scenario: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    cpu_us_per_req: float
    load1: float
    runs: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_command(app: str, url: str, port: int, workers: int) -> list[str]:
    if app.startswith("revstore"):
        return [sys.executable, "-m", "revstore.cli", "serve", "--db", url]
    return [sys.executable, "-m", "uvicorn", "peer_app:app", "--app-dir", str(HERE)]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str

    def pids(self) -> list[int]:
        """The server process and all its descendants (the uvicorn workers)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK

    def stop(self) -> None:
        # The server runs in its own process group (start_new_session): end that group.
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_server(app: str, url: str, workers: int, tmp: Path, src: Path) -> Server:
    import httpx

    port = free_port()
    cmd = server_command(app, url, port, workers)
    cmd += ["--port", str(port), "--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(src), PEER_DB=url)
    log = open(tmp / f"{app}-{port}.log", "wb")  # noqa: SIM115 (kept open by the child)
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = httpx.get(f"{server.base}/v1/records/probe?namespace=probe", timeout=2)
            if r.status_code == 404:
                time.sleep(2.0)  # let every worker finish starting, not only the first
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise SystemExit(f"{app} did not start on {url}; see {log.name}")


async def prefill(base: str, ns: str, records: int) -> None:
    """Write ``hot`` and r0000.. so that every GET finds its record."""
    import httpx

    ids = ["hot"] + [f"r{i:04d}" for i in range(records)]
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def one(id: str) -> None:
            async with sem:
                body = {"content": {"author": "bench", "body": "x" * 120, "n": -1}}
                r = await client.put(f"/v1/records/{id}", params={"namespace": ns}, json=body)
                if r.status_code >= 300:
                    raise SystemExit(f"prefill {id}: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(one(i) for i in ids))


# ---------------------------------------------------------------- load


def wrk(base: str, scenario: str, ns: str, args: argparse.Namespace, seconds: float) -> Any:
    method, spread = scenario.split("-")
    env = dict(
        os.environ,
        BENCH_METHOD=method.upper(),
        BENCH_NS=ns,
        BENCH_RECORDS=str(args.records if spread == "spread" else 1),
    )
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        base,
    ]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    for line in out.stdout.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise SystemExit(f"wrk printed no figures:\n{out.stdout}\n{out.stderr}")


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_quiet(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.quiet_wait
    while load1() >= args.quiet_below and time.monotonic() < deadline:
        time.sleep(5)


def session(
    app: str, backend: str, url: str, args: argparse.Namespace, tmp: Path, src: Path
) -> list[Row]:
    """One app started once: prefill, then every scenario (warm-up, measured window)."""
    wait_quiet(args)
    server = start_server(app, url, args.workers, tmp, src)
    rows = []
    spy = None
    try:
        ns = f"bench-{uuid.uuid4().hex[:8]}"
        asyncio.run(prefill(server.base, ns, args.records))
        for scenario in args.scenarios.split(","):
            wrk(server.base, scenario, ns, args, args.warmup)
            if args.py_spy:
                spy = py_spy(server, Path(args.py_spy) / f"{backend}-{scenario}.txt", args)
            la = load1()
            cpu0 = server.cpu_seconds()
            got = wrk(server.base, scenario, ns, args, args.seconds)
            cpu = server.cpu_seconds() - cpu0
            if spy is not None:
                spy.wait(timeout=args.seconds + 60)
                spy = None
            n = got["requests"]
            row = Row(
                backend,
                app,
                scenario,
                n,
                got["duration_us"] / 1e6,
                got["p50_us"] / 1000,
                got["p99_us"] / 1000,
                got["non2xx"],
                got["connect"] + got["read"] + got["write"] + got["timeout"],
                cpu / n * 1e6 if n else float("nan"),
                la,
            )
            print(fmt(row), file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        if spy is not None:
            spy.kill()
        server.stop()
    return rows


def py_spy(server: Server, out: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [spy, "record", "--pid", str(server.proc.pid), "--subprocesses", "--gil"]
    cmd += ["--duration", str(int(args.seconds)), "--rate", "200", "--format", "raw"]
    cmd += ["--output", str(out), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def baseline_src(ref: str, tmp: Path) -> Path:
    dest = tmp / "baseline"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


# ---------------------------------------------------------------- report


def fmt(r: Row) -> str:
    return (
        f"{r.backend:10} {r.app:18} {r.scenario:10} {r.rate:8,.0f} req/s "
        f"p50 {r.p50_ms:6.1f} ms p99 {r.p99_ms:7.1f} ms non-2xx {r.non2xx} "
        f"sock {r.socket_errors} cpu {r.cpu_us_per_req:6.0f} us/req load {r.load1:.2f}"
    )


def median(rows: list[Row]) -> Row:
    ordered = sorted(rows, key=lambda r: r.rate)
    mid = ordered[len(ordered) // 2]
    mid.runs = [round(r.rate) for r in rows]
    # Errors are never hidden by the median: the row carries every run's.
    mid.non2xx = sum(r.non2xx for r in rows)
    mid.socket_errors = sum(r.socket_errors for r in rows)
    return mid


def table(rows: list[Row], args: argparse.Namespace) -> str:
    names = {"put-hot": "PUT, 1 hot record", "put-spread": f"PUT, {args.records:,} records"}
    names |= {"get-hot": "GET, 1 hot record", "get-spread": f"GET, {args.records:,} records"}
    peer = {(r.backend, r.scenario): r for r in rows if r.app == "peer"}
    lines = [
        "| backend | scenario | app | req/s | runs | p50 ms | p99 ms | non-2xx | socket errors "
        "| server CPU µs/req | load 1 min | ÷ peer |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = peer.get((r.backend, r.scenario))
        ratio = f"**{r.rate / p.rate:.2f}**" if p and r.app != "peer" and p.rate else ""
        lines.append(
            f"| {r.backend} | {names[r.scenario]} | {r.app} | {r.rate:,.0f} | "
            f"{'/'.join(f'{x:,}' for x in r.runs)} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
            f"{r.non2xx} | {r.socket_errors} | {r.cpu_us_per_req:,.0f} | {r.load1:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--seconds", type=float, default=8.0, help="measured window per scenario")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers per app")
    p.add_argument("--records", type=int, default=1000, help="records in the spread scenarios")
    p.add_argument("--repeat", type=int, default=3, help="sessions per app (median shown)")
    p.add_argument("--quiet-below", type=float, default=1.5, help="1-min load to wait for")
    p.add_argument("--quiet-wait", type=float, default=120, help="seconds to wait at most")
    p.add_argument("--baseline", help="also run revstore with src/ as of this git ref")
    p.add_argument("--py-spy", help="profile revstore with py-spy into this directory")
    p.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk (or make bench-http)")

    tmp = Path(tempfile.mkdtemp(prefix="revstore-bench-peer-"))
    srcs = {"revstore": ROOT / "src", "peer": ROOT / "src"}
    if args.baseline:
        srcs[f"revstore@{args.baseline}"] = baseline_src(args.baseline, tmp)
    if args.py_spy:
        srcs = {"revstore": ROOT / "src"}
        args.repeat = 1
    load_before = Path("/proc/loadavg").read_text().strip()
    rows: list[Row] = []
    try:
        for backend in args.backends.split(","):
            runs: dict[tuple[str, str], list[Row]] = {}
            order = list(srcs)
            for rep in range(args.repeat):
                for app in order if rep % 2 == 0 else order[::-1]:
                    url = (
                        f"sqlite:///{tmp / (app.split('@')[0] + '.db')}"
                        if backend == "sqlite"
                        else args.postgres_url
                    )
                    for row in session(app, backend, url, args, tmp, srcs[app]):
                        runs.setdefault((row.app, row.scenario), []).append(row)
            for scenario in args.scenarios.split(","):
                for app in order:
                    rows.append(median(runs[(app, scenario)]))
    finally:
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)

    head = (
        f"{args.connections} connections (wrk, {args.threads} threads), {args.workers} uvicorn "
        f"workers per app, {args.seconds:g} s window after {args.warmup:g} s warm-up, "
        f"median of {args.repeat} alternating sessions; {os.cpu_count()} CPUs; "
        f"load average {load_before} before, {Path('/proc/loadavg').read_text().strip()} after"
        + ("; UNDER py-spy (slowed)" if args.py_spy else "")
    )
    print(f"\n{head}\n\n{table(rows, args)}")
    if args.json:
        doc = {"setup": head, "argv": sys.argv[1:], "rows": [asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
