"""Retry policy: re-run a whole transaction on a transient database condition.

Only :class:`Retryable` errors are retried: a Conflict is the caller's business and
goes straight back, and an AmbiguousCommit is never re-run because the first attempt
may have landed. The decisions (how long to wait, when to give up, what to log) are
made once, free of I/O, by :class:`Attempts`; ``run`` waits with ``time.sleep`` and
``run_async`` with ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from revstore.config import (
    RETRY_INITIAL_WAIT,
    RETRY_MAX_ATTEMPTS,
    RETRY_MAX_SECONDS,
    RETRY_MAX_WAIT,
)
from revstore.errors import Unavailable
from revstore.failures import Retryable

T = TypeVar("T")

log = logging.getLogger("revstore.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter.

    Jitter matters under a hot key: writers that lost the same race must not all come
    back at the same instant and lose again.
    """

    max_attempts: int = RETRY_MAX_ATTEMPTS
    max_seconds: float = RETRY_MAX_SECONDS
    initial_wait: float = RETRY_INITIAL_WAIT
    max_wait: float = RETRY_MAX_WAIT

    @property
    def budget(self) -> float:
        """The longest one ``run`` keeps re-running, in seconds: no attempt starts after
        the delay budget plus the backoff before it (the first one's jitter included).
        The attempts' own time (a lock wait) is not bounded by the policy."""
        return self.max_seconds + self.max_wait + 2 * self.initial_wait

    def run(self, fn: Callable[[], T], *, op: str, key: str, stats: RetryStats | None = None) -> T:
        # The common case pays for no retry machinery: only a failure builds Attempts.
        attempts: Attempts | None = None
        while True:
            try:
                return fn()
            except Retryable as exc:
                attempts = attempts or Attempts(self, op, key, stats)
                time.sleep(attempts.after(exc))

    async def run_async(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        op: str,
        key: str,
        stats: RetryStats | None = None,
    ) -> T:
        """``run`` for a coroutine function: the same decisions, asyncio waits."""
        attempts: Attempts | None = None
        while True:
            try:
                return await fn()
            except Retryable as exc:
                attempts = attempts or Attempts(self, op, key, stats)
                await asyncio.sleep(attempts.after(exc))

    @staticmethod
    def _log_retry(op: str, key: str, attempt: int, exc: BaseException | None) -> None:
        log.info(
            "retrying %s on %s",
            op,
            key,
            extra={
                "event": "retry",
                "op": op,
                "key": key,
                "attempt": attempt,
                "db_code": getattr(exc, "code", None),
                "constraint": getattr(exc, "constraint", None),
                "error": str(exc),
            },
        )

    def _give_up(self, exc: Retryable, op: str, key: str) -> NoReturn:
        log.warning(
            "retries exhausted for %s on %s",
            op,
            key,
            extra={
                "event": "retries_exhausted",
                "op": op,
                "key": key,
                "db_code": exc.code,
                "constraint": exc.constraint,
            },
        )
        raise Unavailable(
            f"{op} on {key}: gave up after {self.max_attempts} attempts or "
            f"{self.max_seconds}s of transient database errors ({exc})"
        ) from exc


class Attempts:
    """The retry decisions of one ``run`` after its first attempt failed, free of I/O.

    Bounded exponential backoff with full jitter: the wait before attempt n + 1 is
    uniform in [0, min(max_wait, initial_wait * 2 ** (n - 1))]. The delay budget
    (``max_seconds``) runs from the first failure."""

    __slots__ = ("done", "key", "op", "policy", "since", "stats")

    def __init__(self, policy: RetryPolicy, op: str, key: str, stats: RetryStats | None) -> None:
        self.policy = policy
        self.op = op
        self.key = key
        self.stats = stats
        self.done = 0
        """Attempts made and failed."""
        self.since = time.monotonic()

    def after(self, exc: Retryable) -> float:
        """The seconds to wait before the next attempt, after ``exc`` failed the last
        one; raises Unavailable (from ``exc``) when the budget is spent."""
        policy = self.policy
        self.done += 1
        spent = time.monotonic() - self.since
        if self.done >= policy.max_attempts or (self.done > 1 and spent >= policy.max_seconds):
            policy._give_up(exc, self.op, self.key)
        if self.stats is not None:
            self.stats.retries += 1
        policy._log_retry(self.op, self.key, self.done, exc)
        # Jitter: writers that lost the same race must not all come back at the same
        # instant and lose again; the very first wait too.
        high = min(policy.max_wait, policy.initial_wait * 2 ** (self.done - 1))
        return random.uniform(0, high)


@dataclass(slots=True)
class RetryStats:
    """Counts retries made by a Store (read by the CLI demo, the service and the lab)."""

    retries: int = 0
