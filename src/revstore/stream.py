"""Sequenced streams: the value types and the rules of an append.

``check_expected`` and ``classify_resend`` are the single statement of the stream
rules; every backend calls them while it holds the stream's lock, so two pods that
re-send the same batch at once are decided one after the other.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from revstore.content import JSON, Canonical
from revstore.errors import DuplicateItem, SequenceConflict


@dataclass(frozen=True, slots=True)
class StreamItem:
    sequence: int
    item_id: str | None
    body: JSON
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_sequence: int
    last_sequence: int
    items: list[StreamItem]
    duplicate: bool = False
    """True when every item was already stored: nothing was written, the stored
    sequences are returned (exactly-once effect of a re-sent batch)."""


@dataclass(frozen=True, slots=True)
class ReadPage:
    """Items in sequence order; pass ``next_after`` as ``after`` for the next page."""

    items: list[StreamItem]
    next_after: int | None

    def __iter__(self) -> Iterator[StreamItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    namespace: str
    id: str
    last_sequence: int
    item_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StreamPage:
    """Streams in id order; pass ``next_after`` as ``after`` for the next page."""

    streams: list[StreamInfo]
    next_after: str | None

    def __iter__(self) -> Iterator[StreamInfo]:
        return iter(self.streams)

    def __len__(self) -> int:
        return len(self.streams)


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An already stored item found by its client id (read under the stream lock)."""

    sequence: int
    item_id: str
    body_hash: str
    body: JSON
    created_at: datetime


def check_expected(stream_id: str, expected: int | None, last_sequence: int) -> None:
    if expected is not None and expected != last_sequence:
        raise SequenceConflict(
            f"stream {stream_id!r}: expected last sequence {expected}, "
            f"current last sequence is {last_sequence}",
            last_sequence,
        )


def classify_resend(
    stream_id: str,
    item_ids: Sequence[str],
    hashes: Sequence[str],
    stored: Mapping[str, StoredItem],
) -> AppendResult | None:
    """Given the items of this batch already stored (by item id), decide:

    - none stored: ``None`` (append the batch);
    - all stored with the same bodies: the stored result, ``duplicate=True``;
    - otherwise: DuplicateItem naming the offending ids.
    """
    if not stored:
        return None
    differing = [
        i for i, h in zip(item_ids, hashes, strict=True) if i in stored and stored[i].body_hash != h
    ]
    if differing:
        raise DuplicateItem(
            f"stream {stream_id!r}: item ids {differing} are already stored with a different body",
            differing,
        )
    missing = [i for i in item_ids if i not in stored]
    if missing:
        present = [i for i in item_ids if i in stored]
        raise DuplicateItem(
            f"stream {stream_id!r}: the batch mixes stored item ids {present} with new ones "
            f"{missing}; re-send the stored part alone or the new part alone",
            present,
        )
    items = [
        StreamItem(stored[i].sequence, i, stored[i].body, stored[i].created_at) for i in item_ids
    ]
    items.sort(key=lambda it: it.sequence)
    return AppendResult(items[0].sequence, items[-1].sequence, items, duplicate=True)


class AppendBatch:
    """A validated batch for ``append``."""

    __slots__ = ("bodies", "expected", "item_ids", "namespace", "stream_id")

    def __init__(
        self,
        namespace: str,
        stream_id: str,
        bodies: list[Canonical],
        item_ids: list[str] | None,
        expected: int | None,
    ) -> None:
        self.namespace = namespace
        self.stream_id = stream_id
        self.bodies = bodies
        self.item_ids = item_ids
        self.expected = expected
