"""The retry policy: transient errors re-run, conflicts never, a bounded budget."""

from __future__ import annotations

import logging

import pytest

from revstore import RetryPolicy, Unavailable, VersionConflict
from revstore.errors import AmbiguousCommit, Retryable
from revstore.retry import RetryStats


def flaky(failures: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise Retryable("database is busy", code="SQLITE_BUSY")
        return "ok"

    return calls, fn


def test_transient_errors_are_re_run_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls, fn = flaky(3)
    stats = RetryStats()
    with caplog.at_level(logging.INFO, logger="revstore.retry"):
        assert RetryPolicy().run(fn, op="put", key="doc", stats=stats) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 4 and stats.retries == 3
    retries = [r for r in caplog.records if getattr(r, "event", None) == "retry"]
    assert [r.attempt for r in retries] == [1, 2, 3]  # type: ignore[attr-defined]
    assert all(r.db_code == "SQLITE_BUSY" and r.key == "doc" for r in retries)  # type: ignore[attr-defined]


def test_budget_exhausted_is_unavailable() -> None:
    calls, fn = flaky(100)
    with pytest.raises(Unavailable, match="gave up after 3 attempts") as info:
        RetryPolicy(max_attempts=3).run(fn, op="put", key="doc")  # type: ignore[arg-type]
    assert len(calls) == 3
    assert isinstance(info.value.__cause__, Retryable)


def test_conflicts_and_ambiguous_commits_are_never_retried() -> None:
    for exc in (VersionConflict("expected 1, is 2", None), AmbiguousCommit("lost during COMMIT")):
        calls: list[int] = []

        def fn(exc: Exception = exc, calls: list[int] = calls) -> None:
            calls.append(1)
            raise exc

        with pytest.raises(type(exc)):
            RetryPolicy().run(fn, op="put", key="doc")
        assert len(calls) == 1


def test_the_asyncio_shell_makes_the_same_decisions(caplog: pytest.LogCaptureFixture) -> None:
    """``run_async`` re-runs a coroutine on the same budget, with the same logs and
    stats as ``run``; what is not Retryable goes straight back."""
    import asyncio

    calls, fn = flaky(3)

    async def attempt() -> object:
        return fn()  # type: ignore[operator]

    stats = RetryStats()
    with caplog.at_level(logging.INFO, logger="revstore.retry"):
        done = asyncio.run(RetryPolicy().run_async(attempt, op="put", key="doc", stats=stats))
    assert done == "ok" and len(calls) == 4 and stats.retries == 3
    retries = [r for r in caplog.records if getattr(r, "event", None) == "retry"]
    assert [r.attempt for r in retries] == [1, 2, 3]  # type: ignore[attr-defined]

    calls, fn = flaky(100)
    with pytest.raises(Unavailable, match="gave up after 3 attempts"):
        asyncio.run(RetryPolicy(max_attempts=3).run_async(attempt, op="put", key="doc"))
    assert len(calls) == 3

    async def conflict() -> None:
        raise VersionConflict("expected 1, is 2", None)

    with pytest.raises(VersionConflict):
        asyncio.run(RetryPolicy().run_async(conflict, op="put", key="doc"))
