"""Request and response bodies, validated at the edge with pydantic.

Requests are bounded here (ids, strings, batch sizes, integers that fit a BIGINT) so a
malformed request is a 422 before the Store sees it; the Store validates again.
Responses are built as plain dicts by the ``*_json`` helpers (cheaper than model
instances on the hot path); the models below describe them in the OpenAPI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from revstore.config import DEFAULT_MAX_BATCH_ITEMS, MAX_AUTHOR, MAX_SUMMARY
from revstore.record import HistoryPage, Record, RecordPage, Version
from revstore.retention import MAX_AGE_SECONDS, MAX_KEEP_LAST, Policy
from revstore.stream import AppendResult, ReadPage, StreamInfo, StreamItem, StreamPage

BIGINT = 2**63 - 1
"""Numbers are stored as BIGINT: anything larger is invalid input, not a database error."""
MAX_ID = 255

Count = Annotated[int, Field(strict=True, ge=0, le=BIGINT)]
Positive = Annotated[int, Field(strict=True, ge=1, le=BIGINT)]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID)]
Author = Annotated[str, StringConstraints(max_length=MAX_AUTHOR)]
Summary = Annotated[str, StringConstraints(max_length=MAX_SUMMARY)]


class _Body(BaseModel):
    # Unknown fields are refused: a typo like "expected_revison" must not be ignored.
    model_config = ConfigDict(extra="forbid")


class PutRecord(_Body):
    # The example shown in /docs and in generated clients (extra="forbid" is inherited).
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "content": {"title": "Intro", "blocks": ["Hello"]},
                    "author": "ada",
                    "summary": "first draft",
                }
            ]
        },
    )

    content: Any = Field(description="The new content: any JSON value.")
    create_version: bool = Field(
        default=True,
        strict=True,
        description="Append a history snapshot (false: autosave, the head changes only).",
    )
    author: Author | None = None
    summary: Summary | None = None
    expected_revision: Count | None = Field(
        default=None,
        description="Write only at this revision (0: create-only); a mismatch is 409. "
        "If-Match is the header form (a mismatch is 412).",
    )


class RestoreRecord(_Body):
    # The example shown in /docs and in generated clients (extra="forbid" is inherited).
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"version": 2, "author": "ada", "summary": "back to v2"}]},
    )

    version: Positive = Field(description="The version whose content becomes a new version.")
    author: Author | None = None
    summary: Summary | None = None
    expected_revision: Count | None = None


class AppendItems(_Body):
    # The example shown in /docs and in generated clients (extra="forbid" is inherited).
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{"op": "insert", "at": 0, "text": "Hi"}],
                    "item_ids": ["c1-0001"],
                    "expected_sequence": 0,
                }
            ]
        },
    )

    items: list[Any] = Field(min_length=1, max_length=DEFAULT_MAX_BATCH_ITEMS)
    item_ids: list[ItemId] | None = Field(
        default=None,
        max_length=DEFAULT_MAX_BATCH_ITEMS,
        description="One client id per item: a re-sent batch is stored once.",
    )
    expected_sequence: Count | None = Field(
        default=None, description="The last sequence the writer saw; a mismatch is 409."
    )


PATCH_EXAMPLE = {"title": "Introduction", "tags": ["draft"]}
"""A merge patch (FastAPI drops nulls from examples, so it cannot show a removal)."""

# ---------------------------------------------------------------- responses


class RecordOut(BaseModel):
    namespace: str
    id: str
    revision: int
    version: int
    content: Any
    content_hash: str
    created_at: datetime
    updated_at: datetime


class WriteOut(RecordOut):
    unchanged: bool = Field(description="True when the content equalled the head's: no write.")


class RecordPageOut(BaseModel):
    records: list[RecordOut]
    next_after: str | None


class VersionOut(BaseModel):
    version: int
    revision: int
    content: Any
    content_hash: str
    author: str | None
    summary: str | None
    created_at: datetime


class HistoryOut(BaseModel):
    versions: list[VersionOut]
    next_after: int | None


class DiffOut(BaseModel):
    from_version: int
    to_version: int
    patch: list[dict[str, Any]] = Field(description="RFC 6902 JSON Patch operations.")


class StreamItemOut(BaseModel):
    sequence: int
    item_id: str | None
    body: Any
    created_at: datetime


class AppendOut(BaseModel):
    namespace: str
    stream: str
    first_sequence: int
    last_sequence: int
    duplicate: bool = Field(description="True for a re-sent batch: nothing written.")
    items: list[StreamItemOut]


class ReadOut(BaseModel):
    items: list[StreamItemOut]
    next_after: int | None


class StreamInfoOut(BaseModel):
    namespace: str
    id: str
    last_sequence: int
    item_count: int
    created_at: datetime
    updated_at: datetime


class SetRetention(_Body):
    """Both null removes the namespace's policy."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"keep_last": 50, "max_age_seconds": 2592000}]}
    )

    keep_last: Annotated[int, Field(strict=True, ge=1, le=MAX_KEEP_LAST)] | None = Field(
        None, description="Keep the last N versions of each record."
    )
    max_age_seconds: Annotated[int, Field(strict=True, ge=1, le=MAX_AGE_SECONDS)] | None = Field(
        None, description="Keep the versions younger than this many seconds."
    )


class RetentionOut(BaseModel):
    """A namespace's policy (both rules null: none). A version either rule keeps is
    kept, and the newest always."""

    namespace: str
    keep_last: int | None
    max_age_seconds: int | None
    updated_at: datetime | None


class RetentionReportOut(BaseModel):
    namespaces: int
    records: int
    versions_removed: int


class StreamPageOut(BaseModel):
    streams: list[StreamInfoOut]
    next_after: str | None


class StatusOut(BaseModel):
    status: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, with revstore's extension members."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    current_revision: int | None = None
    current_version: int | None = None
    current: RecordOut | None = Field(
        default=None, description="The current head, on a version conflict (null if absent)."
    )
    current_sequence: int | None = None
    item_ids: list[str] | None = None
    may_have_landed: bool | None = Field(
        default=None, description="On 503 after a lost COMMIT: the write may have been stored."
    )
    retry_after: int | None = None
    oldest_version: int | None = Field(
        default=None, description="On 410: the oldest version retention kept."
    )
    errors: list[FieldError] | None = None


# ---------------------------------------------------------------- dict builders


def record_json(rec: Record) -> dict[str, Any]:
    return {
        "namespace": rec.namespace,
        "id": rec.id,
        "revision": rec.revision,
        "version": rec.version,
        "content": rec.content,
        "content_hash": rec.content_hash,
        "created_at": rec.created_at.isoformat(),
        "updated_at": rec.updated_at.isoformat(),
    }


def write_json(rec: Record) -> dict[str, Any]:
    out = record_json(rec)
    out["unchanged"] = rec.unchanged
    return out


def record_page_json(page: RecordPage) -> dict[str, Any]:
    return {"records": [record_json(r) for r in page.records], "next_after": page.next_after}


def version_json(v: Version) -> dict[str, Any]:
    return {
        "version": v.version,
        "revision": v.revision,
        "content": v.content,
        "content_hash": v.content_hash,
        "author": v.author,
        "summary": v.summary,
        "created_at": v.created_at.isoformat(),
    }


def history_json(page: HistoryPage) -> dict[str, Any]:
    return {"versions": [version_json(v) for v in page.versions], "next_after": page.next_after}


def item_json(item: StreamItem) -> dict[str, Any]:
    return {
        "sequence": item.sequence,
        "item_id": item.item_id,
        "body": item.body,
        "created_at": item.created_at.isoformat(),
    }


def append_json(namespace: str, stream: str, res: AppendResult) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "stream": stream,
        "first_sequence": res.first_sequence,
        "last_sequence": res.last_sequence,
        "duplicate": res.duplicate,
        "items": [item_json(i) for i in res.items],
    }


def read_json(page: ReadPage) -> dict[str, Any]:
    return {"items": [item_json(i) for i in page.items], "next_after": page.next_after}


def stream_page_json(page: StreamPage) -> dict[str, Any]:
    return {"streams": [stream_info_json(i) for i in page.streams], "next_after": page.next_after}


def stream_info_json(info: StreamInfo) -> dict[str, Any]:
    return {
        "namespace": info.namespace,
        "id": info.id,
        "last_sequence": info.last_sequence,
        "item_count": info.item_count,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
    }


def retention_json(namespace: str, policy: Policy | None) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "keep_last": policy.keep_last if policy else None,
        "max_age_seconds": policy.max_age_seconds if policy else None,
        "updated_at": policy.updated_at.isoformat() if policy and policy.updated_at else None,
    }
