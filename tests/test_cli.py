"""The command line: every command, for people and with --json, and its exit codes.

Most tests run in-process (typer's CliRunner) on a fresh SQLite file; one runs the real
program in a subprocess; a few run on PostgreSQL and MariaDB to show --db reaches them.
"""

from __future__ import annotations

import inspect
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

import revstore.errors as errors_module
import revstore.failures as failures_module
from revstore import cli
from revstore.cli import EXIT_CODES, app, exit_code, follow
from revstore.errors import (
    AmbiguousCommit,
    ClaimLost,
    Conflict,
    Duplicate,
    DuplicateItem,
    InvalidInput,
    NotFound,
    Retryable,
    RevstoreError,
    SchemaMismatch,
    SequenceConflict,
    Unavailable,
    VersionCompacted,
    VersionConflict,
)
from revstore.schema import SCHEMA_VERSION
from revstore.store import Store

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def invoke(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=input)


def ok(*args: str, input: str | None = None) -> Any:
    """Run a command with --json: exit 0, nothing on stderr, one JSON document on stdout."""
    result = invoke(*args, "--json", input=input)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return json.loads(result.stdout)


def lines(*args: str) -> list[Any]:
    """Run a command with --json --all: JSON Lines on stdout."""
    result = invoke(*args, "--json", "--all")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def human(*args: str, input: str | None = None) -> str:
    result = invoke(*args, input=input)
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(code: int, *args: str, input: str | None = None) -> dict[str, Any]:
    """Run a command with --json that must fail: nothing on stdout, one JSON line on stderr."""
    result = invoke(*args, "--json", input=input)
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    err: dict[str, Any] = json.loads(result.stderr)
    assert err["exit_code"] == code and err["message"]
    return err


# ----------------------------------------------------------------- records


def test_put_get_patch_restore_delete(db: str) -> None:
    rec = ok("put", "doc", '{"text": "hi", "n": 1}', "--db", db, "--author", "ann")
    assert (rec["revision"], rec["version"], rec["created"]) == (1, 1, True)
    out = human("put", "doc", '{"text": "ho", "n": 1}', "--db", db, "--summary", "second")
    assert "revision" in out and "ho" in out and "{" in out
    out = human("put", "[doc]", "{}", "--db", db)
    assert "record [doc] [created]" in out  # ids in titles are never read as markup

    rec = ok("patch", "doc", '{"n": null, "tag": "x"}', "-e", "2", "--db", db)
    assert rec["content"] == {"text": "ho", "tag": "x"} and rec["version"] == 3
    rec = ok("patch", "doc", '{"tag": "y"}', "--no-version", "--author", "bob", "--db", db)
    assert (rec["revision"], rec["version"]) == (4, 3)
    assert "patched" in human("patch", "doc", '{"tag": "z"}', "--db", db)

    assert ok("get", "doc", "--db", db)["content"] == {"text": "ho", "tag": "z"}
    assert "tag" in human("get", "doc", "--db", db)
    v1 = ok("get", "doc", "--version", "1", "--db", db)
    assert v1["content"] == {"text": "hi", "n": 1} and v1["author"] == "ann"
    assert ok("get-version", "doc", "2", "--db", db)["summary"] == "second"
    assert "second" in human("get-version", "doc", "2", "--db", db)
    assert "ann" in human("get", "doc", "--version", "1", "--db", db)

    rec = ok("restore", "doc", "1", "-e", "5", "--author", "cy", "--db", db)
    assert rec["content"] == {"text": "hi", "n": 1} and rec["revision"] == 6
    last = ok("history", "doc", "--after", "4", "--db", db)["versions"][-1]
    assert last["summary"] == "restore version 1" and last["author"] == "cy"
    assert "restored version 2" in human("restore", "doc", "2", "--summary", "back", "--db", db)

    gone = ok("delete", "doc", "-e", "7", "--db", db)
    assert gone["revision"] == 8
    fails(3, "get", "doc", "--db", db)
    ok("put", "other", "1", "--db", db)
    assert "deleted other" in human("delete", "other", "--db", db)


def test_diff(db: str) -> None:
    ok("put", "doc", '{"a": 1, "b": [1]}', "--db", db)
    ok("put", "doc", '{"a": 2, "c": "[bold]x"}', "--db", db)
    ops = ok("diff", "doc", "1", "2", "--db", db)
    assert isinstance(ops, list)
    assert {"op": "replace", "path": "/a", "value": 2} in ops
    assert {"op": "remove", "path": "/b"} in ops
    out = human("diff", "doc", "1", "2", "--db", db)
    assert "replace" in out and "/a" in out and "[bold]x" in out  # not read as markup
    assert ok("diff", "doc", "2", "2", "--db", db) == []
    assert "no difference" in human("diff", "doc", "1", "1", "--db", db)


def test_history_pages_and_all(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(7):
        ok("put", "doc", json.dumps({"n": n, "markup": "[red]x[/red]"}), "--db", db)
    page = ok("history", "doc", "--limit", "3", "--db", db)
    assert [v["version"] for v in page["versions"]] == [1, 2, 3] and page["next_after"] == 3
    page = ok("history", "doc", "--after", "6", "--limit", "3", "--db", db)
    assert [v["version"] for v in page["versions"]] == [7] and page["next_after"] is None

    out = human("history", "doc", "--limit", "2", "--db", db)
    assert "more: --after 2" in out and "[red]x[/red]" in out

    # --all follows next_after to the end; progress goes to stderr, never to stdout.
    monkeypatch.setattr(cli, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(cli, "PROGRESS_EVERY", 0.0)
    result = invoke("history", "doc", "--limit", "3", "--all", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    versions = [json.loads(line)["version"] for line in result.stdout.splitlines()]
    assert versions == list(range(1, 8))
    assert "history doc: 3 versions so far" in result.stderr
    assert lines("history", "doc", "--after", "5", "--db", db)[0]["version"] == 6
    out = human("history", "doc", "--limit", "2", "--all", "--db", db)
    assert "more:" not in out and out.count("[red]x[/red]") == 7


@dataclass
class FakePage:
    items: list[int]
    next_after: int | None

    def __iter__(self) -> Any:
        return iter(self.items)


def test_all_follows_next_after_not_the_item_count() -> None:
    # A store may end a page early (a byte bound): a short page with a next_after is
    # not the end, and a full page with none is.
    data = list(range(1, 11))
    asked: list[int] = []

    def fetch(after: int) -> FakePage:
        asked.append(after)
        items = [n for n in data if n > after][:2]  # short pages for a limit of 3
        return FakePage(items, items[-1] if items[-1] < 10 else None)

    got = [n for page in follow(fetch, 0, True, "t", "items") for n in page]
    assert got == data and asked == [0, 2, 4, 6, 8]
    assert [len(p.items) for p in follow(fetch, 0, False, "t", "items")] == [2]

    def stuck(after: int) -> FakePage:
        return FakePage([1], after)

    with pytest.raises(RuntimeError, match="does not advance"):
        list(follow(stuck, 5, True, "t", "items"))


def test_list_pages_prefix_and_all(db: str) -> None:
    for rid in ["a-1", "a-2", "a-3", "b-1", "a-4"]:
        ok("put", rid, "{}", "--db", db)
    ok("delete", "a-3", "--db", db)
    page = ok("list", "--prefix", "a-", "--limit", "2", "--db", db)
    assert [r["id"] for r in page["records"]] == ["a-1", "a-2"] and page["next_after"] == "a-2"
    page = ok("list", "--prefix", "a-", "--after", "a-2", "--db", db)
    assert [r["id"] for r in page["records"]] == ["a-4"] and page["next_after"] is None
    assert [r["id"] for r in lines("list", "--limit", "1", "--db", db)] == [
        "a-1",
        "a-2",
        "a-4",
        "b-1",
    ]
    out = human("list", "--limit", "3", "--db", db)
    assert "a-1" in out and "b-1" not in out and "more: --after a-4" in out
    assert ok("list", "-n", "elsewhere", "--db", db) == {"records": [], "next_after": None}


# ----------------------------------------------------------------- streams


def test_streams_pages_prefix_and_all(db: str) -> None:
    for sid, n in [("chat-1", 2), ("chat-2", 1), ("log", 3), ("chat-3", 1)]:
        ok("append", sid, *(["{}"] * n), "--db", db)
    page = ok("streams", "--prefix", "chat-", "--limit", "2", "--db", db)
    assert [(s["id"], s["item_count"]) for s in page["streams"]] == [("chat-1", 2), ("chat-2", 1)]
    assert page["next_after"] == "chat-2"
    page = ok("streams", "--prefix", "chat-", "--after", "chat-2", "--db", db)
    assert [s["id"] for s in page["streams"]] == ["chat-3"] and page["next_after"] is None
    assert [s["id"] for s in lines("streams", "--limit", "1", "--db", db)] == [
        "chat-1",
        "chat-2",
        "chat-3",
        "log",
    ]
    out = human("streams", "--limit", "3", "--db", db)
    assert "chat-1" in out and "log" not in out and "more: --after chat-3" in out
    assert ok("streams", "-n", "elsewhere", "--db", db) == {"streams": [], "next_after": None}


def test_append_read_stream_info(db: str) -> None:
    res = ok("append", "chat", '{"m": 1}', '{"m": 2}', "-i", "a", "-i", "b", "--db", db)
    assert (res["first_sequence"], res["last_sequence"], res["duplicate"]) == (1, 2, False)
    again = ok("append", "chat", '{"m": 1}', '{"m": 2}', "-i", "a", "-i", "b", "--db", db)
    assert again["duplicate"] is True and again["last_sequence"] == 2
    assert "nothing written" in human(
        "append", "chat", '{"m": 1}', '{"m": 2}', "-i", "a", "-i", "b", "--db", db
    )
    out = human("append", "chat", '{"m": "[b]3"}', "-e", "2", "--db", db)
    assert "sequences 3..3" in out and "[b]3" in out

    page = ok("read", "chat", "--limit", "2", "--db", db)
    assert [i["sequence"] for i in page["items"]] == [1, 2] and page["next_after"] == 2
    assert [i["body"] for i in lines("read", "chat", "--limit", "1", "--db", db)] == [
        {"m": 1},
        {"m": 2},
        {"m": "[b]3"},
    ]
    assert [i["sequence"] for i in lines("read", "chat", "--after", "1", "--db", db)] == [2, 3]
    out = human("read", "chat", "--limit", "1", "--db", db)
    assert '{"m": 1}' in out and "more: --after 1" in out
    assert "more" not in human("read", "chat", "--all", "--limit", "1", "--db", db)

    info = ok("stream-info", "chat", "--db", db)
    assert (info["last_sequence"], info["item_count"], info["id"]) == (3, 3, "chat")
    assert "last_sequence" in human("stream-info", "chat", "--db", db)
    fails(3, "stream-info", "chat", "-n", "other", "--db", db)


# ----------------------------------------------------------------- JSON input


def test_json_arguments_from_stdin_and_files(db: str, tmp_path: Path) -> None:
    assert ok("put", "doc", "-", "--db", db, input='{"from": "stdin"}')["content"] == {
        "from": "stdin"
    }
    body = tmp_path / "body.json"
    body.write_text('{"from": "file", "s": "é"}', encoding="utf-8")
    assert ok("put", "doc", f"@{body}", "--db", db)["content"] == {"from": "file", "s": "é"}
    patch = tmp_path / "patch.json"
    patch.write_text('{"s": null}', encoding="utf-8")
    assert ok("patch", "doc", f"@{patch}", "--db", db)["content"] == {"from": "file"}
    res = ok("append", "s", f"@{body}", "-", "--db", db, input="[1]")
    assert [i["body"] for i in res["items"]] == [{"from": "file", "s": "é"}, [1]]

    err = fails(8, "put", "doc", f"@{tmp_path / 'missing.json'}", "--db", db)
    assert err["error"] == "InvalidInput" and "missing.json" in err["message"]
    err = fails(8, "append", "s", "-", "-", "--db", db, input="1")
    assert "stdin" in err["message"]
    fails(8, "patch", "doc", "{nope", "--db", db)


# ----------------------------------------------------------------- errors


def test_each_error_kind_exits_with_its_code(db: str, tmp_path: Path) -> None:
    ok("put", "doc", '{"a": 1}', "--db", db)
    ok("append", "s", "1", "-i", "x", "--db", db)

    # 2: usage, found by the command line parser before anything runs.
    for args in (["put", "doc"], ["get", "doc", "--bogus"], ["history", "doc", "--limit", "x"]):
        result = invoke(*args, "--db", db)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
    assert invoke("no-such-command").exit_code == 2

    # 3: not found.
    for args in (
        ["get", "nope"],
        ["get", "doc", "--version", "9"],
        ["get-version", "doc", "9"],
        ["history", "nope"],
        ["diff", "doc", "1", "9"],
        ["restore", "doc", "9"],
        ["patch", "nope", "{}"],
        ["delete", "nope"],
        ["stream-info", "nope"],
    ):
        assert fails(3, *args, "--db", db)["error"] == "NotFound"

    # 4: conflicts, carrying what a script needs to recover.
    err = fails(4, "put", "doc", "{}", "-e", "0", "--db", db)
    assert err["error"] == "VersionConflict" and err["current_revision"] == 1
    assert err["current"]["content"] == {"a": 1}
    for args in (["patch", "doc", "{}", "-e", "5"], ["delete", "doc", "-e", "5"]):
        assert fails(4, *args, "--db", db)["current_revision"] == 1
    assert fails(4, "restore", "doc", "1", "-e", "3", "--db", db)["current_version"] == 1
    err = fails(4, "append", "s", "2", "-e", "0", "--db", db)
    assert err["error"] == "SequenceConflict" and err["current_sequence"] == 1
    err = fails(4, "append", "s", "2", "-i", "x", "--db", db)
    assert err["error"] == "DuplicateItem" and err["item_ids"] == ["x"]
    result = invoke("put", "doc", "{}", "-e", "7", "--db", db)
    assert result.exit_code == 4 and "VersionConflict" in result.stderr
    assert "current_revision: 1" in result.stderr and "Traceback" not in result.output
    result = invoke("append", "s", "2", "-e", "5", "--db", db)
    assert result.exit_code == 4 and "current_sequence: 1" in result.stderr

    # 5: unavailable (a SQLite file that cannot be opened).
    gone = f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}"
    assert fails(5, "get", "doc", "--db", gone)["error"] == "Unavailable"
    assert invoke("list", "--db", gone).exit_code == 5

    # 8: invalid input, rejected by revstore (not by the parser).
    for args in (
        ["put", "doc", "{bad"],
        ["put", "x" * 300, "{}"],
        ["history", "doc", "--limit", "0"],
        ["read", "s", "--limit", "0"],
        ["list", "--prefix", "p\x01"],
        ["get-version", "doc", "0"],
        ["put", "doc", "{}", "-e", "-1"],
        ["append", "s", "1", "2", "-i", "only-one"],
    ):
        assert fails(8, *args, "--db", db)["error"] == "InvalidInput", args
    assert invoke("put", "doc", "{bad", "--db", db).exit_code == 8


def test_schema_mismatch_exits_7(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    with Store(f"sqlite:///{path}") as store:
        store.create_schema()
    # Our own throwaway file: pretend a newer release upgraded it.
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE revstore_schema SET version = 99")
    conn.close()
    err = fails(7, "get", "doc", "--db", f"sqlite:///{path}")
    assert err["error"] == "SchemaMismatch" and (err["found"], err["supported"]) == (
        99,
        SCHEMA_VERSION,
    )
    assert invoke("migrate", "--db", f"sqlite:///{path}").exit_code == 7


SAMPLES: dict[type[RevstoreError], RevstoreError] = {
    RevstoreError: RevstoreError("boom"),
    InvalidInput: InvalidInput("bad"),
    NotFound: NotFound("gone"),
    VersionCompacted: VersionCompacted("removed", 5),
    Conflict: Conflict("no"),
    VersionConflict: VersionConflict("stale", None),
    SequenceConflict: SequenceConflict("stale", 7),
    DuplicateItem: DuplicateItem("dup", ["a"]),
    ClaimLost: ClaimLost("lost"),
    Unavailable: Unavailable("down", retry_after=2.5),
    AmbiguousCommit: AmbiguousCommit("maybe"),
    SchemaMismatch: SchemaMismatch(9, 2),
    Retryable: Retryable("busy"),
    Duplicate: Duplicate("race"),
}
# Restated with literal numbers on purpose, not derived from cli.EXIT_CODES: the codes
# are a contract with scripts (docs/cli.md), so a change to that table must fail here.
EXPECTED = {
    RevstoreError: 1,
    InvalidInput: 8,
    NotFound: 3,
    VersionCompacted: 9,
    Conflict: 4,
    VersionConflict: 4,
    SequenceConflict: 4,
    DuplicateItem: 4,
    ClaimLost: 4,
    Unavailable: 5,
    AmbiguousCommit: 6,
    SchemaMismatch: 7,
    Retryable: 5,
    Duplicate: 5,
}


def test_every_error_class_is_mapped_deliberately() -> None:
    classes = {
        obj
        for obj in vars(errors_module).values()
        if inspect.isclass(obj) and issubclass(obj, RevstoreError)
    }
    # The internal failure categories (revstore.failures) exit as their public names do.
    classes |= {Retryable, Duplicate}
    assert classes == set(EXIT_CODES), "map each error class to an exit code in cli.EXIT_CODES"
    assert classes == set(SAMPLES) == set(EXPECTED)
    assert {kind: exit_code(SAMPLES[kind]) for kind in classes} == EXPECTED
    categories = [
        obj
        for obj in vars(failures_module).values()
        if inspect.isclass(obj) and issubclass(obj, Retryable)
    ]
    assert len(categories) >= 4
    assert all(exit_code(kind("transient")) == 5 for kind in categories)


@pytest.mark.parametrize("kind", list(SAMPLES), ids=lambda k: k.__name__)
def test_errors_that_are_hard_to_provoke_still_exit_with_their_code(
    kind: type[RevstoreError], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AmbiguousCommit needs a connection cut during COMMIT (the restart tests do that);
    # here the error comes from the Store method itself to check only the mapping.
    def raise_it(*args: object, **kwargs: object) -> None:
        raise SAMPLES[kind]

    monkeypatch.setattr(Store, "get", raise_it)
    err = fails(EXPECTED[kind], "get", "doc", "--db", db)
    assert err["error"] == kind.__name__
    if kind is AmbiguousCommit:
        assert err["retry_after"] == 1.0
    result = invoke("get", "doc", "--db", db)
    assert result.exit_code == EXPECTED[kind] and kind.__name__ in result.stderr


def test_ctrl_c_exits_130(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "history", interrupted)
    result = invoke("history", "doc", "--all", "--db", db)
    assert result.exit_code == 130 and "interrupted" in result.stderr


def test_exits_inside_a_command_pass_through(db: str) -> None:
    with pytest.raises(typer.Exit) as info, cli.opened(cli.Output(True), db):
        raise typer.Exit(3)
    assert info.value.exit_code == 3


def test_a_bug_exits_1_with_a_json_error(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(Store, "get", broken)
    assert fails(1, "get", "doc", "--db", db)["error"] == "KeyError"
    result = invoke("get", "doc", "--db", db)
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


# ----------------------------------------------------------------- every command


def commands() -> dict[str, Any]:
    """Every command by its full name, sub-commands of groups (``keys create``) included."""
    found: dict[str, Any] = {}

    # Duck-typed: typer >= 0.27 carries its own copy of click's classes.
    def walk(prefix: str, group: Any) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(f"{prefix}{name} ", command)
            else:
                found[prefix + name] = command

    walk("", typer.main.get_command(app))
    assert {"put", "list", "history", "stream-info", "get-version"} <= set(found)
    return found


def options(command: Any) -> set[str]:
    return {opt for p in command.params for opt in getattr(p, "opts", [])}


def test_every_command_takes_json_db_and_namespace() -> None:
    # serve runs a server (JSON logs on stderr); lab's --json takes a file (docs/lab.md).
    for name, command in commands().items():
        opts = options(command)
        assert "--db" in opts, name
        if name not in {"serve", "lab"}:
            assert "--json" in opts, name
        # adopt works on the user's own tables, which have no namespace.
        if name not in {"serve", "lab", "demo", "migrate", "adopt", "keys revoke"}:
            assert {"--namespace", "-n"} <= opts, name
    documented = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    text = documented.read_text(encoding="utf-8")
    for name in commands():
        assert f"revstore {name}" in text, f"docs/cli.md does not show {name}"
    for code in set(EXIT_CODES.values()) | {0, 2}:
        assert f"| {code} |" in text


def test_help_lists_exit_codes() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Exit codes" in result.stdout
    for word in ("not found", "conflict", "unavailable", "ambiguous", "schema", "invalid"):
        assert word in result.stdout


def test_namespaces_keep_records_apart(db: str) -> None:
    ok("put", "doc", '{"ns": "a"}', "-n", "a", "--db", db)
    ok("put", "doc", '{"ns": "b"}', "--namespace", "b", "--db", db)
    assert ok("get", "doc", "-n", "a", "--db", db)["content"] == {"ns": "a"}
    assert ok("history", "doc", "-n", "b", "--db", db)["versions"][0]["content"] == {"ns": "b"}
    fails(3, "get", "doc", "--db", db)


def test_migrate(db: str) -> None:
    assert ok("migrate", "--db", db) == {"schema_version": SCHEMA_VERSION}
    assert f"schema version {SCHEMA_VERSION}" in human("migrate", "--db", db)


def test_demo_json(db: str) -> None:
    result = invoke("demo", "--seconds", "0.5", "--writers", "2", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["backend"] == "sqlite"
    assert "pass" in result.stderr  # the run itself is shown on stderr


def test_demo_checks_pass(backend_url: str) -> None:
    result = invoke("demo", "--seconds", "1", "--writers", "4", "--db", backend_url)
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.stdout and "pass" in result.stdout


# ----------------------------------------------------------------- the real program


SCRIPT = Path(sys.executable).parent / "revstore"
"""The console script, when revstore is installed in this interpreter's environment."""


def run_program(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # The installed console script when there is one (as users run it), else the module.
    program = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "revstore.cli"]
    cmd = [*program, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_program_in_a_subprocess_uses_revstore_url(tmp_path: Path) -> None:
    env = {"REVSTORE_URL": f"sqlite:///{tmp_path / 'env.db'}", "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:  # run the sources under test, not an installed copy
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    done = run_program(env, "put", "x", "[1, 2]", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revision"] == 1 and done.stderr == ""
    assert (tmp_path / "env.db").exists()
    done = run_program(env, "put", "x", "[3]", "-e", "0", "--json")
    assert done.returncode == 4 and done.stdout == ""
    assert json.loads(done.stderr)["current_revision"] == 1
    done = run_program(env, "history", "x", "--all", "--json")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    done = run_program(env, "get", "missing")
    assert done.returncode == 3 and "NotFound" in done.stderr and done.stdout == ""
    done = subprocess.run(
        [sys.executable, "-m", "revstore.cli", "read", "nope", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3 and json.loads(done.stderr)["error"] == "NotFound"


# ----------------------------------------------------------------- server backends


@pytest.mark.parametrize("server", ["postgresql", "mysql"])
def test_db_option_reaches_servers(server: str, server_url: Callable[[str], str], ns: str) -> None:
    url = server_url(server)
    assert ok("put", "doc", '{"a": 1}', "-n", ns, "--db", url)["revision"] == 1
    assert ok("patch", "doc", '{"b": 2}', "-e", "1", "-n", ns, "--db", url)["version"] == 2
    assert fails(4, "put", "doc", "{}", "-e", "1", "-n", ns, "--db", url)["current_revision"] == 2
    versions = lines("history", "doc", "--limit", "1", "-n", ns, "--db", url)
    assert [v["version"] for v in versions] == [1, 2]
    assert ok("diff", "doc", "1", "2", "-n", ns, "--db", url) == [
        {"op": "add", "path": "/b", "value": 2}
    ]
    ok("append", "s", "1", "2", "-n", ns, "--db", url)
    assert ok("stream-info", "s", "-n", ns, "--db", url)["last_sequence"] == 2
    assert [r["id"] for r in lines("list", "-n", ns, "--db", url)] == ["doc"]
