"""A self-contained HTML report: tables and inline SVG charts, no script, no external
asset. Rendered from the JSON result (``LabResult.to_json()``), so a saved ``--json``
file can be turned into a page later too."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

COLORS = {
    "ok": "#2e7d32",
    "fail": "#ef6c00",
    "info": "#6a1b9a",
    "p50": "#1565c0",
    "p95": "#00897b",
    "p99": "#c62828",
    "chaos": "#d32f2f",
}

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; margin: 24px auto; max-width: 980px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #57606a; margin-bottom: 12px; }
.verdict { display: inline-block; font-weight: 700; padding: 2px 10px; border-radius: 4px;
           color: #fff; margin-left: 8px; font-size: 15px; }
.pass { background: #2e7d32; } .fail { background: #c62828; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.ok { color: #2e7d32; font-weight: 600; } td.bad { color: #c62828; font-weight: 600; }
.anomaly { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px;
           background: #fff5f5; border-left: 3px solid #c62828; padding: 4px 8px; margin: 4px 0;
           white-space: pre-wrap; word-break: break-word; }
.note { color: #57606a; font-size: 13px; }
svg { background: #fff; border: 1px solid #d0d7de; border-radius: 4px; margin: 4px 0 10px; }
table.checks td:first-child { min-width: 17em; }
details pre { font-size: 12px; background: #f6f8fa; padding: 8px; overflow-x: auto; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _nice_step(span: float, ticks: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / ticks
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag:
            return m * mag
    return 10.0 * mag


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


Line = tuple[str, str, Sequence[float], Sequence[float | None]]
"""(name, colour, x values in seconds, y values: None leaves a gap)."""


def line_chart(
    title: str,
    lines: Sequence[Line],
    y_label: str,
    events: Sequence[float] = (),
    width: int = 900,
    height: int = 270,
) -> str:
    """An SVG line chart: x in seconds, one polyline per series (gaps where None)."""
    left, right, top, bottom = 64, 16, 34, 42
    pw, ph = width - left - right, height - top - bottom
    x_max = max([x for _, _, xs, _ in lines for x in xs] + [0.1])
    values = [v for _, _, _, vs in lines for v in vs if v is not None]
    y_max = max([*values, 0.0])
    y_step = _nice_step(y_max or 1.0)
    y_top = max(y_step, math.ceil((y_max or 1.0) / y_step) * y_step)
    x_step = _nice_step(x_max, 8)

    def sx(x: float) -> float:
        return left + pw * x / x_max

    def sy(y: float) -> float:
        return top + ph - ph * y / y_top

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="20" font-size="14" font-weight="600" fill="#1f2328">'
        f"{_e(title)}</text>",
    ]
    # grid and axes
    k = 0
    while k * y_step <= y_top + 1e-9:
        y = sy(k * y_step)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eaeef2"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#57606a">{_fmt(k * y_step)}</text>'
        )
        k += 1
    k = 0
    while k * x_step <= x_max + 1e-9:
        x = sx(k * x_step)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#f3f4f6"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle" '
            f'fill="#57606a">{_fmt(k * x_step)}</text>'
        )
        k += 1
    out.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#8c959f"/>'
    )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" font-size="12" text-anchor="middle" '
        'fill="#1f2328">seconds since start</text>'
    )
    out.append(
        f'<text x="14" y="{top + ph / 2}" font-size="12" text-anchor="middle" fill="#1f2328" '
        f'transform="rotate(-90 14 {top + ph / 2})">{_e(y_label)}</text>'
    )
    for t in events:
        x = sx(min(t, x_max))
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" '
            f'stroke="{COLORS["chaos"]}" stroke-width="1" stroke-dasharray="3,3" opacity="0.6"/>'
        )
    # series
    for _, color, xs, vs in lines:
        segment: list[str] = []
        segments: list[list[str]] = []
        for x, v in zip(xs, vs, strict=False):
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{sx(x):.1f},{sy(v):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            else:
                out.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                    f'stroke-linejoin="round" points="{" ".join(seg)}"/>'
                )
    # legend
    lx = left + pw
    legend = [(name, color, False) for name, color, _, _ in lines]
    if events:
        legend.append(("chaos", COLORS["chaos"], True))
    for name, color, dashed in reversed(legend):
        text_w = 7 * len(name) + 28
        lx -= text_w
        dash = ' stroke-dasharray="3,3"' if dashed else ""
        out.append(
            f'<line x1="{lx}" y1="16" x2="{lx + 18}" y2="16" stroke="{color}" '
            f'stroke-width="2.5"{dash}/>'
        )
        out.append(f'<text x="{lx + 22}" y="20" font-size="12" fill="#1f2328">{_e(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else _e(value)


Cell = str | tuple[str, str]
"""HTML of a cell, or (HTML, CSS class)."""


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Cell]], numeric: set[int], cls: str = ""
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for k, cell in enumerate(row):
            cls = "num" if k in numeric else ""
            if isinstance(cell, tuple):
                cell, cls = cell
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(result: dict[str, Any], title: str | None) -> str:
    s = result["summary"]
    checks = result["checks"]
    cfg = result["config"]
    ok = bool(result["ok"])
    parts = []
    verdict = (
        '<span class="verdict pass">PASS</span>'
        if ok
        else '<span class="verdict fail">ANOMALIES</span>'
    )
    heading = title or f"{result['backend']} · {result['strategy']}"
    parts.append(f"<h2>{_e(heading)} {verdict}</h2>")
    bound = []
    if cfg.get("duration"):
        bound.append(f"{cfg['duration']:g} s")
    if cfg.get("ops"):
        bound.append(f"{cfg['ops']} ops")
    meta = (
        f"{_e(result['target'])} · strategy {_e(result['strategy'])} · "
        f"{cfg['writers']} writer(s)"
        + (f" x {cfg['processes']} processes" if cfg.get("processes") else "")
        + f" · {cfg['keys']} key(s) · {' / '.join(bound)} · seed {cfg['seed']}"
        + (f" · chaos {_e(cfg['chaos'])}" if cfg.get("chaos") else "")
        + (" · <b>interrupted</b>" if result.get("interrupted") else "")
    )
    parts.append(f'<div class="meta">{meta}</div>')

    parts.append("<h3>Checks</h3>")
    rows: list[list[Cell]] = []
    for c in checks["checks"]:
        status = ("pass", "ok") if c["passed"] else ("FAIL", "bad")
        example = c["example"] or ""
        if len(example) > 400:
            example = example[:400] + " …"
        rows.append([_e(c["description"]), status, _num(c["count"]), _e(example)])
    parts.append(_table(["check", "result", "anomalies", "first example"], rows, {2}, "checks"))
    ind = checks["indeterminate"]
    parts.append(
        f'<p class="note">Indeterminate writes (outcome unknown: AmbiguousCommit, '
        f"Unavailable, timeout, killed worker): {ind['total']}, resolved from the final "
        f"state as {ind['present']} present and {ind['absent']} absent. They are not "
        "counted as acknowledged.</p>"
    )

    parts.append("<h3>Summary</h3>")
    summary_rows = [
        ["acknowledged ops/s", _num(s["throughput"])],
        [
            "completed ops (ok / refused / indeterminate)",
            f"{s['ops']:,} ({s['ok']:,} / {s['fail']:,} / {s['info']:,})",
        ],
        ["conflicts (per op)", f"{s['conflicts']:,} ({s['conflict_rate']:.3f})"],
        [
            "retries: cas re-reads + store re-runs (per op)",
            f"{s['cas_retries']:,} + {s['store_retries']:,} ({s['retry_rate']:.3f})",
        ],
        ["Unavailable / AmbiguousCommit", _num(s["unavailable"])],
        ["undocumented errors", _num(s["unexpected"])],
        ["elapsed", f"{s['elapsed']:.2f} s"],
    ]
    parts.append(_table(["measure", "value"], summary_rows, {1}))
    kind_rows = [
        [
            _e(k["kind"]),
            _num(k["count"]),
            _num(k["ok"]),
            _num(k["fail"]),
            _num(k["info"]),
            _num(k["conflicts"]),
            _num(k["p50_ms"], 2),
            _num(k["p95_ms"], 2),
            _num(k["p99_ms"], 2),
            _num(k["max_ms"], 2),
        ]
        for k in s["kinds"]
    ]
    parts.append(
        _table(
            [
                "op",
                "count",
                "ok",
                "refused",
                "indet.",
                "conflicts",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "max ms",
            ],
            kind_rows,
            set(range(1, 10)),
        )
    )

    series = result["series"]
    events = [e["t"] for e in result.get("chaos", []) if e["action"] != "error"]
    parts.append("<h3>Over time</h3>")
    parts.append(
        line_chart(
            f"Throughput (ops/s, {series['width']:g} s buckets)",
            [
                ("acknowledged", COLORS["ok"], series["t"], series["ok_rate"]),
                ("refused", COLORS["fail"], series["t"], series["fail_rate"]),
                ("indeterminate", COLORS["info"], series["t"], series["info_rate"]),
            ],
            "ops/s",
            events,
        )
    )
    parts.append(
        line_chart(
            "Latency of acknowledged ops (ms)",
            [
                ("p50", COLORS["p50"], series["t"], series["p50_ms"]),
                ("p95", COLORS["p95"], series["t"], series["p95_ms"]),
                ("p99", COLORS["p99"], series["t"], series["p99_ms"]),
            ],
            "milliseconds",
            events,
        )
    )

    anomalies = checks["anomalies"]
    if anomalies:
        counts = checks["anomaly_counts"]
        parts.append("<h3>Anomalies</h3>")
        parts.append(
            "<p>"
            + ", ".join(f"{_e(k)}: <b>{n:,}</b>" for k, n in sorted(counts.items()))
            + f' <span class="note">(first {len(anomalies)} shown)</span></p>'
        )
        for a in anomalies:
            ops = f"  ops: {', '.join(a['ops'])}" if a["ops"] else ""
            parts.append(
                f'<div class="anomaly"><b>{_e(a["kind"])}</b> [{_e(a["key"])}] '
                f"{_e(a['message'])}{_e(ops)}</div>"
            )
    chaos = result.get("chaos", [])
    if chaos:
        hits = sum(e["count"] for e in chaos if e["action"] != "error")
        errors = [e for e in chaos if e["action"] == "error"]
        parts.append("<h3>Faults injected</h3>")
        parts.append(
            f"<p>{len(chaos) - len(errors)} round(s) of {_e(cfg['chaos'])}, {hits} hit(s) in all"
            + (f"; {len(errors)} round(s) failed: {_e(errors[0]['detail'])}" if errors else "")
            + "</p>"
        )
    config = {k: v for k, v in cfg.items() if v is not None}
    parts.append(
        "<details><summary>Configuration and workload</summary><pre>"
        + _e(json.dumps({"config": config, "workload": result["workload"]}, indent=2))
        + "</pre></details>"
    )
    return "\n".join(parts)


def render_html(results: Sequence[dict[str, Any]]) -> str:
    """The page for one run, or for several runs of ``--compare`` side by side."""
    ok = all(r["ok"] for r in results)
    first = results[0]
    title = "revstore lab"
    verdict = (
        '<span class="verdict pass">PASS</span>'
        if ok
        else '<span class="verdict fail">ANOMALIES</span>'
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)} — {_e(first['run_id'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(title)} {verdict}</h1>",
        f'<div class="meta">run {_e(first["run_id"])} · '
        f"started {_e(first['started_at'])} UTC</div>",
    ]
    if len(results) > 1:
        parts.append("<h2>Comparison</h2>")
        rows = []
        for r in results:
            s = r["summary"]
            failed = [c["name"] for c in r["checks"]["checks"] if not c["passed"]]
            failed_ops = s["fail"] + s["info"]
            rows.append(
                [
                    _e(r["strategy"]),
                    _num(s["throughput"]),
                    _num(s["ok"]),
                    f"{failed_ops:,} ({100 * failed_ops / max(1, s['ops']):.1f}%)",
                    _num(s["unexpected"]),
                    _num(sum(r["checks"]["anomaly_counts"].values())),
                    _e(", ".join(failed) or "all pass"),
                ]
            )
        parts.append(
            _table(
                [
                    "strategy",
                    "ack ops/s",
                    "acknowledged",
                    "not acknowledged",
                    "undocumented errors",
                    "anomalies",
                    "failed checks",
                ],
                rows,
                {1, 2, 3, 4, 5},
            )
        )
        palette = ["#c62828", "#2e7d32", "#1565c0", "#ef6c00", "#6a1b9a", "#00897b"]
        parts.append(
            line_chart(
                "Acknowledged ops/s by strategy",
                [
                    (
                        r["strategy"],
                        palette[k % len(palette)],
                        r["series"]["t"],
                        r["series"]["ok_rate"],
                    )
                    for k, r in enumerate(results)
                ],
                "ops/s",
            )
        )
        parts.append(
            line_chart(
                "Not acknowledged (refused + indeterminate) ops/s by strategy",
                [
                    (
                        r["strategy"],
                        palette[k % len(palette)],
                        r["series"]["t"],
                        [
                            a + b
                            for a, b in zip(
                                r["series"]["fail_rate"], r["series"]["info_rate"], strict=True
                            )
                        ],
                    )
                    for k, r in enumerate(results)
                ],
                "ops/s",
            )
        )
    for r in results:
        parts.append(
            _section(r, f"{r['backend']} · strategy {r['strategy']}" if len(results) > 1 else None)
        )
    parts.append("</body></html>")
    return "\n".join(parts)
