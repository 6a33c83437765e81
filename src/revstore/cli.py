"""The ``revstore`` command line: thin wrappers over :class:`revstore.Store`.

Every command prints Rich tables for people, or with ``--json`` one JSON document on
stdout for scripts (JSON Lines for ``--all``). Errors go to stderr (one JSON line with
``--json``) and exit with a code per kind of error: see :data:`EXIT_CODES` and
docs/cli.md.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, TypeVar

import typer
from rich.console import Console
from rich.json import JSON as RichJSON
from rich.table import Table
from rich.text import Text

from revstore.apikeys import ApiKey
from revstore.config import DEFAULT_URL as DEFAULT_URL
from revstore.config import db_url as db_url
from revstore.content import MAX_INT_DIGITS
from revstore.errors import (
    AmbiguousCommit,
    ClaimLost,
    Conflict,
    DuplicateItem,
    InvalidInput,
    NotFound,
    RevstoreError,
    SchemaMismatch,
    SequenceConflict,
    Unavailable,
    VersionCompacted,
    VersionConflict,
)
from revstore.failures import Duplicate, Retryable
from revstore.record import Record, Version
from revstore.retention import Policy, RetentionReport
from revstore.store import Store
from revstore.stream import StreamItem

# ----------------------------------------------------------------- exit codes

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5
EXIT_AMBIGUOUS = 6
EXIT_SCHEMA = 7
EXIT_INVALID = 8
EXIT_COMPACTED = 9
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[type[RevstoreError], int] = {
    # Every class of revstore.errors is listed on purpose (a test checks it); a class
    # added later that is not listed gets the code of its nearest listed base.
    RevstoreError: EXIT_UNEXPECTED,
    InvalidInput: EXIT_INVALID,
    NotFound: EXIT_NOT_FOUND,
    # A version that existed and was removed by retention: retrying never brings it
    # back; the oldest kept version is on stderr.
    VersionCompacted: EXIT_COMPACTED,
    Conflict: EXIT_CONFLICT,
    VersionConflict: EXIT_CONFLICT,
    SequenceConflict: EXIT_CONFLICT,
    DuplicateItem: EXIT_CONFLICT,
    # A CLI write takes no idempotency claim, so this cannot arise here; were it to, it
    # is a conflict: the write was rolled back and someone else holds the key.
    ClaimLost: EXIT_CONFLICT,
    Unavailable: EXIT_UNAVAILABLE,
    # Not "unavailable, retry": the write may have landed, so a blind retry may apply
    # it twice. Scripts must read the state first.
    AmbiguousCommit: EXIT_AMBIGUOUS,
    # Not "unavailable, retry": retrying with this release never helps; upgrade it.
    SchemaMismatch: EXIT_SCHEMA,
    # Transient conditions are retried inside the Store and surface as Unavailable once
    # the budget is spent; should one escape, it is transient all the same.
    Retryable: EXIT_UNAVAILABLE,
    Duplicate: EXIT_UNAVAILABLE,
}

EXIT_TABLE = (
    (EXIT_OK, "ok"),
    (EXIT_UNEXPECTED, "unexpected error (a bug); demo: a check failed"),
    (EXIT_USAGE, "usage: unknown command or option, missing argument, wrong type"),
    (EXIT_NOT_FOUND, "not found: record, version or stream (or the record is deleted)"),
    (EXIT_CONFLICT, "conflict: version, sequence, duplicate item (current state on stderr)"),
    (EXIT_UNAVAILABLE, "unavailable: database down or retries exhausted; retry later"),
    (EXIT_AMBIGUOUS, "ambiguous commit: the write may have landed; read before retrying"),
    (EXIT_SCHEMA, "schema mismatch: the database is newer than this release; upgrade"),
    (EXIT_INVALID, "invalid input: bad JSON, id, number, limit or size"),
    (EXIT_COMPACTED, "version compacted: removed by retention (oldest kept on stderr)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)

EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_TABLE) + "."


def exit_code(exc: BaseException) -> int:
    """The exit code of an error: that of its nearest class listed in EXIT_CODES."""
    for kind in type(exc).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return EXIT_UNEXPECTED


# ----------------------------------------------------------------- the app

app = typer.Typer(
    name="revstore",
    help="Versioned records and sequenced streams that never collide on the next number.",
    epilog=EPILOG,
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
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Machine-readable JSON on stdout; errors as one JSON line on stderr."
    ),
]
AllOption = Annotated[
    bool,
    typer.Option(
        "--all", help="Follow next_after to the end (with --json: JSON Lines, one per line)."
    ),
]
ExpectedRevisionOption = Annotated[
    int | None,
    typer.Option("--expected-revision", "-e", help="Fail unless at this revision (0: absent)."),
]
AuthorOption = Annotated[str | None, typer.Option(help="Author of the snapshot.")]
SummaryOption = Annotated[str | None, typer.Option(help="Summary of the change.")]
NoVersionOption = Annotated[
    bool, typer.Option("--no-version", help="Autosave: change the head only, no snapshot.")
]

ALL_PAGE_SIZE = 1000
"""Page size of ``--all`` when no ``--limit`` is given (the Store's largest)."""
PROGRESS_AFTER = 2.0
"""``--all`` prints progress on stderr once a run has taken this long (seconds)..."""
PROGRESS_EVERY = 2.0
"""...and then at most this often."""


# ----------------------------------------------------------------- output


def jsonable(value: Any) -> Any:
    """Plain JSON values from revstore's dataclasses (datetimes as ISO 8601)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def error_details(exc: BaseException) -> dict[str, Any]:
    """What an error carries for recovery (current revision, sequence, ids, ...).

    Every public attribute is included, so a new error class's fields show up without
    a change here."""
    details: dict[str, Any] = {}
    if isinstance(exc, VersionConflict):
        details["current_revision"] = exc.current_revision
        details["current_version"] = exc.current_version
    for name, value in vars(exc).items():
        if not name.startswith("_"):
            details[name] = jsonable(value)
    return details


class Output:
    """Where a command's results and errors go: Rich for people, JSON for scripts."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.stdin_used = False

    def emit(self, value: Any, human: Callable[[], None]) -> None:
        """The result of a command: JSON for scripts, else ``human()`` prints it."""
        if self.json:
            self.document(value)
        else:
            human()

    def document(self, value: Any) -> None:
        """One JSON document on stdout, on one line."""
        sys.stdout.write(json.dumps(jsonable(value)) + "\n")
        sys.stdout.flush()

    def fail(self, exc: BaseException) -> NoReturn:
        """Report an error on stderr and exit with the code of its kind."""
        code = exit_code(exc)
        details = error_details(exc)
        if self.json:
            doc = {"error": type(exc).__name__, "exit_code": code, "message": str(exc)}
            doc.update((k, v) for k, v in details.items() if k not in doc)
            sys.stderr.write(json.dumps(doc) + "\n")
        else:
            err_console.print(
                Text.assemble(("error: ", "red"), f"{type(exc).__name__}: {exc}"),
                highlight=False,
            )
            for name, value in details.items():
                if name == "current":  # the whole head; --json has it, people need less
                    continue
                err_console.print(Text(f"{name}: {json.dumps(value)}"), highlight=False)
        raise typer.Exit(code)

    def parse_json(self, text: str, what: str = "JSON") -> Any:
        """A JSON argument: literal JSON, ``-`` for stdin, or ``@path`` for a file."""
        if text == "-":
            if self.stdin_used:
                self.fail(InvalidInput(f"{what}: stdin (-) was already read by another argument"))
            self.stdin_used = True
            text = sys.stdin.read()
        elif text.startswith("@"):  # no JSON text starts with @
            try:
                text = Path(text[1:]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self.fail(InvalidInput(f"{what}: cannot read {text[1:]!r}: {exc}"))
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(InvalidInput(f"{what} is not valid JSON: {exc}"))
        except RecursionError:
            self.fail(InvalidInput(f"{what} is nested too deeply"))
        except ValueError:
            # An integer literal over Python's int<->str digit limit.
            self.fail(InvalidInput(f"{what} has an integer of more than {MAX_INT_DIGITS} digits"))


@contextmanager
def opened(out: Output, db: str | None, **options: Any) -> Iterator[Store]:
    """A Store for one command; any revstore error in the block exits with its code."""
    try:
        store = Store(db_url(db), **options)
    except RevstoreError as exc:
        out.fail(exc)
    try:
        yield store
    except RevstoreError as exc:
        out.fail(exc)
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise  # the command line's own exits, not errors of the command
    except KeyboardInterrupt:
        # Ctrl-C (say, in a long --all): the conventional 130, not click's 1 ("Aborted!"),
        # which would read as an unexpected error.
        err_console.print("interrupted", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if not out.json:
            raise  # a bug: the traceback helps, exit status 1
        out.fail(exc)
    finally:
        store.close()


def cell(value: Any, width: int | None = None) -> Text:
    """A table cell, never read as Rich markup (content may hold ``[brackets]``)."""
    if value is None:
        return Text("")
    text = value if isinstance(value, str) else json.dumps(jsonable(value))
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return Text(text)


def when(value: datetime) -> Text:
    """A time to the second; UTC (what revstore stores) as ``...Z`` to keep tables narrow."""
    if value.utcoffset() is not None and not value.utcoffset():
        return Text(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return Text(value.isoformat(timespec="seconds"))


def show_fields(title: str, rows: Sequence[tuple[str, Any]], content: Any = ...) -> None:
    # Titles hold ids: plain Text, so "[...]" in them is never read as Rich markup.
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, value if isinstance(value, Text) else cell(value))
    console.print(table)
    if content is not ...:
        console.print(RichJSON(json.dumps(content)))


def show_record(rec: Record, what: str = "") -> None:
    state = []
    if rec.created:
        state.append("created")
    if rec.unchanged:
        state.append("unchanged: nothing written")
    show_fields(
        f"record {rec.id}"
        + (f" ({what})" if what else "")
        + (f" [{', '.join(state)}]" if state else ""),
        [
            ("namespace", rec.namespace),
            ("id", rec.id),
            ("revision", str(rec.revision)),
            ("version", str(rec.version)),
            ("created_at", when(rec.created_at)),
            ("updated_at", when(rec.updated_at)),
        ],
        rec.content,
    )


def show_version(id: str, v: Version) -> None:
    show_fields(
        f"record {id}, version {v.version}",
        [
            ("version", str(v.version)),
            ("revision", str(v.revision)),
            ("created_at", when(v.created_at)),
            ("author", v.author),
            ("summary", v.summary),
        ],
        v.content,
    )


# ----------------------------------------------------------------- paging


class Page(Protocol):
    @property
    def next_after(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


C = TypeVar("C")


def follow(
    fetch: Callable[[C], Page], after: C, every: bool, label: str, unit: str
) -> Iterator[Page]:
    """One page, or with ``every`` all pages by ``next_after`` until it is None.

    Follows the cursor, never counts items: a page may stop early (a byte bound), so a
    short page does not mean the end, nor a full one more to come."""
    started = time.monotonic()
    last_report = started
    count = 0
    cursor = after
    while True:
        page = fetch(cursor)
        yield page
        if not every or page.next_after is None:
            break
        if page.next_after == cursor:
            # A cursor that does not move would loop for ever; it is a bug, not data.
            raise RuntimeError(f"{label}: next_after {cursor!r} does not advance")
        cursor = page.next_after
        count += sum(1 for _ in page)
        now = time.monotonic()
        if now - started >= PROGRESS_AFTER and now - last_report >= PROGRESS_EVERY:
            last_report = now
            err_console.print(
                Text(f"{label}: {count} {unit} so far, next after {cursor}"), highlight=False
            )


def emit_pages(
    out: Output, pages: Iterator[Page], every: bool, key: str
) -> tuple[list[Any], Any] | None:
    """JSON output of paged results; for people, returns the items and the last
    ``next_after`` to print as a table instead.

    ``--json``: one page is ``{key: [...], "next_after": ...}``; ``--all`` streams JSON
    Lines, one item per line, as pages arrive."""
    if out.json and every:
        for page in pages:
            for item in page:
                out.document(item)
        return None
    items: list[Any] = []
    next_after = None
    for page in pages:
        items.extend(page)
        next_after = page.next_after
    if out.json:
        out.document({key: items, "next_after": next_after})
        return None
    return items, next_after


def paged(
    as_json: bool,
    db: str | None,
    fetch: Callable[[Store, C, int], Page],
    after: C,
    limit: int | None,
    every: bool,
    default_limit: int,
    label: str,
    unit: str,
) -> tuple[list[Any], Any] | None:
    """The body of a paged command (history, list, read): open the store, fetch one
    page or with ``every`` all of them, and emit JSON; for people, returns the items
    and the last ``next_after`` (see :func:`emit_pages`).

    ``fetch(store, after, size)`` reads one page; ``unit`` names the items both in the
    progress line and as the JSON key."""
    out = Output(as_json)
    size = limit if limit is not None else (ALL_PAGE_SIZE if every else default_limit)
    with opened(out, db) as store:
        pages = follow(lambda a: fetch(store, a, size), after, every, label, unit)
        return emit_pages(out, pages, every, unit)


def print_table(table: Table, next_after: Any) -> None:
    console.print(table)
    if next_after is not None:
        console.print(Text(f"more: --after {next_after}"), highlight=False)


# ----------------------------------------------------------------- records


@app.command()
def put(
    id: Annotated[str, typer.Argument(help="Record id.")],
    content: Annotated[str, typer.Argument(help="JSON content; - for stdin, @path for a file.")],
    expected_revision: ExpectedRevisionOption = None,
    no_version: NoVersionOption = False,
    author: AuthorOption = None,
    summary: SummaryOption = None,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create or replace a record (-e 0: create only)."""
    out = Output(as_json)
    body = out.parse_json(content, "content")
    with opened(out, db) as store:
        rec = store.put(
            id,
            body,
            expected_revision=expected_revision,
            create_version=not no_version,
            author=author,
            summary=summary,
            namespace=namespace,
        )
    out.emit(rec, lambda: show_record(rec))


@app.command()
def patch(
    id: Annotated[str, typer.Argument(help="Record id.")],
    merge_patch: Annotated[
        str, typer.Argument(help="RFC 7396 merge patch; - for stdin, @path for a file.")
    ],
    expected_revision: ExpectedRevisionOption = None,
    no_version: NoVersionOption = False,
    author: AuthorOption = None,
    summary: SummaryOption = None,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply a JSON merge patch to a record's content, atomically (null removes a key)."""
    out = Output(as_json)
    body = out.parse_json(merge_patch, "patch")
    with opened(out, db) as store:
        rec = store.patch(
            id,
            body,
            expected_revision=expected_revision,
            create_version=not no_version,
            author=author,
            summary=summary,
            namespace=namespace,
        )
    out.emit(rec, lambda: show_record(rec, "patched"))


@app.command()
def get(
    id: Annotated[str, typer.Argument(help="Record id.")],
    version: Annotated[
        int | None, typer.Option("--version", help="Show this history version instead.")
    ] = None,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a record's head, or one of its versions with --version N."""
    out = Output(as_json)
    with opened(out, db) as store:
        if version is not None:
            v = store.get_version(id, version, namespace=namespace)
            out.emit(v, lambda: show_version(id, v))
            return
        rec = store.get(id, namespace=namespace)
    out.emit(rec, lambda: show_record(rec))


@app.command("get-version")
def get_version(
    id: Annotated[str, typer.Argument(help="Record id.")],
    version: Annotated[int, typer.Argument(help="Version number (from 1).")],
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print one history version of a record (same as get --version N)."""
    out = Output(as_json)
    with opened(out, db) as store:
        v = store.get_version(id, version, namespace=namespace)
    out.emit(v, lambda: show_version(id, v))


@app.command()
def delete(
    id: Annotated[str, typer.Argument(help="Record id.")],
    expected_revision: ExpectedRevisionOption = None,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a record (a tombstone: history is kept, put revives it)."""
    out = Output(as_json)
    with opened(out, db) as store:
        rec = store.delete(id, expected_revision=expected_revision, namespace=namespace)
    if out.json:
        out.document(rec)
    else:
        console.print(
            Text(f"deleted {rec.id}: revision {rec.revision}, last version {rec.version}"),
            highlight=False,
        )


@app.command()
def restore(
    id: Annotated[str, typer.Argument(help="Record id.")],
    version: Annotated[int, typer.Argument(help="The version whose content to restore.")],
    expected_revision: ExpectedRevisionOption = None,
    author: AuthorOption = None,
    summary: Annotated[
        str | None, typer.Option(help="Summary (default: 'restore version N').")
    ] = None,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a new version whose content is that of an earlier one."""
    out = Output(as_json)
    with opened(out, db) as store:
        rec = store.restore(
            id,
            version,
            expected_revision=expected_revision,
            author=author,
            summary=summary,
            namespace=namespace,
        )
    out.emit(rec, lambda: show_record(rec, f"restored version {version}"))


@app.command()
def history(
    id: Annotated[str, typer.Argument(help="Record id.")],
    after: Annotated[int, typer.Option(help="Versions after this one (0: from the first).")] = 0,
    limit: Annotated[
        int | None, typer.Option(help="Versions per page (1-1000; default 50, --all 1000).")
    ] = None,
    every: AllOption = False,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a record's versions, oldest first, a page at a time (or --all)."""
    shown = paged(
        as_json,
        db,
        lambda store, a, size: store.history(id, after=a, limit=size, namespace=namespace),
        after,
        limit,
        every,
        50,
        f"history {id}",
        "versions",
    )
    if shown is None:
        return
    table = Table("version", "revision", "created_at", "author", "summary", "content")
    for v in shown[0]:
        table.add_row(
            str(v.version),
            str(v.revision),
            when(v.created_at),
            cell(v.author),
            cell(v.summary),
            cell(v.content, 60),
        )
    print_table(table, shown[1])


@app.command()
def diff(
    id: Annotated[str, typer.Argument(help="Record id.")],
    from_version: Annotated[int, typer.Argument(help="From this version.")],
    to_version: Annotated[int, typer.Argument(help="To this version.")],
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The RFC 6902 JSON Patch turning one version's content into another's."""
    out = Output(as_json)
    with opened(out, db) as store:
        ops = store.diff(id, from_version, to_version, namespace=namespace)
    if out.json:
        out.document(ops)  # the patch document itself, usable as is
        return
    table = Table(
        "op", "path", "from", "value", title=Text(f"{id}: version {from_version} -> {to_version}")
    )
    for op in ops:
        value = cell(op["value"], 60) if "value" in op else Text("")
        table.add_row(cell(op["op"]), cell(op["path"]), cell(op.get("from")), value)
    console.print(table)
    if not ops:
        console.print(Text("no difference"), highlight=False)


@app.command("list")
def list_records(
    prefix: Annotated[str | None, typer.Option(help="Only ids that start with this.")] = None,
    after: Annotated[str | None, typer.Option(help="Start after this id.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Records per page (1-1000; default 50, --all 1000).")
    ] = None,
    every: AllOption = False,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List live records in id order, a page at a time (or --all)."""
    shown = paged(
        as_json,
        db,
        lambda store, a, size: store.list(prefix, a, size, namespace=namespace),
        after,
        limit,
        every,
        50,
        f"list {namespace}",
        "records",
    )
    if shown is None:
        return
    table = Table("id", "revision", "version", "updated_at", "content")
    for r in shown[0]:
        table.add_row(
            cell(r.id), str(r.revision), str(r.version), when(r.updated_at), cell(r.content, 50)
        )
    print_table(table, shown[1])


# ----------------------------------------------------------------- streams


@app.command("streams")
def list_streams(
    prefix: Annotated[str | None, typer.Option(help="Only ids that start with this.")] = None,
    after: Annotated[str | None, typer.Option(help="Start after this id.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Streams per page (1-1000; default 50, --all 1000).")
    ] = None,
    every: AllOption = False,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List streams in id order with their last sequence, a page at a time (or --all)."""
    shown = paged(
        as_json,
        db,
        lambda store, a, size: store.list_streams(prefix, a, size, namespace=namespace),
        after,
        limit,
        every,
        50,
        f"streams {namespace}",
        "streams",
    )
    if shown is None:
        return
    table = Table("id", "last sequence", "items", "updated_at")
    for info in shown[0]:
        table.add_row(
            cell(info.id), str(info.last_sequence), str(info.item_count), when(info.updated_at)
        )
    print_table(table, shown[1])


@app.command()
def append(
    stream: Annotated[str, typer.Argument(help="Stream id.")],
    items: Annotated[
        list[str], typer.Argument(help="One JSON value per item; - for stdin, @path for a file.")
    ],
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
    as_json: JsonOption = False,
) -> None:
    """Append items to a stream as one atomic batch."""
    out = Output(as_json)
    bodies = [out.parse_json(text, f"item {k}") for k, text in enumerate(items)]
    with opened(out, db) as store:
        res = store.append(
            stream,
            bodies,
            expected_sequence=expected_sequence,
            item_ids=item_id,
            namespace=namespace,
        )
    if out.json:
        out.document(res)
        return
    title = f"{stream}: sequences {res.first_sequence}..{res.last_sequence}"
    if res.duplicate:
        title += " (already stored: nothing written)"
    table = Table(
        "sequence", "item_id", "created_at", "body", title=Text(title), title_justify="left"
    )
    for item in res.items:
        add_item(table, item)
    console.print(table)


def add_item(table: Table, item: StreamItem) -> None:
    table.add_row(
        str(item.sequence), cell(item.item_id), when(item.created_at), cell(item.body, 60)
    )


@app.command()
def read(
    stream: Annotated[str, typer.Argument(help="Stream id.")],
    after: Annotated[int, typer.Option(help="Items after this sequence (0: from the first).")] = 0,
    limit: Annotated[
        int | None, typer.Option(help="Items per page (1-1000; default 100, --all 1000).")
    ] = None,
    every: AllOption = False,
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a stream's items in sequence order, a page at a time (or --all)."""
    shown = paged(
        as_json,
        db,
        lambda store, a, size: store.read(stream, after=a, limit=size, namespace=namespace),
        after,
        limit,
        every,
        100,
        f"read {stream}",
        "items",
    )
    if shown is None:
        return
    table = Table("sequence", "item_id", "created_at", "body")
    for item in shown[0]:
        add_item(table, item)
    print_table(table, shown[1])


@app.command("stream-info")
def stream_info(
    stream: Annotated[str, typer.Argument(help="Stream id.")],
    namespace: NamespaceOption = "default",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a stream's last sequence, item count and times."""
    out = Output(as_json)
    with opened(out, db) as store:
        info = store.stream_info(stream, namespace=namespace)
    if out.json:
        out.document(info)
        return
    show_fields(
        f"stream {info.id}",
        [
            ("namespace", info.namespace),
            ("id", info.id),
            ("last_sequence", str(info.last_sequence)),
            ("item_count", str(info.item_count)),
            ("created_at", when(info.created_at)),
            ("updated_at", when(info.updated_at)),
        ],
    )


# ----------------------------------------------------------------- operations


@app.command()
def demo(
    writers: Annotated[int, typer.Option(help="Concurrent writers (threads).", min=1, max=64)] = 8,
    seconds: Annotated[float, typer.Option(help="How long to race.", min=0.5, max=600)] = 5.0,
    strategy: Annotated[
        str | None, typer.Option(help="counter, lock or optimistic (default: the backend's).")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Race writers on ONE record, then check the history (exit 1 if a check fails).

    With --json the run is shown on stderr and a summary printed on stdout."""
    from revstore.demo import run_demo

    out = Output(as_json)
    with opened(out, db, strategy=strategy) as store:
        shown = err_console if out.json else console
        ok = run_demo(store, writers=writers, seconds=seconds, console=shown)
        if out.json:
            out.document(
                {
                    "ok": ok,
                    "backend": store.backend_name,
                    "strategy": store.strategy,
                    "writers": writers,
                    "seconds": seconds,
                    "retries": store.stats.retries,
                }
            )
    raise typer.Exit(EXIT_OK if ok else EXIT_UNEXPECTED)


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
    max_page_bytes: Annotated[
        int,
        typer.Option(
            help="End a page of versions, items or records before its content passes this "
            "many bytes (at least one per page).",
            min=1,
        ),
    ] = 8 * 1024 * 1024,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    auth: Annotated[
        str | None,
        typer.Option(
            help="required: /v1 requests need an API key (revstore keys create); off: no "
            "checks. Default: required unless --host is a loopback address.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the HTTP service (FastAPI on uvicorn); JSON log lines on stderr."""
    from revstore.service.auth import AUTH_MODES, auth_required
    from revstore.service.command import prepare
    from revstore.service.command import serve as run_server
    from revstore.service.settings import Settings

    if auth is not None and auth not in AUTH_MODES:
        raise typer.BadParameter(f"must be one of {', '.join(AUTH_MODES)}", param_hint="--auth")
    settings = Settings(
        url=db_url(db),
        require_if_match=require_if_match,
        max_body_bytes=max_body_bytes,
        max_page_bytes=max_page_bytes,
        auth=auth_required(auth, host),
    )
    try:
        prepare(settings)
    except RevstoreError as exc:
        Output(False).fail(exc)
    run_server(settings, host=host, port=port, workers=workers, log_level=log_level)


@app.command()
def migrate(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Create or upgrade the tables now; prints the schema version.

    Every process also does this on its first call."""
    out = Output(as_json)
    with opened(out, db) as store:
        version = store.create_schema()
    if out.json:
        out.document({"schema_version": version})
    else:
        console.print(Text(f"schema version {version}"), highlight=False)


@app.command()
def adopt(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="The Versioned model, as module:Class (the module importable from here).",
        ),
    ],
    batch_size: Annotated[
        int, typer.Option(help="Rows per transaction while recording version 1.", min=1, max=10000)
    ] = 1000,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Adopt an existing, populated table for a revstore.sqlalchemy Versioned model.

    Adds revision and version (1 for every row), creates <table>_versions and records
    each row's current state as version 1, in batches. Idempotent: a re-run does
    nothing more. Progress on a terminal; with --json a summary on stdout."""
    from revstore.sqlalchemy.adopt import run_adopt_command

    out = Output(as_json)
    cls = load_model(model)
    try:
        result = run_adopt_command(
            db_url(db), cls, batch_size=batch_size, console=err_console if out.json else console
        )
    except RevstoreError as exc:
        out.fail(exc)
    out.emit(
        result,
        lambda: console.print(
            Text(
                f"{result.table}: {result.rows} rows, {result.snapshots} snapshots written; "
                f"columns added: {', '.join(result.columns_added) or 'none'}; history table "
                f"{result.history_table} {'created' if result.history_created else 'present'}"
            ),
            highlight=False,
        ),
    )


def load_model(spec: str) -> Any:
    """``module:Class`` imported, the current directory first on the path (as uvicorn
    and Alembic do); a spec that does not resolve is a usage error (exit 2)."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise typer.BadParameter("expected module:Class", param_hint="--model")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(
            f"cannot import {module_name!r}: {exc}", param_hint="--model"
        ) from exc
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise typer.BadParameter(f"{module_name!r} has no {attr!r}", param_hint="--model")
        found = getattr(found, part)
    return found


# ----------------------------------------------------------------- API keys

keys_app = typer.Typer(
    name="keys",
    help="API keys of the HTTP service: create (the token is shown once), list, revoke.",
    epilog=EPILOG,
    no_args_is_help=True,
)
app.add_typer(keys_app)


def show_keys(keys: Sequence[ApiKey]) -> None:
    table = Table()
    # The id is what revoke takes: never cut it short in a narrow terminal.
    table.add_column("id", no_wrap=True, min_width=16)
    for column in ("name", "namespace", "role", "created_at", "revoked_at"):
        table.add_column(column, overflow="fold")
    for k in keys:
        table.add_row(
            cell(k.id),
            cell(k.name, 40),
            cell(k.namespace, 40),
            cell(k.role),
            when(k.created_at),
            when(k.revoked_at) if k.revoked_at else cell(None),
        )
    console.print(table)


@keys_app.command("create")
def keys_create(
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace", "-n", help="The namespace the key is for; * for every namespace."
        ),
    ],
    role: Annotated[
        str, typer.Option(help="read (reads only), write (reads and writes), or admin.")
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Who uses it; the author of writes that name none (default key-ID)."),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key and print its token, once: only its hash is stored."""
    out = Output(as_json)
    with opened(out, db) as store:
        new = store.api_keys.create(namespace, role, name=name)
    if out.json:
        out.document({**jsonable(new.key), "token": new.token})
        return
    show_keys([new.key])
    console.print(Text(new.token), highlight=False, soft_wrap=True)
    err_console.print(
        "This token is shown once: store it now. Send it as: Authorization: Bearer <token>",
        highlight=False,
    )


@keys_app.command("list")
def keys_list(
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Only the keys of this namespace (or *)."),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List API keys, revoked ones included (never their tokens)."""
    out = Output(as_json)
    with opened(out, db) as store:
        keys = store.api_keys.list(namespace)
    out.emit({"keys": keys}, lambda: show_keys(keys))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see keys list).")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an API key (idempotent); a running service refuses it within 2 s."""
    out = Output(as_json)
    with opened(out, db) as store:
        key = store.api_keys.revoke(key_id)
    out.emit(key, lambda: show_keys([key]))


# ----------------------------------------------------------------- retention

retention_app = typer.Typer(
    name="retention",
    help="How many versions each namespace keeps: set, show, apply.",
    epilog=EPILOG,
    no_args_is_help=True,
)
app.add_typer(retention_app)

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str | None) -> int | None:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` as seconds."""
    if text is None:
        return None
    raw = text.strip().lower()
    unit = _AGE_UNITS.get(raw[-1:])
    number = raw[:-1] if unit is not None else raw
    if not number.isascii() or not number.isdigit() or len(number) > 12:
        raise InvalidInput(f"--max-age must be a number with s, m, h, d or w, got {text!r}")
    return int(number) * (unit or 1)


def show_policies(policies: Sequence[Policy]) -> None:
    if not policies:
        console.print("no retention policy", highlight=False)
        return
    table = Table("namespace", "keep last", "max age (s)", "updated")
    for p in policies:
        table.add_row(
            cell(p.namespace, 40),
            cell(p.keep_last),
            cell(p.max_age_seconds),
            when(p.updated_at) if p.updated_at else cell(None),
        )
    console.print(table)


@retention_app.command("set")
def retention_set(
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="The namespace the policy is for.")
    ],
    keep_last: Annotated[
        int | None, typer.Option(help="Keep the last N versions of each record.")
    ] = None,
    max_age: Annotated[
        str | None,
        typer.Option(help="Keep versions younger than this: 3600, 90m, 12h, 30d, 2w."),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set a namespace's policy (a version either rule keeps is kept; the newest always).
    With neither option, the policy is removed. `retention apply` (or a running
    service, by itself) removes what it no longer keeps."""
    out = Output(as_json)
    with opened(out, db) as store:
        policy = store.set_retention(namespace, keep_last=keep_last, max_age=parse_age(max_age))
    out.emit(
        {"policy": policy},
        lambda: show_policies([policy] if policy else []),
    )


@retention_app.command("show")
def retention_show(
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="One namespace (default: every policy)."),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the retention policies."""
    out = Output(as_json)
    with opened(out, db) as store:
        policies = store.get_retention(namespace)
    out.emit({"policies": policies}, lambda: show_policies(policies))


@retention_app.command("apply")
def retention_apply(
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="One namespace (default: every one with a policy)."),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove now the versions the policies no longer keep, in small transactions
    (writers keep going); shows progress on a terminal."""
    out = Output(as_json)
    status = (
        err_console.status("applying retention…")
        if not out.json and err_console.is_terminal
        else None
    )

    def progress(report: RetentionReport) -> None:
        if status is not None:
            status.update(
                f"applying retention… {report.records} records, "
                f"{report.versions_removed} versions removed"
            )

    with opened(out, db) as store, status or nullcontext():
        report = store.apply_retention(namespace, progress=progress)
    out.emit(
        report,
        lambda: console.print(
            f"{report.namespaces} policies, {report.records} records compacted, "
            f"{report.versions_removed} versions removed",
            highlight=False,
        ),
    )


def main() -> None:
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a long
    # command (serve, lab, retention apply) is waiting, without stopping it.
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    app()


if __name__ == "__main__":
    main()
