"""Conditional requests (RFC 9110 §13): ETags are record revisions, e.g. ``"3"``.

A single strong ``If-Match`` tag becomes the store's ``expected_revision``, so the
check and the write are one atomic step. ``If-Match: *`` or a list of tags needs the
current revision first; the write then still carries it as its expectation, so a
change in between is caught (412), never overwritten.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from revstore.async_store import AsyncStore
from revstore.errors import NotFound, VersionConflict
from revstore.record import Record
from revstore.service.problems import ProblemError, version_conflict

ANY = "*"
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')
_MAX_STAR_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class ETag:
    weak: bool
    opaque: str

    def revision(self) -> int | None:
        """The revision this tag names, or None when no ETag we issue looks like it.

        Only the exact text of ``etag(revision)`` counts (entity tags compare as
        strings): ASCII digits, no leading zero, at least 1 (``"0"`` names no
        representation, RFC 9110 If-Match never matches a missing record) and within a
        BIGINT. ``str.isdigit`` alone would take "²" or Arabic-Indic digits.
        """
        text = self.opaque
        if not (0 < len(text) < 19 and text.isascii() and text.isdigit()) or text[0] == "0":
            return None
        return int(text)


def etag(revision: int) -> str:
    return f'"{revision}"'


def parse(value: str, header: str) -> list[ETag] | None:
    """The entity tags of an If-Match / If-None-Match header; None for ``*``."""
    text = value.strip()
    if text == ANY:
        return None
    tags: list[ETag] = []
    pos = 0
    while pos < len(text):
        m = _TAG.match(text, pos)
        if m is None or m.end() == pos:
            raise ProblemError(
                422,
                "invalid-input",
                f'{header} must be * or a list of quoted entity tags like "3", got {value!r}',
            )
        tags.append(ETag(m.group(1) is not None, m.group(2)))
        pos = m.end()
    if not tags:
        raise ProblemError(422, "invalid-input", f"{header} is empty")
    return tags


def not_modified(if_none_match: str | None, revision: int) -> bool:
    """GET: does If-None-Match match the current revision (weak comparison)?"""
    if if_none_match is None:
        return False
    tags = parse(if_none_match, "If-None-Match")
    if tags is None:
        return True
    return any(t.opaque == str(revision) for t in tags)


@dataclass(frozen=True, slots=True)
class WriteCondition:
    """What a record write must find: nothing (None), a revision, or a set of tags."""

    expected: int | None = None
    read_first: bool = False
    """If-Match needs the current revision first: ``*`` (tags None) or several or
    unusable tags."""
    tags: list[ETag] | None = None
    from_header: bool = False
    """A mismatch is 412 (a header precondition) rather than 409 (expected_revision)."""

    async def run(
        self,
        store: AsyncStore,
        id: str,
        namespace: str,
        write: Callable[[int | None], Awaitable[Record]],
    ) -> Record:
        """Run ``write(expected_revision)`` under this condition, mapping failures."""
        if not self.read_first:
            try:
                return await write(self.expected)
            except VersionConflict as exc:
                raise version_conflict(exc, precondition=self.from_header) from exc
        for _ in range(_MAX_STAR_ATTEMPTS):
            try:
                current = await store.get(id, namespace=namespace)
            except NotFound as exc:
                # If-Match fails when there is no current representation.
                raise ProblemError(
                    412,
                    "precondition-failed",
                    f"record {id!r} does not exist",
                    current_revision=0,
                    current_version=0,
                ) from exc
            if self.tags is not None and not any(
                not t.weak and t.revision() == current.revision for t in self.tags
            ):
                raise version_conflict(
                    VersionConflict(
                        f"record {id!r}: If-Match does not match the current revision "
                        f"{current.revision}",
                        current,
                    ),
                    precondition=True,
                )
            try:
                return await write(current.revision)
            except VersionConflict as exc:
                if self.tags is None and exc.current is not None:
                    continue  # changed in between but still exists: * still holds
                raise version_conflict(exc, precondition=True) from exc
        raise ProblemError(412, "precondition-failed", f"record {id!r} kept changing; try again")


def write_condition(
    if_match: str | None,
    if_none_match: str | None,
    expected_revision: int | None,
    *,
    require: bool,
) -> WriteCondition:
    """Combine the precondition headers and the body's ``expected_revision``."""
    if if_match is not None and if_none_match is not None:
        raise ProblemError(
            422, "invalid-input", "give either If-Match or If-None-Match on a write, not both"
        )
    header: int | None = None
    if if_none_match is not None:
        if parse(if_none_match, "If-None-Match") is not None:
            raise ProblemError(
                422, "invalid-input", "on a write, If-None-Match supports only * (create-only)"
            )
        header = 0
    elif if_match is not None:
        tags = parse(if_match, "If-Match")
        single = tags[0].revision() if tags and len(tags) == 1 and not tags[0].weak else None
        if single is None:
            if expected_revision is not None:
                raise ProblemError(
                    422, "invalid-input", "expected_revision needs a single If-Match revision"
                )
            return WriteCondition(read_first=True, tags=tags, from_header=True)
        header = single
    if header is not None:
        if expected_revision is not None and expected_revision != header:
            raise ProblemError(
                422,
                "invalid-input",
                f"expected_revision {expected_revision} contradicts the precondition header "
                f"(revision {header})",
            )
        return WriteCondition(expected=header, from_header=True)
    if expected_revision is not None:
        return WriteCondition(expected=expected_revision)
    if require:
        raise ProblemError(
            428,
            "precondition-required",
            'this server requires a conditional write: send If-Match: "<revision>" '
            "(or If-None-Match: * to create)",
        )
    return WriteCondition()
