"""Reading, diffing and restoring the history of ``Versioned`` objects, sync and async.

The async functions run the sync ones on the ``AsyncSession``'s own sync session
(``run_sync``): one implementation, no twin code.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import RelationshipProperty, Session

from revstore.content import validate_limit, validate_non_negative, validate_positive
from revstore.diff import diff as json_diff
from revstore.errors import NotFound
from revstore.sqlalchemy.versioned import (
    COLLECTIONS,
    Versioned,
    VersionedInfo,
    _pk_clause,
    content_of,
    object_info,
)


class Snapshot:
    """One history row: ``.version``, ``.revision``, ``.created_at``, ``.author``,
    ``.summary``, ``.content_hash``, and the model's columns as attributes (also in
    ``.values``; a column named like one of the former is only in ``.values``), and
    each many-to-many collection's related keys (also in ``.collections``)."""

    __slots__ = (
        "author",
        "collections",
        "content",
        "content_hash",
        "created_at",
        "revision",
        "summary",
        "values",
        "version",
    )

    def __init__(
        self,
        *,
        version: int,
        revision: int,
        created_at: datetime,
        author: str | None,
        summary: str | None,
        content_hash: str,
        values: dict[str, Any],
        collections: dict[str, list[Any]],
        content: dict[str, Any],
    ) -> None:
        self.version = version
        self.revision = revision
        self.created_at = created_at
        self.author = author
        self.summary = summary
        self.content_hash = content_hash
        self.values = values
        self.collections = collections
        self.content = content
        """The snapshot as JSON (columns and collections): what ``diff`` compares."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not slots: the model's columns and collections.
        if name in ("values", "collections"):
            raise AttributeError(name)
        if name in self.values:
            return self.values[name]
        if name in self.collections:
            return self.collections[name]
        raise AttributeError(f"snapshot has no column or collection {name!r}")

    def __repr__(self) -> str:
        return f"<Snapshot version={self.version} revision={self.revision} {self.values!r}>"


def _snapshot(info: VersionedInfo, row: Any) -> Snapshot:
    meta = info.meta
    by_name = dict(row)
    values = {key: by_name[col.name] for key, col in info.columns}
    stored = by_name[meta[COLLECTIONS]] or {}
    collections = {rel.key: list(stored.get(rel.key, [])) for rel in info.m2m}
    created_at: datetime = by_name[meta["created_at"]]
    if created_at.tzinfo is None:  # SQLite and MySQL hand back naive UTC
        created_at = created_at.replace(tzinfo=UTC)
    return Snapshot(
        version=by_name[meta["version"]],
        revision=by_name[meta["revision"]],
        created_at=created_at,
        author=by_name[meta["author"]],
        summary=by_name[meta["summary"]],
        content_hash=by_name[meta["content_hash"]],
        values=values,
        collections=collections,
        content=content_of(info, {col.name: values[key] for key, col in info.columns}, collections),
    )


def _where_object(info: VersionedInfo, key: tuple[Any, ...]) -> Any:
    hist = info.history
    return _pk_clause([hist.c[c.name] for c in info.pk], [key])


def history(session: Session, obj: Versioned, *, after: int = 0, limit: int = 50) -> list[Snapshot]:
    """The snapshots of ``obj`` with a version above ``after``, oldest first, at most
    ``limit`` (pass the last one's ``.version`` as ``after`` for the next page)."""
    after = validate_non_negative(after, "after")
    limit = validate_limit(limit)
    info, key = object_info(obj)
    hist = info.history
    version = hist.c[info.meta["version"]]
    stmt = (
        select(hist).where(_where_object(info, key), version > after).order_by(version).limit(limit)
    )
    conn = session.connection(bind_arguments={"mapper": info.mapper})
    return [_snapshot(info, row) for row in conn.execute(stmt).mappings()]


def get_version(session: Session, obj: Versioned, version: int) -> Snapshot:
    """One snapshot of ``obj``; :class:`revstore.NotFound` when there is none."""
    version = validate_positive(version, "version")
    info, key = object_info(obj)
    hist = info.history
    stmt = select(hist).where(_where_object(info, key), hist.c[info.meta["version"]] == version)
    conn = session.connection(bind_arguments={"mapper": info.mapper})
    row = conn.execute(stmt).mappings().one_or_none()
    if row is None:
        raise NotFound(f"{type(obj).__name__} {key!r} has no version {version}")
    return _snapshot(info, row)


def diff(session: Session, obj: Versioned, from_version: int, to_version: int) -> list[Any]:
    """RFC 6902 JSON Patch operations turning snapshot ``from_version`` into
    ``to_version`` (columns and collections, as in ``Store.diff``)."""
    old = get_version(session, obj, from_version)
    new = get_version(session, obj, to_version)
    return json_diff(old.content, new.content)


def restore(session: Session, obj: Versioned, version: int) -> Snapshot:
    """Set ``obj``'s columns and many-to-many collections to those of ``version``; the
    next flush makes that a new version (or nothing, when the head already equals it).
    The summary defaults to ``restore of version N``. Returns the snapshot restored."""
    snap = get_version(session, obj, version)
    info, _ = object_info(obj)
    pk = {c.name for c in info.pk}
    # No autoflush in between: loading the related objects (or the old collection)
    # would otherwise flush the columns already set as a version of their own.
    with session.no_autoflush:
        related = {
            rel.key: _load_related(session, rel, snap.collections.get(rel.key, []))
            for rel in info.m2m
        }
        for key, col in info.columns:
            if col.name not in pk:
                setattr(obj, key, snap.values[key])
        for rel in info.m2m:
            setattr(obj, rel.key, set(related[rel.key]) if _is_set(rel) else related[rel.key])
    if obj.summary is None:
        obj.summary = f"restore of version {version}"
    return snap


def _is_set(rel: RelationshipProperty[Any]) -> bool:
    factory = rel.collection_class
    return isinstance(factory, type) and issubclass(factory, (set, frozenset))


def _load_related(
    session: Session, rel: RelationshipProperty[Any], keys: Sequence[Any]
) -> list[Any]:
    """The related objects named by stored keys, in the stored order."""
    if not keys:
        return []
    cols = [remote for remote, _ in rel.secondary_synchronize_pairs or []]
    wanted = [tuple(_from_json(c, v) for c, v in zip(cols, _tuple(k), strict=True)) for k in keys]
    found: dict[tuple[Any, ...], Any] = {}
    target = rel.mapper
    stmt = select(target).where(_pk_clause(cols, wanted))
    # The key columns of each related object, read through its mapper's attributes.
    attr_of = {c: target.get_property_by_column(c).key for c in cols}
    for item in session.scalars(stmt):
        found[tuple(getattr(item, attr_of[c]) for c in cols)] = item
    missing = [k for k in wanted if k not in found]
    if missing:
        raise NotFound(
            f"cannot restore {rel.key}: related {target.class_.__name__} {missing!r} no longer "
            "exist"
        )
    return [found[k] for k in wanted]


def _tuple(key: Any) -> tuple[Any, ...]:
    return tuple(key) if isinstance(key, list) else (key,)


def _from_json(col: Any, value: Any) -> Any:
    """A stored JSON key back in the column's Python type (UUID, Decimal, datetime)."""
    try:
        kind = col.type.python_type
    except (NotImplementedError, AttributeError):
        return value
    if value is None or isinstance(value, kind):
        return value
    if kind is uuid.UUID:
        return uuid.UUID(value)
    if kind is Decimal:
        return Decimal(value)
    if kind is datetime:
        return datetime.fromisoformat(value)
    return value


# ----------------------------------------------------------------- async


async def async_history(
    session: AsyncSession, obj: Versioned, *, after: int = 0, limit: int = 50
) -> list[Snapshot]:
    """:func:`history` for an ``AsyncSession``."""
    return await session.run_sync(lambda s: history(s, obj, after=after, limit=limit))


async def async_get_version(session: AsyncSession, obj: Versioned, version: int) -> Snapshot:
    """:func:`get_version` for an ``AsyncSession``."""
    return await session.run_sync(lambda s: get_version(s, obj, version))


async def async_diff(
    session: AsyncSession, obj: Versioned, from_version: int, to_version: int
) -> list[Any]:
    """:func:`diff` for an ``AsyncSession``."""
    return await session.run_sync(lambda s: diff(s, obj, from_version, to_version))


async def async_restore(session: AsyncSession, obj: Versioned, version: int) -> Snapshot:
    """:func:`restore` for an ``AsyncSession`` (the related objects load in the
    session's greenlet, as lazy loads may not run in plain async code)."""
    return await session.run_sync(lambda s: restore(s, obj, version))


__all__ = [
    "Snapshot",
    "async_diff",
    "async_get_version",
    "async_history",
    "async_restore",
    "diff",
    "get_version",
    "history",
    "restore",
]
