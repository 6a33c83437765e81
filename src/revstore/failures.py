"""Internal failure categories: what a database error *means* for the write that got it.

Each dialect translates its driver's errors with one table (SQLSTATE or error number →
category, in the style of psycopg's ``errors`` module); everything else in revstore
decides by type (``isinstance(err, Disconnected)``), never by a string code. The
categories are internal: they are re-run by the retry policy and only reach a caller
as :class:`~revstore.errors.Unavailable` (or :class:`~revstore.errors.AmbiguousCommit`)
once the retry budget is spent. ``code`` and ``constraint`` only feed the logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from revstore.errors import RevstoreError

K = TypeVar("K")


class Retryable(RevstoreError):
    """A transient database condition: the whole transaction is re-run."""

    def __init__(self, message: str, code: str | None = None, constraint: str | None = None):
        super().__init__(message)
        self.code = code
        self.constraint = constraint


class Transient(Retryable):
    """The server refused this attempt for a reason that passes: serialization failure,
    deadlock, lock timeout, SQLite busy, too many connections, a cancelled statement."""


class LockWaitTimedOut(Transient):
    """A statement waited longer than the lock wait timeout for a row lock. MariaDB and
    MySQL roll back that statement only, so the transaction may go on: a batch takes
    that write out and hands it to its writer (``batch``)."""


class Disconnected(Retryable):
    """The connection was lost (or could not be made). Before COMMIT nothing of the
    transaction stayed, so it is re-run; during COMMIT (or a one-statement write) the
    write may have landed, and the store raises ``AmbiguousCommit`` instead."""

    def __init__(
        self, message: str, code: str | None = "disconnect", constraint: str | None = None
    ):
        super().__init__(message, code, constraint)


class LostRace(Retryable):
    """A concurrent writer changed the row this attempt read (a compare-and-set matched
    nothing, or an insert-if-absent found the row): re-run against the winner's row."""

    def __init__(self, message: str, code: str | None = "lost-race", constraint: str | None = None):
        super().__init__(message, code, constraint)


class Duplicate(Retryable):
    """A unique key fired. With the counter and lock strategies it never does; with the
    optimistic strategy it means a lost race, so the transaction is re-run. It only
    reaches a caller as :class:`Unavailable` once the retry budget is exhausted."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One row of a dialect's error table: the category and a readable name."""

    category: type[Retryable]
    name: str


def classify(
    table: Mapping[K, Failure],
    keys: Iterable[K | None],
    message: object,
    code: str | None = None,
    constraint: str | None = None,
) -> Retryable | None:
    """The category instance for a driver error found under ``keys`` in ``table`` (None
    when the table does not know it: not a transient condition)."""
    found = lookup(table, keys)
    if found is None:
        return None
    if found.category is Disconnected:
        return Disconnected(f"connection lost ({found.name}): {message}")
    return found.category(f"{found.name}: {message}", code=code, constraint=constraint)


def lookup(table: Mapping[K, Failure], keys: Iterable[K | None]) -> Failure | None:
    """The first entry of ``table`` found under ``keys``, most specific key first
    (PostgreSQL: the SQLSTATE, then its class; SQLite: the extended code, then the
    primary one)."""
    for key in keys:
        if key is not None and key in table:
            return table[key]
    return None
