"""The bug, on purpose: "read max(version), insert max + 1, retry 3 times on a duplicate".

This is how the next number is usually taken in application code, and what revstore
exists to replace. It lives in the lab only, in tables of its own
(``revstore_lab_naive_*``), so running it never touches revstore's data. Two flavours:

- ``naive``: with a unique key on the number, as careful code has it. Two writers read
  the same max, one hits the key; after 3 attempts the error reaches the caller (an
  HTTP 500 in a real app): failed writes.
- ``naive-nokey``: without the key. Both inserts succeed and the history forks:
  duplicate numbers.

Stream appends take ``max(sequence)`` the same way and "dedupe" re-sent batches by
looking their item ids up first, which races just the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from revstore.config import parse_url, with_query
from revstore.content import merge_patch
from revstore.errors import NotFound, VersionConflict
from revstore.lab.client import Appended, Head, Item, Snapshot, item_of, token_of

STRATEGIES = ("naive", "naive-nokey")
UNSUPPORTED = {"autosave"}  # the naive model has one row per write and no separate head
ATTEMPTS = 3
APPLICATION_NAME = "revstore-lab-naive"

metadata = MetaData()


def _tables(suffix: str, unique: bool) -> tuple[Table, Table]:
    versions = Table(
        f"revstore_lab_naive_versions{suffix}",
        metadata,
        Column("row_id", Integer, primary_key=True, autoincrement=True),
        Column("namespace", String(100), nullable=False),
        Column("record_id", String(200), nullable=False),
        Column("version", BigInteger, nullable=False),
        Column("content", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        *(
            [UniqueConstraint("namespace", "record_id", "version", name=f"lab_naive_v{suffix}_uq")]
            if unique
            else [Index(f"lab_naive_v{suffix}_ix", "namespace", "record_id", "version")]
        ),
        mysql_charset="utf8mb4",
    )
    items = Table(
        f"revstore_lab_naive_items{suffix}",
        metadata,
        Column("row_id", Integer, primary_key=True, autoincrement=True),
        Column("namespace", String(100), nullable=False),
        Column("stream_id", String(200), nullable=False),
        Column("sequence", BigInteger, nullable=False),
        Column("item_id", String(200), nullable=True),
        Column("body", Text, nullable=False),
        *(
            [UniqueConstraint("namespace", "stream_id", "sequence", name=f"lab_naive_i{suffix}_uq")]
            if unique
            else [Index(f"lab_naive_i{suffix}_ix", "namespace", "stream_id", "sequence")]
        ),
        mysql_charset="utf8mb4",
    )
    return versions, items


KEYED = _tables("", unique=True)
NOKEY = _tables("_nokey", unique=False)


def sqlalchemy_url(url: str) -> str:
    """revstore URLs (postgresql://, mysql://) with the drivers revstore uses."""
    parsed = parse_url(url)
    if parsed.driver is not None or parsed.backend == "sqlite":
        return url
    if parsed.backend == "mysql":
        return with_query(parsed.sqlalchemy(), "charset", "utf8mb4")
    return parsed.sqlalchemy()


def naive_engine(url: str, pool_size: int = 16) -> Engine:
    full = sqlalchemy_url(url)
    connect_args: dict[str, Any] = {}
    if full.startswith("postgresql"):
        connect_args["application_name"] = APPLICATION_NAME
    return create_engine(
        full, pool_size=pool_size, max_overflow=32, pool_pre_ping=True, connect_args=connect_args
    )


class NaiveClient:
    """The naive strategy behind the lab's Client interface (thread-safe: one engine)."""

    def __init__(self, url: str, namespace: str, strategy: str = "naive", pool_size: int = 16):
        if strategy not in STRATEGIES:
            raise ValueError(f"naive strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.versions, self.items = KEYED if strategy == "naive" else NOKEY
        self.namespace = namespace
        self.engine = naive_engine(url, pool_size)
        metadata.create_all(self.engine, tables=[self.versions, self.items], checkfirst=True)

    # records ------------------------------------------------------------------

    def _latest(self, conn: Connection, key: str) -> Any:
        v = self.versions
        return conn.execute(
            select(v.c.version, v.c.content)
            .where(v.c.namespace == self.namespace, v.c.record_id == key)
            .order_by(v.c.version.desc(), v.c.row_id.desc())
            .limit(1)
        ).first()

    def _write(
        self,
        key: str,
        content: Mapping[str, Any] | None,
        patch: Mapping[str, Any] | None,
        expected_revision: int | None,
    ) -> Head:
        v = self.versions
        for attempt in range(ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    # The bug: two writers can both read the same max here.
                    row = self._latest(conn, key)
                    current = int(row.version) if row is not None else 0
                    if expected_revision is not None and current != expected_revision:
                        raise VersionConflict(
                            f"record {key!r}: expected {expected_revision}, current {current}", None
                        )
                    if patch is not None:
                        if row is None:
                            raise NotFound(f"record {key!r} does not exist")
                        body: Any = merge_patch(json.loads(row.content), dict(patch))
                    else:
                        body = dict(content or {})
                    conn.execute(
                        insert(v).values(
                            namespace=self.namespace,
                            record_id=key,
                            version=current + 1,
                            content=json.dumps(body, sort_keys=True),
                            created_at=datetime.now(UTC),
                        )
                    )
                return Head(current + 1, current + 1, token_of(body))
            except IntegrityError:
                # "Retry 3 times": under a hot key every attempt loses again.
                if attempt + 1 == ATTEMPTS:
                    raise
                time.sleep(0.001 * (attempt + 1))
        raise AssertionError("unreachable")

    def put(
        self,
        key: str,
        content: Mapping[str, Any],
        *,
        expected_revision: int | None = None,
        create_version: bool = True,
    ) -> Head:
        if not create_version:
            raise NotImplementedError("the naive strategy has no autosave")
        return self._write(key, content, None, expected_revision)

    def patch(self, key: str, patch: Mapping[str, Any]) -> Head:
        return self._write(key, None, patch, None)

    def get(self, key: str) -> Head:
        with self.engine.connect() as conn:
            row = self._latest(conn, key)
        if row is None:
            raise NotFound(f"record {key!r} does not exist")
        return Head(int(row.version), int(row.version), token_of(json.loads(row.content)))

    def history(self, key: str) -> list[Snapshot]:
        v = self.versions
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(v.c.version, v.c.content)
                .where(v.c.namespace == self.namespace, v.c.record_id == key)
                .order_by(v.c.version, v.c.row_id)
            ).all()
        return [
            Snapshot(int(r.version), int(r.version), token_of(json.loads(r.content))) for r in rows
        ]

    # streams ------------------------------------------------------------------

    def append(
        self, stream: str, items: Sequence[Mapping[str, Any]], item_ids: Sequence[str]
    ) -> Appended:
        t = self.items
        for attempt in range(ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    # The usual dedupe: look the ids up, then insert. Races like the max.
                    stored = conn.execute(
                        select(t.c.sequence).where(
                            t.c.namespace == self.namespace,
                            t.c.stream_id == stream,
                            t.c.item_id.in_(list(item_ids)),
                        )
                    ).all()
                    if stored and len(stored) >= len(item_ids):
                        seqs = sorted(int(r.sequence) for r in stored)
                        return Appended(seqs[0], seqs[-1], True)
                    last = conn.execute(
                        select(func.max(t.c.sequence)).where(
                            t.c.namespace == self.namespace, t.c.stream_id == stream
                        )
                    ).scalar()
                    first = int(last or 0) + 1
                    conn.execute(
                        insert(t).values(
                            [
                                {
                                    "namespace": self.namespace,
                                    "stream_id": stream,
                                    "sequence": first + k,
                                    "item_id": item_id,
                                    "body": json.dumps(dict(body), sort_keys=True),
                                }
                                for k, (item_id, body) in enumerate(
                                    zip(item_ids, items, strict=True)
                                )
                            ]
                        )
                    )
                return Appended(first, first + len(items) - 1, False)
            except IntegrityError:
                if attempt + 1 == ATTEMPTS:
                    raise
                time.sleep(0.001 * (attempt + 1))
        raise AssertionError("unreachable")

    def _items(self, stream: str, after: int, limit: int | None) -> list[Item]:
        t = self.items
        query = (
            select(t.c.sequence, t.c.item_id, t.c.body)
            .where(t.c.namespace == self.namespace, t.c.stream_id == stream, t.c.sequence > after)
            .order_by(t.c.sequence, t.c.row_id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [item_of(int(r.sequence), r.item_id, json.loads(r.body)) for r in rows]

    def read(self, stream: str, after: int, limit: int) -> list[Item]:
        items = self._items(stream, after, limit)
        if not items and after == 0:
            raise NotFound(f"stream {stream!r} does not exist")
        return items

    def read_all(self, stream: str) -> list[Item]:
        return self._items(stream, 0, None)

    def close(self) -> None:
        self.engine.dispose()
