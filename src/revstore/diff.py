"""RFC 6902 JSON Patch between two JSON values, in near-linear time.

``jsonpatch.make_patch`` compares arrays pairwise and is quadratic in their length
(40k elements take seconds, a 1 MiB document about a minute of CPU). This module
keeps the cost proportional to the size of the two documents:

- Equality is decided on a structural digest per container, computed once per node
  (memoised), so comparing two subtrees is O(1) after a single linear pass. Types are
  part of the digest: ``1``, ``1.0`` and ``true`` are different values here, as they
  are in canonical JSON (Python's ``==`` would call them equal).
- Objects are diffed key by key, recursing into keys present on both sides.
- Arrays: the common prefix and suffix are trimmed (linear), then the middle is
  aligned with Myers' O((N+M)·D) algorithm within a work budget shared by the whole
  diff; past it, on elements that occur once on each side (patience diff: a longest
  increasing chain of them, O(n log n)), recursing into the gaps between them; and
  where neither applies, the middle is edited element by element (position i of the
  old array becomes position i of the new one), which is always a correct patch, only
  a less minimal one. A removed run followed by an inserted run of elements at the same
  place is diffed element by element, so a one-element change in a long array is one
  operation (or a few deeper ones), never a replace of the whole array.

Operation values are the parts of ``new`` themselves (not copies).
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from typing import Any

JSON = Any

MYERS_BUDGET = 2_000_000
"""Steps (diagonals visited plus equal elements followed) that all Myers alignments of
one diff may take together, about a second of CPU at most. An alignment that runs out
leaves its array to anchoring on unique elements, then to element-wise editing."""

MYERS_STEPS_PER_ELEMENT = 64
"""One alignment takes at most this many steps per element of the two middles (and at
most half the budget left), so a hopeless alignment of a short array gives up early."""

MYERS_MAX_D = 1000
"""Most edits one alignment looks for: its trace takes O(D²) memory."""

ANCHOR_SHARE = 16
"""Anchors are used when they are at least 1/16 of the shorter middle."""

MAX_ANCHOR_DEPTH = 8
"""How deep anchoring on unique elements recurses into the gaps between anchors."""

_DIGEST_SIZE = 20


def escape(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901): ``~`` → ``~0``, ``/`` → ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


class _Differ:
    __slots__ = ("_digests", "budget", "ops")

    def __init__(self) -> None:
        self.ops: list[dict[str, JSON]] = []
        self.budget = MYERS_BUDGET
        """Myers work left for this whole diff (it is shared by every array in it)."""
        # id() of a container → its digest. Both documents stay alive for the whole
        # diff, so an id is never reused for another container meanwhile.
        self._digests: dict[int, bytes] = {}

    # ------------------------------------------------------------ equality keys

    def key(self, value: JSON) -> object:
        """A value equal for two JSON values exactly when they are the same JSON.

        Scalars are their own keys, tagged where Python's equality mixes JSON types
        (``True == 1 == 1.0``; ``0.0 == -0.0``). Containers get a digest (bytes),
        which never equals a scalar key."""
        t = type(value)
        if t is str or value is None:
            return value
        if t is int:
            return value
        if t is bool:
            return ("b", value)
        if t is float:
            return ("f", repr(value))
        return self._digest(value)

    def _digest(self, value: JSON) -> bytes:
        known = self._digests.get(id(value))
        if known is not None:
            return known
        h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
        if isinstance(value, dict):
            h.update(b"{")
            # Key order does not matter in JSON: feed members sorted by key.
            for k in sorted(value):
                _feed_str(h, k)
                self._feed(h, value[k])
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            h.update(len(value).to_bytes(8, "little"))
            for item in value:
                self._feed(h, item)
        else:
            raise TypeError(f"not a JSON value: {type(value).__name__}")
        digest = h.digest()
        self._digests[id(value)] = digest
        return digest

    def _feed(self, h: Any, value: JSON) -> None:
        t = type(value)
        if t is str:
            h.update(b"s")
            _feed_str(h, value)
        elif value is None:
            h.update(b"n")
        elif t is bool:
            h.update(b"T" if value else b"F")
        elif t is int:
            text = str(value).encode()
            h.update(b"i" + len(text).to_bytes(4, "little") + text)
        elif t is float:
            text = repr(value).encode()
            h.update(b"f" + len(text).to_bytes(4, "little") + text)
        else:
            h.update(b"c" + self._digest(value))

    def same(self, a: JSON, b: JSON) -> bool:
        return a is b or self.key(a) == self.key(b)

    # ------------------------------------------------------------ diff

    def diff(self, path: str, a: JSON, b: JSON) -> None:
        if self.same(a, b):
            return
        if isinstance(a, dict) and isinstance(b, dict):
            self._diff_object(path, a, b)
        elif isinstance(a, list) and isinstance(b, list):
            self._diff_array(path, a, b)
        else:
            self.ops.append({"op": "replace", "path": path, "value": b})

    def _diff_object(self, path: str, a: dict[str, JSON], b: dict[str, JSON]) -> None:
        for k in a:
            if k not in b:
                self.ops.append({"op": "remove", "path": f"{path}/{escape(k)}"})
        for k, v in b.items():
            if k in a:
                self.diff(f"{path}/{escape(k)}", a[k], v)
            else:
                self.ops.append({"op": "add", "path": f"{path}/{escape(k)}", "value": v})

    def _diff_array(self, path: str, a: list[JSON], b: list[JSON]) -> None:
        keys_a = [self.key(x) for x in a]
        keys_b = [self.key(x) for x in b]
        script: list[tuple[str, int]] = []
        self._align(keys_a, keys_b, 0, len(a), 0, len(b), script, 0)
        self._apply_script(path, 0, a, b, script)

    def _align(
        self,
        ka: list[object],
        kb: list[object],
        lo_a: int,
        hi_a: int,
        lo_b: int,
        hi_b: int,
        out: list[tuple[str, int]],
        depth: int,
    ) -> None:
        """Append to ``out`` an edit script from ``ka[lo_a:hi_a]`` to ``kb[lo_b:hi_b]``."""
        while lo_a < hi_a and lo_b < hi_b and ka[lo_a] == kb[lo_b]:
            out.append(("=", lo_a))
            lo_a += 1
            lo_b += 1
        tail = 0
        while (
            hi_a - tail > lo_a and hi_b - tail > lo_b and ka[hi_a - 1 - tail] == kb[hi_b - 1 - tail]
        ):
            tail += 1
        hi_a -= tail
        hi_b -= tail
        if (
            lo_a == hi_a
            or lo_b == hi_b
            or not self._align_middle(ka, kb, lo_a, hi_a, lo_b, hi_b, out, depth)
        ):
            # One side is empty, or no alignment within the budget: one run of
            # removals then insertions, which _apply_script edits element by element.
            out.extend(("-", i) for i in range(lo_a, hi_a))
            out.extend(("+", j) for j in range(lo_b, hi_b))
        out.extend(("=", i) for i in range(hi_a, hi_a + tail))

    def _align_middle(
        self,
        ka: list[object],
        kb: list[object],
        lo_a: int,
        hi_a: int,
        lo_b: int,
        hi_b: int,
        out: list[tuple[str, int]],
        depth: int,
    ) -> bool:
        """Align two non-empty middles whose ends differ: Myers when the edits fit the
        budget, else anchored on elements that occur once on each side (patience
        diff), recursing into the gaps between anchors. False: neither applies."""
        sub_a = ka[lo_a:hi_a]
        sub_b = kb[lo_b:hi_b]
        # At most half of what is left: the gaps between anchors may need the rest.
        allowance = min(self.budget // 2, MYERS_STEPS_PER_ELEMENT * (len(sub_a) + len(sub_b)))
        count_a = Counter(sub_a)
        count_b = Counter(sub_b)
        # Every element of one side missing from the other costs one edit at least,
        # and reaching D edits costs about D²/2 steps: skip Myers when it cannot end.
        lower_bound = (count_a - count_b).total() + (count_b - count_a).total()
        if lower_bound <= MYERS_MAX_D and lower_bound * lower_bound // 2 <= allowance:
            script, steps = _myers(sub_a, sub_b, MYERS_MAX_D, allowance)
            self.budget -= steps
            if script is not None:
                out.extend((op, i + (lo_a if op != "+" else lo_b)) for op, i in script)
                return True
        if depth >= MAX_ANCHOR_DEPTH:
            return False
        pos_b = {k: j for j, k in enumerate(sub_b) if count_b[k] == 1}
        pairs = [(i, pos_b[k]) for i, k in enumerate(sub_a) if count_a[k] == 1 and k in pos_b]
        anchors = _longest_increasing(pairs)
        if len(anchors) < max(1, min(len(sub_a), len(sub_b)) // ANCHOR_SHARE):
            # Too few to help (a reversed or shuffled array): around one anchor, the
            # gaps would be removed and added whole, twice the operations of editing
            # the elements in place.
            return False
        prev_a, prev_b = lo_a, lo_b
        for i, j in anchors:
            self._align(ka, kb, prev_a, lo_a + i, prev_b, lo_b + j, out, depth + 1)
            out.append(("=", lo_a + i))
            prev_a, prev_b = lo_a + i + 1, lo_b + j + 1
        self._align(ka, kb, prev_a, hi_a, prev_b, hi_b, out, depth + 1)
        return True

    def _apply_script(
        self,
        path: str,
        pos: int,
        mid_a: list[JSON],
        mid_b: list[JSON],
        script: list[tuple[str, int]],
    ) -> None:
        """Turn an edit script (``=``/``-``/``+`` with indexes into ``mid_a`` /
        ``mid_b``) into operations; ``pos`` is the current index in the array as the
        earlier operations have left it."""
        removed: list[int] = []
        inserted: list[int] = []

        def flush() -> None:
            nonlocal pos
            paired = min(len(removed), len(inserted))
            # A removed run and an inserted run at the same place: change the
            # elements in place (recursively), then remove or add the rest.
            for i, j in zip(removed[:paired], inserted[:paired], strict=True):
                self.diff(f"{path}/{pos}", mid_a[i], mid_b[j])
                pos += 1
            for _ in removed[paired:]:
                self.ops.append({"op": "remove", "path": f"{path}/{pos}"})
            for j in inserted[paired:]:
                self.ops.append({"op": "add", "path": f"{path}/{pos}", "value": mid_b[j]})
                pos += 1
            removed.clear()
            inserted.clear()

        for kind, index in script:
            if kind == "=":
                flush()
                pos += 1
            elif kind == "-":
                removed.append(index)
            else:
                inserted.append(index)
        flush()


def _feed_str(h: Any, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _myers(
    a: list[object], b: list[object], max_d: int, max_steps: int
) -> tuple[list[tuple[str, int]] | None, int]:
    """The shortest edit script from ``a`` to ``b`` (Myers 1986), or ``None`` when it
    needs more than ``max_d`` edits or ``max_steps`` steps; and the steps taken.
    Entries: ``("=", i)``, ``("-", i)`` (remove ``a[i]``), ``("+", j)`` (insert
    ``b[j]``), in order."""
    n, m = len(a), len(b)
    max_d = min(max_d, n + m)
    steps = 0
    offset = max_d + 1
    v = [0] * (2 * max_d + 3)
    trace: list[list[int]] = []
    found = -1
    for d in range(max_d + 1):
        # Keep only the diagonals this round can reach: memory O(D²), not O((N+M)·D).
        trace.append(v[offset - d - 1 : offset + d + 2])
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[offset + k - 1] < v[offset + k + 1]):
                x = v[offset + k + 1]
            else:
                x = v[offset + k - 1] + 1
            y = x - k
            start = x
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            v[offset + k] = x
            steps += 1 + x - start
            if x >= n and y >= m:
                found = d
                break
            if steps > max_steps:
                return None, steps
        if found >= 0:
            break
    if found < 0:
        return None, steps
    # Walk back through the saved rounds to recover the path.
    script: list[tuple[str, int]] = []
    x, y = n, m
    for d in range(found, 0, -1):
        saved = trace[d]  # v before round d, diagonal k at saved[k + d + 1]
        k = x - y
        if k == -d or (k != d and saved[k - 1 + d + 1] < saved[k + 1 + d + 1]):
            prev_k = k + 1  # reached by an insertion (a step down: y + 1)
        else:
            prev_k = k - 1  # reached by a removal (a step right: x + 1)
        prev_x = saved[prev_k + d + 1]
        prev_y = prev_x - prev_k
        mid_x = prev_x if prev_k == k + 1 else prev_x + 1
        while x > mid_x:  # the diagonal run of equal elements after the edit
            x -= 1
            y -= 1
            script.append(("=", x))
        if prev_k == k + 1:
            script.append(("+", prev_y))
        else:
            script.append(("-", prev_x))
        x, y = prev_x, prev_y
    while x > 0:
        x -= 1
        y -= 1
        script.append(("=", x))
    script.reverse()
    return script, steps


def _longest_increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest chain of ``pairs`` (sorted by first) increasing in second, in
    O(k log k) (patience sorting)."""
    tails: list[int] = []  # tails[L]: smallest second ending a chain of length L + 1
    tail_at: list[int] = []  # index in pairs of that chain's last pair
    back: list[int] = [-1] * len(pairs)
    for idx, (_, j) in enumerate(pairs):
        length = bisect.bisect_left(tails, j)
        if length == len(tails):
            tails.append(j)
            tail_at.append(idx)
        else:
            tails[length] = j
            tail_at[length] = idx
        back[idx] = tail_at[length - 1] if length else -1
    chain: list[tuple[int, int]] = []
    idx = tail_at[-1] if tail_at else -1
    while idx >= 0:
        chain.append(pairs[idx])
        idx = back[idx]
    chain.reverse()
    return chain


def diff(old: JSON, new: JSON) -> list[dict[str, JSON]]:
    """RFC 6902 JSON Patch operations that turn ``old`` into ``new``."""
    differ = _Differ()
    differ.diff("", old, new)
    return differ.ops
