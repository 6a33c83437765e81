"""The one error hierarchy of revstore.

Every backend translates its driver's exceptions into these classes in one
place (its ``translate_error``), always chained with ``raise ... from e``, so no
raw driver exception ever escapes the public API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from revstore.failures import Duplicate as Duplicate
    from revstore.failures import Retryable as Retryable
    from revstore.record import Record


class RevstoreError(Exception):
    """Base class of every error revstore raises."""


class InvalidInput(RevstoreError, ValueError):
    """The caller's input was rejected before anything was written."""


class NotFound(RevstoreError, LookupError):
    """The record, version or stream does not exist (or the record is deleted)."""


class VersionCompacted(NotFound):
    """The version was removed by the namespace's retention policy. ``oldest_version``
    is the oldest version the record still has (HTTP: 410 Gone)."""

    def __init__(self, message: str, oldest_version: int) -> None:
        super().__init__(message)
        self.oldest_version = oldest_version


class Conflict(RevstoreError):
    """A stated expectation did not hold. Never retried blindly: it goes back to the caller."""


class VersionConflict(Conflict):
    """``expected_revision`` did not match the record's current revision.

    ``current`` is the current head (``None`` when the record does not exist or is
    deleted) so the caller can re-apply its change without another read.
    """

    def __init__(self, message: str, current: Record | None) -> None:
        super().__init__(message)
        self.current = current

    @property
    def current_revision(self) -> int:
        return 0 if self.current is None else self.current.revision

    @property
    def current_version(self) -> int:
        return 0 if self.current is None else self.current.version


class SequenceConflict(Conflict):
    """``expected_sequence`` did not match the stream's last sequence."""

    def __init__(self, message: str, current_sequence: int) -> None:
        super().__init__(message)
        self.current_sequence = current_sequence


class DuplicateItem(Conflict):
    """A batch mixes stored and new item ids, or re-uses an id with another body."""

    def __init__(self, message: str, item_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.item_ids = list(item_ids)


class ClaimLost(Conflict):
    """A write carrying an idempotency claim found that its owner no longer holds the
    key (the reservation's lease expired and another request took it over): the write
    was rolled back. Whoever holds the key now writes, once."""


class Unavailable(RevstoreError):
    """The database could not be reached, or retries were exhausted. Safe to retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AmbiguousCommit(Unavailable):
    """The connection was lost while the write was committing: it may or may not have
    landed. Only an idempotency key (stream ``item_ids``, HTTP ``Idempotency-Key``) makes
    a retry safe; otherwise read the current state before deciding."""


class SchemaMismatch(Unavailable):
    """The database's schema is newer than this release of revstore knows: a newer
    release has upgraded it. Nothing was read or written. Run a release that knows
    ``found`` (every process on one database must); revstore never downgrades a schema.

    An :class:`Unavailable` (HTTP 503): this process cannot serve the database, while
    an upgraded one can."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"the database schema is version {found}, but this release of revstore knows "
            f"versions up to {supported}: a newer revstore has upgraded this database. "
            f"Upgrade revstore here too (every process on one database must run a release "
            f"that knows schema version {found}); revstore never downgrades a schema",
            retry_after=30.0,
        )
        self.found = found
        self.supported = supported


# The retry categories (Retryable, Duplicate, …) are internal: they live in
# revstore.failures and are re-run by the retry policy. The two names this module used
# to define stay importable from here, loaded on first use (revstore.failures imports
# this module, so a plain import here would be circular).
_MOVED = {"Retryable", "Duplicate"}


def __getattr__(name: str) -> type[RevstoreError]:
    if name in _MOVED:
        from revstore import failures

        moved: type[RevstoreError] = getattr(failures, name)
        return moved
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
