"""A ``bench_store.py --json`` file as one table of ratios: per backend, layout and
scenario, the raw loop (``--raw``), revstore, and the code of ``--baseline`` when the run
had one, each rate divided by the raw loop's, and now ÷ before.

    python benchmarks/ratio_table.py benchmarks/results/2026-12-01-gate-first.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NONE = "\u2013"  # shown for a value the run has not
NAMES = {"sqlite": "SQLite", "mysql": "MariaDB", "postgresql": "PostgreSQL"}
RAW = ("sqlite3-only", "pymysql-only", "psycopg-only")


def _rate(row: dict[str, Any] | None) -> str:
    return f"{row['rate']:,.0f}" if row else ""


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, bold: bool = False) -> str:
    if not a or not b or not b["rate"]:
        return ""
    text = f"{a['rate'] / b['rate']:.2f}"
    return f"**{text}**" if bold else text


def _us(row: dict[str, Any] | None) -> str:
    if not row or row.get("client_cores") is None or not row["ops_per_s"]:
        return NONE
    return f"{row['client_cores'] / row['ops_per_s'] * 1e6:,.0f}"


def _p99(row: dict[str, Any] | None) -> str:
    return f"{row['p99_ms']:.1f}" if row else NONE


def _batch(row: dict[str, Any] | None) -> str:
    stats = row and row.get("batch_stats")
    if not stats or not stats.get("batches"):
        return NONE
    batches = stats["batches"] + stats.get("solo_writes", 0)
    writes = stats["batched_writes"] + stats.get("solo_writes", 0)
    return f"{writes / batches:.1f} (max {stats['largest']})"


def table(rows: list[dict[str, Any]]) -> str:
    cells: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    order: list[tuple[str, str, str]] = []
    for r in rows:
        key = (r["backend"], r["layout"], r["scenario"])
        if key not in cells:
            cells[key] = {}
            order.append(key)
        kind = "raw" if r["strategy"] in RAW else "before" if "@" in r["strategy"] else "now"
        cells[key][kind] = r
    out = [
        "| backend | layout | scenario | raw loop | revstore | ÷ raw | before | ÷ raw "
        "| now ÷ before | p99 ms raw · now · before | client µs/op raw · now · before "
        "| writes/batch now · before |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    # By backend; within one, in the order of the run (stable sort).
    order.sort(key=lambda k: list(NAMES).index(k[0]) if k[0] in NAMES else len(NAMES))
    for backend, layout, scenario in order:
        c = cells[(backend, layout, scenario)]
        raw, now, before = c.get("raw"), c.get("now"), c.get("before")
        out.append(
            f"| {NAMES.get(backend, backend)} | {layout} | {scenario} | {_rate(raw)} "
            f"| {_rate(now)} | {_ratio(now, raw, True)} | {_rate(before)} "
            f"| {_ratio(before, raw)} | {_ratio(now, before)} "
            f"| {_p99(raw)} · {_p99(now)} · {_p99(before)} "
            f"| {_us(raw)} · {_us(now)} · {_us(before)} | {_batch(now)} · {_batch(before)} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    args = parser.parse_args()
    print(table(json.loads(args.json.read_text())["rows"]))


if __name__ == "__main__":
    main()
