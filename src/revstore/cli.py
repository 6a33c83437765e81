"""The ``revstore`` command line: thin wrappers over :class:`revstore.Store`."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from revstore.content import MAX_INT_DIGITS
from revstore.errors import Conflict, InvalidInput, NotFound, RevstoreError, Unavailable
from revstore.store import Store

DEFAULT_URL = "sqlite:///revstore.db"

app = typer.Typer(
    name="revstore",
    help="Versioned records and sequenced streams that never collide on the next number.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: $REVSTORE_URL or sqlite:///revstore.db)."),
]
NamespaceOption = Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")]


def db_url(db: str | None) -> str:
    return db or os.environ.get("REVSTORE_URL") or DEFAULT_URL


def open_store(db: str | None, **options: Any) -> Store:
    try:
        return Store(db_url(db), **options)
    except RevstoreError as exc:
        fail(exc)


def fail(exc: BaseException) -> NoReturn:
    """Print a revstore error as one line and exit with a code per kind of error."""
    codes = {InvalidInput: 2, NotFound: 3, Conflict: 4, Unavailable: 5}
    code = next((c for kind, c in codes.items() if isinstance(exc, kind)), 1)
    err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False)
    raise typer.Exit(code)


def parse_json(text: str, what: str = "JSON") -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(InvalidInput(f"{what} is not valid JSON: {exc}"))
    except RecursionError:
        fail(InvalidInput(f"{what} is nested too deeply"))
    except ValueError:
        # An integer literal over Python's int<->str digit limit.
        fail(InvalidInput(f"{what} has an integer of more than {MAX_INT_DIGITS} digits"))


def emit(value: Any) -> None:
    console.print_json(json.dumps(value, default=str))


def record_json(rec: Any) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(rec)
    for key in ("created_at", "updated_at"):
        if key in out:
            out[key] = out[key].isoformat()
    return out


@app.command()
def put(
    id: Annotated[str, typer.Argument(help="Record id.")],
    content: Annotated[str, typer.Argument(help="JSON content, or - to read it from stdin.")],
    expected_revision: Annotated[
        int | None,
        typer.Option(
            "--expected-revision", "-e", help="Fail unless at this revision (0: create-only)."
        ),
    ] = None,
    no_version: Annotated[
        bool, typer.Option("--no-version", help="Autosave: change the head only.")
    ] = False,
    author: Annotated[str | None, typer.Option(help="Author of the snapshot.")] = None,
    summary: Annotated[str | None, typer.Option(help="Summary of the change.")] = None,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
) -> None:
    """Create or replace a record."""
    store = open_store(db)
    try:
        rec = store.put(
            id,
            parse_json(content, "content"),
            expected_revision=expected_revision,
            create_version=not no_version,
            author=author,
            summary=summary,
            namespace=namespace,
        )
    except RevstoreError as exc:
        fail(exc)
    emit(record_json(rec))


@app.command()
def get(
    id: Annotated[str, typer.Argument(help="Record id.")],
    namespace: NamespaceOption = "default",
    db: DbOption = None,
) -> None:
    """Print a record's head."""
    store = open_store(db)
    try:
        emit(record_json(store.get(id, namespace=namespace)))
    except RevstoreError as exc:
        fail(exc)


@app.command()
def history(
    id: Annotated[str, typer.Argument(help="Record id.")],
    after: Annotated[int, typer.Option(help="Show versions after this one.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many versions (1-1000).")] = 50,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
) -> None:
    """List a record's versions, oldest first."""
    store = open_store(db)
    try:
        page = store.history(id, after=after, limit=limit, namespace=namespace)
    except RevstoreError as exc:
        fail(exc)
    table = Table("version", "revision", "created_at", "author", "summary", "content")
    for v in page:
        content = json.dumps(v.content)
        table.add_row(
            str(v.version),
            str(v.revision),
            v.created_at.isoformat(timespec="seconds"),
            v.author or "",
            v.summary or "",
            content if len(content) <= 60 else content[:57] + "...",
        )
    console.print(table)
    if page.next_after is not None:
        console.print(f"more: --after {page.next_after}")


@app.command()
def append(
    stream: Annotated[str, typer.Argument(help="Stream id.")],
    items: Annotated[list[str], typer.Argument(help="One JSON value per item.")],
    expected_sequence: Annotated[
        int | None,
        typer.Option("--expected-sequence", "-e", help="Fail unless the last sequence is this."),
    ] = None,
    item_id: Annotated[
        list[str] | None,
        typer.Option("--item-id", "-i", help="Client id per item (repeat, in order)."),
    ] = None,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
) -> None:
    """Append items to a stream as one atomic batch."""
    store = open_store(db)
    bodies = [parse_json(text, f"item {k}") for k, text in enumerate(items)]
    try:
        res = store.append(
            stream,
            bodies,
            expected_sequence=expected_sequence,
            item_ids=item_id,
            namespace=namespace,
        )
    except RevstoreError as exc:
        fail(exc)
    emit(
        {
            "first_sequence": res.first_sequence,
            "last_sequence": res.last_sequence,
            "duplicate": res.duplicate,
            "items": [record_json(i) for i in res.items],
        }
    )


@app.command()
def read(
    stream: Annotated[str, typer.Argument(help="Stream id.")],
    after: Annotated[int, typer.Option(help="Show items after this sequence.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many items (1-1000).")] = 100,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
) -> None:
    """Print a stream's items in sequence order."""
    store = open_store(db)
    try:
        page = store.read(stream, after=after, limit=limit, namespace=namespace)
    except RevstoreError as exc:
        fail(exc)
    table = Table("sequence", "item_id", "created_at", "body")
    for item in page:
        table.add_row(
            str(item.sequence),
            item.item_id or "",
            item.created_at.isoformat(timespec="seconds"),
            json.dumps(item.body),
        )
    console.print(table)
    if page.next_after is not None:
        console.print(f"more: --after {page.next_after}")


@app.command()
def demo(
    writers: Annotated[int, typer.Option(help="Concurrent writers (threads).", min=1, max=64)] = 8,
    seconds: Annotated[float, typer.Option(help="How long to race.", min=0.5, max=600)] = 5.0,
    strategy: Annotated[
        str | None, typer.Option(help="counter, lock or optimistic (default: the backend's).")
    ] = None,
    db: DbOption = None,
) -> None:
    """Race writers on ONE record, then check that versions are unique and gapless."""
    from revstore.demo import run_demo

    store = open_store(db, strategy=strategy)
    try:
        ok = run_demo(store, writers=writers, seconds=seconds, console=console)
    except RevstoreError as exc:
        fail(exc)
    raise typer.Exit(0 if ok else 1)


# The lab lives in revstore.lab; its command module defers the heavy imports to a run.
from revstore.lab.command import lab as _lab_command  # noqa: E402

app.command(name="lab")(_lab_command)


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    workers: Annotated[
        int, typer.Option(help="Worker processes, all on the one database.", min=1)
    ] = 1,
    require_if_match: Annotated[
        bool,
        typer.Option("--require-if-match", help="Refuse record writes without If-Match (428)."),
    ] = False,
    max_body_bytes: Annotated[
        int, typer.Option(help="Refuse larger request bodies (413).", min=1)
    ] = 1024 * 1024,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the HTTP service (FastAPI on uvicorn); JSON log lines on stderr."""
    from revstore.service.command import prepare
    from revstore.service.command import serve as run_server
    from revstore.service.settings import Settings

    settings = Settings(
        url=db_url(db), require_if_match=require_if_match, max_body_bytes=max_body_bytes
    )
    try:
        prepare(settings)
    except RevstoreError as exc:
        fail(exc)
    run_server(settings, host=host, port=port, workers=workers, log_level=log_level)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
