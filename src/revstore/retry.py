"""Retry policy: re-run a whole transaction on a transient database condition.

Built from tenacity's small pieces (stop / wait / retry). Only :class:`Retryable`
errors are retried: a Conflict is the caller's business and goes straight back, and
an AmbiguousCommit is never re-run because the first attempt may have landed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

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
        try:
            # The common case pays for no retry machinery: building tenacity's state
            # costs more than a whole one-statement write's client work.
            return fn()
        except Retryable as exc:
            first = exc
        if self.max_attempts <= 1:
            return self._give_up(first, op, key)
        if stats is not None:
            stats.retries += 1
        self._log_retry(op, key, 1, first)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if stats is not None:
                stats.retries += 1
            # tenacity counts from the second attempt: attempt_number 1 is attempt 2.
            self._log_retry(op, key, state.attempt_number + 1, exc)

        retrying = Retrying(
            # The first attempt is spent; the delay budget runs from here.
            stop=stop_after_attempt(self.max_attempts - 1) | stop_after_delay(self.max_seconds),
            wait=wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
            retry=retry_if_exception_type(Retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        # Backoff before the second attempt too (jitter spreads writers that lost together).
        time.sleep(random.uniform(0, self.initial_wait * 2))
        try:
            return retrying(fn)
        except Retryable as exc:
            return self._give_up(exc, op, key)

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


@dataclass(slots=True)
class RetryStats:
    """Counts retries made by a Store (read by the CLI demo, the service and the lab)."""

    retries: int = 0
