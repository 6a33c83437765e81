"""Writers that change a Versioned prompt's many-to-many tags concurrently (importable
by spawned worker processes)."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from versioned_models import make_engine, make_models

TAG_NAMES = ("a", "b", "c", "d")


def tag_sets(i: int) -> list[str]:
    """Write i's tags: a different subset each time, so writes add and remove rows."""
    return [name for bit, name in enumerate(TAG_NAMES) if (i + 1) >> bit & 1]


def write_tags(url: str, suffix: str, prompt_id: int, tag: str, count: int) -> list[Any]:
    """``count`` saves of one prompt's title and tags, plain ORM code (load, assign,
    commit), no expectation: every one must succeed. (token, revision, the tags it set,
    the tags it had loaded) each."""
    models = make_models(suffix)
    engine = make_engine(url)
    acked: list[Any] = []
    try:
        for i in range(count):
            token = f"{tag}-{i}"
            names = tag_sets(hash(token) % 15)
            try:
                with Session(engine) as session:
                    prompt = session.get(models.Prompt, prompt_id)
                    assert prompt is not None
                    tags = session.scalars(
                        select(models.Tag).where(models.Tag.name.in_(names))
                    ).all()
                    loaded = sorted(t.id for t in prompt.tags)
                    prompt.tags = list(tags)
                    prompt.title = token
                    session.flush()
                    revision = prompt.revision
                    session.commit()
                    acked.append((token, revision, sorted(t.id for t in tags), loaded))
            except Exception as exc:  # reported, and the test fails on it
                acked.append(("error", f"{type(exc).__name__}: {exc}"[:300], None, None))
    finally:
        engine.dispose()
    return acked


def tags_process(
    url: str, suffix: str, prompt_id: int, tag: str, threads: int, count: int
) -> list[Any]:
    results: list[Any] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        got = write_tags(url, suffix, prompt_id, f"{tag}t{n}", count)
        with lock:
            results.extend(got)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results
