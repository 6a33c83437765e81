"""revstore.sqlalchemy.adopt: a populated legacy table (made without the mixin, rows
inserted with plain SQL) becomes a Versioned model's table, with each row as version 1."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Column, Integer, MetaData, String, Table, func, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner
from versioned_models import Models, make_engine, make_models

import revstore.sqlalchemy as rs
from revstore import InvalidInput, NotFound
from revstore.cli import EXIT_INVALID, EXIT_NOT_FOUND, app

ROWS = 23
TAGS = ("alpha", "beta", "gamma")


def legacy_prompt_table(models: Models) -> Table:
    """The prompt table as the application had it before revstore: no numbers."""
    return Table(
        models.Prompt.__tablename__,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("title", String(200)),
        Column("body_text", String(2000)),
    )


def expected_tags(i: int) -> list[int]:
    # Row i carries the tags whose index divides it: some none, some several.
    return [t + 1 for t in range(len(TAGS)) if i % (t + 2) == 0]


@pytest.fixture
def models() -> Models:
    return make_models()


@pytest.fixture
def legacy(backend_url: str, models: Models) -> Iterator[Engine]:
    """The legacy tables, filled with plain SQL."""
    engine = make_engine(backend_url)
    legacy_prompt_table(models).create(engine)
    tag, prompt_tags = (
        models.Tag.__table__,
        models.metadata.tables[f"rsa_prompt_tags_{models.suffix}"],
    )
    models.metadata.create_all(engine, tables=[tag, prompt_tags])
    prompts = models.Prompt.__tablename__
    with engine.begin() as conn:
        for n, name in enumerate(TAGS, start=1):
            conn.execute(
                text(f"INSERT INTO {tag.name} (id, name) VALUES (:i, :n)"), {"i": n, "n": name}
            )
        for i in range(1, ROWS + 1):
            conn.execute(
                text(f"INSERT INTO {prompts} (id, title, body_text) VALUES (:i, :t, :b)"),
                {"i": i, "t": f"title {i}", "b": None if i % 5 == 0 else f"body {i}"},
            )
            for t in expected_tags(i):
                conn.execute(
                    text(f"INSERT INTO {prompt_tags.name} (prompt_id, tag_id) VALUES (:p, :t)"),
                    {"p": i, "t": t},
                )
    yield engine
    models.metadata.drop_all(engine)
    engine.dispose()


def count_snapshots(engine: Engine, models: Models) -> int:
    hist = models.Prompt.__versioned__.history
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(hist)).scalar_one())


def check_adopted(engine: Engine, models: Models) -> None:
    """Every legacy row is at revision 1 / version 1 with one snapshot of its content."""
    with Session(engine) as s:
        prompts = s.scalars(select(models.Prompt).order_by(models.Prompt.id)).all()
        assert [p.id for p in prompts] == list(range(1, ROWS + 1))
        for p in prompts:
            assert (p.revision, p.version) == (1, 1)
            (snap,) = rs.history(s, p)
            assert (snap.version, snap.revision, snap.summary) == (1, 1, "adopted")
            assert snap.title == f"title {p.id}"
            assert snap.body == (None if p.id % 5 == 0 else f"body {p.id}")
            assert snap.tags == expected_tags(p.id)
    assert count_snapshots(engine, models) == ROWS


def check_writes_continue(engine: Engine, models: Models) -> None:
    """The model's normal writes go on from there: version 2, then new rows at 1."""
    with Session(engine) as s:
        p = s.get(models.Prompt, 3)
        assert p is not None
        p.title = "edited"
        p.expected_revision = 1
        s.commit()
        assert (p.revision, p.version) == (2, 2)
        assert [(h.version, h.title) for h in rs.history(s, p)] == [(1, "title 3"), (2, "edited")]
        assert rs.diff(s, p, 1, 2) == [{"op": "replace", "path": "/title", "value": "edited"}]
        # Restoring the adopted version brings its columns and tags back as version 3.
        p.tags = []
        s.commit()
        rs.restore(s, p, 1)
        s.commit()
        assert (p.title, [t.id for t in p.tags], p.version) == ("title 3", expected_tags(3), 4)
        fresh = models.Prompt(id=ROWS + 1, title="new")
        s.add(fresh)
        s.commit()
        assert (fresh.revision, fresh.version) == (1, 1)


def test_adopt_a_populated_legacy_table(legacy: Engine, models: Models) -> None:
    seen: list[rs.AdoptProgress] = []
    result = rs.adopt(legacy, models.Prompt, batch_size=7, progress=seen.append)
    assert result.columns_added == ["revision", "version"]
    assert result.history_created
    assert (result.rows, result.snapshots) == (ROWS, ROWS)
    # One report per batch of 7, the last one complete.
    assert [p.rows_seen for p in seen] == [7, 14, 21, 23]
    assert all(p.rows_total == ROWS for p in seen)
    assert seen[-1].snapshots == ROWS
    cols = {c["name"]: c for c in inspect(legacy).get_columns(models.Prompt.__tablename__)}
    assert not cols["revision"]["nullable"] and not cols["version"]["nullable"]
    check_adopted(legacy, models)

    # Re-running does nothing more: no column, no table, no snapshot.
    again = rs.adopt(legacy, models.Prompt, batch_size=7)
    assert (again.columns_added, again.history_created) == ([], False)
    assert (again.rows, again.snapshots) == (ROWS, 0)
    assert count_snapshots(legacy, models) == ROWS

    check_writes_continue(legacy, models)
    # Still a no-op after the model wrote: the rows it wrote have their history.
    before = count_snapshots(legacy, models)
    assert rs.adopt(legacy, models.Prompt).snapshots == 0
    assert count_snapshots(legacy, models) == before


def test_an_interrupted_adoption_completes_on_rerun(legacy: Engine, models: Models) -> None:
    class Stop(Exception):
        pass

    def stop_after_two(p: rs.AdoptProgress) -> None:
        if p.rows_seen >= 10:
            raise Stop

    with pytest.raises(Stop):
        rs.adopt(legacy, models.Prompt, batch_size=5, progress=stop_after_two)
    # The batches before the interruption were committed.
    assert count_snapshots(legacy, models) == 10
    result = rs.adopt(legacy, models.Prompt, batch_size=5)
    assert result.snapshots == ROWS - 10
    check_adopted(legacy, models)


def test_the_alembic_migration_of_the_docs(legacy: Engine, models: Models) -> None:
    """The migration docs/sqlalchemy.md shows: op.add_column, op.create_table, then
    adopt_rows on op.get_bind(), all in the migration's one transaction."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    table = models.Prompt.__tablename__
    hist = models.Prompt.__versioned__.history
    with legacy.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        for name in ("revision", "version"):
            op.add_column(
                table, sa.Column(name, sa.BigInteger(), nullable=False, server_default="1")
            )
            if conn.dialect.name != "sqlite":  # SQLite cannot drop a default in place
                op.alter_column(table, name, server_default=None)
        op.create_table(hist.name, *(c._copy() for c in hist.columns))
        result = rs.adopt_rows(op.get_bind(), models.Prompt, batch_size=10)
        assert result.snapshots == ROWS
    check_adopted(legacy, models)
    assert rs.adopt_rows(legacy, models.Prompt).snapshots == 0
    check_writes_continue(legacy, models)


def test_bad_input_is_refused_clearly(backend_url: str, models: Models) -> None:
    engine = make_engine(backend_url)
    try:
        with pytest.raises(NotFound, match="does not exist"):
            rs.adopt(engine, models.Prompt)
        with pytest.raises(InvalidInput, match="not a mapped Versioned model"):
            rs.adopt(engine, models.Tag)
        with pytest.raises(InvalidInput, match="batch_size"):
            rs.adopt(engine, models.Prompt, batch_size=0)
        partial = Table(
            models.Prompt.__tablename__, MetaData(), Column("id", Integer, primary_key=True)
        )
        partial.create(engine)
        try:
            with pytest.raises(InvalidInput, match="body_text, title"):
                rs.adopt(engine, models.Prompt)
            with pytest.raises(InvalidInput, match="no column"):
                rs.adopt_rows(engine, models.Prompt)
        finally:
            partial.drop(engine)
    finally:
        engine.dispose()


# ----------------------------------------------------------------- the command


CLI_MODEL = """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import revstore.sqlalchemy as rs


class Base(DeclarativeBase):
    pass


class Page(rs.Versioned, Base):
    __tablename__ = "{table}"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))
"""


@pytest.fixture
def cli_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: Models) -> Any:
    module = f"adopt_cli_{models.suffix}"
    (tmp_path / f"{module}.py").write_text(CLI_MODEL.format(table=f"rsa_page_{models.suffix}"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


def test_the_adopt_command(backend_url: str, cli_model: str, models: Models) -> None:
    table = f"rsa_page_{models.suffix}"
    engine = make_engine(backend_url)
    legacy = Table(
        table, MetaData(), Column("id", Integer, primary_key=True), Column("body", String(100))
    )
    legacy.create(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(f"INSERT INTO {table} (id, body) VALUES (:i, :b)"),
                [{"i": i, "b": f"page {i}"} for i in range(1, 31)],
            )
        runner = CliRunner()
        args = ["adopt", "--db", backend_url, "--model", f"{cli_model}:Page", "--json"]
        first = runner.invoke(app, [*args, "--batch-size", "8"])
        assert first.exit_code == 0, first.output
        doc = json.loads(first.stdout)
        assert doc["table"] == table and doc["history_table"] == f"{table}_versions"
        assert doc["columns_added"] == ["revision", "version"]
        assert (doc["history_created"], doc["rows"], doc["snapshots"]) == (True, 30, 30)
        second = runner.invoke(app, args)
        assert second.exit_code == 0, second.output
        assert json.loads(second.stdout)["snapshots"] == 0
        human = runner.invoke(app, args[:-1])
        assert human.exit_code == 0 and "0 snapshots" in human.stdout, human.output

        bad = runner.invoke(app, ["adopt", "--db", backend_url, "--model", "nocolon", "--json"])
        assert bad.exit_code == 2
        missing = runner.invoke(app, ["adopt", "--db", backend_url, "--model", "nosuch_mod:X"])
        assert missing.exit_code == 2
        not_versioned = runner.invoke(
            app, ["adopt", "--db", backend_url, "--model", f"{cli_model}:Base", "--json"]
        )
        assert not_versioned.exit_code == EXIT_INVALID
        assert json.loads(not_versioned.stderr)["error"] == "InvalidInput"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}_versions"))
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def test_the_adopt_command_on_a_missing_table(sqlite_url: str, cli_model: str) -> None:
    result = CliRunner().invoke(
        app, ["adopt", "--db", sqlite_url, "--model", f"{cli_model}:Page", "--json"]
    )
    assert result.exit_code == EXIT_NOT_FOUND, result.output
    assert "does not exist" in json.loads(result.stderr)["message"]
