"""What the lab needs from a target, whatever it is: the library, the naive strategy, or
the HTTP service. Every client speaks revstore's documented errors (VersionConflict,
SequenceConflict, DuplicateItem, NotFound, Unavailable, AmbiguousCommit) and the two
lab-level outcomes below; the workload classifies them, the checker never sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Head:
    """A record head as a write returned it or a read saw it."""

    revision: int
    version: int
    token: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One history entry of a record, reduced to what the checker compares."""

    version: int
    revision: int
    token: str | None


@dataclass(frozen=True, slots=True)
class Appended:
    first: int
    last: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Item:
    """One stored stream item: its sequence, client id and the token/index of its body."""

    sequence: int
    item_id: str | None
    token: str | None
    index: int | None


class OutcomeUnknown(Exception):
    """The request may have reached the target but no answer came back (timeout, lost
    connection). Like AmbiguousCommit: the write may or may not have landed."""


class ServerError(Exception):
    """The target answered with an error that its contract does not document (HTTP 5xx
    other than 503, or an unexpected 4xx)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class Client(Protocol):
    """One connection's worth of operations against a target."""

    def put(
        self,
        key: str,
        content: Mapping[str, Any],
        *,
        expected_revision: int | None = None,
        create_version: bool = True,
    ) -> Head: ...

    def patch(self, key: str, patch: Mapping[str, Any]) -> Head: ...

    def get(self, key: str) -> Head: ...

    def append(
        self, stream: str, items: Sequence[Mapping[str, Any]], item_ids: Sequence[str]
    ) -> Appended: ...

    def read(self, stream: str, after: int, limit: int) -> list[Item]: ...

    def history(self, key: str) -> list[Snapshot]:
        """Every snapshot of the record, oldest first (all pages)."""
        ...

    def read_all(self, stream: str) -> list[Item]:
        """Every item of the stream in sequence order (all pages)."""
        ...

    def close(self) -> None: ...


def token_of(content: Any) -> str | None:
    """The lab token a write put in a document (None for foreign content)."""
    if isinstance(content, dict):
        token = content.get("token")
        return token if isinstance(token, str) else None
    return None


def item_of(sequence: int, item_id: str | None, body: Any) -> Item:
    index = body.get("i") if isinstance(body, dict) else None
    return Item(sequence, item_id, token_of(body), index if isinstance(index, int) else None)
