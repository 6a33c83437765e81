"""``revstore retention set|show|apply`` on every backend, and the exit code of a
version retention removed (9)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from revstore import Store
from revstore.cli import EXIT_COMPACTED, EXIT_INVALID, app, parse_age

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(*args: str) -> Any:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_set_show_apply_and_a_compacted_version(backend_url: str, ns: str) -> None:
    with Store(backend_url) as store:
        for k in range(6):
            store.put("doc", {"k": k}, namespace=ns)
    made = ok(
        "retention", "set", "-n", ns, "--keep-last", "2", "--max-age", "30d", "--db", backend_url
    )
    assert made["policy"]["keep_last"] == 2
    assert made["policy"]["max_age_seconds"] == 30 * 86400
    shown = ok("retention", "show", "-n", ns, "--db", backend_url)
    assert [p["namespace"] for p in shown["policies"]] == [ns]
    # Every version is younger than 30 days: the age rule keeps them all.
    assert ok("retention", "apply", "-n", ns, "--db", backend_url)["versions_removed"] == 0
    ok("retention", "set", "-n", ns, "--keep-last", "2", "--db", backend_url)
    report = ok("retention", "apply", "-n", ns, "--db", backend_url)
    assert (report["records"], report["versions_removed"]) == (1, 4)
    gone = invoke("get-version", "doc", "1", "--namespace", ns, "--db", backend_url, "--json")
    assert gone.exit_code == EXIT_COMPACTED, gone.output
    assert "oldest kept is 5" in gone.stderr
    assert ok("get-version", "doc", "5", "--namespace", ns, "--db", backend_url)["version"] == 5
    human = invoke("retention", "show", "-n", ns, "--db", backend_url)
    assert human.exit_code == 0 and ns in human.stdout
    removed = ok("retention", "set", "-n", ns, "--db", backend_url)
    assert removed["policy"] is None
    assert ok("retention", "show", "-n", ns, "--db", backend_url)["policies"] == []


@pytest.mark.parametrize(
    "args",
    [
        ["--keep-last", "0"],
        ["--max-age", "ten days"],
        ["--max-age", "0"],
        ["--max-age", "²d"],
        ["--max-age", "99999999999999d"],
    ],
)
def test_bad_policies_exit_8(sqlite_url: str, ns: str, args: list[str]) -> None:
    result = invoke("retention", "set", "-n", ns, *args, "--db", sqlite_url, "--json")
    assert result.exit_code == EXIT_INVALID, result.output
    assert json.loads(result.stderr)["exit_code"] == EXIT_INVALID


def test_ages_read_as_seconds() -> None:
    assert [parse_age(a) for a in ("90", "90s", "15m", "12h", "30d", "2w", None)] == [
        90,
        90,
        900,
        43200,
        2592000,
        1209600,
        None,
    ]
