"""Concurrent saves of a Versioned object's many-to-many collection (a prompt's tags),
written as plain ORM code with no lock of its own: every save succeeds (no duplicate
key on the association table, no StaleDataError), and each snapshot records the tags
its save set."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from collection_workers import TAG_NAMES, tags_process, write_tags
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from versioned_models import Models

import revstore.sqlalchemy as rs

PROCESSES = 2
THREADS = 3
WRITES = 5


def test_concurrent_tag_saves_on_one_prompt(
    backend_url: str, engine: Engine, models: Models
) -> None:
    with Session(engine) as s:
        s.add_all(models.Tag(name=n) for n in TAG_NAMES)
        prompt = models.Prompt(title="start")
        s.add(prompt)
        s.commit()
        prompt_id = prompt.id
    results: list[Any] = []
    with ProcessPoolExecutor(PROCESSES, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(
                tags_process, backend_url, models.suffix, prompt_id, f"p{n}", THREADS, WRITES
            )
            for n in range(PROCESSES)
        ]
        results.extend(write_tags(backend_url, models.suffix, prompt_id, "main", WRITES))
        for f in futures:
            results.extend(f.result(timeout=240))
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors[:3]
    total = (PROCESSES * THREADS + 1) * WRITES
    assert sorted(r[1] for r in results) == list(range(2, total + 2))
    with Session(engine) as s:
        prompt = s.get(models.Prompt, prompt_id)
        history = rs.history(s, prompt, limit=1000)
        assert [h.version for h in history] == list(range(1, total + 2))
        by_revision = {h.revision: h for h in history}
        for token, revision, tag_ids, loaded in results:
            snap = by_revision[revision]
            assert snap.title == token
            if tag_ids != loaded:
                # A change of the collection: applied onto whatever the database had
                # then, so the tags are exactly the ones this save set.
                assert snap.tags == tag_ids, (token, loaded)
            else:
                # Assigning what the session had loaded is no change (as for a column):
                # the tags stay as the previous save left them.
                assert snap.tags == by_revision[revision - 1].tags, (token, loaded)
        # The head's collection is the last save's.
        assert sorted(t.id for t in prompt.tags) == history[-1].tags
