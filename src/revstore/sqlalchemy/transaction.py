"""Units of work that retry: ``transaction(sessionmaker)`` and ``async_transaction``.

A unit of work is a function of a fresh session. It is run, flushed and committed;
on a transient failure the session is thrown away and the unit is re-run WHOLE from
a new session (never resumed: what it read may be stale), with bounded exponential
backoff and jitter (:class:`revstore.retry.RetryPolicy`), each retry logged.

Transient: deadlock, serialization failure, lock (wait) timeout, SQLite busy,
``StaleDataError``, a connection lost before COMMIT. Never retried: any other error
(a unique key, a ``VersionConflict``: they are the caller's to decide). A connection
lost during COMMIT raises :class:`revstore.AmbiguousCommit`: the unit may have landed.

Three forms, one mechanism::

    @transaction(Session)                    # retried: the decorator re-calls f
    def rename(session, id, name): ...
    rename(7, "x")

    for attempt in transaction(Session):     # retried: the loop re-enters the body
        with attempt as session:
            ...

    with transaction(Session) as session:    # ONE attempt: a with-block cannot re-run
        ...                                  # its own body; errors propagate as raised

The decisions (what is transient, when a failure is ambiguous, how long to wait) are
made once, free of I/O, by :class:`Plan` and :class:`revstore.retry.Attempts`; the sync
and asyncio classes only call the session and sleep.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
)
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, UnboundExecutionError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from revstore.errors import AmbiguousCommit, RevstoreError
from revstore.failures import Disconnected, Failure, Retryable, Transient, classify
from revstore.retry import Attempts, RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")

Call = Literal["flush", "commit"]
"""A session call that ends an attempt."""

_TABLES = {
    "sqlite": "revstore.backends.sqlite",
    "postgresql": "revstore.backends.postgresql",
    "mysql": "revstore.backends.mysql",
    "mariadb": "revstore.backends.mysql",
}
"""SQLAlchemy dialect name → the revstore backend module whose FAILURES table knows
its error codes (the tables revstore's own executor uses)."""


def _failures(dialect: str | None) -> Mapping[Any, Failure]:
    module = _TABLES.get(dialect or "")
    if module is None:
        return {}
    table: Mapping[Any, Failure] = importlib.import_module(module).FAILURES
    return table


def _keys(dialect: str | None, orig: BaseException | None) -> tuple[object, ...]:
    """The keys a driver error is looked up under, most specific first: the SQLSTATE
    and its class (psycopg 3: ``sqlstate``, psycopg2: ``pgcode``), MySQL's error
    number (PyMySQL, asyncmy, mysqlclient: ``args[0]``), SQLite's extended result code
    name then its primary code (sqlite3, aiosqlite)."""
    if orig is None:
        return ()
    if dialect == "postgresql":
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return (state, state[:2]) if isinstance(state, str) else ()
    if dialect in ("mysql", "mariadb"):
        args = getattr(orig, "args", ())
        return (args[0],) if args and isinstance(args[0], int) else ()
    if dialect == "sqlite":
        code = getattr(orig, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        return (getattr(orig, "sqlite_errorname", None), primary)
    return ()


def transient(exc: BaseException, dialect: str | None) -> Retryable | None:
    """The retry category of a failed attempt's error (chained to it), or None: not
    retried. Only Transient and Disconnected re-run: a unique key that fired (the
    tables' Duplicate) is the caller's data, not a race won by trying again."""
    found = _category(exc, dialect)
    if found is not None and found is not exc:
        found.__cause__ = exc
    return found


def _category(exc: BaseException, dialect: str | None) -> Retryable | None:
    if isinstance(exc, Retryable):
        return exc  # raised by revstore itself (a Store call in the unit)
    if isinstance(exc, RevstoreError):
        return None  # VersionConflict and the other Conflicts are the caller's
    if isinstance(exc, StaleDataError):
        # The row changed or vanished under an ORM version check: a fresh session
        # reads the new state.
        return Transient(f"stale data: {exc}", code="stale-data")
    if not isinstance(exc, DBAPIError):
        return None
    if exc.connection_invalidated:
        # SQLAlchemy's own per-driver disconnect test.
        return Disconnected(f"connection lost: {exc.orig}")
    found = classify(_failures(dialect), _keys(dialect, exc.orig), exc.orig)
    return found if isinstance(found, (Transient, Disconnected)) else None


class Plan:
    """The decisions of one attempt, free of I/O: the calls that end it and what a
    failure means. ``retry`` is set when the attempt failed transiently."""

    __slots__ = ("_dialect", "retry", "session")

    def __init__(self, dialect: str | None, session: Session | None = None) -> None:
        self._dialect = dialect
        self.session = session
        """The attempt's session, whose bind names the dialect when a failure needs it."""
        self.retry: Retryable | None = None

    @property
    def dialect(self) -> str | None:
        # Looked up at the first failure: an attempt that succeeds never needs it.
        if self.session is not None:
            self._dialect = _bind_dialect(self.session)
            self.session = None
        return self._dialect

    def end(self, error: BaseException | None) -> Generator[Call, None, bool]:
        """Yields the session calls that end the attempt; a call that failed is thrown
        back in. Returns whether the body's ``error`` is swallowed (to re-run);
        raises what must reach the caller."""
        if error is not None:
            self.retry = transient(error, self.dialect)
            return self.retry is not None
        try:
            # The last flush apart from COMMIT: a connection lost here lost only an
            # uncommitted transaction, which is safe to re-run.
            yield "flush"
        except Exception as exc:
            self.retry = transient(exc, self.dialect)
            if self.retry is None:
                raise
            return False
        try:
            yield "commit"
        except Exception as exc:
            found = transient(exc, self.dialect)
            if isinstance(found, Disconnected):
                # The COMMIT may have reached the server before the connection went.
                raise AmbiguousCommit(
                    f"the connection was lost while committing: the unit of work may or "
                    f"may not have been committed ({exc})"
                ) from exc
            # A server's refusal at COMMIT (a serialization failure) is definite:
            # nothing was committed, so re-running is safe.
            self.retry = found
            if found is None:
                raise
        return False


def _advance(steps: Generator[Call, None, bool], failed: BaseException | None) -> Call | bool:
    """The next session call of ``steps`` (``failed``, the last call's error, thrown in
    first), or at their end whether the body's error is swallowed."""
    try:
        return steps.send(None) if failed is None else steps.throw(failed)
    except StopIteration as done:
        return bool(done.value)


def _failure_of(call: Callable[[], object]) -> Exception | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


async def _async_failure_of(call: Callable[[], Awaitable[object]]) -> Exception | None:
    try:
        await call()
    except Exception as exc:
        return exc
    return None


def _dialect_of(bind: object) -> str | None:
    engine = getattr(bind, "sync_engine", bind)
    dialect = getattr(engine, "dialect", None)
    name = getattr(dialect, "name", None)
    return name if isinstance(name, str) else None


def _bind_dialect(session: Session) -> str | None:
    try:
        return _dialect_of(session.get_bind())
    except UnboundExecutionError:
        return None  # several binds and no default: only StaleDataError is known


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


# ---------------------------------------------------------------- sync


class Attempt:
    """One attempt: ``with attempt as session`` opens a fresh session; leaving the block
    flushes and commits, or records a transient failure for the loop to re-run."""

    __slots__ = ("_session", "_sessions", "plan")

    def __init__(self, sessions: Callable[[], Session]) -> None:
        self._sessions = sessions
        self._session: Session | None = None
        self.plan = Plan(None)

    def __enter__(self) -> Session:
        session = self._session = self._sessions()
        self.plan.session = session
        return session

    def __exit__(
        self,
        et: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        session = self._session
        assert session is not None, "an Attempt is entered with `with attempt as session`"
        try:
            steps = self.plan.end(error)
            step = _advance(steps, None)
            while not isinstance(step, bool):
                step = _advance(steps, _failure_of(getattr(session, step)))
            return step
        finally:
            # Rolls back whatever is open; a dead connection is invalidated.
            session.close()


class transaction:
    """A unit of work on ``sessions`` (a ``sessionmaker``), re-run whole on transient
    failures: a decorator, an iterator of attempts, or (one attempt) a with-block."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        *,
        policy: RetryPolicy | None = None,
        name: str = "unit of work",
    ) -> None:
        if not callable(sessions):
            raise TypeError("transaction() takes a sessionmaker (a callable making Sessions)")
        self.sessions = sessions
        self.policy = policy or RetryPolicy()
        self._open: list[Attempt] = []
        self.op = "transaction"
        self._key = name
        """What the retry logs name (the decorated function's qualified name)."""

    def __iter__(self) -> Iterator[Attempt]:
        attempts: Attempts | None = None
        while True:
            attempt = Attempt(self.sessions)
            yield attempt
            failure = attempt.plan.retry
            if failure is None:
                return
            attempts = attempts or Attempts(self.policy, self.op, self._key, None)
            # Raises Unavailable (from the last failure) when the budget is spent.
            time.sleep(attempts.after(failure))

    def run(self, fn: Callable[Concatenate[Session, P], R], *args: P.args, **kw: P.kwargs) -> R:
        """Run ``fn(session, *args, **kw)`` and commit, re-running it on transient
        failures; its return value."""
        for attempt in self:
            with attempt as session:
                result = fn(session, *args, **kw)
            if attempt.plan.retry is None:
                return result
        raise AssertionError("unreachable: the attempts end in a return or a raise")

    def __call__(self, fn: Callable[Concatenate[Session, P], R]) -> Callable[P, R]:
        """Decorate ``fn(session, ...)``: each call runs it as a retried unit of work."""

        @functools.wraps(fn)
        def unit(*args: P.args, **kw: P.kwargs) -> R:
            return transaction(self.sessions, policy=self.policy, name=_name(fn)).run(
                fn, *args, **kw
            )

        return unit

    def __enter__(self) -> Session:
        attempt = Attempt(self.sessions)
        self._open.append(attempt)
        return attempt.__enter__()

    def __exit__(
        self,
        et: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # One attempt: nothing re-runs the body, so a failure propagates as raised.
        attempt = self._open.pop()
        attempt.__exit__(et, error, tb)
        if error is None and attempt.plan.retry is not None:
            raise attempt.plan.retry.__cause__ or attempt.plan.retry


# ---------------------------------------------------------------- asyncio


class AsyncAttempt:
    """:class:`Attempt` for an ``AsyncSession``: ``async with attempt as session``."""

    __slots__ = ("_session", "_sessions", "plan")

    def __init__(self, sessions: Callable[[], AsyncSession]) -> None:
        self._sessions = sessions
        self._session: AsyncSession | None = None
        self.plan = Plan(None)

    async def __aenter__(self) -> AsyncSession:
        session = self._session = self._sessions()
        self.plan.session = session.sync_session
        return session

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        session = self._session
        assert session is not None, "an AsyncAttempt is entered with `async with`"
        try:
            steps = self.plan.end(error)
            step = _advance(steps, None)
            while not isinstance(step, bool):
                step = _advance(steps, await _async_failure_of(getattr(session, step)))
            return step
        finally:
            await session.close()


class async_transaction:
    """:class:`transaction` for an ``async_sessionmaker``: ``@async_transaction(S)`` on a
    coroutine function, ``async for attempt in async_transaction(S): async with attempt
    as session: ...``, or (one attempt) ``async with async_transaction(S) as session``."""

    def __init__(
        self,
        sessions: Callable[[], AsyncSession],
        *,
        policy: RetryPolicy | None = None,
        name: str = "unit of work",
    ) -> None:
        if not callable(sessions):
            raise TypeError(
                "async_transaction() takes an async_sessionmaker (a callable making AsyncSessions)"
            )
        self.sessions = sessions
        self.policy = policy or RetryPolicy()
        self._open: list[AsyncAttempt] = []
        self.op = "transaction"
        self._key = name

    async def __aiter__(self) -> AsyncIterator[AsyncAttempt]:
        attempts: Attempts | None = None
        while True:
            attempt = AsyncAttempt(self.sessions)
            yield attempt
            failure = attempt.plan.retry
            if failure is None:
                return
            attempts = attempts or Attempts(self.policy, self.op, self._key, None)
            await asyncio.sleep(attempts.after(failure))

    async def run(
        self,
        fn: Callable[Concatenate[AsyncSession, P], Awaitable[R]],
        *args: P.args,
        **kw: P.kwargs,
    ) -> R:
        """Run ``await fn(session, *args, **kw)`` and commit, re-running it on transient
        failures; its return value."""
        async for attempt in self:
            async with attempt as session:
                result = await fn(session, *args, **kw)
            if attempt.plan.retry is None:
                return result
        raise AssertionError("unreachable: the attempts end in a return or a raise")

    def __call__(
        self, fn: Callable[Concatenate[AsyncSession, P], Awaitable[R]]
    ) -> Callable[P, Awaitable[R]]:
        """Decorate ``async def fn(session, ...)``: each call is a retried unit of work."""

        @functools.wraps(fn)
        async def unit(*args: P.args, **kw: P.kwargs) -> R:
            return await async_transaction(self.sessions, policy=self.policy, name=_name(fn)).run(
                fn, *args, **kw
            )

        return unit

    async def __aenter__(self) -> AsyncSession:
        attempt = AsyncAttempt(self.sessions)
        self._open.append(attempt)
        return await attempt.__aenter__()

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        attempt = self._open.pop()
        await attempt.__aexit__(et, error, tb)
        if error is None and attempt.plan.retry is not None:
            raise attempt.plan.retry.__cause__ or attempt.plan.retry


__all__ = [
    "AsyncAttempt",
    "Attempt",
    "Plan",
    "async_transaction",
    "transaction",
    "transient",
]
