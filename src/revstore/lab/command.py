"""``revstore lab``: the command. Parses options, shows the run live, prints the summary
and the checks, writes --json / --report, and exits non-zero on any anomaly.

Exit status: 0 every check passed; 1 an anomaly was found (named, with an example);
2 the options do not make a run; 130 interrupted with Ctrl-C (and no anomaly in what
was recorded up to then).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from revstore.lab.runner import Lab, LabConfig, LabResult, Progress

EXIT_ANOMALY = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def lab(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Database URL to drive through the library (sqlite:///f.db, postgresql://…, "
            "mysql://…; default without --url: $REVSTORE_URL or sqlite:///revstore.db). "
            "With --url: the service's database, for --chaos kill-connections.",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="A running revstore HTTP service, e.g. http://127.0.0.1:8000."),
    ] = None,
    processes: Annotated[
        int, typer.Option(help="Worker processes (0: threads in this process).", min=0, max=64)
    ] = 0,
    writers: Annotated[
        int,
        typer.Option(
            help="Concurrent writers (threads; per process with --processes).", min=1, max=256
        ),
    ] = 8,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds to run (default 5 unless --ops is given).", min=0.1),
    ] = None,
    ops: Annotated[int | None, typer.Option(help="Stop after this many ops in all.", min=1)] = None,
    keys: Annotated[
        int, typer.Option(help="Records and streams to spread writes over (1: one hot key).", min=1)
    ] = 1,
    seed: Annotated[
        int | None, typer.Option(help="Seed of every random choice (reproducible).")
    ] = None,
    workload: Annotated[
        str, typer.Option(help="records, streams, or records,streams.")
    ] = "records,streams",
    mix: Annotated[
        str | None,
        typer.Option(
            help="Op weights, e.g. put=3,cas=3,patch=2,autosave=1,read=3,append=4,resend=1,sread=2."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(help="Largest stream batch (items).", min=1, max=1000)] = 3,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="counter, lock, optimistic (revstore's), or naive / naive-nokey (the bug, "
            "read-max-then-insert, in lab tables of its own)."
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(help="Run several strategies one after the other, e.g. naive,counter."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="postgresql or mariadb: start a throwaway server of the lab's own (a "
            "temporary folder, a free port; removed afterwards) and drive it instead of --db.",
        ),
    ] = None,
    chaos: Annotated[
        str | None,
        typer.Option(
            help="kill-connections (PostgreSQL, MariaDB), kill-workers (--processes), or "
            "restart-db (--server postgresql|mariadb; SQLite: --processes)."
        ),
    ] = None,
    chaos_interval: Annotated[
        float, typer.Option(help="Seconds between faults (jittered ±50%).", min=0.05)
    ] = 1.0,
    namespace: Annotated[
        str, typer.Option(help="Namespace of the lab's records and streams.")
    ] = "revstore-lab",
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow a --url that is not a loopback address.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="HTTP request timeout in seconds.", min=0.1)
    ] = 10.0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full result (history included) here.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write a self-contained HTML report here.")
    ] = None,
    live: Annotated[
        bool, typer.Option("--live/--no-live", help="Live display while running.")
    ] = True,
) -> None:
    """Drive concurrent writers against a target, record every op, check the history.

    Checks: numbers unique and gapless; every acknowledged write present exactly once;
    nothing present that no one wrote; batches atomic and exactly-once on re-send;
    monotonic reads per client; no undocumented error. Exits 1 on any anomaly.
    """
    from revstore.errors import RevstoreError
    from revstore.lab.runner import ConfigError, LabConfig
    from revstore.lab.workload import parse_mix

    console = Console()
    err = Console(stderr=True)

    def usage(message: str) -> typer.Exit:
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
        return typer.Exit(EXIT_USAGE)

    try:
        weights = parse_mix(mix) if mix else None
    except ValueError as exc:
        raise usage(str(exc)) from None
    strategies: list[str | None] = [strategy]
    if compare:
        if strategy:
            raise usage("give --strategy or --compare, not both")
        strategies = [s.strip() for s in compare.split(",") if s.strip()]
        if len(strategies) < 2:
            raise usage("--compare takes two or more strategies, e.g. naive,counter")
    if db is None and url is None and server is None:
        from revstore.config import db_url

        db = db_url(None)  # the same default database as every other command
    base = LabConfig(
        db=db,
        url=url,
        server=server,
        processes=processes,
        writers=writers,
        duration=duration if duration is not None else (None if ops else 5.0),
        ops=ops,
        keys=keys,
        seed=seed,
        workload=tuple(w.strip() for w in workload.split(",") if w.strip()),
        mix=weights,
        batch=batch,
        chaos=chaos,
        chaos_interval=chaos_interval,
        namespace=namespace,
        allow_remote=allow_remote,
        timeout=timeout,
    )
    results: list[LabResult] = []
    interrupted = False
    for name in strategies:
        config = LabConfig(**{**_fields(base), "strategy": name})
        try:
            result, interrupted = _run_one(config, console, live)
        except ConfigError as exc:
            raise usage(str(exc)) from None
        except RevstoreError as exc:
            # The target cannot be opened (unreachable database, bad URL).
            raise usage(f"cannot start the run: {type(exc).__name__}: {exc}") from None
        results.append(result)
        # The same seed for every strategy of a comparison: the same choices.
        base.seed = result.seed
        _print_result(result, console)
        if interrupted:
            break
    if len(results) > 1:
        _print_comparison(results, console)
    payloads = [r.to_json() for r in results]
    if json_out is not None:
        data: Any = payloads[0] if len(payloads) == 1 else {"runs": payloads}
        json_out.write_text(json.dumps(data, indent=1, default=str))
        console.print(f"result written to [bold]{escape(str(json_out))}[/bold]")
    if report is not None:
        from revstore.lab.report import render_html

        report.write_text(render_html(payloads), encoding="utf-8")
        console.print(f"report written to [bold]{escape(str(report))}[/bold]")
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_ANOMALY)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def _fields(config: LabConfig) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config)}


def _run_one(config: LabConfig, console: Console, live: bool) -> tuple[LabResult, bool]:
    from revstore.lab.runner import Lab

    lab = Lab(config)
    console.print(
        f"[bold]revstore lab[/bold] run [cyan]{lab.run_id}[/cyan]: "
        f"{escape(lab.target.description)}, "
        f"strategy [bold]{escape(lab.target.strategy)}[/bold], {lab.writers_total} writer(s) on "
        f"{config.keys} key(s), seed {lab.seed}"
        + (f", chaos {config.chaos}" if config.chaos else ""),
        highlight=False,
    )
    interrupted = False
    try:
        lab.start()
        if live:
            with Live(_render(lab, lab.progress()), console=console, refresh_per_second=4) as view:
                while lab.running():
                    view.update(_render(lab, lab.progress()))
                    time.sleep(0.25)
                view.update(_render(lab, lab.progress()))
        else:
            while lab.running():
                time.sleep(0.1)
    except KeyboardInterrupt:
        interrupted = True
        lab.stop()
        console.print(
            "[yellow]interrupted:[/yellow] stopping the writers, then checking what was recorded"
        )
    console.print("reading the final state and checking the history…", style="dim")
    return lab.finish(), interrupted


def _render(lab: Lab, p: Progress) -> Group:
    c = p.counters
    if p.remaining is not None:
        total = p.elapsed + p.remaining
        bar = ProgressBar(total=max(total, 1e-3), completed=min(p.elapsed, total), width=40)
        clock = f"{p.elapsed:5.1f}s elapsed, {p.remaining:4.1f}s left"
    else:
        target = p.ops_target or 1
        bar = ProgressBar(total=target, completed=min(c.done, target), width=40)
        clock = f"{p.elapsed:5.1f}s elapsed, {c.done:,}/{target:,} ops"
    head = Table.grid(padding=(0, 2))
    head.add_row(bar, Text(clock))
    stats = Text.assemble(
        (f"{p.rate:,.0f} ops/s", "bold"),
        f" · done {c.done:,} · ",
        (f"ok {c.ok:,}", "green"),
        " · ",
        (f"refused {c.fail:,}", "yellow"),
        " · ",
        (f"indeterminate {c.info:,}", "magenta"),
        f" · conflicts {c.conflicts:,} · retries {c.cas_retries + p.retries:,} · ",
        (f"errors {c.unexpected:,}", "red" if c.unexpected else ""),
    )
    if lab.chaos is not None:
        stats.append(" · ")
        stats.append(f"chaos hits {p.chaos:,}", "red")
    parts: list[Any] = [head, stats]
    if c.last_error:
        parts.append(
            Text(f"last error: {c.last_error}", style="dim", overflow="ellipsis", no_wrap=True)
        )
    return Group(*parts)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def _print_result(result: LabResult, console: Console) -> None:
    s = result.summary
    title = (
        f"revstore lab {result.run_id}: {result.backend}, strategy {result.strategy}, "
        f"{s.elapsed:.1f}s" + (" (interrupted)" if result.interrupted else "")
    )
    table = Table(
        title=title,
        title_justify="left",
        caption="latency percentiles p50/p95/p99 in ms",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        show_edge=False,
    )
    for col in (
        "op",
        "count",
        "ok",
        "refused",
        "indet.",
        "confl.",
        # Short headers: the table fits an 80-column terminal.
        "p50",
        "p95",
        "p99",
    ):
        left = col == "op"
        table.add_column(col, justify="left" if left else "right", no_wrap=True)
    for k in s.kinds:
        table.add_row(
            k.kind,
            f"{k.count:,}",
            f"{k.ok:,}",
            f"{k.fail:,}",
            f"{k.info:,}",
            f"{k.conflicts:,}",
            _ms(k.p50_ms),
            _ms(k.p95_ms),
            _ms(k.p99_ms),
        )
    table.add_section()
    table.add_row(
        "all",
        f"{s.ops:,}",
        f"{s.ok:,}",
        f"{s.fail:,}",
        f"{s.info:,}",
        f"{s.conflicts:,}",
        "",
        "",
        "",
    )
    console.print(table)
    ind = result.report.indeterminate()
    console.print(
        f"throughput [bold]{s.throughput:,.1f}[/bold] acknowledged ops/s "
        f"({s.attempted:,.1f} completed/s) · conflict rate {s.conflict_rate:.3f}/op · "
        f"retry rate {s.retry_rate:.3f}/op ({s.cas_retries:,} cas re-reads, "
        f"{s.store_retries:,} store re-runs) · Unavailable/AmbiguousCommit {s.unavailable:,} · "
        f"undocumented errors {s.unexpected:,}",
        highlight=False,
    )
    by_error = "".join(
        f"; {error} {c['present'] + c['absent']:,}: {c['present']:,} present, "
        f"{c['absent']:,} absent"
        for error, c in sorted(result.report.resolved_by_error().items())
    )
    console.print(
        f"indeterminate writes: {ind['total']:,} (resolved from the final state: "
        f"{ind['present']:,} present, {ind['absent']:,} absent{by_error})"
        + (
            f" · chaos: {sum(e.count for e in result.chaos if e.action != 'error'):,} hit(s) in "
            f"{len(result.chaos)} round(s)"
            if result.config.chaos
            else ""
        ),
        highlight=False,
    )
    restarts = [e for e in result.chaos if e.action == "restart-db"]
    if restarts:
        console.print(
            f"restarts: {len(restarts)} · "
            + " · ".join(
                f"at {e.t:.1f}s {e.detail}"
                + (f" (back at {e.until:.1f}s)" if e.until is not None else "")
                for e in restarts
            ),
            highlight=False,
        )
    checks = Table(title="checks", title_justify="left")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("anomalies", justify="right")
    for c in result.report.checks:
        checks.add_row(
            c.description,
            "[green]pass[/green]" if c.passed else "[red bold]FAIL[/red bold]",
            f"{c.count:,}",
        )
    console.print(checks)
    if not result.ok:
        shown = 0
        kinds_shown: dict[str, int] = {}
        for a in result.report.anomalies:
            if kinds_shown.get(a.kind, 0) >= 2 or shown >= 8:
                continue
            kinds_shown[a.kind] = kinds_shown.get(a.kind, 0) + 1
            shown += 1
            ops = f" (ops: {', '.join(a.ops[:6])})" if a.ops else ""
            console.print(
                f"[red]{a.kind}[/red] {escape(a.message[:600])}{escape(ops)}", highlight=False
            )
        counts = ", ".join(f"{k} x{n:,}" for k, n in sorted(result.report.counts.items()))
        console.print(f"[red bold]ANOMALIES:[/red bold] {counts}", highlight=False)
    else:
        console.print("[green bold]all checks passed[/green bold]")


def _print_comparison(results: list[LabResult], console: Console) -> None:
    table = Table(title="comparison (same seed, same workload)", title_justify="left")
    table.add_column("measure")
    for r in results:
        table.add_column(r.strategy, justify="right")

    def row(name: str, values: list[str]) -> None:
        table.add_row(name, *values)

    row("acknowledged ops/s", [f"{r.summary.throughput:,.1f}" for r in results])
    row("acknowledged", [f"{r.summary.ok:,}" for r in results])
    row(
        "not acknowledged",
        [
            f"{r.summary.fail + r.summary.info:,} "
            f"({100 * (r.summary.fail + r.summary.info) / max(1, r.summary.ops):.1f}%)"
            for r in results
        ],
    )
    row("undocumented errors", [f"{r.summary.unexpected:,}" for r in results])
    row("anomalies", [f"{sum(r.report.counts.values()):,}" for r in results])
    row(
        "verdict",
        ["[green]pass[/green]" if r.ok else "[red]ANOMALIES[/red]" for r in results],
    )
    console.print(table)
