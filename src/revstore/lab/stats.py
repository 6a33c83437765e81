"""Throughput, latency percentiles and time series from a recorded history (pure)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from revstore.lab.history import FAIL, INFO, OK, Op
from revstore.lab.workload import KINDS

BUCKET_WIDTHS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0)
MAX_BUCKETS = 120


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(slots=True)
class KindStats:
    kind: str
    count: int
    ok: int
    fail: int
    info: int
    conflicts: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(slots=True)
class Summary:
    elapsed: float
    ops: int
    ok: int
    fail: int
    info: int
    throughput: float
    """Acknowledged ops per second."""
    attempted: float
    """Completed ops (any outcome) per second."""
    conflicts: int
    conflict_rate: float
    """Conflicts met per completed op (a cas may meet several before it lands)."""
    cas_retries: int
    store_retries: int
    retry_rate: float
    """(cas re-reads + the Store's internal transaction re-runs) per completed op."""
    unexpected: int
    unavailable: int
    kinds: list[KindStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def summarize(ops: list[Op], elapsed: float, store_retries: int) -> Summary:
    work = [op for op in ops if op.client != "setup"]
    done = [op for op in work if op.end is not None or op.outcome in (OK, FAIL, INFO)]
    ok = sum(1 for op in done if op.outcome == OK)
    fail = sum(1 for op in done if op.outcome == FAIL)
    info = sum(1 for op in done if op.outcome == INFO)
    conflicts = sum(
        op.conflicts + (1 if op.error in ("VersionConflict", "SequenceConflict") else 0)
        for op in done
    )
    cas_retries = sum(op.conflicts for op in done)
    kinds = []
    order = {k: n for n, k in enumerate(KINDS)}
    for kind in sorted({op.kind for op in done}, key=lambda k: order.get(k, 99)):
        mine = [op for op in done if op.kind == kind]
        lat = sorted(op.latency for op in mine if op.outcome == OK and op.latency is not None)
        kinds.append(
            KindStats(
                kind,
                len(mine),
                sum(1 for op in mine if op.outcome == OK),
                sum(1 for op in mine if op.outcome == FAIL),
                sum(1 for op in mine if op.outcome == INFO),
                sum(
                    op.conflicts + (1 if op.error in ("VersionConflict", "SequenceConflict") else 0)
                    for op in mine
                ),
                _ms(percentile(lat, 50)),
                _ms(percentile(lat, 95)),
                _ms(percentile(lat, 99)),
                _ms(lat[-1] if lat else None),
            )
        )
    n = max(1, len(done))
    span = max(elapsed, 1e-9)
    return Summary(
        elapsed=round(elapsed, 3),
        ops=len(done),
        ok=ok,
        fail=fail,
        info=info,
        throughput=round(ok / span, 1),
        attempted=round(len(done) / span, 1),
        conflicts=conflicts,
        conflict_rate=round(conflicts / n, 4),
        cas_retries=cas_retries,
        store_retries=store_retries,
        retry_rate=round((cas_retries + store_retries) / n, 4),
        unexpected=sum(1 for op in done if op.unexpected),
        unavailable=sum(1 for op in done if op.error in ("Unavailable", "AmbiguousCommit")),
        kinds=kinds,
    )


@dataclass(slots=True)
class Series:
    """Per time bucket (by completion time): ops/s by outcome and latency percentiles."""

    width: float
    t: list[float]
    ok_rate: list[float]
    fail_rate: list[float]
    info_rate: list[float]
    p50_ms: list[float | None]
    p95_ms: list[float | None]
    p99_ms: list[float | None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def series(ops: list[Op], elapsed: float) -> Series:
    span = max(elapsed, max((op.end or 0.0 for op in ops), default=0.0), 0.1)
    width = next((w for w in BUCKET_WIDTHS if span / w <= MAX_BUCKETS), BUCKET_WIDTHS[-1])
    count = max(1, math.ceil(span / width))
    ok = [0] * count
    fail = [0] * count
    info = [0] * count
    lat: list[list[float]] = [[] for _ in range(count)]
    for op in ops:
        if op.client == "setup" or op.end is None:
            continue
        b = min(count - 1, max(0, int(op.end / width)))
        if op.outcome == OK:
            ok[b] += 1
            if op.latency is not None:
                lat[b].append(op.latency)
        elif op.outcome == FAIL:
            fail[b] += 1
        else:
            info[b] += 1
    for values in lat:
        values.sort()
    # The last bucket may be partial: rate over the part of it the run covered.
    widths = [max(width / 4, min(width, span - k * width)) for k in range(count)]
    return Series(
        width=width,
        t=[round((k + 1) * width, 3) for k in range(count)],
        ok_rate=[round(v / w, 1) for v, w in zip(ok, widths, strict=True)],
        fail_rate=[round(v / w, 1) for v, w in zip(fail, widths, strict=True)],
        info_rate=[round(v / w, 1) for v, w in zip(info, widths, strict=True)],
        p50_ms=[_ms(percentile(v, 50)) for v in lat],
        p95_ms=[_ms(percentile(v, 95)) for v in lat],
        p99_ms=[_ms(percentile(v, 99)) for v in lat],
    )
