"""Errors as RFC 9457 ``application/problem+json``: one place maps every revstore
error and every HTTP-level refusal to a status, a type and the fields a client needs
to recover (the current revision, version or sequence)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from revstore.errors import (
    AmbiguousCommit,
    ClaimLost,
    Conflict,
    DuplicateItem,
    InvalidInput,
    NotFound,
    RevstoreError,
    SequenceConflict,
    Unavailable,
    VersionCompacted,
    VersionConflict,
)
from revstore.failures import Retryable
from revstore.service.models import record_json

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:revstore:problem:"

TITLES: dict[str, str] = {
    "version-conflict": "Version conflict",
    "sequence-conflict": "Sequence conflict",
    "duplicate-item": "Duplicate item id",
    "conflict": "Conflict",
    "idempotency-in-progress": "Request with this key in progress",
    "precondition-failed": "Precondition failed",
    "precondition-required": "Precondition required",
    "not-found": "Not found",
    "version-compacted": "Version removed by retention",
    "unauthorized": "API key missing or not valid",
    "forbidden": "API key not allowed to do this",
    "method-not-allowed": "Method not allowed",
    "payload-too-large": "Request body too large",
    "unsupported-media-type": "Unsupported media type",
    "invalid-input": "Invalid input",
    "idempotency-key-reused": "Idempotency key reused",
    "unavailable": "Service unavailable",
    "ambiguous-commit": "Write outcome unknown",
    "internal": "Internal error",
    "bad-request": "Bad request",
}

_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    412: "precondition-failed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    428: "precondition-required",
    503: "unavailable",
}


class ProblemError(Exception):
    """An HTTP refusal carried up to the route wrapper, which renders it."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": TYPE_PREFIX + self.kind,
            "title": TITLES.get(self.kind, self.kind),
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            out["instance"] = instance
        if request_id is not None:
            out["request_id"] = request_id
        out.update(self.extra)
        return out

    def response(self, instance: str | None, request_id: str | None) -> JSONResponse:
        return JSONResponse(
            self.body(instance, request_id),
            status_code=self.status,
            headers=self.headers,
            media_type=MEDIA_TYPE,
        )


def _retry_after(seconds: float, minimum: int) -> int:
    return max(minimum, math.ceil(seconds))


def version_conflict(exc: VersionConflict, *, precondition: bool) -> ProblemError:
    """409 for a failed ``expected_revision``; 412 when the expectation came from a
    header (If-Match / If-None-Match)."""
    headers = {}
    if exc.current is not None:
        headers["ETag"] = f'"{exc.current.revision}"'
    extra: dict[str, Any] = {
        "current_revision": exc.current_revision,
        "current_version": exc.current_version,
    }
    if precondition:
        return ProblemError(412, "precondition-failed", str(exc), headers=headers, **extra)
    extra["current"] = record_json(exc.current) if exc.current is not None else None
    return ProblemError(409, "version-conflict", str(exc), headers=headers, **extra)


def from_exception(exc: BaseException, retry_after: int = 1) -> ProblemError | None:
    """The problem for a known error; None for an unexpected one (a 500)."""
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, RevstoreError):
        return _from_revstore(exc, retry_after)
    if isinstance(exc, RequestValidationError):
        return validation_problem(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        kind = _BY_STATUS.get(exc.status_code, "bad-request")
        detail = exc.detail if isinstance(exc.detail, str) else TITLES[kind]
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (e.g. JSON nested too deep): bad input.
            return ProblemError(422, "invalid-input", detail, headers=exc.headers)
        return ProblemError(exc.status_code, kind, detail, headers=exc.headers)
    if isinstance(exc, (UnicodeError, RecursionError)):
        # Lone surrogates or pathological nesting that slipped past the edge checks.
        return ProblemError(422, "invalid-input", f"the request cannot be stored: {exc}")
    return None


def _from_revstore(exc: RevstoreError, retry_after: int) -> ProblemError:
    if isinstance(exc, VersionConflict):
        return version_conflict(exc, precondition=False)
    if isinstance(exc, SequenceConflict):
        return ProblemError(
            409, "sequence-conflict", str(exc), current_sequence=exc.current_sequence
        )
    if isinstance(exc, DuplicateItem):
        return ProblemError(409, "duplicate-item", str(exc), item_ids=exc.item_ids)
    if isinstance(exc, ClaimLost):
        # Another request with the same key took over: its reply answers this one.
        return ProblemError(
            409,
            "idempotency-in-progress",
            f"{exc}; retry later to get the response of the request that holds it",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )
    if isinstance(exc, Conflict):
        return ProblemError(409, "conflict", str(exc))
    if isinstance(exc, VersionCompacted):
        return ProblemError(410, "version-compacted", str(exc), oldest_version=exc.oldest_version)
    if isinstance(exc, NotFound):
        return ProblemError(404, "not-found", str(exc))
    if isinstance(exc, InvalidInput):
        return ProblemError(422, "invalid-input", str(exc))
    if isinstance(exc, AmbiguousCommit):
        after = _retry_after(exc.retry_after, retry_after)
        return ProblemError(
            503,
            "ambiguous-commit",
            f"{exc}. The write may have landed: read the current state (or re-send with "
            "the same Idempotency-Key or item_ids) before writing again.",
            headers={"Retry-After": str(after)},
            may_have_landed=True,
            retry_after=after,
        )
    if isinstance(exc, Unavailable):
        after = _retry_after(exc.retry_after, retry_after)
        return ProblemError(
            503, "unavailable", str(exc), headers={"Retry-After": str(after)}, retry_after=after
        )
    if isinstance(exc, Retryable):
        # Normally turned into Unavailable by the Store's retry policy.
        return ProblemError(
            503,
            "unavailable",
            f"transient database error: {exc}",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )
    return ProblemError(500, "internal", "unexpected storage error")


def validation_problem(errors: Any) -> ProblemError:
    """422 from pydantic errors, without echoing the input (it may be a megabyte)."""
    items = []
    for err in errors:
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        items.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    detail = (
        "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in items[:5])
        or "invalid request"
    )
    return ProblemError(422, "invalid-input", detail, errors=items)


def internal_error(request_id: str | None) -> ProblemError:
    return ProblemError(
        500,
        "internal",
        "an unexpected error occurred; it has been logged"
        + (f" with request id {request_id}" if request_id else ""),
    )
