"""``revstore lab`` as a user runs it: exit status, output, --json, --report, --compare,
option errors, reproducible seeds, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from revstore.cli import app
from revstore.lab.runner import LabConfig, run

runner = CliRunner()


def lab(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["lab", "--no-live", *args])
    return result.exit_code, result.output


def test_a_clean_run_exits_0_and_writes_json_and_report(sqlite_url: str, tmp_path: Path) -> None:
    out, page = tmp_path / "run.json", tmp_path / "run.html"
    code, text = lab(
        "--db",
        sqlite_url,
        "--duration",
        "1.5",
        "--seed",
        "7",
        "--json",
        str(out),
        "--report",
        str(page),
    )
    assert code == 0, text
    assert (
        "all checks passed" in text and "throughput" in text and "p99" in text and "in ms" in text
    )
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["config"]["seed"] == 7
    assert all(c["passed"] for c in data["checks"]["checks"])
    assert len(data["history"]) == data["summary"]["ops"] + 1  # + the seed write
    assert data["series"]["t"] and data["final_state"]["records"]
    html = page.read_text()
    assert html.count("<svg") == 2 and "Throughput" in html and "Latency" in html
    # Self-contained: no script, no stylesheet or image from elsewhere.
    assert "<script" not in html
    assert "https://" not in html
    assert html.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http://") == 0


def test_compare_shows_the_bug_and_the_fix(sqlite_url: str, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    code, text = lab(
        "--db",
        sqlite_url,
        "--compare",
        "naive,counter",
        "--workload",
        "records",
        "--mix",
        "put=1",
        "--writers",
        "16",
        "--duration",
        "1.5",
        "--json",
        str(out),
    )
    assert code == 1, text  # the naive run has anomalies
    assert "comparison" in text and "ANOMALIES" in text
    naive, counter = json.loads(out.read_text())["runs"]
    assert naive["strategy"] == "naive" and not naive["ok"]
    assert counter["strategy"] == "counter" and counter["ok"]
    assert naive["config"]["seed"] == counter["config"]["seed"]


def test_ops_bound_the_run(sqlite_url: str, tmp_path: Path) -> None:
    out = tmp_path / "ops.json"
    code, text = lab("--db", sqlite_url, "--ops", "40", "--writers", "4", "--json", str(out))
    assert code == 0, text
    assert json.loads(out.read_text())["summary"]["ops"] == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://10.1.2.3:8000"], "--allow-remote"),
        (["--db", "sqlite:///x.db", "--chaos", "kill-workers"], "--processes"),
        (["--db", "sqlite:///x.db", "--chaos", "kill-connections"], "PostgreSQL or MariaDB"),
        (["--db", "sqlite:///x.db", "--mix", "put=1,drop=2"], "unknown op kind"),
        (["--db", "sqlite:///x.db", "--strategy", "magic"], "--strategy must be one of"),
        (["--url", "http://127.0.0.1:1", "--strategy", "lock"], "a service uses its own"),
        (["--db", "sqlite:///x.db", "--compare", "naive"], "two or more"),
        (["--db", "sqlite:///x.db", "--chaos", "restart-db"], "give --processes N"),
        (["--db", "postgresql://u@h/d", "--chaos", "restart-db"], "--server postgresql"),
        (["--url", "http://127.0.0.1:1", "--chaos", "restart-db"], "a server the lab owns"),
        (["--server", "oracle"], "--server must be one of"),
        (["--server", "postgresql", "--db", "sqlite:///x.db"], "give no --db or --url"),
    ],
)
def test_options_that_do_not_make_a_run_exit_2(args: list[str], message: str) -> None:
    code, text = lab(*args)
    assert code == 2
    assert message in " ".join(text.split())


def test_the_same_seed_makes_the_same_choices(sqlite_url: str) -> None:
    def choices(seed: int) -> list[tuple[str, str, int]]:
        result = run(LabConfig(db=sqlite_url, writers=1, ops=40, seed=seed, keys=3))
        ops = sorted((o for o in result.ops if o.client == "w0"), key=lambda o: o.start)
        return [(o.kind, o.key.rsplit("-", 1)[1], len(o.item_ids or [])) for o in ops]

    assert choices(99) == choices(99)
    assert choices(99) != choices(100)


def test_ctrl_c_stops_the_run_and_still_checks(sqlite_url: str, tmp_path: Path) -> None:
    out = tmp_path / "interrupted.json"
    exe = Path(sys.executable).with_name("revstore")
    proc = subprocess.Popen(
        [str(exe), "lab", "--db", sqlite_url, "--duration", "60", "--no-live", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120"},
    )
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # Where it hangs: every thread's stack (faulthandler on SIGUSR1, cli.main).
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError("revstore lab hung after Ctrl-C:\n" + output.decode()) from None
    text = output.decode()
    assert proc.returncode == 130, text
    assert "interrupted" in text and "all checks passed" in text
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and data["summary"]["ops"] > 0
