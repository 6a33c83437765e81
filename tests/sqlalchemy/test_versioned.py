"""revstore.sqlalchemy.Versioned on the user's own models (sync Session), on every backend."""

from __future__ import annotations

import re
import sys
import threading
import types
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, delete, func, insert, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from versioned_models import Models, process_writer, write_many

import revstore
import revstore.sqlalchemy as rs
from revstore import InvalidInput, NotFound


def count_versions(engine: Engine, models: Models) -> int:
    hist = models.Prompt.__versioned__.history
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(hist)).scalar_one())


def new_prompt(engine: Engine, models: Models, **values: Any) -> int:
    with Session(engine) as s:
        p = models.Prompt(**{"title": "first", **values})
        s.add(p)
        s.commit()
        return int(p.id)


def test_history_table_is_on_the_models_metadata(engine: Engine, models: Models) -> None:
    hist = models.Prompt.__versioned__.history
    assert hist.name == models.Prompt.__tablename__ + "_versions"
    assert hist.metadata is models.metadata
    assert {c.name for c in hist.primary_key.columns} == {"id", "version"}
    assert {"title", "body_text", "revision", "author", "summary", "created_at"} <= set(
        hist.c.keys()
    )
    assert "content_hash" in hist.c
    table = models.Prompt.__table__
    assert {c.name for c in table.c} == {"id", "title", "body_text", "revision", "version"}
    assert inspect(engine).has_table(hist.name)


def test_insert_and_updates_take_consecutive_numbers(engine: Engine, models: Models) -> None:
    with Session(engine) as s:
        p = models.Prompt(title="a", body="x")
        s.add(p)
        s.commit()
        assert (p.revision, p.version) == (1, 1)
        for i, title in enumerate(["b", "c", "d"], start=2):
            p.title = title
            s.commit()
            assert (p.revision, p.version) == (i, i)
        snaps = rs.history(s, p)
    assert [(h.version, h.revision, h.title, h.body) for h in snaps] == [
        (1, 1, "a", "x"),
        (2, 2, "b", "x"),
        (3, 3, "c", "x"),
        (4, 4, "d", "x"),
    ]
    assert all(h.created_at.tzinfo is not None for h in snaps)
    assert len({h.content_hash for h in snaps}) == 4


def test_unchanged_columns_write_nothing(engine: Engine, models: Models) -> None:
    pid = new_prompt(engine, models, body="x")
    with Session(engine) as s:
        p = s.get(models.Prompt, pid)
        p.title = "first"  # the value it has
        p.body = "x"
        s.commit()
        assert (p.revision, p.version) == (1, 1)
        p.body = "y"
        p.body = "x"  # back to the loaded value before the flush: no net change
        s.commit()
        assert (p.revision, p.version) == (1, 1)
    assert count_versions(engine, models) == 1


def test_numbers_are_not_set_by_hand(engine: Engine, models: Models) -> None:
    pid = new_prompt(engine, models)
    with Session(engine) as s:
        p = s.get(models.Prompt, pid)
        p.revision = 7
        p.title = "changed"
        with pytest.raises(InvalidInput, match="taken by the flush"):
            s.flush()
        s.rollback()
        assert (p.revision, p.title) == (1, "first")


def test_create_version_false_moves_the_head_only(engine: Engine, models: Models) -> None:
    with Session(engine) as s:
        draft = models.Prompt(title="draft")
        draft.create_version = False
        s.add(draft)
        s.commit()
        assert (draft.revision, draft.version) == (1, 0)
        assert rs.history(s, draft) == []
        draft.create_version = False
        draft.title = "autosaved"
        s.commit()
        assert (draft.revision, draft.version) == (2, 0)
        # Per change: the next flush makes a version again.
        assert draft.create_version is True
        draft.title = "saved"
        s.commit()
        assert (draft.revision, draft.version) == (3, 1)
        [snap] = rs.history(s, draft)
    assert (snap.version, snap.revision, snap.title) == (1, 3, "saved")


def test_expected_revision_conflict(engine: Engine, models: Models) -> None:
    pid = new_prompt(engine, models)
    with Session(engine) as mine, Session(engine) as theirs:
        p = mine.get(models.Prompt, pid)
        seen = p.revision
        q = theirs.get(models.Prompt, pid)
        q.title = "theirs"
        theirs.commit()
        p.expected_revision = seen
        p.title = "mine"
        with pytest.raises(revstore.VersionConflict) as info:
            mine.commit()
        assert isinstance(info.value, rs.ObjectVersionConflict)
        assert info.value.current_revision == 2
        assert info.value.current_version == 2
        mine.rollback()
        # Nothing of the failed write landed; with the right expectation it does.
        assert (p.revision, p.title) == (2, "theirs")
        p.expected_revision = 2
        p.title = "mine"
        mine.commit()
        assert p.revision == 3
        # A new row expects revision 0 (absent); an unchanged row is checked too.
        p.expected_revision = 1
        with pytest.raises(rs.ObjectVersionConflict) as unchanged:
            mine.flush()
        assert unchanged.value.current_revision == 3
        mine.rollback()
        fresh = models.Prompt(title="new")
        fresh.expected_revision = 4
        mine.add(fresh)
        with pytest.raises(rs.ObjectVersionConflict) as absent:
            mine.commit()
        assert absent.value.current_revision == 0
        mine.rollback()
    assert count_versions(engine, models) == 3


def test_author_and_summary_go_into_the_snapshot(engine: Engine, models: Models) -> None:
    with Session(engine) as s:
        p = models.Prompt(title="a")
        p.author = "ada"
        p.summary = "first draft"
        s.add(p)
        s.commit()
        assert p.author is None and p.summary is None  # spent by the flush
        rs.set_change(p, author="bob", summary="retitle")
        p.title = "b"
        s.commit()
        p.title = "c"
        s.commit()
        snaps = rs.history(s, p)
        with pytest.raises(InvalidInput):
            p.author = "x" * 300
    assert [(h.author, h.summary) for h in snaps] == [
        ("ada", "first draft"),
        ("bob", "retitle"),
        (None, None),
    ]


def test_tags_are_state_and_restore_brings_them_back(engine: Engine, models: Models) -> None:
    with Session(engine) as s:
        red, green, blue = (models.Tag(name=n) for n in ("red", "green", "blue"))
        p = models.Prompt(title="tagged", tags=[red, green])
        s.add_all([p, blue])
        s.commit()
        assert p.version == 1
        p.tags.remove(green)
        p.tags.append(blue)
        s.commit()
        assert (p.revision, p.version) == (2, 2)
        p.tags = []  # first: loading the old collection would autoflush a title change
        p.title = "retitled"
        s.commit()
        snaps = rs.history(s, p)
        assert [h.tags for h in snaps] == [
            sorted([red.id, green.id]),
            sorted([red.id, blue.id]),
            [],
        ]
        restored = rs.restore(s, p, 1)
        assert restored.version == 1
        s.commit()
        assert (p.revision, p.version, p.title) == (4, 4, "tagged")
        assert [t.name for t in p.tags] == ["red", "green"]
        last = rs.history(s, p, after=3)[0]
        assert last.summary == "restore of version 1"
        assert last.content == snaps[0].content
        assert last.content_hash == snaps[0].content_hash
        # Restoring the state the head already has writes nothing.
        rs.restore(s, p, 4)
        s.commit()
        assert p.revision == 4
    with Session(engine) as s:
        again = s.get(models.Prompt, p.id)
        assert sorted(t.name for t in again.tags) == ["green", "red"]


def test_history_pages_and_get_version(engine: Engine, models: Models) -> None:
    with Session(engine) as s:
        p = models.Prompt(title="v1")
        s.add(p)
        s.commit()
        for n in range(2, 8):
            p.title = f"v{n}"
            s.commit()
        pages: list[list[int]] = []
        after = 0
        while True:
            page = rs.history(s, p, after=after, limit=3)
            if not page:
                break
            pages.append([h.version for h in page])
            after = page[-1].version
        assert pages == [[1, 2, 3], [4, 5, 6], [7]]
        assert rs.get_version(s, p, 5).title == "v5"
        with pytest.raises(NotFound):
            rs.get_version(s, p, 8)
        with pytest.raises(InvalidInput):
            rs.history(s, p, limit=0)
        with pytest.raises(InvalidInput):
            rs.history(s, p, after=-1)
        with pytest.raises(InvalidInput):
            rs.history(s, models.Prompt(title="unsaved"))


def test_diff_between_versions(engine: Engine, models: Models) -> None:
    with Session(engine) as s:
        tag = models.Tag(name="t")
        p = models.Prompt(title="a", body="same")
        s.add(p)
        s.commit()
        p.tags.append(tag)
        p.title = "b"
        s.commit()
        ops = rs.diff(s, p, 1, 2)
        assert sorted(ops, key=lambda o: o["path"]) == [
            {"op": "add", "path": "/tags/0", "value": tag.id},
            {"op": "replace", "path": "/title", "value": "b"},
        ]
        assert rs.diff(s, p, 2, 2) == []
        with pytest.raises(NotFound):
            rs.diff(s, p, 1, 9)


def test_bulk_statements_are_refused(engine: Engine, models: Models) -> None:
    pid = new_prompt(engine, models)
    Prompt = models.Prompt
    with Session(engine) as s:
        for stmt in (
            update(Prompt).where(Prompt.id == pid).values(title="bulk"),
            delete(Prompt).where(Prompt.id == pid),
            update(Prompt.__table__).values(title="core"),
        ):
            with pytest.raises(rs.BulkWriteRefused, match="Versioned model"):
                s.execute(stmt)
        with pytest.raises(rs.BulkWriteRefused):
            s.execute(insert(Prompt), [{"title": "x", "revision": 1, "version": 1}])
        # A bulk statement on a plain model still runs.
        s.execute(update(models.Tag).values(name="n"))
        s.rollback()
        # Many new rows through the session are versioned, one snapshot each.
        s.add_all([Prompt(title=f"p{n}") for n in range(30)])
        s.commit()
        rows = s.scalars(select(Prompt).order_by(Prompt.id)).all()
        assert [(p.title, p.revision, p.version) for p in rows] == [("first", 1, 1)] + [
            (f"p{n}", 1, 1) for n in range(30)
        ]
    assert count_versions(engine, models) == 31


def test_snapshot_is_the_row_as_written_not_the_stale_session(
    engine: Engine, models: Models
) -> None:
    pid = new_prompt(engine, models, body="old body")
    with Session(engine) as stale, Session(engine) as other:
        p = stale.get(models.Prompt, pid)
        assert p.body == "old body"
        q = other.get(models.Prompt, pid)
        q.body = "new body"
        other.commit()
        p.title = "new title"  # this session still holds the old body
        stale.commit()
        snap = rs.history(stale, p)[-1]
    assert (snap.version, snap.title, snap.body) == (3, "new title", "new body")


def test_deleted_then_added_again_continues_the_history(engine: Engine, models: Models) -> None:
    pid = new_prompt(engine, models)
    with Session(engine) as s:
        p = s.get(models.Prompt, pid)
        p.title = "second"
        s.commit()
        s.delete(p)
        s.commit()
        again = models.Prompt(id=pid, title="reborn")
        s.add(again)
        s.commit()
        assert (again.revision, again.version) == (3, 3)
        assert [h.title for h in rs.history(s, again)] == ["first", "second", "reborn"]


def test_a_column_named_like_the_history_meta_needs_a_prefix(backend_url: str) -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(InvalidInput, match="__versioned_meta_prefix__"):

        class Clash(rs.Versioned, Base):
            __tablename__ = "rsa_clash"
            id: Mapped[int] = mapped_column(primary_key=True)
            created_at: Mapped[str] = mapped_column(String(30))

    class Base2(DeclarativeBase):
        pass

    class Fine(rs.Versioned, Base2):
        __tablename__ = "rsa_fine"
        __versioned_meta_prefix__ = "v_"
        id: Mapped[int] = mapped_column(primary_key=True)
        created_at: Mapped[str] = mapped_column(String(30))

    hist = Fine.__versioned__.history
    assert {"created_at", "v_created_at", "v_version", "v_revision"} <= set(hist.c.keys())

    with pytest.raises(InvalidInput, match="inheritance"):

        class Sub(Fine):
            pass


# ----------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_many_threads_and_processes_on_one_row(
    backend_url: str, engine: Engine, models: Models
) -> None:
    pid = new_prompt(engine, models)
    threads, per_thread, processes, proc_threads = 6, 8, 3, 3
    results: list[Any] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        got = write_many(backend_url, models.suffix, pid, f"main{n}", per_thread)
        with lock:
            results.extend(got)

    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(
                process_writer, backend_url, models.suffix, pid, f"p{n}", proc_threads, per_thread
            )
            for n in range(processes)
        ]
        local = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
        for t in local:
            t.start()
        for t in local:
            t.join()
        for f in futures:
            results.extend(f.result(timeout=240))

    errors = [r for r in results if r[0] == "error"]
    assert errors == []
    total = (threads + processes * proc_threads) * per_thread
    assert len(results) == total
    revisions = sorted(rev for _, rev in results)
    # Every write succeeded with its own revision: 2 … total + 1, no gap, no repeat.
    assert revisions == list(range(2, total + 2))
    with Session(engine) as s:
        head = s.get(models.Prompt, pid)
        assert (head.revision, head.version) == (total + 1, total + 1)
        snaps = []
        after = 0
        while page := rs.history(s, head, after=after, limit=1000):
            snaps.extend(page)
            after = page[-1].version
    assert [h.version for h in snaps] == list(range(1, total + 2))
    assert [h.revision for h in snaps] == list(range(1, total + 2))
    # Every acknowledged write is in the history exactly once, at the revision it got.
    seen = Counter(h.title for h in snaps[1:])
    assert all(n == 1 for n in seen.values())
    assert {h.title: h.revision for h in snaps[1:]} == dict(results)
    assert all(h.author == h.title.rsplit("-", 1)[0] for h in snaps[1:])


# ----------------------------------------------------------------- README


def readme_section_blocks() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Your own SQLAlchemy models", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = readme_section_blocks()
    assert len(blocks) == 2, "the section has a sync and an async example"
    monkeypatch.chdir(tmp_path)
    for n, block in enumerate(blocks):
        # A real module: SQLAlchemy resolves the models' annotations through it.
        module = types.ModuleType(f"readme_sqlalchemy_{n}")
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(block, "README.md", "exec"), module.__dict__)
    assert (tmp_path / "prompts.db").exists() and (tmp_path / "notes.db").exists()
