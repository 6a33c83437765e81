"""Recording: ops survive the trip through worker files, a torn last line (kill -9) is
skipped, and ops that never completed end up indeterminate. Plus the small pure parts
of the workload and the stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from revstore.errors import (
    AmbiguousCommit,
    DuplicateItem,
    InvalidInput,
    NotFound,
    SequenceConflict,
    Unavailable,
    VersionConflict,
)
from revstore.lab.client import OutcomeUnknown, ServerError
from revstore.lab.history import INFO, OK, FileRecorder, FileTail, History, Op
from revstore.lab.stats import percentile, series, summarize
from revstore.lab.workload import DEFAULT_MIX, build_workload, classify, parse_mix


def test_ops_round_trip_through_a_worker_file(tmp_path: Path) -> None:
    path = tmp_path / "p0.jsonl"
    recorder = FileRecorder(path)
    history = History()
    tail = FileTail(path, history)
    done = Op("p0w0.1", "p0w0", "sread", "s", start=0.1, after=2, seen=[(3, "x.0")])
    recorder.invoke(done)
    done.outcome, done.end, done.last = OK, 0.2, 3
    recorder.complete(done)
    recorder.ready("p0")
    recorder.stats("p0", 7)
    in_flight = Op("p0w1.1", "p0w1", "put", "r", start=0.15, token="p0w1.1")
    recorder.invoke(in_flight)
    recorder.close()
    # A kill -9 in the middle of a write leaves half a line.
    with open(path, "ab") as f:
        f.write(b'{"e":"complete","id":"p0w1.1","outc')
    tail.poll()
    ops = {o.id: o for o in history.ops()}
    assert ops["p0w0.1"].outcome == OK and ops["p0w0.1"].seen == [(3, "x.0")]
    assert ops["p0w1.1"].outcome == "pending"
    assert history.ready == {"p0"} and history.store_retries == {"p0": 7}
    assert history.close_pending("WorkerKilled", "killed", {"p0w1"}) == 1
    assert history.get("p0w1.1") is not None
    killed = history.get("p0w1.1")
    assert killed is not None and killed.outcome == INFO and killed.error == "WorkerKilled"
    assert history.snapshot().info == 1 and history.snapshot().ok == 1


@pytest.mark.parametrize(
    ("exc", "outcome", "unexpected"),
    [
        (VersionConflict("x", None), "fail", False),
        (SequenceConflict("x", 3), "fail", False),
        (DuplicateItem("x", ["a"]), "fail", False),
        (NotFound("x"), "fail", False),
        (AmbiguousCommit("x"), "info", False),
        (Unavailable("x"), "info", False),
        (OutcomeUnknown("timeout"), "info", False),
        (ServerError(500, "boom"), "info", True),
        (InvalidInput("x"), "info", True),
        (RuntimeError("raw driver error"), "info", True),
    ],
)
def test_outcomes_are_classified(exc: Exception, outcome: str, unexpected: bool) -> None:
    got, _, odd = classify(exc)
    assert (got, odd) == (outcome, unexpected)


def test_mix_parsing() -> None:
    assert parse_mix("put=3, cas=1,read") == {"put": 3, "cas": 1, "read": 1}
    with pytest.raises(ValueError, match="unknown op kind"):
        parse_mix("put=1,delete=2")
    with pytest.raises(ValueError, match="integer"):
        parse_mix("put=x")


def test_workload_keys_and_kinds() -> None:
    w = build_workload("lab-x", 3, {"records"}, None, 3)
    assert w.record_keys == ("lab-x-r0", "lab-x-r1", "lab-x-r2") and w.stream_keys == ()
    assert set(w.kinds) == {"put", "cas", "patch", "autosave", "read"}
    w = build_workload("lab-x", 1, {"records", "streams"}, {"append": 1}, 3)
    assert w.kinds == ["append"] and w.record_keys == ()
    w = build_workload("lab-x", 1, {"records"}, None, 3, unsupported={"autosave"})
    assert "autosave" not in w.kinds
    with pytest.raises(ValueError, match="no operation"):
        build_workload("lab-x", 1, {"streams"}, {"put": 1}, 3)
    assert set(DEFAULT_MIX) == {
        "put",
        "cas",
        "patch",
        "autosave",
        "read",
        "append",
        "resend",
        "sread",
    }


def test_percentiles_and_series() -> None:
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    ops = [
        Op(f"w0.{k}", "w0", "put", "r", start=k * 0.01, end=k * 0.01 + 0.005, outcome=OK)
        for k in range(100)
    ]
    s = summarize(ops, 1.0, store_retries=4)
    assert s.ok == 100 and s.throughput == 100.0 and s.store_retries == 4
    assert s.kinds[0].p50_ms == pytest.approx(5.0)
    ts = series(ops, 1.0)
    assert sum(r * ts.width for r in ts.ok_rate) == pytest.approx(100, rel=0.05)
