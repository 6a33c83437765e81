"""The command line, on a SQLite file (the first-run path) and every backend for demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from revstore.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_put_get_history(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    code, out = run("put", "doc", '{"text": "hi"}', "--db", db)
    assert code == 0, out
    assert json.loads(out)["revision"] == 1
    code, out = run("put", "doc", '{"text": "ho"}', "--db", db, "--author", "ann", "--summary", "s")
    assert code == 0 and json.loads(out)["version"] == 2
    code, out = run("get", "doc", "--db", db)
    assert code == 0 and json.loads(out)["content"] == {"text": "ho"}
    code, out = run("history", "doc", "--db", db)
    assert code == 0 and "ann" in out and '{"text": "hi"}' in out


def test_errors_exit_with_a_code_and_a_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run("get", "missing", "--db", db)[0] == 3
    assert run("put", "doc", "{not json", "--db", db)[0] == 2
    run("put", "doc", "{}", "--db", db)
    code, out = run("put", "doc", '{"a": 1}', "--expected-revision", "5", "--db", db)
    assert code == 4 and "VersionConflict" in out and "Traceback" not in out


def test_append_and_read(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    code, out = run("append", "chat", '{"m": 1}', '{"m": 2}', "-i", "a", "-i", "b", "--db", db)
    assert code == 0, out
    assert json.loads(out)["last_sequence"] == 2
    code, out = run("append", "chat", '{"m": 1}', '{"m": 2}', "-i", "a", "-i", "b", "--db", db)
    assert json.loads(out)["duplicate"] is True
    code, out = run("read", "chat", "--db", db)
    assert code == 0 and '{"m": 2}' in out


def test_demo_checks_pass(backend_url: str) -> None:
    code, out = run("demo", "--seconds", "1", "--writers", "4", "--db", backend_url)
    assert code == 0, out
    assert "FAIL" not in out and "pass" in out


def test_console_script_uses_revstore_url(tmp_path: Path) -> None:
    env = {"REVSTORE_URL": f"sqlite:///{tmp_path / 'env.db'}", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "revstore.cli", "put", "x", "[1, 2]"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env.db").exists()
