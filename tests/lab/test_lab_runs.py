"""Real lab runs against real databases (and the real HTTP service): correct strategies
report no anomaly, also under faults; the naive strategy is caught."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from revstore.lab.runner import LabConfig, LabResult, run


def assert_clean(result: LabResult) -> None:
    failed = [(c.name, c.count, c.example) for c in result.report.failed]
    assert result.ok, f"anomalies on {result.backend}/{result.strategy}: {failed}"
    assert result.summary.ok > 0, "nothing was acknowledged"


def lab_database(url: str) -> str:
    """The same server, database ``<the test database>_lab`` (created when absent).

    Chaos kills every revstore session of its database: run it where no other test's
    sessions live (nor another xdist worker's: each has its own test database, so its
    own lab database). If the database cannot be created, skip rather than kill theirs.
    """
    rest, _, query = url.partition("?")
    base, _, database = rest.rpartition("/")
    lab = f"{database}_lab"
    assert lab.replace("_", "").isalnum(), lab  # spliced into DDL below
    lab_url = f"{base}/{lab}" + (f"?{query}" if query else "")
    scheme = url.split("://", 1)[0]
    driver = "postgresql+psycopg" if scheme.startswith("postgres") else "mysql+pymysql"
    engine = create_engine(f"{driver}://{url.split('://', 1)[1]}", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if driver.startswith("postgresql"):
                exists = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": lab}
                ).first()
                if exists is None:
                    conn.execute(text(f"CREATE DATABASE {lab}"))
            else:
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {lab} CHARACTER SET utf8mb4"))
    except SQLAlchemyError as exc:
        pytest.skip(f"cannot create database {lab} for chaos runs: {exc}")
    finally:
        engine.dispose()
    return lab_url


# ----------------------------------------------------------------- correct strategies


def test_default_strategy_on_a_hot_key_has_no_anomaly(backend_url: str) -> None:
    result = run(LabConfig(db=backend_url, writers=8, duration=2.0, keys=1, seed=11))
    assert_clean(result)
    kinds = {k.kind for k in result.summary.kinds}
    assert kinds == {"put", "cas", "patch", "autosave", "read", "append", "resend", "sread"}
    # Every record and stream of the run was read back and checked.
    assert len(result.final.records) == 1 and len(result.final.streams) == 1
    assert result.summary.conflicts > 0, "a hot key under cas must meet conflicts"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["counter", "lock", "optimistic"])
def test_every_strategy_on_spread_keys_has_no_anomaly(backend_url: str, strategy: str) -> None:
    result = run(
        LabConfig(db=backend_url, strategy=strategy, writers=8, duration=3.0, keys=4, seed=5)
    )
    assert_clean(result)
    assert result.strategy == strategy


def test_worker_processes_have_no_anomaly(sqlite_url: str) -> None:
    result = run(LabConfig(db=sqlite_url, processes=2, writers=4, duration=2.0, seed=3))
    assert_clean(result)
    clients = {op.client[:2] for op in result.ops if op.client != "setup"}
    assert clients == {"p0", "p1"}


# ----------------------------------------------------------------- the bug


def test_naive_strategy_on_a_hot_key_is_caught(backend_url: str) -> None:
    result = run(
        LabConfig(
            db=backend_url,
            strategy="naive",
            writers=16,
            duration=2.0,
            keys=1,
            seed=1,
            workload=("records",),
            mix={"put": 1},
        )
    )
    assert not result.ok
    counts = result.report.counts
    # With a unique key the lost races surface as errors after "retry 3 times" (a 500
    # in a real app); without one they fork the history.
    assert counts.get("unexpected-error", 0) + counts.get("duplicate-number", 0) > 0
    failed = {c.name for c in result.report.failed}
    assert failed & {"errors", "unique"}


def test_naive_without_a_unique_key_forks_history(sqlite_url: str) -> None:
    result = run(
        LabConfig(
            db=sqlite_url,
            strategy="naive-nokey",
            writers=16,
            duration=2.0,
            seed=2,
            workload=("records",),
            mix={"put": 1},
        )
    )
    assert "unique" in {c.name for c in result.report.failed}
    example = next(a for a in result.report.anomalies if a.kind == "duplicate-number")
    assert "is held by" in example.message and len(example.ops) >= 2


# ----------------------------------------------------------------- faults


@pytest.mark.slow
@pytest.mark.parametrize(
    "server",
    ["postgresql", "mysql"],
)
def test_killed_connections_leave_no_anomaly(server_url: Callable[[str], str], server: str) -> None:
    url = lab_database(server_url(server))
    result = run(
        LabConfig(
            db=url,
            writers=8,
            duration=3.0,
            seed=21,
            chaos="kill-connections",
            chaos_interval=0.3,
        )
    )
    assert result.chaos and sum(e.count for e in result.chaos) > 0, result.chaos
    assert_clean(result)


@pytest.mark.slow
def test_killed_workers_leave_no_anomaly(sqlite_url: str) -> None:
    result = run(
        LabConfig(
            db=sqlite_url,
            processes=2,
            writers=4,
            duration=5.0,
            seed=8,
            chaos="kill-workers",
            chaos_interval=1.2,
        )
    )
    assert any(e.action == "kill-workers" for e in result.chaos), result.chaos
    assert_clean(result)


# ----------------------------------------------------------------- the HTTP service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_command(db: str, port: int, workers: int) -> list[str]:
    exe = Path(sys.executable).with_name("revstore")
    return [
        *(str(exe), "serve", "--db", db, "--host", "127.0.0.1"),
        *("--port", str(port), "--workers", str(workers), "--log-level", "warning"),
    ]


@contextmanager
def running_service(db: str, log_path: Path, workers: int = 1) -> Iterator[str]:
    """``revstore serve`` in a subprocess on a free port, until the block ends."""
    port = _free_port()
    env = {**os.environ, "REVSTORE_URL": db}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(_serve_command(db, port, workers), env=env, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = log_path.read_text(errors="replace")[-2000:]
                    pytest.fail(f"the service did not start: {tail}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    """The service over a SQLite file, one worker."""
    with running_service(f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "service.log") as url:
        yield url


def test_http_service_has_no_anomaly(service: str) -> None:
    result = run(LabConfig(url=service, writers=6, duration=2.0, seed=4))
    assert_clean(result)
    assert result.backend == "http"
    assert {k.kind for k in result.summary.kinds} >= {"cas", "patch", "autosave", "resend"}


@pytest.mark.slow
def test_http_service_on_postgresql_with_two_workers_and_killed_connections(
    server_url: Callable[[str], str], tmp_path: Path
) -> None:
    db = lab_database(server_url("postgresql"))
    with running_service(db, tmp_path / "service.log", workers=2) as url:
        result = run(
            LabConfig(
                url=url,
                db=db,  # only for the chaos: the service's database
                writers=8,
                duration=4.0,
                seed=13,
                chaos="kill-connections",
                chaos_interval=0.4,
            )
        )
    assert sum(e.count for e in result.chaos) > 0, result.chaos
    assert_clean(result)
