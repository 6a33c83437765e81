"""``revstore demo``: writers race on one record; then the history is checked."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from revstore.errors import VersionConflict
from revstore.store import Store


@dataclass
class Tally:
    writes: int = 0
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)
    acked: list[tuple[int, int, str]] = field(default_factory=list)
    """(revision, version, token) of every acknowledged write."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _writer(store: Store, rid: str, wid: int, careful: bool, stop: float, tally: Tally) -> None:
    n = 0
    while time.monotonic() < stop:
        n += 1
        token = f"w{wid}-{n}"
        try:
            if careful:
                # Read, then write only if nobody wrote in between; on conflict the
                # error carries the new head, so no extra read is needed.
                head = store.get(rid)
                while True:
                    try:
                        rec = store.put(rid, {"by": token}, expected_revision=head.revision)
                        break
                    except VersionConflict as exc:
                        with tally.lock:
                            tally.conflicts += 1
                        assert exc.current is not None
                        head = exc.current
            else:
                rec = store.put(rid, {"by": token})
        except Exception as exc:  # every unexpected error is reported, never hidden
            with tally.lock:
                tally.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        with tally.lock:
            tally.writes += 1
            tally.acked.append((rec.revision, rec.version, token))


def check(store: Store, rid: str, tally: Tally) -> list[tuple[str, bool, str]]:
    versions = []
    after = 0
    while True:
        page = store.history(rid, after=after, limit=1000)
        versions.extend(page.versions)
        if page.next_after is None:
            break
        after = page.next_after
    numbers = [v.version for v in versions]
    revisions = [v.revision for v in versions]
    tokens = Counter(
        v.content["by"] for v in versions if isinstance(v.content, dict) and "by" in v.content
    )
    acked = {t for _, _, t in tally.acked}
    acked_versions = [v for _, v, _ in tally.acked]
    checks = [
        (
            "versions gapless 1..N",
            numbers == list(range(1, len(numbers) + 1)),
            f"{len(numbers)} versions",
        ),
        (
            "revisions unique and increasing",
            all(a < b for a, b in pairwise(revisions)),
            "",
        ),
        (
            "acknowledged version numbers unique",
            len(acked_versions) == len(set(acked_versions)),
            f"{len(acked_versions)} acknowledged",
        ),
        (
            "every acknowledged write in history exactly once",
            all(tokens[t] == 1 for t in acked),
            f"{sum(1 for t in acked if tokens[t] != 1)} missing or repeated",
        ),
        ("nothing in history that no one wrote", set(tokens) <= acked | {"seed"}, ""),
        ("no unexpected errors", not tally.errors, tally.errors[0] if tally.errors else ""),
    ]
    return checks


def run_demo(store: Store, *, writers: int, seconds: float, console: Console) -> bool:
    store.create_schema()
    rid = f"demo-{uuid.uuid4().hex[:8]}"
    store.put(rid, {"by": "seed"})
    tally = Tally()
    stop = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_writer, args=(store, rid, w, w % 2 == 1, stop, tally), daemon=True)
        for w in range(writers)
    ]
    console.print(
        f"[bold]{writers} writers[/bold] race on record [cyan]{rid}[/cyan] "
        f"({store.backend_name}, strategy {store.strategy}) for {seconds:g}s: "
        "half blind puts, half puts with expected_revision that retry on conflict."
    )
    started = time.monotonic()
    for t in threads:
        t.start()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[writes]} writes"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("racing", total=seconds, writes=0)
        while any(t.is_alive() for t in threads):
            progress.update(
                task, completed=min(seconds, time.monotonic() - started), writes=tally.writes
            )
            time.sleep(0.1)
        progress.update(task, completed=seconds, writes=tally.writes)
    elapsed = time.monotonic() - started
    checks = check(store, rid, tally)

    table = Table(title=f"revstore demo: {rid}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("acknowledged writes", str(tally.writes))
    table.add_row("writes/s", f"{tally.writes / elapsed:,.0f}")
    table.add_row("conflicts (expected_revision mismatch, re-applied)", str(tally.conflicts))
    table.add_row("retries (transient database errors, re-run)", str(store.stats.retries))
    table.add_row("unexpected errors", str(len(tally.errors)))
    console.print(table)
    result = Table(title="checks")
    result.add_column("check")
    result.add_column("result")
    result.add_column("detail")
    for name, ok, detail in checks:
        result.add_row(name, "[green]pass[/green]" if ok else "[red]FAIL[/red]", detail)
    console.print(result)
    return all(ok for _, ok, _ in checks)
