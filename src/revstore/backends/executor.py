"""What the sync and the asyncio executors share, free of I/O: stepping a protocol,
classifying a driver error, and the wait-or-give-up decision when connecting.

Each executor is then a thin shell that only sends statements and waits (with
``time.sleep`` or ``asyncio.sleep``)."""

from __future__ import annotations

import random
import time
from typing import Any, Generic, TypeVar, cast

from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from revstore.backends.dialect import Dialect
from revstore.backends.ops import Op, Step
from revstore.errors import InvalidInput, RevstoreError, Unavailable
from revstore.failures import Disconnected

T = TypeVar("T")

DRIVER_DATA_ERRORS = (UnicodeError, OverflowError)
"""What a driver raises while converting a parameter, before sending anything (PyMySQL
and sqlite3 encoding a lone surrogate, an int too large for the column's type)."""
DB_ERRORS = (SQLAlchemyError, *DRIVER_DATA_ERRORS)
"""Everything that ``translate_any`` maps: caught around every database call."""


def translate_any(dialect: Dialect, exc: BaseException) -> RevstoreError:
    """Map anything a database call raised to revstore's errors and categories."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return Disconnected(f"connection lost: {exc.orig}")
        return dialect.translate(exc)
    # A value the driver could not convert: refused before anything was sent, so
    # neither a lost connection nor the database's fault.
    cause = exc.orig if isinstance(exc, StatementError) else exc
    if isinstance(cause, DRIVER_DATA_ERRORS):
        # Not str(cause): PyMySQL's UnicodeEncodeError holds the whole statement.
        why = getattr(cause, "reason", None) or str(cause)[:200]
        return InvalidInput(f"a value cannot be sent to the database: {why}")
    return Unavailable(f"database error: {exc}")


class Stepper(Generic[T]):
    """Steps one protocol for an executor: ``feed()`` first, then after each statement
    ``feed(result)`` or ``feed(error=exc)``, until it returns None; then ``value``.

    A failed statement's error is translated and thrown into the protocol (chained to
    the driver's), which may turn it into another (a lost COMMIT: AmbiguousCommit)."""

    __slots__ = ("_dialect", "_step", "value")

    def __init__(self, dialect: Dialect, step: Step[T]) -> None:
        self._dialect = dialect
        self._step = step
        self.value: T | None = None

    def feed(self, result: Any = None, error: BaseException | None = None) -> Op | None:
        try:
            if error is None:
                return self._step.send(result)
            err = translate_any(self._dialect, error)
            err.__cause__ = error
            return self._step.throw(err)
        except StopIteration as done:
            self.value = cast(T, done.value)
            return None
        except DB_ERRORS as exc:
            # Raised while the protocol read a result (a lazy fetch).
            raise translate_any(self._dialect, exc) from exc

    def result(self) -> T:
        return cast(T, self.value)


class ConnectWait:
    """While the server cannot be reached (connection refused, starting up, shutting
    down: a restart or a failover), connecting is tried again with backoff for up to
    ``seconds``, then it is Unavailable.

    Why in the executor and not in the Store's retry policy: nothing has been sent yet,
    so waiting is always safe, and a restart lasts seconds, while the policy's
    attempts, milliseconds apart for lock races, would all be spent in well under one.
    """

    __slots__ = ("deadline", "delay", "seconds", "wait")

    def __init__(self, seconds: float, wait: bool = True) -> None:
        self.seconds = seconds
        self.wait = wait
        self.deadline: float | None = None
        self.delay = 0.02

    def after(self, dialect: Dialect, exc: BaseException) -> float:
        """The seconds to sleep before the next attempt after ``exc``; raises when
        connecting is over (not a lost connection, or the time is up)."""
        if isinstance(exc, (TypeError, ValueError)):
            # The driver's connect() refused an argument taken from the URL's query
            # string (PyMySQL: an unknown keyword) or its path (sqlite3: a NUL byte).
            raise InvalidInput(f"the database URL has an option the driver refuses: {exc}") from exc
        err = translate_any(dialect, exc)
        if not isinstance(err, Disconnected):
            raise err from exc
        if not self.wait:
            # A probe (ping) answers at once: the server is down now.
            err.__cause__ = exc
            raise Unavailable(
                f"the database cannot be reached: "
                f"{exc.orig if isinstance(exc, DBAPIError) else exc}"
            ) from err
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
        if now >= self.deadline:
            # Chained to the classified error, so logs keep its db code.
            err.__cause__ = exc
            raise Unavailable(
                f"the database could not be reached for {self.seconds:g}s: "
                f"{exc.orig if isinstance(exc, DBAPIError) else exc}"
            ) from err
        # Jitter: writers that lost the server together must not all come back at the
        # same instant when it accepts connections again.
        pause = min(self.delay * random.uniform(0.5, 1.5), self.deadline - now)
        self.delay = min(self.delay * 2, 0.5)
        return pause
