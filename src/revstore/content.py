"""JSON content: validation, canonical form, hashing, merge-patch and diff.

The canonical form (sorted keys, no whitespace, UTF-8, no NaN) is what is hashed and
stored, so two writers sending the same document in a different key order produce
the same ``content_hash`` and the second write is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, TypeAlias

from revstore.config import (  # the limits are configured in one place; re-exported
    DEFAULT_MAX_CONTENT_BYTES as DEFAULT_MAX_CONTENT_BYTES,
)
from revstore.config import MAX_DEPTH as MAX_DEPTH
from revstore.config import MAX_ID_LENGTH as MAX_ID_LENGTH
from revstore.config import MAX_NUMBER as MAX_NUMBER
from revstore.config import MAX_PAGE_LIMIT
from revstore.diff import diff as json_diff
from revstore.errors import InvalidInput

JSON: TypeAlias = Any
"""A JSON value: dict with str keys, list, str, int, float, bool or None."""


def validate_json(value: JSON, what: str = "content") -> None:
    """Raise InvalidInput unless ``value`` is plain JSON (no NaN, sets, bytes, non-str keys)."""
    # An explicit stack instead of recursion: a hostile document cannot blow the stack.
    stack: list[tuple[JSON, int, str]] = [(value, 0, "$")]
    while stack:
        item, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{what} is nested deeper than {MAX_DEPTH} levels (at {path})")
        if item is None or isinstance(item, (str, bool, int)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(f"{what} contains {item!r} at {path}: JSON has no NaN/Infinity")
            continue
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(
                        f"{what} has a non-string object key {key!r} at {path}: "
                        "JSON keys are strings"
                    )
                stack.append((sub, depth + 1, f"{path}.{key}"))
            continue
        if isinstance(item, (list, tuple)):
            for index, sub in enumerate(item):
                stack.append((sub, depth + 1, f"{path}[{index}]"))
            continue
        raise InvalidInput(
            f"{what} is not JSON-serialisable: {type(item).__name__} at {path} "
            "(use objects, arrays, strings, numbers, booleans and null)"
        )


def canonical_json(value: JSON) -> str:
    """The canonical text of a JSON value (assumes ``validate_json`` passed)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def content_hash(canonical: str) -> str:
    """SHA-256 hex digest of the canonical text."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Canonical:
    """A validated JSON value with its canonical text, size and hash, computed once."""

    __slots__ = ("hash", "size", "text", "value")

    def __init__(self, value: JSON, *, max_bytes: int, what: str = "content") -> None:
        validate_json(value, what)
        self.text = canonical_json(value)
        self.size = len(utf8(self.text, what))
        if self.size > max_bytes:
            raise InvalidInput(
                f"{what} is {self.size} bytes of canonical JSON, "
                f"over the limit of {max_bytes} bytes"
            )
        self.value: JSON = json.loads(self.text)
        self.hash = content_hash(self.text)


def utf8(text: str, what: str) -> bytes:
    """Encode as UTF-8, refusing lone surrogates (which no database can store)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what} contains a lone surrogate {text[exc.start : exc.end]!r}: not valid Unicode"
        ) from None


def loads(text: str | bytes | JSON) -> JSON:
    """Decode stored JSON (drivers may hand back text or an already-decoded value)."""
    if isinstance(text, (str, bytes, bytearray)):
        return json.loads(text)
    return text


def merge_patch(target: JSON, patch: JSON) -> JSON:
    """RFC 7396 JSON Merge Patch: objects merge recursively, ``null`` removes a member,
    anything else replaces the target."""
    if not isinstance(patch, dict):
        return patch
    result: dict[str, JSON] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def diff(old: JSON, new: JSON) -> list[dict[str, JSON]]:
    """RFC 6902 JSON Patch operations that turn ``old`` into ``new``, in near-linear
    time (see ``revstore.diff``)."""
    return json_diff(old, new)


def validate_id(value: object, what: str = "id") -> str:
    """Ids are 1..255 characters with no control characters."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    utf8(value, what)
    for ch in value:
        if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            raise InvalidInput(f"{what} {value!r} contains the control character {ch!r}")
    return value


def validate_positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer, got {value!r}")
    if not 1 <= value <= MAX_NUMBER:
        raise InvalidInput(f"{what} must be from 1 to {MAX_NUMBER}, got {value}")
    return value


def validate_non_negative(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer, got {value!r}")
    if not 0 <= value <= MAX_NUMBER:
        raise InvalidInput(f"{what} must be from 0 to {MAX_NUMBER}, got {value}")
    return value


def validate_limit(value: object, maximum: int = MAX_PAGE_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"limit must be an integer from 1 to {maximum}, got {value!r}")
    return value
