"""revstore.sqlalchemy beside SQLAlchemy-Continuum and beside plain ``version_id_col``
with a retry loop: the same model, 16 writers, one hot row and 1,000 rows.

Contenders (each on the same ``Doc`` model: id, title, body, n):

- ``revstore``: ``class Doc(rs.Versioned, Base)``; each write is a unit of work in
  ``rs.transaction`` (load, set ``body``, flush, commit), no expectation;
- ``continuum``: ``__versioned__ = {}`` with SQLAlchemy-Continuum's defaults (validity
  strategy, a ``transaction`` table); each write loads, sets ``body`` and commits, as
  its users write it (no retry: Continuum offers none);
- ``version_id_col``: ``__mapper_args__ = {"version_id_col": ...}`` plus a hand-written
  history table; each write loads, sets ``body``, adds the history row at the new
  version and commits, and re-runs on ``StaleDataError`` (up to ``--max-retries``).

Scenarios: ``hot`` (every write on row 1) and ``spread`` (uniformly over ``--rows``).
``--writers`` threads write for ``--seconds``; a write counts when its COMMIT returned.
Afterwards each history is checked: **complete** (every acknowledged write is in it
exactly once, and nothing else) and **gapless** (revstore and version_id_col: versions
1..N per row; Continuum has no per-row number, so its chain of
``transaction_id``/``end_transaction_id`` must be unbroken).

Each contender runs in its own spawned process (Continuum's global listeners never see
the others). Writers are threads, so Python's GIL caps all three alike.

    python benchmarks/bench_sqlalchemy.py --db sqlite:///tmp/b.db --seconds 5
    python benchmarks/bench_sqlalchemy.py --out benchmarks/results/2026-12-01-sqlalchemy.md

Without ``--db`` it runs on a SQLite file, PostgreSQL and MariaDB/MySQL
(REVSTORE_BENCH_POSTGRES_URL / REVSTORE_BENCH_MYSQL_URL, default the local servers).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    configure_mappers,
    mapped_column,
    sessionmaker,
)
from sqlalchemy.orm.exc import StaleDataError

DEFAULT_PG_URL = os.environ.get(
    "REVSTORE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
DEFAULT_MYSQL_URL = os.environ.get("REVSTORE_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
CONTENDERS = ("revstore", "continuum", "version_id_col")
SCENARIOS = ("hot", "spread")
BODY = "x" * 120


@dataclass
class Result:
    backend: str
    contender: str
    scenario: str
    writers: int
    seconds: float
    writes: int = 0
    errors: int = 0
    retries: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    gapless: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.writes / self.seconds if self.seconds else 0.0


# ----------------------------------------------------------------- the three models


def engine_for(url: str) -> Any:

    from revstore.config import parse_url

    args: dict[str, Any] = {"pool_size": 20, "max_overflow": 10}
    if url.startswith("sqlite"):
        args = {"connect_args": {"timeout": 30}}
    return create_engine(parse_url(url).sqlalchemy(), **args)


class Contender:
    """One way of keeping history: schema, seed, one write, and the history check."""

    def __init__(self, engine: Any, rows: int, max_retries: int) -> None:
        self.engine = engine
        self.rows = rows
        self.max_retries = max_retries

    def setup(self) -> None:
        """Fresh tables with ``self.rows`` rows, each with its first history entry."""
        raise NotImplementedError

    def write(self, doc_id: int, token: str) -> int:
        """One acknowledged write; returns the retries it took."""
        raise NotImplementedError

    def histories(self) -> dict[int, list[tuple[int, str]]]:
        """Per row, its history as (number, body) in order."""
        raise NotImplementedError

    def gapless(self, histories: dict[int, list[tuple[int, str]]]) -> list[str]:
        return [
            f"row {doc_id}: versions {[n for n, _ in hist][:8]}…"
            for doc_id, hist in histories.items()
            if [n for n, _ in hist] != list(range(1, len(hist) + 1))
        ]

    def teardown(self) -> None:
        raise NotImplementedError


class RevstoreContender(Contender):
    def __init__(self, engine: Any, rows: int, max_retries: int) -> None:
        super().__init__(engine, rows, max_retries)

        import revstore.sqlalchemy as rs

        class Base(DeclarativeBase):
            pass

        class Doc(rs.Versioned, Base):
            __tablename__ = "bench_rs_doc"
            id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
            title: Mapped[str] = mapped_column(String(100))
            body: Mapped[str] = mapped_column(Text)
            n: Mapped[int] = mapped_column(Integer, default=0)

        self.rs = rs
        self.Base, self.Doc = Base, Doc
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def setup(self) -> None:
        self.Base.metadata.drop_all(self.engine)
        self.Base.metadata.create_all(self.engine)
        with self.sessions() as s:
            s.add_all(
                self.Doc(id=i, title=f"doc {i}", body="seed", n=0) for i in range(1, self.rows + 1)
            )
            s.commit()

    def write(self, doc_id: int, token: str) -> int:
        Doc = self.Doc

        def work(session: Any) -> None:
            doc = session.get(Doc, doc_id)
            doc.body = token
            session.flush()

        self.rs.transaction(self.sessions).run(work)
        return 0  # rs.transaction's retries are counted from its log

    def histories(self) -> dict[int, list[tuple[int, str]]]:

        hist = self.Doc.__versioned__.history
        out: dict[int, list[tuple[int, str]]] = defaultdict(list)
        with self.engine.connect() as conn:
            stmt = select(hist.c.id, hist.c.version, hist.c.body).order_by(
                hist.c.id, hist.c.version
            )
            for doc_id, version, body in conn.execute(stmt):
                out[doc_id].append((version, body))
        return out

    def teardown(self) -> None:
        self.Base.metadata.drop_all(self.engine)


class ContinuumContender(Contender):
    def __init__(self, engine: Any, rows: int, max_retries: int) -> None:
        super().__init__(engine, rows, max_retries)
        from sqlalchemy_continuum import make_versioned, version_class

        make_versioned(user_cls=None)

        class Base(DeclarativeBase):
            pass

        class Doc(Base):
            __versioned__: dict[str, Any] = {}
            __tablename__ = "bench_cn_doc"
            id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
            title: Mapped[str] = mapped_column(String(100))
            body: Mapped[str] = mapped_column(Text)
            n: Mapped[int] = mapped_column(Integer, default=0)

        configure_mappers()
        self.Base, self.Doc = Base, Doc
        self.DocVersion = version_class(Doc)
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def setup(self) -> None:
        self.Base.metadata.drop_all(self.engine)
        self.Base.metadata.create_all(self.engine)
        with self.sessions() as s:
            s.add_all(
                self.Doc(id=i, title=f"doc {i}", body="seed", n=0) for i in range(1, self.rows + 1)
            )
            s.commit()

    def write(self, doc_id: int, token: str) -> int:
        with self.sessions() as s:
            doc = s.get(self.Doc, doc_id)
            doc.body = token
            s.commit()
        return 0

    def histories(self) -> dict[int, list[tuple[int, str]]]:

        table = self.DocVersion.__table__
        out: dict[int, list[tuple[int, str]]] = defaultdict(list)
        self._chains: dict[int, list[tuple[int, int | None]]] = defaultdict(list)
        with self.engine.connect() as conn:
            stmt = select(
                table.c.id, table.c.transaction_id, table.c.end_transaction_id, table.c.body
            ).order_by(table.c.id, table.c.transaction_id)
            for doc_id, tx, end_tx, body in conn.execute(stmt):
                out[doc_id].append((tx, body))
                self._chains[doc_id].append((tx, end_tx))
        return out

    def gapless(self, histories: dict[int, list[tuple[int, str]]]) -> list[str]:
        # No per-row number: the validity chain must link each version to the next.
        problems = []
        for doc_id, chain in self._chains.items():
            ends = [end for _, end in chain]
            starts = [tx for tx, _ in chain]
            if ends != [*starts[1:], None]:
                problems.append(f"row {doc_id}: broken transaction chain {chain[:4]}…")
        return problems

    def teardown(self) -> None:
        self.Base.metadata.drop_all(self.engine)


class VersionIdContender(Contender):
    def __init__(self, engine: Any, rows: int, max_retries: int) -> None:
        super().__init__(engine, rows, max_retries)

        class Base(DeclarativeBase):
            pass

        class Doc(Base):
            __tablename__ = "bench_vi_doc"
            id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
            title: Mapped[str] = mapped_column(String(100))
            body: Mapped[str] = mapped_column(Text)
            n: Mapped[int] = mapped_column(Integer, default=0)
            version_id: Mapped[int] = mapped_column(Integer, nullable=False)
            __mapper_args__ = {"version_id_col": version_id}

        class DocHistory(Base):
            __tablename__ = "bench_vi_doc_history"
            doc_id: Mapped[int] = mapped_column(ForeignKey(Doc.id), primary_key=True)
            version: Mapped[int] = mapped_column(Integer, primary_key=True)
            title: Mapped[str] = mapped_column(String(100))
            body: Mapped[str] = mapped_column(Text)
            n: Mapped[int] = mapped_column(Integer)

        self.Base, self.Doc, self.DocHistory = Base, Doc, DocHistory
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def setup(self) -> None:
        self.Base.metadata.drop_all(self.engine)
        self.Base.metadata.create_all(self.engine)
        with self.sessions() as s:
            for i in range(1, self.rows + 1):
                s.add(self.Doc(id=i, title=f"doc {i}", body="seed", n=0))
            s.flush()
            s.add_all(
                self.DocHistory(doc_id=i, version=1, title=f"doc {i}", body="seed", n=0)
                for i in range(1, self.rows + 1)
            )
            s.commit()

    def write(self, doc_id: int, token: str) -> int:

        for attempt in range(self.max_retries + 1):
            try:
                with self.sessions() as s:
                    doc = s.get(self.Doc, doc_id)
                    doc.body = token
                    # The number the UPDATE's WHERE version_id = old will check.
                    s.add(
                        self.DocHistory(
                            doc_id=doc_id,
                            version=doc.version_id + 1,
                            title=doc.title,
                            body=token,
                            n=doc.n,
                        )
                    )
                    s.commit()
                return attempt
            except StaleDataError:
                if attempt == self.max_retries:
                    raise
                time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise AssertionError("unreachable")

    def histories(self) -> dict[int, list[tuple[int, str]]]:

        h = self.DocHistory
        out: dict[int, list[tuple[int, str]]] = defaultdict(list)
        with self.engine.connect() as conn:
            stmt = select(h.doc_id, h.version, h.body).order_by(h.doc_id, h.version)
            for doc_id, version, body in conn.execute(stmt):
                out[doc_id].append((version, body))
        return out

    def teardown(self) -> None:
        self.Base.metadata.drop_all(self.engine)


KINDS: dict[str, type[Contender]] = {
    "revstore": RevstoreContender,
    "continuum": ContinuumContender,
    "version_id_col": VersionIdContender,
}


# ----------------------------------------------------------------- one run


def run_contender(
    url: str,
    contender: str,
    scenarios: list[str],
    writers: int,
    seconds: float,
    rows: int,
    max_retries: int,
) -> list[Result]:
    """In its own process: every scenario of one contender on one database."""
    import logging

    class Count(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.count = 0

        def emit(self, record: logging.LogRecord) -> None:
            self.count += 1

    # rs.transaction logs each retry here: counted, not printed.
    retry_log = logging.getLogger("revstore.retry")
    counter = Count()
    retry_log.addHandler(counter)
    retry_log.setLevel(logging.DEBUG)
    retry_log.propagate = False
    from revstore.config import parse_url

    backend = parse_url(url).backend
    engine = engine_for(url)
    results = []
    try:
        # One instance per process: Continuum's set-up (make_versioned) is global.
        kind = KINDS[contender](engine, rows, max_retries)
        for scenario in scenarios:
            kind.rows = rows if scenario == "spread" else 1
            kind.setup()
            try:
                counter.count = 0
                result = race(kind, backend, contender, scenario, writers, seconds)
                result.retries += counter.count
                results.append(result)
            finally:
                kind.teardown()
    finally:
        engine.dispose()
    return results


def race(
    kind: Contender, backend: str, contender: str, scenario: str, writers: int, seconds: float
) -> Result:
    acked: list[tuple[int, str]] = []
    errors: Counter[str] = Counter()
    retries = 0
    lock = threading.Lock()
    start = threading.Barrier(writers + 1)
    stop = threading.Event()

    def writer(w: int) -> None:
        nonlocal retries
        rng = random.Random(w)
        mine: list[tuple[int, str]] = []
        my_errors: Counter[str] = Counter()
        my_retries = 0
        start.wait()
        i = 0
        while not stop.is_set():
            doc_id = 1 if kind.rows == 1 else rng.randrange(kind.rows) + 1
            token = f"w{w}-{i}"
            i += 1
            try:
                my_retries += kind.write(doc_id, token)
                mine.append((doc_id, token))
            except Exception as exc:
                my_errors[type(exc).__name__] += 1
        with lock:
            acked.extend(mine)
            errors.update(my_errors)
            retries += my_retries

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began  # includes the writes in flight at the end

    result = Result(backend, contender, scenario, writers, elapsed, len(acked))
    result.errors = sum(errors.values())
    result.error_kinds = dict(errors)
    result.retries = retries
    histories = kind.histories()
    gaps = kind.gapless(histories)
    result.gapless = not gaps
    # Complete: the seed and every acknowledged write, each exactly once, nothing else.
    expected: dict[int, Counter[str]] = defaultdict(Counter)
    for doc_id in range(1, kind.rows + 1):
        expected[doc_id]["seed"] += 1
    for doc_id, token in acked:
        expected[doc_id][token] += 1
    incomplete = [
        f"row {doc_id}: {sum(want.values())} acknowledged, "
        f"{len(histories.get(doc_id, []))} in history"
        for doc_id, want in expected.items()
        if Counter(body for _, body in histories.get(doc_id, [])) != want
    ]
    result.complete = not incomplete
    result.problems = (gaps + incomplete)[:5]
    return result


# ----------------------------------------------------------------- client CPU per write


@dataclass
class CpuResult:
    backend: str
    contender: str
    writes: int = 0
    cpu_us: list[float] = field(default_factory=list)
    """Client CPU (``time.process_time``) per write of each round, in µs."""
    wall_us: list[float] = field(default_factory=list)
    calls: float = 0.0
    """Python function calls per write (cProfile, its own batch)."""
    statements: float = 0.0
    """SQL statements per write (``before_cursor_execute`` in writes after the timed ones;
    executemany counts once)."""
    top: list[str] = field(default_factory=list)

    @property
    def cpu(self) -> float:
        """The median of the rounds: the least disturbed by the other processes."""
        return sorted(self.cpu_us)[len(self.cpu_us) // 2] if self.cpu_us else 0.0


def run_cpu(url: str, contender: str, rows: int, writes: int, seed: int, top: int) -> CpuResult:
    """In its own process (so that neither contender pays for the other's event hooks):
    one round of ``writes`` single-threaded writes of one contender over ``rows`` rows,
    after a warm-up; with ``top`` > 0, a profiled round instead (Python calls per
    write and the top functions)."""
    import cProfile
    import io
    import pstats

    from sqlalchemy import event

    from revstore.config import parse_url

    engine = engine_for(url)
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    kind = KINDS[contender](engine, rows, 50)
    result = CpuResult(parse_url(url).backend, contender)
    rng = random.Random(seed)
    try:
        kind.setup()
        for i in range(min(writes, 50)):  # warm the caches (compiled statements, pool)
            kind.write(rng.randrange(rows) + 1, f"warm-{i}")
        ids = [rng.randrange(rows) + 1 for _ in range(writes)]
        if top:
            prof = cProfile.Profile()
            prof.enable()
            for i, doc_id in enumerate(ids):
                kind.write(doc_id, f"prof-{i}")
            prof.disable()
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            result.calls = stats.total_calls / writes  # type: ignore[attr-defined]
            stats.sort_stats("tottime").print_stats(top)
            result.top = out.getvalue().splitlines()
            return result
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i, doc_id in enumerate(ids):
            kind.write(doc_id, f"w-{i}")
        cpu1, wall1 = time.process_time(), time.perf_counter()
        result.writes = writes
        result.cpu_us.append((cpu1 - cpu0) / writes * 1e6)
        result.wall_us.append((wall1 - wall0) / writes * 1e6)
        # Counted after the timed writes: a listener on the engine costs every statement
        # SQLAlchemy's event dispatch (and sends revstore's through Connection.execute).
        event.listen(engine, "before_cursor_execute", count)
        counted = ids[: min(writes, 50)]
        for i, doc_id in enumerate(counted):
            kind.write(doc_id, f"c-{i}")
        result.statements = statements / len(counted)
    finally:
        kind.teardown()
        engine.dispose()
    return result


def cpu_markdown(results: list[CpuResult], args: argparse.Namespace) -> str:
    lines = [
        f"# Client CPU per write, revstore.sqlalchemy beside version_id_col "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"One thread, {args.cpu_rounds} rounds of {args.cpu} writes per contender, alternated, "
        f"each round in its own process, spread over {args.rows} rows; CPU = median round of "
        "`time.process_time` per write; calls = cProfile, a round of its own. "
        f"Python {platform.python_version()}. Load average at the start: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}. "
        "Command: `python benchmarks/bench_sqlalchemy.py " + " ".join(sys.argv[1:]) + "`.",
        "",
        "| backend | contender | CPU µs/write (rounds) | wall µs/write | calls/write "
        "| statements/write |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        rounds = ", ".join(f"{x:,.0f}" for x in r.cpu_us)
        wall = sorted(r.wall_us)[len(r.wall_us) // 2] if r.wall_us else 0.0
        lines.append(
            f"| {r.backend} | {r.contender} | {r.cpu:,.0f} ({rounds}) | {wall:,.0f} | "
            f"{r.calls:,.0f} | {r.statements:g} |"
        )
    by = {(r.backend, r.contender): r for r in results}
    lines += ["", "| backend | revstore CPU / version_id_col CPU |", "|---|---:|"]
    for backend in dict.fromkeys(r.backend for r in results):
        rs, vi = by.get((backend, "revstore")), by.get((backend, "version_id_col"))
        if rs and vi and vi.cpu:
            lines.append(f"| {backend} | {rs.cpu / vi.cpu:.2f}x |")
    return "\n".join(lines) + "\n"


def main_cpu(args: argparse.Namespace, urls: list[str]) -> None:
    names = ("revstore", "version_id_col")
    results: list[CpuResult] = []

    def one(url: str, name: str, seed: int, top: int) -> CpuResult:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            return pool.submit(run_cpu, url, name, args.rows, args.cpu, seed, top).result()

    for url in urls:
        print(f"{url.split('://')[0]} cpu …", file=sys.stderr, flush=True)
        merged = {name: CpuResult("", name) for name in names}
        for r in range(args.cpu_rounds):
            # Alternated, each round in a fresh process: a slow moment of the shared
            # machine hits both contenders alike.
            for name in names if r % 2 == 0 else names[::-1]:
                got = one(url, name, r, 0)
                into = merged[name]
                into.backend = got.backend
                into.writes += got.writes
                into.cpu_us += got.cpu_us
                into.wall_us += got.wall_us
                into.statements = got.statements
        for name in names:
            prof = one(url, name, 99, args.profile_top or 1)
            merged[name].calls = prof.calls
            if args.profile_top:
                merged[name].top = prof.top
        for res in merged.values():
            print(
                f"  {res.contender}: {res.cpu:,.0f} µs CPU/write, {res.calls:,.0f} calls/write, "
                f"{res.statements:g} statements/write",
                file=sys.stderr,
                flush=True,
            )
            if res.top:
                print("\n".join(res.top), file=sys.stderr)
        results.extend(merged.values())
    report = cpu_markdown(results, args)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
        args.out.with_suffix(".json").write_text(
            __import__("json").dumps([asdict(r) for r in results], indent=1), encoding="utf-8"
        )


# ----------------------------------------------------------------- report


def markdown(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"# revstore.sqlalchemy beside SQLAlchemy-Continuum and version_id_col "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"{args.writers} writer threads, {args.seconds:g} s per scenario, `spread` over "
        f"{args.rows} rows; version_id_col retries up to {args.max_retries} times. "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs. "
        "Command: `python benchmarks/bench_sqlalchemy.py " + " ".join(sys.argv[1:]) + "`.",
        "",
        "| backend | scenario | contender | writes/s | writes | errors | retries "
        "| gapless | complete |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.error_kinds.items()))
        lines.append(
            f"| {r.backend} | {r.scenario} | {r.contender} | {r.throughput:,.0f} | "
            f"{r.writes:,} | {r.errors:,}{f' ({kinds})' if kinds else ''} | {r.retries:,} | "
            f"{'yes' if r.gapless else 'NO'} | {'yes' if r.complete else 'NO'} |"
        )
    problems = [(r, p) for r in results for p in r.problems]
    if problems:
        lines += ["", "Problems found by the history checks (first few per run):", ""]
        lines += [f"- {r.backend} {r.scenario} {r.contender}: {p}" for r, p in problems]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--db", action="append", help="Database URL (repeatable; default: all three)."
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="Per scenario and contender.")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--rows", type=int, default=1000, help="Rows of the spread scenario.")
    parser.add_argument("--max-retries", type=int, default=50, help="version_id_col's retries.")
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="Comma-separated subset."
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="hot,spread")
    parser.add_argument("--out", type=Path, help="Also write the markdown table to this file.")
    parser.add_argument(
        "--cpu",
        type=int,
        default=0,
        metavar="N",
        help="Instead of the race: client CPU per write of revstore and version_id_col, "
        "one thread, rounds of N writes over --rows rows, plus Python calls per write.",
    )
    parser.add_argument("--cpu-rounds", type=int, default=6, help="Rounds per contender.")
    parser.add_argument(
        "--profile-top", type=int, default=0, help="--cpu: print the N top functions (tottime)."
    )
    args = parser.parse_args()
    contenders = [c for c in args.contenders.split(",") if c]
    scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [c for c in contenders if c not in CONTENDERS] + [
        s for s in scenarios if s not in SCENARIOS
    ]
    if bad or args.seconds <= 0 or args.writers < 1 or args.rows < 1:
        parser.error(f"bad --contenders/--scenarios/--seconds/--writers/--rows: {bad}")
    tmp = None
    urls = args.db
    if not urls:
        tmp = tempfile.mkdtemp(prefix="bench-sqlalchemy-")
        urls = [f"sqlite:///{tmp}/bench.db", DEFAULT_PG_URL, DEFAULT_MYSQL_URL]

    if args.cpu > 0:
        main_cpu(args, urls)
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return
    results: list[Result] = []
    for url in urls:
        for contender in contenders:
            print(f"{url.split('://')[0]} {contender} …", file=sys.stderr, flush=True)
            # A fresh process per contender: Continuum's listeners are global.
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                got = pool.submit(
                    run_contender,
                    url,
                    contender,
                    scenarios,
                    args.writers,
                    args.seconds,
                    args.rows,
                    args.max_retries,
                ).result()
            for r in got:
                print(
                    f"  {r.scenario}: {r.throughput:,.0f} writes/s, {r.errors} errors, "
                    f"gapless={r.gapless}, complete={r.complete}",
                    file=sys.stderr,
                    flush=True,
                )
            results.extend(got)
    report = markdown(results, args)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
        args.out.with_suffix(".json").write_text(
            __import__("json").dumps([asdict(r) for r in results], indent=1), encoding="utf-8"
        )
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()
