"""JSON content: validation, canonical form, hashing, merge-patch and diff.

The canonical form (sorted keys, no whitespace, UTF-8, no NaN) is what is hashed and
stored, so two writers sending the same document in a different key order produce
the same ``content_hash`` and the second write is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, TypeAlias

from revstore.config import (  # the limits are configured in one place; re-exported
    DEFAULT_MAX_CONTENT_BYTES as DEFAULT_MAX_CONTENT_BYTES,
)
from revstore.config import MAX_DEPTH as MAX_DEPTH
from revstore.config import MAX_ID_LENGTH as MAX_ID_LENGTH
from revstore.config import MAX_INT_DIGITS as MAX_INT_DIGITS
from revstore.config import MAX_NUMBER as MAX_NUMBER
from revstore.config import MAX_PAGE_LIMIT
from revstore.diff import diff as json_diff
from revstore.errors import InvalidInput

JSON: TypeAlias = Any
"""A JSON value: dict with str keys, list, str, int, float, bool or None."""

_INT_BOUND = 10**MAX_INT_DIGITS

# The one text rule. Every text field (namespaces, ids, stream and item ids, list
# cursors, author, summary) must be text that every backend stores and compares byte
# for byte. Refused everywhere:
# - U+0000: PostgreSQL text cannot hold it (psycopg refuses it before sending);
# - lone surrogates U+D800-U+DFFF: not Unicode scalar values, no UTF-8 form;
# - the 66 noncharacters (U+FDD0-U+FDEF and U+xFFFE/U+xFFFF of every plane): SQLite's
#   LIKE reads U+FFFE/U+FFFF as U+FFFD, so a prefix listing would mix distinct ids.
# Identifiers (namespace, ids, cursors) also refuse control characters (C0, DEL, C1).
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane * 0x10000 + 0xFFFE)}{chr(plane * 0x10000 + 0xFFFF)}" for plane in range(17)
)
_BAD_TEXT = re.compile(f"[\x00\ud800-\udfff{_NONCHARACTERS}]")
_BAD_ID = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff{_NONCHARACTERS}]")


def _scalar(item: Any) -> bool:
    """Whether ``item`` is a JSON scalar ``validate_json`` would pass. Exact types only:
    a subclass (an ``IntEnum``) takes the full check."""
    kind = type(item)
    if kind is str or kind is bool or item is None:
        return True
    if kind is int:
        return bool(-_INT_BOUND < item < _INT_BOUND)
    return kind is float and math.isfinite(item)


def _shallow(value: JSON) -> JSON | None:
    """The common shape of a record, checked without the full check's stack: an object
    whose members are scalars, or arrays or objects of scalars. Returns the value as its
    canonical text decodes (a copy, objects in key order), or None for any other shape,
    which the full check then takes (a list that is a tuple, a key that is not a str)."""
    if type(value) is not dict:
        return None
    copy: dict[str, JSON] = {}
    for key, item in value.items():
        if type(key) is not str:
            return None
        kind = type(item)
        if kind is list:
            if not all(map(_scalar, item)):
                return None
            item = list(item)
        elif kind is dict:
            if not (all(type(k) is str for k in item) and all(map(_scalar, item.values()))):
                return None
            item = dict(sorted(item.items()))
        elif not _scalar(item):
            return None
        copy[key] = item
    return dict(sorted(copy.items()))


def validate_json(value: JSON, what: str = "content") -> None:
    """Raise InvalidInput unless ``value`` is plain JSON (no NaN, sets, bytes, non-str keys)."""
    if _shallow(value) is None:
        _validate_tree(value, what)


def _validate_tree(value: JSON, what: str) -> None:
    # An explicit stack instead of recursion: a hostile document cannot blow the stack.
    # ``depth`` counts the arrays/objects around ``item`` (0 at the root); ``where`` is
    # (parent's where, key or index), spelled out as a path only for an error message.
    stack: list[tuple[JSON, int, _Where]] = [(value, 0, None)]
    while stack:
        item, depth, where = stack.pop()
        if item is None or isinstance(item, (str, bool)):
            continue
        if isinstance(item, int):
            if not -_INT_BOUND < item < _INT_BOUND:
                raise InvalidInput(
                    f"{what} has an integer of more than {MAX_INT_DIGITS} digits at {_path(where)}"
                )
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(
                    f"{what} contains {shown(item)} at {_path(where)}: JSON has no NaN/Infinity"
                )
            continue
        if isinstance(item, (dict, list, tuple)) and depth >= MAX_DEPTH:
            raise InvalidInput(
                f"{what} is nested deeper than {MAX_DEPTH} levels of arrays/objects "
                f"(at {_path(where)})"
            )
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(
                        # Not {key!r}: the repr of a huge int key would raise.
                        f"{what} has an object key of type {type(key).__name__} at "
                        f"{_path(where)}: JSON keys are strings"
                    )
                stack.append((sub, depth + 1, (where, key)))
            continue
        if isinstance(item, (list, tuple)):
            for index, sub in enumerate(item):
                stack.append((sub, depth + 1, (where, index)))
            continue
        raise InvalidInput(
            f"{what} is not JSON-serialisable: {type(item).__name__} at {_path(where)} "
            "(use objects, arrays, strings, numbers, booleans and null)"
        )


_Where = tuple[Any, str | int] | None
"""Where an item sits in a document: None at the root, else (parent's, key or index)."""


def _path(where: _Where) -> str:
    """The item's path as ``$.key[0]…``, cut to 200 characters for a message."""
    parts: list[str] = []
    while where is not None:
        where, step = where
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    return ("$" + "".join(reversed(parts)))[:200]


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
"""One encoder for every call: ``json.dumps`` with these options builds a new one each
time (a tenth of a small write's content handling)."""


def canonical_json(value: JSON) -> str:
    """The canonical text of a JSON value (assumes ``validate_json`` passed)."""
    return _CANONICAL.encode(value)


def content_hash(canonical: str) -> str:
    """SHA-256 hex digest of the canonical text."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Canonical:
    """A validated JSON value with its canonical text, size and hash, computed once."""

    __slots__ = ("hash", "size", "text", "value")

    def __init__(self, value: JSON, *, max_bytes: int, what: str = "content") -> None:
        shallow = _shallow(value)
        if shallow is None:
            _validate_tree(value, what)
        self.text = canonical_json(value)
        data = utf8(self.text, what)  # encoded once: measured, then hashed
        self.size = len(data)
        if self.size > max_bytes:
            raise InvalidInput(
                f"{what} is {self.size} bytes of canonical JSON, "
                f"over the limit of {max_bytes} bytes"
            )
        # The value as the canonical text decodes (a copy: the caller's object may
        # change later); for the common shape, the copy ``_shallow`` made.
        self.value: JSON = json.loads(self.text) if shallow is None else shallow
        self.hash = hashlib.sha256(data).hexdigest()


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


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, bounded: a huge int's repr would raise
    ValueError (Python's int->str digit limit) and a long string would flood the
    message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except Exception:  # a user object whose __repr__ fails
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_text(
    value: object,
    what: str,
    *,
    max_length: int,
    min_length: int = 0,
    identifier: bool = False,
) -> str:
    """The one text rule (see ``_BAD_TEXT``): a ``str`` of ``min_length`` to
    ``max_length`` characters that every backend stores byte-exact; identifiers also
    refuse control characters. Raises InvalidInput naming the field and the character."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if len(value) < min_length:
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > max_length:
        raise InvalidInput(f"{what} is {len(value)} characters long; the limit is {max_length}")
    bad = (_BAD_ID if identifier else _BAD_TEXT).search(value)
    if bad is not None:
        ch = bad.group()
        if ch == "\x00":
            kind = "NUL"
        elif "\ud800" <= ch <= "\udfff":
            kind = "a lone surrogate"
        elif ch < "\ua000":
            kind = "a control character"
        else:
            kind = "a noncharacter"
        raise InvalidInput(f"{what} contains {kind} (U+{ord(ch):04X}) at index {bad.start()}")
    return value


def validate_id(value: object, what: str = "id") -> str:
    """Ids (and namespaces, cursors) are 1..255 characters under the text rule, without
    control characters."""
    return check_text(value, what, min_length=1, max_length=MAX_ID_LENGTH, identifier=True)


def optional_text(value: object, what: str, max_length: int) -> str | None:
    """A free-text field (author, summary): None, or text under the text rule."""
    if value is None:
        return None
    return check_text(value, what, max_length=max_length)


def validate_positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer, got {shown(value)}")
    if not 1 <= value <= MAX_NUMBER:
        raise InvalidInput(f"{what} must be from 1 to {MAX_NUMBER}, got {shown(value)}")
    return value


def validate_non_negative(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer, got {shown(value)}")
    if not 0 <= value <= MAX_NUMBER:
        raise InvalidInput(f"{what} must be from 0 to {MAX_NUMBER}, got {shown(value)}")
    return value


def validate_limit(value: object, maximum: int = MAX_PAGE_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"limit must be an integer from 1 to {maximum}, got {shown(value)}")
    return value
