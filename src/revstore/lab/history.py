"""The recorded history: every operation as invoked and as completed (Jepsen style).

An operation is recorded twice: when it is *invoked* (before the request leaves) and
when it *completes* with one of three outcomes:

- ``ok``: acknowledged; the target said it happened.
- ``fail``: a documented refusal (a conflict, not found): it definitely did not happen.
- ``info``: indeterminate (AmbiguousCommit, Unavailable, timeout, lost connection, a
  killed worker, an undocumented error): it may or may not have happened. The checker
  resolves it against the final state instead of counting it as a success.

An op invoked but never completed (its worker was killed, or it was still in flight
when the run was abandoned) ends up ``info`` too.

Worker processes write the same events as JSON lines to a per-worker file with one
``os.write`` per line, so a ``kill -9`` loses at most the line being written; the
parent tails the files into a :class:`History`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

OK = "ok"
FAIL = "fail"
INFO = "info"
PENDING = "pending"

RECORD_WRITES = ("seed", "put", "cas", "patch", "autosave")
STREAM_WRITES = ("append", "resend")
READS = ("read", "sread")


@dataclass(slots=True)
class Op:
    """One operation of one client. Field meaning depends on ``kind``:

    - record writes (seed, put, cas, patch, autosave): ``token`` written in the content;
      on ok, ``revision``/``version`` returned. ``cas`` also keeps the revision it read
      first (``read_revision``) and how many conflicts it met (``conflicts``).
    - ``read``: ``revision``/``version``/``seen_token`` of the head it saw.
    - ``append``/``resend``: ``token`` of the batch, its ``item_ids``, on ok ``first``/
      ``last``/``duplicate``; a resend names the original op in ``of``.
    - ``sread``: ``after`` it asked for, ``last`` it observed, ``seen`` (sequence, item id).
    """

    id: str
    client: str
    kind: str
    key: str
    start: float
    token: str | None = None
    item_ids: list[str] | None = None
    of: str | None = None
    end: float | None = None
    outcome: str = PENDING
    error: str | None = None
    message: str | None = None
    unexpected: bool = False
    """The error is not one the target documents (a 500, a raw driver exception)."""
    revision: int | None = None
    version: int | None = None
    read_revision: int | None = None
    seen_token: str | None = None
    first: int | None = None
    last: int | None = None
    after: int | None = None
    duplicate: bool | None = None
    conflicts: int = 0
    seen: list[tuple[int, str | None]] | None = None

    @property
    def latency(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        # Drop defaults: histories of many thousand ops stay small in files and JSON.
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name in ("unexpected", "conflicts") and not value):
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Op:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("seen") is not None:
            values["seen"] = [(int(s), i) for s, i in values["seen"]]
        return cls(**values)

    def describe(self) -> str:
        """A one-line description for anomaly messages."""
        parts = [f"{self.id} {self.kind} {self.key}"]
        if self.token and self.kind not in ("read", "sread"):
            parts.append(f"token={self.token}")
        parts.append(self.outcome)
        if self.revision is not None:
            parts.append(f"rev={self.revision}")
        if self.version is not None:
            parts.append(f"ver={self.version}")
        if self.first is not None:
            parts.append(f"seq={self.first}..{self.last}")
        if self.error:
            parts.append(f"error={self.error}")
        return " ".join(parts)


class Recorder(Protocol):
    def invoke(self, op: Op) -> None: ...

    def complete(self, op: Op) -> None: ...


@dataclass(slots=True)
class Counters:
    """What the live display shows; updated as ops complete."""

    ok: int = 0
    fail: int = 0
    info: int = 0
    conflicts: int = 0
    cas_retries: int = 0
    unexpected: int = 0
    unavailable: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    @property
    def done(self) -> int:
        return self.ok + self.fail + self.info


class History:
    """Thread-safe store of ops by id, in invocation order, with live counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, Op] = {}
        self.counters = Counters()
        self._recent: deque[float] = deque()
        self.store_retries: dict[str, int] = {}
        """Internal retries reported per process (the Store's RetryStats)."""
        self.ready: set[str] = set()
        """Worker processes that are connected and waiting to start."""

    # Recorder
    def invoke(self, op: Op) -> None:
        with self._lock:
            self._ops[op.id] = op

    def complete(self, op: Op) -> None:
        with self._lock:
            self._ops[op.id] = op
            self._count(op)

    def _count(self, op: Op) -> None:
        c = self.counters
        if op.outcome == OK:
            c.ok += 1
        elif op.outcome == FAIL:
            c.fail += 1
        else:
            c.info += 1
        c.by_kind[op.kind] = c.by_kind.get(op.kind, 0) + 1
        c.conflicts += op.conflicts + (1 if op.error in CONFLICTS else 0)
        c.cas_retries += op.conflicts
        if op.unexpected:
            c.unexpected += 1
        if op.error in ("Unavailable", "AmbiguousCommit"):
            c.unavailable += 1
        if op.error and op.outcome != FAIL:
            c.last_error = f"{op.error}: {op.message or ''}"[:160]
        self._recent.append(time.monotonic())

    def rate(self, window: float = 1.0) -> float:
        """Completed ops per second over the last ``window`` seconds."""
        with self._lock:
            cutoff = time.monotonic() - window
            while self._recent and self._recent[0] < cutoff:
                self._recent.popleft()
            return len(self._recent) / window

    def snapshot(self) -> Counters:
        with self._lock:
            c = self.counters
            return Counters(
                c.ok,
                c.fail,
                c.info,
                c.conflicts,
                c.cas_retries,
                c.unexpected,
                c.unavailable,
                dict(c.by_kind),
                c.last_error,
            )

    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops.values())

    def get(self, op_id: str) -> Op | None:
        with self._lock:
            return self._ops.get(op_id)

    def close_pending(self, error: str, message: str, clients: set[str] | None = None) -> int:
        """Mark ops that never completed as indeterminate (their effect is unknown)."""
        n = 0
        with self._lock:
            for op in self._ops.values():
                if op.outcome == PENDING and (clients is None or op.client in clients):
                    op.outcome, op.error, op.message = INFO, error, message
                    self._count(op)
                    n += 1
        return n

    def completed_by(self, clients: set[str]) -> int:
        with self._lock:
            return sum(
                1 for op in self._ops.values() if op.client in clients and op.end is not None
            )


CONFLICTS = ("VersionConflict", "SequenceConflict")


class FileRecorder:
    """Writes invoke/complete events of one worker process as JSON lines."""

    def __init__(self, path: Path) -> None:
        # O_APPEND and one write per line: concurrent threads never interleave a line,
        # and a kill -9 leaves at most one partial last line (skipped by the reader).
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _write(self, event: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())

    def invoke(self, op: Op) -> None:
        self._write({"e": "invoke", **op.to_dict()})

    def complete(self, op: Op) -> None:
        self._write({"e": "complete", **op.to_dict()})

    def ready(self, process: str) -> None:
        self._write({"e": "ready", "process": process})

    def stats(self, process: str, retries: int) -> None:
        self._write({"e": "stats", "process": process, "retries": retries})

    def close(self) -> None:
        os.close(self._fd)


class FileTail:
    """Reads new complete lines of a worker file into a History."""

    def __init__(self, path: Path, history: History) -> None:
        self.path = path
        self.history = history
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next poll
        for line in lines:
            self._apply(line)

    def _apply(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # torn by a kill -9 mid-write: the op stays pending, i.e. indeterminate
        kind = event.pop("e", None)
        if kind == "ready":
            self.history.ready.add(str(event["process"]))
            return
        if kind == "stats":
            self.history.store_retries[str(event["process"])] = int(event["retries"])
            return
        op = Op.from_dict(event)
        if kind == "invoke":
            self.history.invoke(op)
        elif kind == "complete":
            self.history.complete(op)


def ops_to_json(ops: list[Op]) -> list[dict[str, Any]]:
    return [op.to_dict() for op in ops]


def ops_from_json(data: list[dict[str, Any]]) -> list[Op]:
    return [Op.from_dict(d) for d in data]


__all__ = [
    "FAIL",
    "INFO",
    "OK",
    "PENDING",
    "Counters",
    "FileRecorder",
    "FileTail",
    "History",
    "Op",
    "Recorder",
    "ops_from_json",
    "ops_to_json",
]
