"""examples/prompt_manager.py raced by threads of several processes on one prompt, on
every backend: every save succeeds, at its own consecutive revision, and the history
holds each save exactly once with its text and tags."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pytest
from example_workers import TAG_SETS, prompt_process, prompt_writes
from examples.prompt_manager import PromptManager, make_engine

from revstore import VersionConflict

PROCESSES = 3
THREADS = 3
WRITES = 5


@pytest.fixture
def manager(backend_url: str) -> Iterator[PromptManager]:
    # The example's tables have fixed names: start from none, leave none.
    m = PromptManager(make_engine(backend_url))
    m.drop_schema()
    m.create_schema()
    yield m
    m.drop_schema()
    m.engine.dispose()


def test_the_example_flow(manager: PromptManager) -> None:
    saved = manager.create("greeting", "You are helpful.", ["system"], author="ada")
    assert (saved.revision, saved.version) == (1, 1)
    second = manager.update(saved.id, text="You are very helpful.", tags=["system", "tone"])
    assert (second.revision, second.version) == (2, 2)
    # Tags alone are a change too: a new version.
    assert manager.update(saved.id, tags=["tone"]).version == 3
    with pytest.raises(VersionConflict) as caught:
        manager.update(saved.id, text="stale", expected_revision=1)
    assert caught.value.current_revision == 3
    assert manager.restore(saved.id, 1).version == 4
    head = manager.get(saved.id)
    assert (head.text, [t.name for t in head.tags]) == ("You are helpful.", ["system"])
    assert [h.version for h in manager.history(saved.id)] == [1, 2, 3, 4]


def test_editors_in_threads_and_processes_on_one_prompt(
    backend_url: str, manager: PromptManager
) -> None:
    saved = manager.create("greeting", "start", ["system"])
    manager.ensure_tags({name for tags in TAG_SETS for name in tags})
    with manager.sessions() as s:
        from examples.prompt_manager import Tag

        tag_ids = {t.name: t.id for t in s.query(Tag)}
    results: list[Any] = []
    with ProcessPoolExecutor(PROCESSES, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(prompt_process, backend_url, saved.id, f"p{n}", THREADS, WRITES)
            for n in range(PROCESSES)
        ]
        # And threads of this process at the same time.
        results.extend(prompt_writes(backend_url, saved.id, "main", WRITES))
        for f in futures:
            results.extend(f.result(timeout=240))

    errors = [r for r in results if r[0] != "ok"]
    assert not errors, errors[:5]
    total = (PROCESSES * THREADS + 1) * WRITES
    assert len(results) == total
    # Every save took its own consecutive revision (and version: each one changed the text).
    assert sorted(r[2] for r in results) == list(range(2, total + 2))
    assert all(r[2] == r[3] for r in results)

    history = manager.history(saved.id)
    assert [h.version for h in history] == list(range(1, total + 2)), "a gap in the history"
    by_version = {h.version: h for h in history}
    for _, token, revision, version, tags in results:
        snap = by_version[version]
        assert (snap.text, snap.revision) == (token, revision)
        assert snap.tags == sorted(tag_ids[t] for t in tags)
    assert len({h.text for h in history[1:]}) == total, "a save recorded twice"
    head = manager.get(saved.id)
    assert head.revision == total + 1 and head.text == by_version[total + 1].text
