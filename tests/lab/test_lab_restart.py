"""``revstore lab --chaos restart-db``: the database restarts in the middle of a run and
no acknowledged write is lost or duplicated. PostgreSQL and MariaDB run as throwaway
servers of the test's own (stopped alternately cleanly and by a crash); on SQLite every
writer process is killed mid-write and new ones carry on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from revstore.lab.history import INFO, OK, PENDING, RECORD_WRITES, STREAM_WRITES
from revstore.lab.runner import LabConfig, LabResult, run

WRITES = (*RECORD_WRITES, *STREAM_WRITES)


def restarted_run(config: LabConfig) -> LabResult:
    """Run ``config`` with the database restarted along the way, and check the run."""
    # The runs last 15 s with a restart every ~2.5 s: the first restart begins within
    # 3.75 s, which leaves a slow machine ample time to bring the server (or new SQLite
    # workers) back before the writers stop. Nothing here measures a duration.
    result = run(replace(config, duration=15.0, chaos="restart-db", chaos_interval=2.5))
    check_restarted_run(result)
    return result


def check_restarted_run(result: LabResult) -> None:
    assert not [e for e in result.chaos if e.action == "error"], result.chaos
    restarts = [e for e in result.chaos if e.action == "restart-db"]
    assert restarts, f"the database was never restarted: {result.chaos}"
    first = restarts[0]
    assert first.until is not None
    acked = [op for op in result.ops if op.client != "setup" and op.kind in WRITES]
    acked = [op for op in acked if op.outcome == OK and op.end is not None]
    assert any(op.end is not None and op.end < first.t for op in acked), (
        "no write was acknowledged before the first restart"
    )
    assert any(op.start > first.until for op in acked), (
        "no write was acknowledged after the first restart: the writers did not come back"
    )
    # 0 anomalies: nothing acknowledged is lost or stored twice, numbers unique and
    # gapless, nothing present that was refused, no undocumented error.
    failed = [(c.name, c.count, c.example) for c in result.report.failed]
    assert result.ok, f"anomalies after restarts: {failed}"
    # Every write that did not get a definite answer (AmbiguousCommit, Unavailable, a
    # killed worker) was resolved as present or absent from the final state.
    unknown = {op.id for op in result.ops if op.kind in WRITES and op.outcome in (INFO, PENDING)}
    assert unknown == {r.op for r in result.report.resolutions}


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_restarted_server_loses_no_acknowledged_write(
    throwaway_kind: Callable[[str], str], kind: str
) -> None:
    restarted_run(LabConfig(server=throwaway_kind(kind), writers=6, seed=31))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_killing_every_sqlite_writer_mid_write_loses_no_acknowledged_write(
    sqlite_url: str,
) -> None:
    result = restarted_run(LabConfig(db=sqlite_url, processes=2, writers=4, seed=32))
    killed = sum(e.count for e in result.chaos if e.action == "restart-db")
    assert killed >= 2, "a restart kills every writer process"
