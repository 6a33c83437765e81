"""The endpoints: parse, await the app's ``AsyncStore``, shape the reply. Every rule
lives in the store; every error is rendered by the route class
(``routing.ServiceRoute``). All are ``async def``: they run on the event loop, with
no hop to a thread per request."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.responses import Response

from revstore.config import MAX_AUTHOR, MAX_SUMMARY
from revstore.errors import DuplicateItem, RevstoreError
from revstore.record import Mode
from revstore.service import models as m
from revstore.service.auth import default_author
from revstore.service.conditions import etag, not_modified, write_condition
from revstore.service.context import services
from revstore.service.models import BIGINT, MAX_ID
from revstore.service.problems import ProblemError
from revstore.service.replies import append_reply, claim_of, json_response, record_reply
from revstore.service.routing import MERGE_PATCH_TYPE, ServiceRoute

router = APIRouter(route_class=ServiceRoute)

# ---------------------------------------------------------------- parameters

RecordId = Annotated[str, Path(min_length=1, max_length=MAX_ID, description="Record id.")]
StreamId = Annotated[str, Path(min_length=1, max_length=MAX_ID, description="Stream id.")]
Namespace = Annotated[
    str, Query(min_length=1, max_length=MAX_ID, description="Namespace of the record or stream.")
]
After = Annotated[int, Query(ge=0, le=BIGINT, description="Cursor: the last number seen.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size (1-1000).")]
TAGS_PATTERN = r'^(\*|\s*(W/)?"[^"]*"\s*(,\s*(W/)?"[^"]*"\s*)*)$'
IfMatch = Annotated[
    str | None,
    Header(
        max_length=1024,
        pattern=TAGS_PATTERN,
        description='Write only if the record is at this revision: `"3"` (412 otherwise).',
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        max_length=1024,
        pattern=TAGS_PATTERN,
        description="On a write: `*` creates only (412 if the record exists). "
        "On GET: 304 when the revision matches.",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description="Re-sending the same request with the same key returns the first "
        "response without writing again, even after a lost connection or a crashed "
        "worker (kept 24 h, shared by all service processes).",
    ),
]

# ---------------------------------------------------------------- OpenAPI responses


def problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error response: the Problem schema, sent as application/problem+json (the
    media type is set on the whole document in ``app._problem_media_types``)."""
    out: dict[str, Any] = {"model": m.Problem, "description": description}
    if headers:
        out["headers"] = headers
    return out


ETAG_HEADER = {
    "ETag": {"description": 'The record revision, e.g. `"3"`.', "schema": {"type": "string"}}
}
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}
ALLOW_HEADER = {
    "Allow": {"description": "The methods this path accepts.", "schema": {"type": "string"}}
}
COMMON: dict[int | str, dict[str, Any]] = {
    404: problem("Not found (record, version, stream, or route)."),
    405: problem("Method not allowed on this path (see Allow).", ALLOW_HEADER),
    422: problem("Invalid input (parameters, JSON body, or an Idempotency-Key reused)."),
    500: problem("Unexpected error (the body carries only a request id)."),
    503: problem("Database unavailable or retries exhausted.", RETRY_AFTER_HEADER),
}
WRITE: dict[int | str, dict[str, Any]] = {
    **COMMON,
    409: problem(
        "Conflict: expected_revision/expected_sequence mismatch (current values "
        "included), duplicate item ids, or a request with this Idempotency-Key in progress "
        "(with Retry-After).",
        {**ETAG_HEADER, **RETRY_AFTER_HEADER},
    ),
    412: problem(
        "If-Match / If-None-Match precondition failed (current revision included).",
        ETAG_HEADER,
    ),
    413: problem("Request body over the size limit."),
    415: problem("Wrong Content-Type."),
    428: problem("The server requires If-Match on record writes."),
}
STREAM_WRITE = {k: v for k, v in WRITE.items() if k not in (412, 428)}
ADMIN_WRITE: dict[int | str, dict[str, Any]] = {
    **COMMON,
    403: problem("With auth on: an admin key of the namespace is needed."),
    # A policy is replaced whole; two admins at once: the last one wins, no conflict.
    413: WRITE[413],
    415: WRITE[415],
}
GONE: dict[int | str, dict[str, Any]] = {
    410: problem("The version was removed by the namespace's retention (oldest_version kept).")
}


# ---------------------------------------------------------------- health


@router.get(
    "/healthz",
    operation_id="getHealth",
    summary="Liveness",
    response_model=m.StatusOut,
    tags=["operations"],
    responses={500: COMMON[500]},
)
async def healthz() -> dict[str, str]:
    """The process is alive (does not touch the database)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="getReadiness",
    summary="Readiness",
    response_model=m.StatusOut,
    tags=["operations"],
    responses={
        500: COMMON[500],
        503: problem("The database does not answer.", RETRY_AFTER_HEADER),
    },
)
async def readyz(request: Request) -> dict[str, str]:
    """The database answers (one ``SELECT 1``, no retries)."""
    svc = services(request)
    try:
        await svc.store.ping()
    except RevstoreError as exc:
        raise ProblemError(
            503,
            "unavailable",
            f"database not reachable: {exc}",
            headers={"Retry-After": str(svc.settings.retry_after)},
            retry_after=svc.settings.retry_after,
        ) from exc
    return {"status": "ready"}


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    tags=["operations"],
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        500: COMMON[500],
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    data, content_type = services(request).metrics.render()
    return Response(data, media_type=content_type)


# ---------------------------------------------------------------- records


@router.put(
    "/v1/records/{id}",
    operation_id="putRecord",
    summary="Create or replace a record",
    tags=["records"],
    response_model=m.WriteOut,
    responses={
        **WRITE,
        200: {"description": "Updated (or `unchanged`: same content).", "headers": ETAG_HEADER},
        201: {
            "model": m.WriteOut,
            "description": "Created.",
            "headers": {**ETAG_HEADER, "Location": {"schema": {"type": "string"}}},
        },
    },
)
async def put_record(
    request: Request,
    id: RecordId,
    body: m.PutRecord,
    namespace: Namespace = "default",
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create or replace a record. 201 when it is created, 200 otherwise."""
    svc = services(request)
    cond = write_condition(
        if_match, if_none_match, body.expected_revision, require=svc.settings.require_if_match
    )
    store = svc.store
    rec = await cond.run(
        store,
        id,
        namespace,
        lambda expected: store.put(
            id,
            body.content,
            expected_revision=expected,
            create_version=body.create_version,
            author=default_author(request, body.author),
            summary=body.summary,
            namespace=namespace,
            claim=claim_of(request),
        ),
    )
    svc.retention.touched(namespace, id)
    return record_reply(Mode.PUT, rec)


@router.patch(
    "/v1/records/{id}",
    operation_id="patchRecord",
    summary="Merge-patch a record",
    tags=["records"],
    response_model=m.WriteOut,
    responses={**WRITE, 200: {"description": "Patched.", "headers": ETAG_HEADER}},
)
async def patch_record(
    request: Request,
    id: RecordId,
    patch: Annotated[
        Any,
        Body(
            media_type=MERGE_PATCH_TYPE,
            description="RFC 7396 JSON Merge Patch: objects merge, null removes a member.",
            examples=[m.PATCH_EXAMPLE],
        ),
    ],
    namespace: Namespace = "default",
    create_version: Annotated[bool, Query(description="Append a history snapshot.")] = True,
    author: Annotated[str | None, Query(max_length=MAX_AUTHOR)] = None,
    summary: Annotated[str | None, Query(max_length=MAX_SUMMARY)] = None,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Merge-patch a record's content, atomically with respect to other writers."""
    svc = services(request)
    cond = write_condition(if_match, if_none_match, None, require=svc.settings.require_if_match)
    store = svc.store
    rec = await cond.run(
        store,
        id,
        namespace,
        lambda expected: store.patch(
            id,
            patch,
            expected_revision=expected,
            create_version=create_version,
            author=default_author(request, author),
            summary=summary,
            namespace=namespace,
            claim=claim_of(request),
        ),
    )
    svc.retention.touched(namespace, id)
    return record_reply(Mode.UPDATE, rec)


@router.get(
    "/v1/records/{id}",
    operation_id="getRecord",
    summary="Read a record's head",
    tags=["records"],
    response_model=m.RecordOut,
    responses={
        **COMMON,
        200: {"description": "The record's head.", "headers": ETAG_HEADER},
        304: {"description": "Not modified (If-None-Match matched)."},
    },
)
async def get_record(
    request: Request,
    id: RecordId,
    namespace: Namespace = "default",
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Read a record's head; its ETag is the revision."""
    rec = await services(request).store.get(id, namespace=namespace)
    if not_modified(if_none_match, rec.revision):
        return Response(status_code=304, headers={"ETag": etag(rec.revision)})
    return json_response(m.record_json(rec), 200, rec.revision)


@router.delete(
    "/v1/records/{id}",
    operation_id="deleteRecord",
    summary="Delete a record",
    tags=["records"],
    status_code=204,
    response_class=Response,
    responses={**WRITE, 204: {"description": "Deleted (history is kept)."}},
)
async def delete_record(
    request: Request,
    id: RecordId,
    namespace: Namespace = "default",
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Delete a record (a tombstone: history stays readable only after a new PUT)."""
    svc = services(request)
    cond = write_condition(if_match, if_none_match, None, require=svc.settings.require_if_match)
    store = svc.store
    rec = await cond.run(
        store,
        id,
        namespace,
        lambda expected: store.delete(
            id, expected_revision=expected, namespace=namespace, claim=claim_of(request)
        ),
    )
    svc.retention.touched(namespace, id)
    return record_reply(Mode.DELETE, rec)


@router.get(
    "/v1/records",
    operation_id="listRecords",
    summary="List records",
    tags=["records"],
    response_model=m.RecordPageOut,
    responses=COMMON,
)
async def list_records(
    request: Request,
    namespace: Namespace = "default",
    prefix: Annotated[str | None, Query(max_length=MAX_ID, description="Id prefix.")] = None,
    after: Annotated[
        str | None, Query(min_length=1, max_length=MAX_ID, description="Cursor: last id seen.")
    ] = None,
    limit: Limit = 50,
) -> Response:
    """Live records in id order; pass ``next_after`` as ``after`` for the next page."""
    page = await services(request).store.list(prefix, after, limit, namespace=namespace)
    return json_response(m.record_page_json(page))


@router.get(
    "/v1/records/{id}/versions",
    operation_id="getHistory",
    summary="List a record's versions",
    tags=["records"],
    response_model=m.HistoryOut,
    responses=COMMON,
)
async def list_versions(
    request: Request,
    id: RecordId,
    namespace: Namespace = "default",
    after: After = 0,
    limit: Limit = 50,
) -> Response:
    """History snapshots, oldest first; ``after`` is a version number."""
    page = await services(request).store.history(id, after=after, limit=limit, namespace=namespace)
    return json_response(m.history_json(page))


@router.get(
    "/v1/records/{id}/versions/{n}",
    operation_id="getVersion",
    summary="Read one version",
    tags=["records"],
    response_model=m.VersionOut,
    responses={**COMMON, **GONE},
)
async def get_version(
    request: Request,
    id: RecordId,
    n: Annotated[int, Path(ge=1, le=BIGINT, description="Version number.")],
    namespace: Namespace = "default",
) -> Response:
    """One history snapshot."""
    v = await services(request).store.get_version(id, n, namespace=namespace)
    return json_response(m.version_json(v))


@router.get(
    "/v1/records/{id}/diff",
    operation_id="diffVersions",
    summary="Diff two versions",
    tags=["records"],
    response_model=m.DiffOut,
    responses={**COMMON, **GONE},
)
async def diff_versions(
    request: Request,
    id: RecordId,
    from_: Annotated[int, Query(alias="from", ge=1, le=BIGINT, description="Old version.")],
    to: Annotated[int, Query(ge=1, le=BIGINT, description="New version.")],
    namespace: Namespace = "default",
) -> Response:
    """RFC 6902 JSON Patch turning version ``from`` into version ``to``."""
    ops = await services(request).store.diff(id, from_, to, namespace=namespace)
    return json_response({"from_version": from_, "to_version": to, "patch": ops})


@router.post(
    "/v1/records/{id}/restore",
    operation_id="restoreVersion",
    summary="Restore an old version",
    tags=["records"],
    response_model=m.WriteOut,
    responses={
        **WRITE,
        **GONE,
        200: {"description": "Restored as a new version.", "headers": ETAG_HEADER},
    },
)
async def restore_record(
    request: Request,
    id: RecordId,
    body: m.RestoreRecord,
    namespace: Namespace = "default",
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Make a new version whose content is that of an old one."""
    svc = services(request)
    cond = write_condition(
        if_match, if_none_match, body.expected_revision, require=svc.settings.require_if_match
    )
    store = svc.store
    rec = await cond.run(
        store,
        id,
        namespace,
        lambda expected: store.restore(
            id,
            body.version,
            expected_revision=expected,
            author=default_author(request, body.author),
            summary=body.summary,
            namespace=namespace,
            claim=claim_of(request),
        ),
    )
    svc.retention.touched(namespace, id)
    return record_reply(Mode.UPDATE, rec)


# ---------------------------------------------------------------- streams


@router.post(
    "/v1/streams/{id}/items",
    operation_id="appendItems",
    summary="Append items to a stream",
    tags=["streams"],
    status_code=201,
    response_model=m.AppendOut,
    responses={
        **STREAM_WRITE,
        200: {"model": m.AppendOut, "description": "A re-sent batch: `duplicate: true`."},
        201: {"description": "Appended."},
    },
)
async def append_items(
    request: Request,
    id: StreamId,
    body: m.AppendItems,
    namespace: Namespace = "default",
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Append a batch atomically at a contiguous range of sequences."""
    store = services(request).store
    try:
        res = await store.append(
            id,
            body.items,
            expected_sequence=body.expected_sequence,
            item_ids=body.item_ids,
            namespace=namespace,
            claim=claim_of(request),
        )
    except DuplicateItem as exc:
        extra: dict[str, Any] = {"item_ids": exc.item_ids}
        with contextlib.suppress(RevstoreError):  # the 409 stands without it
            info = await store.stream_info(id, namespace=namespace)
            extra["current_sequence"] = info.last_sequence
        raise ProblemError(409, "duplicate-item", str(exc), **extra) from exc
    return append_reply(namespace, id, res)


@router.get(
    "/v1/streams/{id}/items",
    operation_id="readItems",
    summary="Read a stream's items",
    tags=["streams"],
    response_model=m.ReadOut,
    responses=COMMON,
)
async def read_items(
    request: Request,
    id: StreamId,
    namespace: Namespace = "default",
    after: After = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size (1-1000).")] = 100,
) -> Response:
    """Items in sequence order; ``after`` is a sequence number."""
    page = await services(request).store.read(id, after=after, limit=limit, namespace=namespace)
    return json_response(m.read_json(page))


@router.get(
    "/v1/streams",
    operation_id="listStreams",
    summary="List streams",
    tags=["streams"],
    response_model=m.StreamPageOut,
    responses=COMMON,
)
async def list_streams(
    request: Request,
    namespace: Namespace = "default",
    prefix: Annotated[str | None, Query(max_length=MAX_ID, description="Id prefix.")] = None,
    after: Annotated[
        str | None, Query(min_length=1, max_length=MAX_ID, description="Cursor: last id seen.")
    ] = None,
    limit: Limit = 50,
) -> Response:
    """Streams in id order with their info; pass ``next_after`` as ``after`` for more."""
    page = await services(request).store.list_streams(prefix, after, limit, namespace=namespace)
    return json_response(m.stream_page_json(page))


@router.get(
    "/v1/streams/{id}",
    operation_id="getStream",
    summary="Read stream info",
    tags=["streams"],
    response_model=m.StreamInfoOut,
    responses=COMMON,
)
async def get_stream(request: Request, id: StreamId, namespace: Namespace = "default") -> Response:
    """A stream's last sequence and item count."""
    info = await services(request).store.stream_info(id, namespace=namespace)
    return json_response(m.stream_info_json(info))


# ---------------------------------------------------------------- retention


@router.get(
    "/v1/retention",
    operation_id="getRetention",
    summary="Read a namespace's retention policy",
    tags=["retention"],
    response_model=m.RetentionOut,
    responses=COMMON,
)
async def get_retention(request: Request, namespace: Namespace = "default") -> Response:
    """The policy (``keep_last`` and ``max_age_seconds`` null: none)."""
    policies = await services(request).store.get_retention(namespace)
    return json_response(m.retention_json(namespace, policies[0] if policies else None))


@router.put(
    "/v1/retention",
    operation_id="setRetention",
    summary="Set a namespace's retention policy (admin)",
    tags=["retention"],
    response_model=m.RetentionOut,
    responses=ADMIN_WRITE,
)
async def set_retention(
    request: Request, body: m.SetRetention, namespace: Namespace = "default"
) -> Response:
    """Keep the last ``keep_last`` versions of each record and / or those younger than
    ``max_age_seconds`` (a version either keeps is kept, the newest always); both null
    removes the policy. Applied within seconds of each write this service makes, and
    at once by ``POST /v1/retention/apply``."""
    svc = services(request)
    policy = await svc.store.set_retention(
        namespace, keep_last=body.keep_last, max_age=body.max_age_seconds
    )
    svc.retention.forget_policies()
    return json_response(m.retention_json(namespace, policy))


@router.post(
    "/v1/retention/apply",
    operation_id="applyRetention",
    summary="Apply a namespace's retention now (admin)",
    tags=["retention"],
    response_model=m.RetentionReportOut,
    responses=ADMIN_WRITE,
)
async def apply_retention(request: Request, namespace: Namespace = "default") -> Response:
    """Remove what the policy no longer keeps, one record and a small chunk of versions
    per transaction (writers go on)."""
    report = await services(request).store.apply_retention(namespace)
    return json_response(
        {
            "namespaces": report.namespaces,
            "records": report.records,
            "versions_removed": report.versions_removed,
        }
    )
