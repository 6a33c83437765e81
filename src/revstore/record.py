"""Versioned records: the value types and the rules of a write.

``plan_write`` is the single statement of the revision/version arithmetic. Every
backend path that reads the head before writing (the lock and optimistic strategies,
and the fallback of the counter fast paths) asks it what to do, so the rules live
here and nowhere else. The counter fast paths encode the same rules as SQL ``WHERE``
clauses and fall back to ``plan_write`` whenever their statement matched no row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from revstore.content import JSON
from revstore.errors import NotFound, VersionConflict


@dataclass(frozen=True, slots=True)
class Record:
    """The head of a record."""

    namespace: str
    id: str
    revision: int
    version: int
    content: JSON
    content_hash: str
    created_at: datetime
    updated_at: datetime
    unchanged: bool = False
    """True when the write that returned this head wrote nothing (same content hash)."""
    created: bool = False
    """True when the write that returned this head created the record (or revived a
    deleted one)."""


@dataclass(frozen=True, slots=True)
class Version:
    """One history snapshot of a record."""

    version: int
    revision: int
    content: JSON
    content_hash: str
    author: str | None
    summary: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Snapshots oldest first; pass ``next_after`` as ``after`` for the next page."""

    versions: list[Version]
    next_after: int | None

    def __iter__(self) -> Iterator[Version]:
        return iter(self.versions)

    def __len__(self) -> int:
        return len(self.versions)


@dataclass(frozen=True, slots=True)
class RecordPage:
    """Record heads in id order; pass ``next_after`` as ``after`` for the next page."""

    records: list[Record]
    next_after: str | None

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True, slots=True)
class Head:
    """What a backend read of the head row, before deciding a write."""

    revision: int
    version: int
    content_hash: str
    deleted: bool


class Mode(Enum):
    PUT = "put"
    """Replace the content (create when absent)."""
    UPDATE = "update"
    """Replace the content of an existing record (patch, restore): absent -> NotFound."""
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WriteIntent:
    """What the caller asked for, independent of the backend."""

    namespace: str
    id: str
    mode: Mode
    expected_revision: int | None
    create_version: bool = True
    content_text: str = ""
    content_hash: str = ""
    content_value: JSON = None
    author: str | None = None
    summary: str | None = None


class Action(Enum):
    INSERT = "insert"
    """No head row yet: insert revision 1 (and version 1 when a snapshot is made)."""
    UPDATE = "update"
    """Update the head row to the planned numbers."""
    UNCHANGED = "unchanged"
    """Same content as the head: write nothing, return the head."""


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    revision: int = 0
    version: int = 0
    snapshot: bool = False
    deleted: bool = False


def plan_write(
    head: Head | None, intent: WriteIntent, load_current: Callable[[], Record | None]
) -> Plan:
    """Decide a write from the head as read under the backend's lock (or snapshot).

    Raises VersionConflict (with the live head from ``load_current``, or None) or NotFound.
    """
    live = head is not None and not head.deleted
    exp = intent.expected_revision
    if exp is not None:
        # expected_revision=0 means "must not exist yet"; a tombstone counts as absent.
        actual = head.revision if (head is not None and live) else 0
        if exp != actual:
            shown = load_current() if live else None
            raise VersionConflict(
                f"record {intent.id!r}: expected revision {exp}, current revision is {actual}",
                shown,
            )
    if intent.mode is not Mode.PUT and not live:
        raise NotFound(f"record {intent.id!r} does not exist in namespace {intent.namespace!r}")
    if intent.mode is Mode.DELETE:
        assert head is not None
        return Plan(Action.UPDATE, revision=head.revision + 1, version=head.version, deleted=True)
    if head is None:
        version = 1 if intent.create_version else 0
        return Plan(Action.INSERT, revision=1, version=version, snapshot=intent.create_version)
    if live and head.content_hash == intent.content_hash:
        return Plan(Action.UNCHANGED, revision=head.revision, version=head.version)
    snapshot = intent.create_version
    return Plan(
        Action.UPDATE,
        revision=head.revision + 1,
        version=head.version + (1 if snapshot else 0),
        snapshot=snapshot,
    )
