"""The replies of the write routes, built from a write's result alone.

The same functions answer the first request and rebuild the reply of a re-send whose
first request wrote (its key applied with the result) but never stored its reply, so
both carry the same status, headers and body bytes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi.responses import JSONResponse, Response
from starlette.requests import HTTPConnection

from revstore.idempotency import Applied, Claim
from revstore.record import Mode, Record
from revstore.service import models as m
from revstore.service.conditions import etag
from revstore.stream import AppendResult

CLAIM = "revstore.claim"
"""Key in the request scope of the idempotency claim the routing layer reserved."""


def claim_of(conn: HTTPConnection) -> Claim | None:
    """The claim a write route passes to the Store (None without Idempotency-Key)."""
    claim = conn.scope.get(CLAIM)
    return claim if isinstance(claim, Claim) else None


def json_response(
    body: Any, status: int = 200, revision: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    out = dict(headers or {})
    if revision is not None:
        out["ETag"] = etag(revision)
    return JSONResponse(body, status_code=status, headers=out)


def record_location(id: str, namespace: str) -> str:
    path = f"/v1/records/{quote(id, safe='')}"
    return path if namespace == "default" else f"{path}?namespace={quote(namespace, safe='')}"


def record_reply(mode: Mode, rec: Record) -> Response:
    """PUT: 201 with Location when it created the record; DELETE: 204; else 200."""
    if mode is Mode.DELETE:
        return Response(status_code=204)
    if mode is Mode.PUT and rec.created:
        return json_response(
            m.write_json(rec),
            201,
            rec.revision,
            {"Location": record_location(rec.id, rec.namespace)},
        )
    return json_response(m.write_json(rec), 200, rec.revision)


def append_reply(namespace: str, stream: str, res: AppendResult) -> Response:
    return json_response(m.append_json(namespace, stream, res), 200 if res.duplicate else 201)


def applied_reply(applied: Applied) -> Response:
    """The reply of the write whose result is ``applied``."""
    if applied.append is not None:
        return append_reply(applied.namespace, applied.stream, applied.append)
    assert applied.record is not None
    return record_reply(Mode(applied.mode), applied.record)
