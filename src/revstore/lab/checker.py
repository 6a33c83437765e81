"""The checker: pure functions from a recorded history and the final state to anomalies.

No I/O here. Everything it knows comes from the ops (what each client asked for and was
told) and the final state read after the run (every snapshot of every record, every
item of every stream, each record's head).

The checks, all run every time:

- ``unique``: no version, revision or sequence is held twice (in the final state, or
  claimed by two acknowledgements).
- ``gapless``: versions and sequences run 1..N; every revision 1..R of a record is a
  snapshot or an autosave (gaps only where an indeterminate autosave may have landed).
- ``acknowledged``: every acknowledged write is present exactly once, at the numbers
  its acknowledgement gave; the head is the write with the head's revision.
- ``no-phantoms``: nothing is present that no one wrote; nothing a definite failure
  refused is present.
- ``batches``: a batch is all present or all absent, at contiguous sequences; a re-sent
  batch is answered with the stored sequences and never written twice.
- ``monotonic``: per client and key, observed revisions / sequences never go back
  (reads, and the client's own acknowledged writes); what a read saw matches the
  final state.
- ``errors``: no error outside the documented ones (a 5xx, a raw driver exception).

Indeterminate ops (``info``) are not counted as successes: each is resolved to present
or absent from the final state and the reads, and reported.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from revstore.lab.client import Head, Item, Snapshot
from revstore.lab.history import FAIL, INFO, OK, PENDING, RECORD_WRITES, STREAM_WRITES, Op

CHECKS: dict[str, str] = {
    "unique": "numbers unique (versions, revisions, sequences)",
    "gapless": "numbers gapless (1..N)",
    "acknowledged": "every acknowledged write present exactly once",
    "no-phantoms": "nothing present that no one wrote",
    "batches": "batches atomic, contiguous, exactly once when re-sent",
    "monotonic": "reads monotonic per client and consistent with the final state",
    "errors": "no undocumented errors",
}

KIND_CHECK: dict[str, str] = {
    "duplicate-number": "unique",
    "gap": "gapless",
    "lost-write": "acknowledged",
    "duplicate-write": "acknowledged",
    "wrong-ack": "acknowledged",
    "stale-head": "acknowledged",
    "unreadable": "acknowledged",
    "phantom": "no-phantoms",
    "failed-write-present": "no-phantoms",
    "autosave-versioned": "no-phantoms",
    "torn-batch": "batches",
    "split-batch": "batches",
    "resend-rejected": "batches",
    "resend-rewrote": "batches",
    "non-monotonic-read": "monotonic",
    "inconsistent-read": "monotonic",
    "unexpected-error": "errors",
    "target-error": "errors",
}

MAX_EXAMPLES_PER_KIND = 25
VERSIONED = ("seed", "put", "cas", "patch")


@dataclass(slots=True)
class RecordState:
    head: Head | None
    """None when the record is absent (or deleted)."""
    snapshots: list[Snapshot]


@dataclass(slots=True)
class StreamState:
    items: list[Item]


@dataclass(slots=True)
class FinalState:
    records: dict[str, RecordState] = field(default_factory=dict)
    streams: dict[str, StreamState] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    """Keys whose final state could not be read, with the reason."""


@dataclass(slots=True)
class Anomaly:
    kind: str
    key: str
    message: str
    ops: list[str] = field(default_factory=list)

    @property
    def check(self) -> str:
        return KIND_CHECK[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": self.check,
            "key": self.key,
            "message": self.message,
            "ops": self.ops,
        }


@dataclass(slots=True)
class CheckOutcome:
    name: str
    description: str
    count: int
    example: str | None

    @property
    def passed(self) -> bool:
        return self.count == 0


@dataclass(slots=True)
class Resolution:
    op: str
    kind: str
    key: str
    error: str | None
    present: bool


@dataclass(slots=True)
class CheckReport:
    checks: list[CheckOutcome]
    anomalies: list[Anomaly]
    """At most MAX_EXAMPLES_PER_KIND per kind; ``counts`` has the totals."""
    counts: dict[str, int]
    resolutions: list[Resolution]

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed]

    def indeterminate(self) -> dict[str, int]:
        present = sum(1 for r in self.resolutions if r.present)
        return {
            "total": len(self.resolutions),
            "present": present,
            "absent": len(self.resolutions) - present,
        }

    def resolved_by_error(self) -> dict[str, dict[str, int]]:
        """Per error (AmbiguousCommit, Unavailable, WorkerKilled, …): how many of the
        indeterminate writes that got it turned out present, and absent."""
        out: dict[str, dict[str, int]] = {}
        for r in self.resolutions:
            counts = out.setdefault(r.error or "pending", {"present": 0, "absent": 0})
            counts["present" if r.present else "absent"] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [
                {
                    "name": c.name,
                    "description": c.description,
                    "passed": c.passed,
                    "count": c.count,
                    "example": c.example,
                }
                for c in self.checks
            ],
            "anomaly_counts": self.counts,
            "anomalies": [a.to_dict() for a in self.anomalies],
            "indeterminate": self.indeterminate(),
            "resolved_by_error": self.resolved_by_error(),
            "resolutions": [
                {"op": r.op, "kind": r.kind, "key": r.key, "error": r.error, "present": r.present}
                for r in self.resolutions
            ],
        }


class _Found:
    """Collects anomalies, keeping the first few of each kind and counting all."""

    def __init__(self) -> None:
        self.anomalies: list[Anomaly] = []
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, key: str, message: str, ops: Iterable[Op | str] = ()) -> None:
        assert kind in KIND_CHECK, kind
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_EXAMPLES_PER_KIND:
            ids = [o if isinstance(o, str) else o.id for o in ops]
            self.anomalies.append(Anomaly(kind, key, message, ids))


def check(ops: list[Op], final: FinalState, incidents: Iterable[str] = ()) -> CheckReport:
    """Check a history against the final state. Pure: same input, same report.

    ``incidents`` are problems the run itself met (a worker process that crashed, a run
    where nothing completed): each fails the ``errors`` check.
    """
    found = _Found()
    for incident in incidents:
        found.add("target-error", "-", incident)
    resolutions: list[Resolution] = []
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    for key, reason in sorted(final.unreadable.items()):
        found.add("unreadable", key, f"the final state of {key} could not be read: {reason}")
    for key, state in sorted(final.records.items()):
        _check_record(key, state, by_key.get(key, []), found, resolutions)
    for key, stream in sorted(final.streams.items()):
        _check_stream(key, stream, by_key.get(key, []), found, resolutions)
    _check_monotonic(ops, found)
    _check_errors(ops, found)

    checks = []
    for name, description in CHECKS.items():
        kinds = [k for k, c in KIND_CHECK.items() if c == name]
        count = sum(found.counts[k] for k in kinds)
        example = next((f"{a.kind}: {a.message}" for a in found.anomalies if a.check == name), None)
        checks.append(CheckOutcome(name, description, count, example))
    return CheckReport(checks, found.anomalies, dict(found.counts), resolutions)


# ------------------------------------------------------------------------- records


def _check_record(
    key: str, state: RecordState, ops: list[Op], found: _Found, resolutions: list[Resolution]
) -> None:
    writes = {op.token: op for op in ops if op.kind in RECORD_WRITES and op.token}
    reads = [op for op in ops if op.kind == "read" and op.outcome == OK]
    snaps = state.snapshots
    head = state.head

    # unique: a version or revision held twice in the history
    by_version: dict[int, list[Snapshot]] = defaultdict(list)
    by_revision: dict[int, list[Snapshot]] = defaultdict(list)
    for s in snaps:
        by_version[s.version].append(s)
        by_revision[s.revision].append(s)
    for number, held in sorted(by_version.items()):
        if len(held) > 1:
            found.add(
                "duplicate-number",
                key,
                f"version {number} of record {key} is held by {len(held)} snapshots "
                f"(tokens {', '.join(str(s.token) for s in held)}): "
                + "; ".join(_describe_token(writes, s.token) for s in held),
                [s.token for s in held if s.token in writes],
            )
    for number, held in sorted(by_revision.items()):
        if len(held) > 1 and len({s.version for s in held}) > 1:
            found.add(
                "duplicate-number",
                key,
                f"revision {number} of record {key} is held by versions "
                f"{', '.join(str(s.version) for s in held)}",
                [s.token for s in held if s.token in writes],
            )
    # An acknowledged autosave has a revision of its own: no snapshot and no other
    # acknowledgement may hold it.
    claimed: dict[int, list[Op]] = defaultdict(list)
    for op in writes.values():
        if op.outcome == OK and op.revision is not None:
            claimed[op.revision].append(op)
    for number, claimers in sorted(claimed.items()):
        if len(claimers) > 1:
            found.add(
                "duplicate-number",
                key,
                f"revision {number} of record {key} was acknowledged to {len(claimers)} writes: "
                + "; ".join(c.describe() for c in claimers),
                claimers,
            )
        for c in claimers:
            if c.kind == "autosave" and number in by_revision:
                other = by_revision[number][0]
                found.add(
                    "duplicate-number",
                    key,
                    f"revision {number} of record {key} was acknowledged to autosave "
                    f"{c.describe()} but snapshot version {other.version} "
                    f"({other.token}) holds it too",
                    [c, *([other.token] if other.token else [])],
                )

    # gapless: versions 1..N
    versions = sorted(by_version)
    if versions and versions != list(range(1, versions[-1] + 1)):
        missing = sorted(set(range(1, versions[-1] + 1)) - set(versions))
        found.add(
            "gap",
            key,
            f"record {key} has no version {_numbers(missing)} (versions run 1..{versions[-1]})",
        )

    # where every token was seen: in the history, in the head, or by a read
    snap_tokens = Counter(s.token for s in snaps)
    token_snap = {s.token: s for s in snaps if s.token is not None}
    seen_by_reads: dict[str, list[Op]] = defaultdict(list)
    for r in reads:
        if r.seen_token is not None:
            seen_by_reads[r.seen_token].append(r)
    head_token = head.token if head is not None else None

    def present(token: str) -> bool:
        return snap_tokens[token] > 0 or head_token == token or token in seen_by_reads

    for token, n in snap_tokens.items():
        if token is None:
            found.add(
                "phantom", key, f"record {key} has a snapshot with foreign content (no token)"
            )
            continue
        writer = writes.get(token)
        if writer is None:
            found.add(
                "phantom",
                key,
                f"record {key} holds {_snap_names(token, snaps)} with token {token} "
                "that no operation of this run wrote",
            )
        elif writer.kind == "autosave":
            found.add(
                "autosave-versioned",
                key,
                f"autosave {writer.describe()} (create_version=false) appears as "
                f"{_snap_names(token, snaps)}",
                [writer],
            )
        if n > 1:
            found.add(
                "duplicate-write",
                key,
                f"token {token} appears {n} times in record {key} ({_snap_names(token, snaps)}): "
                + (writer.describe() if writer else "written by no one"),
                [writer] if writer else [],
            )

    # acknowledged / definite failures / indeterminate, per write
    autosave_unknown = 0
    covered = {s.revision for s in snaps}
    for token, op in writes.items():
        if op.kind in VERSIONED:
            here = snap_tokens[token] > 0
            if op.outcome == OK:
                if not here:
                    found.add(
                        "lost-write",
                        key,
                        f"acknowledged write {op.describe()} is not in the history of {key}",
                        [op],
                    )
                else:
                    s = token_snap[token]
                    if (s.version, s.revision) != (op.version, op.revision):
                        found.add(
                            "wrong-ack",
                            key,
                            f"{op.describe()} was acknowledged as version {op.version} "
                            f"revision {op.revision} but is stored as version {s.version} "
                            f"revision {s.revision}",
                            [op],
                        )
        else:  # autosave
            if op.outcome == OK and op.revision is not None:
                covered.add(op.revision)
            elif op.outcome in (INFO, PENDING):
                seen = [r.revision for r in seen_by_reads.get(token, []) if r.revision is not None]
                if head is not None and head_token == token:
                    seen.append(head.revision)
                if seen:
                    covered.update(seen)
                else:
                    autosave_unknown += 1
        if op.outcome == FAIL and present(token):
            found.add(
                "failed-write-present",
                key,
                f"{op.describe()} was refused ({op.error}) yet its content is in record {key}",
                [op],
            )
        if op.outcome in (INFO, PENDING):
            resolutions.append(Resolution(op.id, op.kind, key, op.error, present(token)))

    # gapless: revisions 1..R, each a snapshot or an autosave
    top = max([head.revision if head else 0, *covered, 0])
    missing_revisions = sorted(set(range(1, top + 1)) - covered)
    if len(missing_revisions) > autosave_unknown:
        found.add(
            "gap",
            key,
            f"record {key}: revision {_numbers(missing_revisions)} belongs to no snapshot and "
            f"no acknowledged autosave (only {autosave_unknown} indeterminate autosave(s) "
            "could explain a gap)",
        )

    # the head is the write that holds the head's revision
    if head is not None:
        _check_head(key, head, writes, token_snap, versions, found)

    # reads: what each read saw must be what the final state says that write was
    for r in reads:
        token = r.seen_token
        if token is None:
            continue
        w = writes.get(token)
        if w is None:
            found.add(
                "phantom", key, f"read {r.describe()} saw token {token} that no one wrote", [r]
            )
            continue
        expected = token_snap[token].revision if token in token_snap else None
        if expected is None and w.outcome == OK:
            expected = w.revision
        if expected is not None and r.revision != expected:
            found.add(
                "inconsistent-read",
                key,
                f"read {r.describe()} saw {token} at revision {r.revision}, "
                f"but that write holds revision {expected} ({w.describe()})",
                [r, w],
            )


def _check_head(
    key: str,
    head: Head,
    writes: dict[str, Op],
    token_snap: dict[str, Snapshot],
    versions: list[int],
    found: _Found,
) -> None:
    if versions and head.version != versions[-1]:
        found.add(
            "stale-head",
            key,
            f"record {key}: head is at version {head.version} but the history ends at "
            f"version {versions[-1]}",
        )
    token = head.token
    if token is None:
        return
    w = writes.get(token)
    if w is None:
        found.add("phantom", key, f"the head of {key} holds token {token} that no one wrote")
        return
    holds = token_snap[token].revision if token in token_snap else w.revision
    if holds is not None and holds != head.revision:
        found.add(
            "stale-head",
            key,
            f"the head of {key} is at revision {head.revision} but holds the content of "
            f"{w.describe()} (revision {holds}): a later write is not in the head",
            [w],
        )


def _describe_token(writes: dict[str, Op], token: str | None) -> str:
    op = writes.get(token) if token else None
    return op.describe() if op else f"{token} (no writer)"


def _snap_names(token: str, snaps: list[Snapshot]) -> str:
    return ", ".join(f"version {s.version}" for s in snaps if s.token == token)


# ------------------------------------------------------------------------- streams


def _check_stream(
    key: str, stream: StreamState, ops: list[Op], found: _Found, resolutions: list[Resolution]
) -> None:
    items = stream.items
    # unique and gapless sequences
    seqs = Counter(it.sequence for it in items)
    for number, n in sorted(seqs.items()):
        if n > 1:
            holders = [it.item_id for it in items if it.sequence == number]
            found.add(
                "duplicate-number",
                key,
                f"sequence {number} of stream {key} is held by {n} items "
                f"({', '.join(map(str, holders))})",
                [h.rsplit(".", 1)[0] for h in holders if h],
            )
    numbers = sorted(seqs)
    if numbers and numbers != list(range(1, numbers[-1] + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        found.add(
            "gap",
            key,
            f"stream {key} has no item at sequence {_numbers(missing)} "
            f"(sequences run 1..{numbers[-1]})",
        )

    # batches: the original append and its re-sends share one batch id
    batches: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind in STREAM_WRITES and op.item_ids is not None:
            batches[op.of or op.id].append(op)
    owner: dict[str, tuple[str, int, str | None]] = {}
    for batch_id, bops in batches.items():
        ids = bops[0].item_ids or []
        for index, item_id in enumerate(ids):
            owner[item_id] = (batch_id, index, bops[0].token)

    stored: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        if it.item_id is None or it.item_id not in owner:
            found.add(
                "phantom",
                key,
                f"stream {key} holds item {it.item_id} at sequence {it.sequence} that no "
                "operation of this run sent",
            )
            continue
        batch_id, index, token = owner[it.item_id]
        if it.token != token or it.index != index:
            found.add(
                "phantom",
                key,
                f"item {it.item_id} at sequence {it.sequence} of stream {key} has a body that "
                f"is not the one sent (token {it.token}, index {it.index})",
                [batch_id],
            )
        stored[it.item_id].append(it)
    for item_id, copies in stored.items():
        if len(copies) > 1:
            found.add(
                "duplicate-write",
                key,
                f"item {item_id} is stored {len(copies)} times in stream {key} "
                f"(sequences {', '.join(str(c.sequence) for c in copies)}): exactly-once broken",
                [owner[item_id][0]],
            )

    seen_ids: set[str] = set()
    for op in ops:
        if op.kind == "sread" and op.outcome == OK and op.seen:
            seen_ids.update(i for _, i in op.seen if i is not None)

    for batch_id, bops in batches.items():
        ids = bops[0].item_ids or []
        here = [i for i in ids if i in stored]
        complete = len(here) == len(ids) and bool(ids)
        if here and not complete:
            found.add(
                "torn-batch",
                key,
                f"batch {batch_id} of stream {key}: {len(here)} of {len(ids)} items stored "
                f"(missing {', '.join(i for i in ids if i not in stored)}): not atomic",
                bops,
            )
        span: tuple[int, int] | None = None
        if complete:
            got = [stored[i][0].sequence for i in ids]
            if got != list(range(got[0], got[0] + len(got))):
                found.add(
                    "split-batch",
                    key,
                    f"batch {batch_id} of stream {key} is stored at sequences "
                    f"{', '.join(map(str, got))}: not one contiguous range in order",
                    bops,
                )
            span = (min(got), max(got))
        acked_before: float | None = None
        for op in sorted(bops, key=lambda o: o.start):
            if op.outcome == OK:
                if not complete:
                    found.add(
                        "lost-write",
                        key,
                        f"acknowledged append {op.describe()} is not (fully) in stream {key}",
                        [op],
                    )
                elif span is not None and (op.first, op.last) != span:
                    found.add(
                        "wrong-ack",
                        key,
                        f"{op.describe()} was acknowledged at sequences {op.first}..{op.last} "
                        f"but batch {batch_id} is stored at {span[0]}..{span[1]}",
                        [op],
                    )
                if (
                    op.kind == "resend"
                    and not op.duplicate
                    and acked_before is not None
                    and acked_before < op.start
                ):
                    found.add(
                        "resend-rewrote",
                        key,
                        f"re-send {op.describe()} of a batch already acknowledged says it wrote "
                        "the items again (duplicate=false)",
                        [op],
                    )
                if op.kind == "append" and op.duplicate:
                    found.add(
                        "wrong-ack",
                        key,
                        f"first send {op.describe()} was answered duplicate=true",
                        [op],
                    )
                if op.end is not None:
                    acked_before = op.end if acked_before is None else min(acked_before, op.end)
            elif op.outcome == FAIL:
                if op.kind == "resend" and op.error == "DuplicateItem":
                    found.add(
                        "resend-rejected",
                        key,
                        f"re-send {op.describe()} of the same ids and bodies was refused with "
                        f"DuplicateItem ({op.message}); it must return the stored sequences",
                        [op],
                    )
            else:
                resolutions.append(Resolution(op.id, op.kind, key, op.error, complete))
        if here and all(o.outcome == FAIL for o in bops):
            found.add(
                "failed-write-present",
                key,
                f"every send of batch {batch_id} was refused, yet its items are in stream {key}",
                bops,
            )

    # stream reads: each item seen must be where the final state has it
    for op in ops:
        if op.kind != "sread" or op.outcome != OK or not op.seen:
            continue
        for seq, seen_id in op.seen:
            if seen_id is None or seen_id not in owner:
                found.add(
                    "phantom",
                    key,
                    f"read {op.describe()} saw item {seen_id} that no one sent",
                    [op],
                )
            elif seen_id in stored and stored[seen_id][0].sequence != seq:
                found.add(
                    "inconsistent-read",
                    key,
                    f"read {op.describe()} saw item {seen_id} at sequence {seq}; the final "
                    f"state has it at {stored[seen_id][0].sequence}",
                    [op],
                )
            elif seen_id not in stored:
                found.add(
                    "inconsistent-read",
                    key,
                    f"read {op.describe()} saw item {seen_id} at sequence {seq}, which is not "
                    "in the final state",
                    [op],
                )


# ------------------------------------------------------------------------- per client


def _observations(op: Op) -> list[int]:
    """The numbers an op showed its client, in the order it saw them."""
    if op.kind == "cas":
        seen = [op.read_revision] if op.read_revision is not None else []
        return seen + ([op.revision] if op.outcome == OK and op.revision is not None else [])
    if op.outcome != OK:
        return []
    if op.kind in ("read", *RECORD_WRITES) and op.revision is not None:
        return [op.revision]
    if op.kind == "sread" and op.last is not None:
        return [op.last]
    if op.kind in STREAM_WRITES and not op.duplicate and op.last is not None:
        # A duplicate answer returns the sequences of the original send: older by design.
        return [op.last]
    return []


def _check_monotonic(ops: list[Op], found: _Found) -> None:
    by_client: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_client[op.client].append(op)
    for client, cops in sorted(by_client.items()):
        if client == "setup":
            continue
        last: dict[str, tuple[int, Op]] = {}
        for op in sorted(cops, key=lambda o: o.start):
            for number in _observations(op):
                prev = last.get(op.key)
                if prev is not None and number < prev[0]:
                    what = "sequence" if op.kind in ("sread", *STREAM_WRITES) else "revision"
                    found.add(
                        "non-monotonic-read",
                        op.key,
                        f"client {client} saw {what} {prev[0]} of {op.key} ({prev[1].describe()}) "
                        f"and then {what} {number} ({op.describe()})",
                        [prev[1], op],
                    )
                if prev is None or number >= prev[0]:
                    last[op.key] = (number, op)


def _check_errors(ops: list[Op], found: _Found) -> None:
    for op in ops:
        if op.unexpected:
            found.add(
                "unexpected-error",
                op.key,
                f"{op.describe()}: {op.message or ''}".strip(),
                [op],
            )


def _numbers(values: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" … ({len(values)} in all)" if len(values) > limit else "")
