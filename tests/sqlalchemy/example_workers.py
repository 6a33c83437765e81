"""Writers that race the examples (examples/ at the repository root), importable by
spawned worker processes (which inherit this process's sys.path)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.prompt_manager import PromptManager, make_engine  # noqa: E402

TAG_SETS = (("system",), ("system", "tone"), ("short", "tone"), ())
"""Each write sets one of these tag sets along with its text (write i: set i % 4)."""


def prompt_writes(url: str, prompt_id: int, tag: str, count: int) -> list[Any]:
    """``count`` saves of one prompt, text and tags, no expectation: all must succeed.
    Returns ("ok", token, revision, version, tags) per save, or ("error", text)."""
    manager = PromptManager(make_engine(url))
    acked: list[Any] = []
    try:
        for i in range(count):
            token = f"{tag}-{i}"
            tags = TAG_SETS[i % len(TAG_SETS)]
            try:
                saved = manager.update(prompt_id, text=token, tags=tags, author=tag)
                acked.append(("ok", token, saved.revision, saved.version, sorted(tags)))
            except Exception as exc:  # reported, and the test fails on it
                acked.append(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        manager.engine.dispose()
    return acked


def prompt_process(url: str, prompt_id: int, tag: str, threads: int, count: int) -> list[Any]:
    """A worker process: ``threads`` threads, each making ``count`` saves."""
    results: list[Any] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        got = prompt_writes(url, prompt_id, f"{tag}t{n}", count)
        with lock:
            results.extend(got)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results
