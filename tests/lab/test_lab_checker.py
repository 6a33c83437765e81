"""The checker on crafted histories: it passes a correct one and names each anomaly."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from revstore.lab.checker import FinalState, RecordState, StreamState, check
from revstore.lab.client import Head, Item, Snapshot
from revstore.lab.history import FAIL, INFO, OK, PENDING, Op

R = "rec"
S = "str"


def op(
    op_id: str,
    kind: str,
    key: str = R,
    outcome: str = OK,
    start: float | None = None,
    **fields: Any,
) -> Op:
    client = op_id.rsplit(".", 1)[0]
    n = float(op_id.rsplit(".", 1)[1])
    begin = n if start is None else start
    o = Op(op_id, client, kind, key, start=begin, token=op_id, end=begin + 0.5, outcome=outcome)
    for name, value in fields.items():
        setattr(o, name, value)
    return o


def record_history() -> tuple[list[Op], FinalState]:
    """A correct history: seed, put, autosave, cas, read."""
    ops = [
        op("setup.0", "seed", revision=1, version=1, start=0),
        op("w0.1", "put", revision=2, version=2),
        op("w1.2", "autosave", revision=3, version=2),
        op("w0.3", "cas", revision=4, version=3, read_revision=3, conflicts=1),
        op("w1.4", "read", revision=4, version=3, seen_token="w0.3", token=None),
    ]
    final = FinalState(
        records={
            R: RecordState(
                Head(4, 3, "w0.3"),
                [Snapshot(1, 1, "setup.0"), Snapshot(2, 2, "w0.1"), Snapshot(3, 4, "w0.3")],
            )
        }
    )
    return ops, final


def stream_history() -> tuple[list[Op], FinalState]:
    """A correct history: two appends, an exact re-send answered duplicate, a read."""
    ops = [
        op("w0.1", "append", S, item_ids=["w0.1.0", "w0.1.1"], first=1, last=2, duplicate=False),
        op("w1.2", "append", S, item_ids=["w1.2.0"], first=3, last=3, duplicate=False),
        op(
            "w0.3",
            "resend",
            S,
            item_ids=["w0.1.0", "w0.1.1"],
            of="w0.1",
            token="w0.1",
            first=1,
            last=2,
            duplicate=True,
        ),
        op("w1.4", "sread", S, after=2, last=3, seen=[(3, "w1.2.0")], token=None),
    ]
    final = FinalState(
        streams={
            S: StreamState(
                [
                    Item(1, "w0.1.0", "w0.1", 0),
                    Item(2, "w0.1.1", "w0.1", 1),
                    Item(3, "w1.2.0", "w1.2", 0),
                ]
            )
        }
    )
    return ops, final


def kinds(ops: list[Op], final: FinalState) -> dict[str, int]:
    return check(ops, final).counts


def failed_checks(ops: list[Op], final: FinalState) -> set[str]:
    return {c.name for c in check(ops, final).failed}


# ----------------------------------------------------------------- correct histories


def test_a_correct_record_history_passes() -> None:
    ops, final = record_history()
    report = check(ops, final)
    assert report.ok, report.anomalies
    assert [c.name for c in report.checks] == [
        "unique",
        "gapless",
        "acknowledged",
        "no-phantoms",
        "batches",
        "monotonic",
        "errors",
    ]


def test_a_correct_stream_history_passes() -> None:
    ops, final = stream_history()
    report = check(ops, final)
    assert report.ok, report.anomalies


def test_the_checker_is_pure() -> None:
    ops, final = record_history()
    before = copy.deepcopy((ops, final))
    first = check(ops, final).to_dict()
    assert check(ops, final).to_dict() == first
    assert (ops, final) == before


# ----------------------------------------------------------------- records


def test_a_duplicate_version_is_reported() -> None:
    ops, final = record_history()
    # Two writers both took version 2 (the read-max-then-insert fork).
    ops.append(op("w2.5", "put", revision=2, version=2))
    final.records[R].snapshots.insert(2, Snapshot(2, 2, "w2.5"))
    report = check(ops, final)
    assert "unique" in {c.name for c in report.failed}
    dup = next(a for a in report.anomalies if a.kind == "duplicate-number")
    assert "version 2" in dup.message and "w2.5" in dup.message and "w0.1" in dup.message
    assert set(dup.ops) >= {"w2.5", "w0.1"}


def test_a_gap_in_versions_is_reported() -> None:
    ops, final = record_history()
    final.records[R].snapshots[2] = Snapshot(4, 4, "w0.3")
    ops[3].version = 4
    final.records[R].head = Head(4, 4, "w0.3")
    report = check(ops, final)
    gap = next(a for a in report.anomalies if a.kind == "gap")
    assert "no version 3" in gap.message
    assert "gapless" in {c.name for c in report.failed}


def test_a_revision_gap_is_explained_only_by_an_indeterminate_autosave() -> None:
    ops, final = record_history()
    # The autosave at revision 3 timed out: it may have taken revision 3.
    ops[2].outcome, ops[2].error, ops[2].revision = INFO, "AmbiguousCommit", None
    assert check(ops, final).ok
    # Without that autosave nothing explains revision 3.
    del ops[2]
    report = check(ops, final)
    gap = next(a for a in report.anomalies if a.kind == "gap")
    assert "revision 3" in gap.message


def test_a_lost_acknowledged_write_is_reported() -> None:
    ops, final = record_history()
    del final.records[R].snapshots[1]  # w0.1's version is gone
    final.records[R].snapshots[1:] = [Snapshot(2, 4, "w0.3")]
    ops[3].version = 2
    final.records[R].head = Head(4, 2, "w0.3")
    report = check(ops, final)
    lost = next(a for a in report.anomalies if a.kind == "lost-write")
    assert lost.ops == ["w0.1"] and "not in the history" in lost.message
    assert "acknowledged" in {c.name for c in report.failed}


def test_a_write_stored_twice_is_reported() -> None:
    ops, final = record_history()
    final.records[R].snapshots.append(Snapshot(4, 5, "w0.1"))
    final.records[R].head = Head(5, 4, "w0.1")
    counts = kinds(ops, final)
    assert counts.get("duplicate-write") == 1


def test_content_no_one_wrote_is_a_phantom() -> None:
    ops, final = record_history()
    final.records[R].snapshots.append(Snapshot(4, 5, "intruder"))
    final.records[R].head = Head(5, 4, "intruder")
    report = check(ops, final)
    assert "no-phantoms" in {c.name for c in report.failed}
    assert any("intruder" in a.message for a in report.anomalies if a.kind == "phantom")


def test_a_refused_write_that_is_present_is_reported() -> None:
    ops, final = record_history()
    ops[1].outcome, ops[1].error = FAIL, "VersionConflict"
    assert kinds(ops, final).get("failed-write-present") == 1


def test_an_acknowledgement_with_the_wrong_numbers_is_reported() -> None:
    ops, final = record_history()
    ops[1].version = 7
    assert kinds(ops, final).get("wrong-ack") == 1


def test_an_autosave_that_made_a_version_is_reported() -> None:
    ops, final = record_history()
    final.records[R].snapshots.insert(2, Snapshot(3, 3, "w1.2"))
    final.records[R].snapshots[3] = Snapshot(4, 4, "w0.3")
    final.records[R].head = Head(4, 4, "w0.3")
    ops[3].version = 4
    assert kinds(ops, final).get("autosave-versioned") == 1


def test_a_head_behind_its_history_is_reported() -> None:
    ops, final = record_history()
    final.records[R].head = Head(4, 3, "w0.1")
    assert kinds(ops, final).get("stale-head") == 1


def test_a_read_going_back_in_revision_is_reported() -> None:
    ops, final = record_history()
    # w1 saw revision 3 (its own autosave), later it reads revision 2.
    ops.append(op("w1.6", "read", revision=2, version=2, seen_token="w0.1", token=None))
    report = check(ops, final)
    bad = next(a for a in report.anomalies if a.kind == "non-monotonic-read")
    assert bad.ops == ["w1.4", "w1.6"]
    assert "client w1" in bad.message and "revision 4" in bad.message
    assert "monotonic" in {c.name for c in report.failed}


def test_a_read_of_a_write_at_another_revision_is_inconsistent() -> None:
    ops, final = record_history()
    ops[4].revision = 3  # saw w0.3's content at revision 3; it holds revision 4
    ops[4].start = 3.5  # keep it monotonic for w1 (autosave at 3 was before)
    assert kinds(ops, final).get("inconsistent-read") == 1


def test_indeterminate_record_writes_are_resolved_from_the_final_state() -> None:
    ops, final = record_history()
    ops[1].outcome, ops[1].error = INFO, "AmbiguousCommit"  # landed (in the history)
    ops.append(op("w2.9", "put", outcome=INFO, error="Unavailable"))  # never landed
    ops.append(op("w3.9", "patch", outcome=PENDING))  # worker killed mid-flight
    report = check(ops, final)
    assert report.ok, report.anomalies
    resolved = {r.op: r.present for r in report.resolutions}
    assert resolved == {"w0.1": True, "w2.9": False, "w3.9": False}
    assert report.indeterminate() == {"total": 3, "present": 1, "absent": 2}


def test_an_indeterminate_autosave_is_resolved_by_a_read_that_saw_it() -> None:
    ops, final = record_history()
    ops[2].outcome, ops[2].error, ops[2].revision = INFO, "OutcomeUnknown", None
    ops.append(op("w2.3", "read", revision=3, version=2, seen_token="w1.2", token=None))
    report = check(ops, final)
    assert report.ok, report.anomalies
    assert {r.op: r.present for r in report.resolutions} == {"w1.2": True}


# ----------------------------------------------------------------- streams


def test_a_duplicate_sequence_is_reported() -> None:
    ops, final = stream_history()
    final.streams[S].items[2] = Item(2, "w1.2.0", "w1.2", 0)
    ops[1].first = ops[1].last = 2
    del ops[3]
    report = check(ops, final)
    assert report.counts == {"duplicate-number": 1}
    assert "sequence 2" in report.anomalies[0].message


def test_a_gap_in_sequences_is_reported() -> None:
    ops, final = stream_history()
    final.streams[S].items[2] = Item(4, "w1.2.0", "w1.2", 0)
    ops[1].first = ops[1].last = 4
    ops[3].last, ops[3].seen = 4, [(4, "w1.2.0")]
    report = check(ops, final)
    gap = next(a for a in report.anomalies if a.kind == "gap")
    assert "sequence 3" in gap.message


def test_a_lost_acknowledged_append_is_reported() -> None:
    ops, final = stream_history()
    final.streams[S].items.pop()
    ops[3].seen, ops[3].last = [], 2
    report = check(ops, final)
    lost = next(a for a in report.anomalies if a.kind == "lost-write")
    assert lost.ops == ["w1.2"]


def test_an_item_stored_twice_breaks_exactly_once() -> None:
    ops, final = stream_history()
    final.streams[S].items.append(Item(4, "w1.2.0", "w1.2", 0))
    assert kinds(ops, final).get("duplicate-write") == 1


def test_a_resend_that_wrote_again_is_reported() -> None:
    ops, final = stream_history()
    ops[2].duplicate = False
    assert kinds(ops, final).get("resend-rewrote") == 1


def test_a_resend_refused_as_duplicate_is_reported() -> None:
    ops, final = stream_history()
    ops[2].outcome, ops[2].error, ops[2].duplicate = FAIL, "DuplicateItem", None
    ops[2].first = ops[2].last = None
    assert kinds(ops, final).get("resend-rejected") == 1


def test_a_torn_batch_is_reported() -> None:
    ops, final = stream_history()
    final.streams[S].items = [Item(1, "w0.1.0", "w0.1", 0), Item(2, "w1.2.0", "w1.2", 0)]
    ops[1].first = ops[1].last = 2
    ops[3].seen, ops[3].last = [(2, "w1.2.0")], 2
    counts = kinds(ops, final)
    assert counts.get("torn-batch") == 1


def test_a_batch_not_in_one_range_is_reported() -> None:
    ops, final = stream_history()
    final.streams[S].items = [
        Item(1, "w0.1.0", "w0.1", 0),
        Item(2, "w1.2.0", "w1.2", 0),
        Item(3, "w0.1.1", "w0.1", 1),
    ]
    ops[1].first = ops[1].last = 2
    ops[3].seen = [(2, "w1.2.0"), (3, "w0.1.1")]
    assert kinds(ops, final).get("split-batch") == 1


def test_a_stream_read_going_back_is_reported() -> None:
    ops, final = stream_history()
    ops.append(op("w1.5", "sread", S, after=2, last=2, seen=[], token=None))
    report = check(ops, final)
    assert report.counts.get("non-monotonic-read") == 1


def test_a_duplicate_answer_is_not_a_read_going_back() -> None:
    ops, final = stream_history()
    # w0 appended 1..2, then a re-send answered with 1..2 again: older by design.
    ops[2].start = 10
    ops.append(op("w0.4", "append", S, item_ids=["w0.4.0"], first=4, last=4, start=5))
    final.streams[S].items.append(Item(4, "w0.4.0", "w0.4", 0))
    assert check(ops, final).ok


def test_an_indeterminate_append_is_resolved_by_presence() -> None:
    ops, final = stream_history()
    ops[1].outcome, ops[1].error = INFO, "AmbiguousCommit"
    ops[1].first = ops[1].last = None
    report = check(ops, final)
    assert report.ok, report.anomalies
    assert [(r.op, r.present) for r in report.resolutions] == [("w1.2", True)]
    ops.append(op("w2.7", "append", S, outcome=INFO, item_ids=["w2.7.0"], error="OutcomeUnknown"))
    report = check(ops, final)
    assert report.ok
    assert ("w2.7", False) in [(r.op, r.present) for r in report.resolutions]


def test_an_item_no_one_sent_is_a_phantom() -> None:
    ops, final = stream_history()
    final.streams[S].items.append(Item(4, "stranger", None, None))
    assert kinds(ops, final).get("phantom") == 1


# ----------------------------------------------------------------- errors


def test_an_undocumented_error_fails_the_errors_check() -> None:
    ops, final = record_history()
    ops.append(
        op(
            "w2.8",
            "put",
            outcome=INFO,
            error="HTTP 500",
            unexpected=True,
            message="internal: boom",
        )
    )
    report = check(ops, final)
    assert {c.name for c in report.failed} == {"errors"}
    assert "HTTP 500" in report.anomalies[0].message


def test_incidents_of_the_run_fail_the_errors_check() -> None:
    ops, final = record_history()
    report = check(ops, final, ["worker process p1 exited with status 1"])
    assert not report.ok
    assert report.anomalies[0].kind == "target-error"


def test_unreadable_final_state_fails() -> None:
    ops, final = record_history()
    final.unreadable["other"] = "Unavailable: down"
    assert kinds(ops, final).get("unreadable") == 1


@pytest.mark.parametrize("n", [30, 100])
def test_examples_are_capped_but_counts_are_not(n: int) -> None:
    ops, final = record_history()
    for k in range(n):
        ops.append(op(f"w9.{k + 10}", "put", outcome=INFO, unexpected=True, error="Boom"))
    report = check(ops, final)
    assert report.counts["unexpected-error"] == n
    assert sum(1 for a in report.anomalies if a.kind == "unexpected-error") == min(n, 25)
