"""Retention: how many versions of each record a namespace keeps, free of I/O.

A policy keeps the last ``keep_last`` versions of each record, and / or the versions
younger than ``max_age`` seconds; a version that either rule keeps is kept, and the
newest version is always kept. Removal is applied in small steps (one record, at most
``CHUNK`` versions, per transaction: ``Store.apply_retention``), so writers of the same
record never wait for more than one short delete. Numbering never reuses a removed
number: the next version comes from the record's head, never from its history.

A record's oldest kept version is remembered (``revstore_compacted``): reading a version
below it raises :class:`~revstore.errors.VersionCompacted` (HTTP 410), and its history
starts there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from revstore.content import shown
from revstore.errors import InvalidInput

CHUNK = 500
"""Versions removed per transaction at most."""

PAGE = 200
"""Records looked at per query while applying a policy."""

MAX_KEEP_LAST = 1 << 40
MAX_AGE_SECONDS = 100 * 365 * 86400


@dataclass(frozen=True, slots=True)
class Policy:
    """A namespace's retention policy (None: that rule is not set)."""

    namespace: str
    keep_last: int | None
    max_age_seconds: int | None
    updated_at: datetime | None = None

    def cutoff(self, newest: int, first_young: int | None) -> int:
        """The oldest version to keep of a record whose newest version is ``newest`` and
        whose oldest version younger than ``max_age`` is ``first_young`` (None: none
        is). Every version below the cutoff may go."""
        keeps: list[int] = []
        if self.keep_last is not None:
            keeps.append(newest - self.keep_last + 1)
        if self.max_age_seconds is not None:
            keeps.append(first_young if first_young is not None else newest)
        # A version either rule keeps is kept: the lower cutoff; the newest always.
        return min([*keeps, newest]) if keeps else 1


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one ``apply_retention`` did."""

    namespaces: int
    records: int
    """Records that lost versions."""
    versions_removed: int


def check_policy(keep_last: object, max_age: object) -> tuple[int | None, int | None]:
    """``keep_last`` (versions, ≥ 1) and ``max_age`` (seconds, ≥ 1, an int or float),
    either may be None (not set); both None clears the policy."""
    if keep_last is not None and (
        not isinstance(keep_last, int)
        or isinstance(keep_last, bool)
        or not 1 <= keep_last <= MAX_KEEP_LAST
    ):
        raise InvalidInput(f"keep_last must be a whole number from 1, got {shown(keep_last)}")
    if max_age is not None and (
        not isinstance(max_age, (int, float))
        or isinstance(max_age, bool)
        or not 1 <= max_age <= MAX_AGE_SECONDS
    ):
        raise InvalidInput(
            f"max_age must be a number of seconds from 1 to {MAX_AGE_SECONDS}, got {shown(max_age)}"
        )
    return keep_last, None if max_age is None else int(max_age)
