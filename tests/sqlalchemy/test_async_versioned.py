"""revstore.sqlalchemy.Versioned under AsyncSession (aiosqlite, psycopg async, asyncmy):
the same flush hooks, and the async history functions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import selectinload
from versioned_models import Models, async_url, engine_args, make_engine, make_models

import revstore
import revstore.sqlalchemy as rs


@pytest.fixture
def models() -> Models:
    return make_models()


@pytest.fixture
def aurl(backend_url: str, models: Models) -> Iterator[str]:
    """The async driver URL, with the models' tables created (and dropped after)."""
    eng = make_engine(backend_url)
    models.metadata.create_all(eng)
    yield backend_url
    models.metadata.drop_all(eng)
    eng.dispose()


def run(url: str, main: Callable[[async_sessionmaker[Any]], Awaitable[None]]) -> None:
    """Run ``main`` on a fresh event loop with an async engine made inside it."""

    async def go() -> None:
        engine = create_async_engine(async_url(url), **engine_args(url))
        try:
            await main(async_sessionmaker(engine, expire_on_commit=False))
        finally:
            await engine.dispose()

    asyncio.run(go())


async def _flow(sessions: async_sessionmaker[Any], models: Models) -> None:
    Prompt, Tag = models.Prompt, models.Tag
    async with sessions() as s:
        red, blue = Tag(name="red"), Tag(name="blue")
        p = Prompt(title="a", tags=[red])
        p.author = "ada"
        s.add_all([p, blue])
        await s.commit()
        assert (p.revision, p.version) == (1, 1)
        p.title = "b"
        p.tags.append(blue)
        await s.commit()
        p.create_version = False
        p.title = "autosave"
        await s.commit()
        assert (p.revision, p.version) == (3, 2)
        p.title = "c"
        p.tags.remove(red)
        await s.commit()
        assert (p.revision, p.version) == (4, 3)
        snaps = await rs.async_history(s, p)
        assert [(h.version, h.revision, h.title, h.tags) for h in snaps] == [
            (1, 1, "a", [red.id]),
            (2, 2, "b", sorted([red.id, blue.id])),
            (3, 4, "c", [blue.id]),
        ]
        assert snaps[0].author == "ada"
        assert [h.version for h in await rs.async_history(s, p, after=1, limit=1)] == [2]
        ops = await rs.async_diff(s, p, 2, 3)
        assert sorted(ops, key=lambda o: o["path"]) == [
            {"op": "remove", "path": "/tags/0"},
            {"op": "replace", "path": "/title", "value": "c"},
        ]
        assert (await rs.async_get_version(s, p, 1)).title == "a"
        await rs.async_restore(s, p, 1)
        await s.commit()
        assert (p.revision, p.version, p.title) == (5, 4, "a")
        assert [t.name for t in p.tags] == ["red"]
        with pytest.raises(rs.BulkWriteRefused):
            await s.execute(update(Prompt).values(title="bulk"))
    async with sessions() as s:
        again = await s.get(Prompt, p.id, options=[selectinload(Prompt.tags)])
        assert [t.name for t in again.tags] == ["red"]
        assert (await rs.async_history(s, again, after=3))[0].summary == "restore of version 1"


def test_async_session_versions_and_restores(aurl: str, models: Models) -> None:
    run(aurl, lambda sessions: _flow(sessions, models))


async def _conflict(sessions: async_sessionmaker[Any], models: Models) -> None:
    async with sessions() as s:
        p = models.Prompt(title="a")
        s.add(p)
        await s.commit()
    async with sessions() as mine, sessions() as theirs:
        a = await mine.get(models.Prompt, p.id)
        b = await theirs.get(models.Prompt, p.id)
        b.title = "theirs"
        await theirs.commit()
        a.expected_revision = 1
        a.title = "mine"
        with pytest.raises(revstore.VersionConflict) as info:
            await mine.commit()
        assert info.value.current_revision == 2
        await mine.rollback()
        assert len(await rs.async_history(mine, a)) == 2


def test_async_expected_revision_conflict(aurl: str, models: Models) -> None:
    run(aurl, lambda sessions: _conflict(sessions, models))


async def _concurrent(sessions: async_sessionmaker[Any], models: Models) -> None:
    async with sessions() as s:
        p = models.Prompt(title="start")
        s.add(p)
        await s.commit()
        pid = p.id

    async def writer(n: int, count: int) -> list[tuple[str, int]]:
        got = []
        for i in range(count):
            async with sessions() as s:
                row = await s.get(models.Prompt, pid)
                row.title = f"w{n}-{i}"
                await s.flush()
                got.append((row.title, row.revision))
                await s.commit()
        return got

    tasks, count = 12, 5
    results = [
        r for part in await asyncio.gather(*(writer(n, count) for n in range(tasks))) for r in part
    ]
    total = tasks * count
    assert sorted(rev for _, rev in results) == list(range(2, total + 2))
    async with sessions() as s:
        head = await s.get(models.Prompt, pid)
        snaps = await rs.async_history(s, head, limit=1000)
    assert [h.version for h in snaps] == list(range(1, total + 2))
    assert {h.title: h.revision for h in snaps[1:]} == dict(results)


def test_async_sessions_on_one_row_get_consecutive_revisions(aurl: str, models: Models) -> None:
    run(aurl, lambda sessions: _concurrent(sessions, models))
