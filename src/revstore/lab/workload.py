"""Workloads: what each writer does, op by op, and how each outcome is classified.

Record ops: ``put`` (blind), ``cas`` (read, put with expected revision, re-read and
retry on conflict), ``patch`` (merge-patch), ``autosave`` (put with
``create_version=false``), ``read``. Stream ops: ``append`` (a batch with item ids),
``resend`` (the same ids and bodies again, as after a lost reply), ``sread``.

Every write carries a unique token (its op id) in its content, so the checker can find
each write in the final state exactly once, or not at all.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from revstore.errors import (
    DuplicateItem,
    NotFound,
    SequenceConflict,
    Unavailable,
    VersionConflict,
)
from revstore.lab.client import Client, OutcomeUnknown, ServerError
from revstore.lab.history import FAIL, INFO, OK, Op, Recorder

RECORD_KINDS = ("put", "cas", "patch", "autosave", "read")
STREAM_KINDS = ("append", "resend", "sread")
KINDS = RECORD_KINDS + STREAM_KINDS
DEFAULT_MIX: dict[str, int] = {
    "put": 3,
    "cas": 3,
    "patch": 2,
    "autosave": 1,
    "read": 3,
    "append": 4,
    "resend": 1,
    "sread": 2,
}

# Refusals the API documents: they wrote nothing, so the op definitely did not happen.
DEFINITE = (VersionConflict, SequenceConflict, DuplicateItem, NotFound)


def classify(exc: BaseException) -> tuple[str, str, bool]:
    """(outcome, error name, unexpected) for an exception raised by a client."""
    if isinstance(exc, DEFINITE):
        return FAIL, type(exc).__name__, False
    if isinstance(exc, (Unavailable, OutcomeUnknown)):
        # AmbiguousCommit is an Unavailable: the write may have landed. Plain Unavailable
        # should mean "nothing written", but the lab does not take a target's word for
        # it: the final state decides.
        return INFO, type(exc).__name__, False
    if isinstance(exc, ServerError):
        return INFO, f"HTTP {exc.status}", True
    return INFO, type(exc).__name__, True


def describe_error(exc: BaseException, unexpected: bool) -> str:
    """The message, and for an undocumented error where revstore let it escape (the
    innermost revstore frame outside the lab): what a maintainer needs first."""
    # SQLAlchemy appends the statement and its parameters: not what a reader needs.
    message = " ".join(str(exc).split("[SQL:", 1)[0].split())[:300]
    if not unexpected:
        return message
    where = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = frame.filename.replace("\\", "/")
        if "/revstore/" in path and "/revstore/lab/" not in path:
            where = f"{path.rsplit('/revstore/', 1)[1]}:{frame.lineno} in {frame.name}"
    return f"{message} [escaped from revstore/{where}]" if where else message


def parse_mix(text: str) -> dict[str, int]:
    """``put=3,cas=1,read=2`` -> weights; unknown kinds or bad numbers raise ValueError."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise ValueError(f"unknown op kind {name!r} in --mix; kinds: {', '.join(KINDS)}")
        try:
            value = int(weight) if weight else 1
        except ValueError:
            raise ValueError(f"weight of {name!r} in --mix must be an integer") from None
        if value < 0:
            raise ValueError(f"weight of {name!r} in --mix must be 0 or more")
        mix[name] = value
    return mix


@dataclass(frozen=True, slots=True)
class Workload:
    """What writers do; plain data so it can be sent to worker processes."""

    record_keys: tuple[str, ...]
    stream_keys: tuple[str, ...]
    mix: tuple[tuple[str, int], ...]
    batch_max: int = 3
    cas_attempts: int = 25
    read_limit: int = 20

    @property
    def kinds(self) -> list[str]:
        return [k for k, w in self.mix if w > 0]


def build_workload(
    prefix: str,
    keys: int,
    families: set[str],
    mix: dict[str, int] | None = None,
    batch_max: int = 3,
    unsupported: set[str] | None = None,
) -> Workload:
    weights = dict(DEFAULT_MIX)
    if mix is not None:
        weights = {k: mix.get(k, 0) for k in KINDS} if mix else weights
    chosen = {k: w for k, w in weights.items() if w > 0}
    if "records" not in families:
        chosen = {k: w for k, w in chosen.items() if k not in RECORD_KINDS}
    if "streams" not in families:
        chosen = {k: w for k, w in chosen.items() if k not in STREAM_KINDS}
    for kind in unsupported or set():
        chosen.pop(kind, None)
    if not chosen:
        raise ValueError("the workload has no operation left to run (check --workload and --mix)")
    record_keys = tuple(f"{prefix}-r{k}" for k in range(keys)) if _any(chosen, RECORD_KINDS) else ()
    stream_keys = tuple(f"{prefix}-s{k}" for k in range(keys)) if _any(chosen, STREAM_KINDS) else ()
    return Workload(record_keys, stream_keys, tuple(sorted(chosen.items())), batch_max)


def _any(chosen: dict[str, int], kinds: tuple[str, ...]) -> bool:
    return any(k in chosen for k in kinds)


class Budget:
    """A shared countdown of ops (``None``: unlimited)."""

    def __init__(self, total: int | None) -> None:
        self._left = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self._left is None:
            return True
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


@dataclass(slots=True)
class _Batch:
    op_id: str
    stream: str
    token: str
    item_ids: list[str]


class Writer:
    """One client: runs ops one after another (so per-client order is real order)."""

    def __init__(
        self,
        client: Client,
        recorder: Recorder,
        workload: Workload,
        client_id: str,
        seed: int,
        t0: float,
    ) -> None:
        self.client = client
        self.recorder = recorder
        self.w = workload
        self.client_id = client_id
        # A string seed is hashed with SHA-512: the same on every run and machine.
        self.rng = random.Random(f"{seed}:{client_id}")
        self.t0 = t0
        self.n = 0
        self._kinds = workload.kinds
        self._weights = [w for _, w in workload.mix if w > 0]
        self._last_seen: dict[str, int] = {}
        self._sent: list[_Batch] = []
        self._unsure: list[_Batch] = []

    def run(self, should_stop: Callable[[], bool], budget: Budget) -> None:
        while not should_stop() and budget.take():
            kind = self.rng.choices(self._kinds, self._weights)[0]
            self.step(kind)

    def _new(self, kind: str, key: str) -> Op:
        self.n += 1
        op_id = f"{self.client_id}.{self.n}"
        return Op(op_id, self.client_id, kind, key, start=time.monotonic() - self.t0, token=op_id)

    def step(self, kind: str) -> Op:
        if kind in RECORD_KINDS:
            op = self._new(kind, self.rng.choice(self.w.record_keys))
        elif kind == "resend" and (self._unsure or self._sent):
            # A lost reply is re-sent first; otherwise any recent batch is re-sent.
            batch = self._unsure.pop(0) if self._unsure else self.rng.choice(self._sent[-8:])
            op = self._new("resend", batch.stream)
            op.token, op.item_ids, op.of = batch.token, list(batch.item_ids), batch.op_id
        else:
            kind = "append" if kind == "resend" else kind
            op = self._new(kind, self.rng.choice(self.w.stream_keys))
            if kind == "append":
                size = self.rng.randint(1, self.w.batch_max)
                op.item_ids = [f"{op.id}.{i}" for i in range(size)]
        self.recorder.invoke(op)
        try:
            getattr(self, f"_do_{op.kind}")(op)
            op.outcome = OK
        except Exception as exc:  # every error is recorded and classified, none hidden
            op.outcome, op.error, op.unexpected = classify(exc)
            op.message = describe_error(exc, op.unexpected)
        op.end = time.monotonic() - self.t0
        if op.kind in ("append", "resend") and op.item_ids is not None and op.token is not None:
            batch = _Batch(op.of or op.id, op.key, op.token, op.item_ids)
            if op.kind == "append":
                self._sent.append(batch)
            if op.outcome == INFO:
                self._unsure.append(batch)
        self.recorder.complete(op)
        return op

    def _content(self, op: Op) -> dict[str, str]:
        return {"token": op.token or op.id, "by": self.client_id, "kind": op.kind}

    def _do_put(self, op: Op) -> None:
        head = self.client.put(op.key, self._content(op))
        op.revision, op.version = head.revision, head.version

    def _do_autosave(self, op: Op) -> None:
        head = self.client.put(op.key, self._content(op), create_version=False)
        op.revision, op.version = head.revision, head.version

    def _do_patch(self, op: Op) -> None:
        head = self.client.patch(op.key, self._content(op))
        op.revision, op.version = head.revision, head.version

    def _read_revision(self, key: str) -> int:
        try:
            return self.client.get(key).revision
        except NotFound:
            return 0

    def _do_cas(self, op: Op) -> None:
        expected = op.read_revision = self._read_revision(op.key)
        for attempt in range(self.w.cas_attempts):
            try:
                head = self.client.put(op.key, self._content(op), expected_revision=expected)
            except VersionConflict as exc:
                # The conflict is definite (nothing written); re-apply on the new head.
                op.conflicts += 1
                if attempt + 1 == self.w.cas_attempts:
                    raise
                hint = getattr(exc, "revision_hint", None)  # set by the HTTP client
                if exc.current is not None:
                    expected = exc.current.revision
                elif isinstance(hint, int):
                    expected = hint
                else:
                    expected = self._read_revision(op.key)
                continue
            op.revision, op.version = head.revision, head.version
            return

    def _do_read(self, op: Op) -> None:
        head = self.client.get(op.key)
        op.revision, op.version, op.seen_token = head.revision, head.version, head.token

    def _do_append(self, op: Op) -> None:
        assert op.item_ids is not None
        token = op.token or op.id
        items = [{"token": token, "i": i} for i in range(len(op.item_ids))]
        res = self.client.append(op.key, items, op.item_ids)
        op.first, op.last, op.duplicate = res.first, res.last, res.duplicate
        self._last_seen[op.key] = max(self._last_seen.get(op.key, 0), res.last)

    _do_resend = _do_append

    def _do_sread(self, op: Op) -> None:
        # Ask from just before the last sequence this client saw: the page must hold it
        # again, or the stream went backwards for this client.
        after = max(0, self._last_seen.get(op.key, 0) - 1)
        op.after = after
        items = self.client.read(op.key, after, self.w.read_limit)
        op.seen = [(it.sequence, it.item_id) for it in items]
        op.last = max((it.sequence for it in items), default=after)
        self._last_seen[op.key] = max(self._last_seen.get(op.key, 0), op.last)


def seed_records(client: Client, recorder: Recorder, workload: Workload, t0: float) -> None:
    """Create every record before the run (recorded like any write), so patches and
    reads find them and every later write is an update."""
    for n, key in enumerate(workload.record_keys):
        op = Op(f"setup.{n}", "setup", "seed", key, start=time.monotonic() - t0)
        op.token = op.id
        recorder.invoke(op)
        try:
            head = client.put(key, {"token": op.id, "by": "setup", "kind": "seed"})
            op.revision, op.version, op.outcome = head.revision, head.version, OK
        except Exception as exc:
            op.outcome, op.error, op.unexpected = classify(exc)
            op.message = describe_error(exc, op.unexpected)
        op.end = time.monotonic() - t0
        recorder.complete(op)
