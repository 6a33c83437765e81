"""The route class every endpoint uses: the edge checks shared by all routes, the
idempotency layer, and the mapping of every error to a problem response.

Doing this around each route handler (rather than in exception handlers) means the
idempotency layer sees the final response of every request, errors included, and the
route template is known for logs and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from revstore.content import MAX_INT_DIGITS
from revstore.errors import RevstoreError
from revstore.service import idempotency as idem
from revstore.service.auth import PRINCIPAL
from revstore.service.context import Services, services
from revstore.service.fastlane import FastParams
from revstore.service.logs import request_context
from revstore.service.problems import ProblemError, from_exception, internal_error
from revstore.service.replies import CLAIM, applied_reply

log = logging.getLogger("revstore.http")

JSON_TYPE = "application/json"
MERGE_PATCH_TYPE = "application/merge-patch+json"
WRITE_METHODS = frozenset({"PUT", "PATCH", "POST", "DELETE"})
# A JSON escape of a UTF-16 surrogate: only then can the parsed body hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")

Handler = Callable[[Request], Awaitable[Response]]


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse an object that names a member twice: JSON parsers disagree on which one
    wins (RFC 8259 §4), so the stored document would depend on the parser."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_url_text(request: Request) -> None:
    """422 unless the path and query are UTF-8 once percent-decoded. Starlette decodes
    them with replacement characters, so ``/v1/records/%FF`` would silently name the
    record "\ufffd", as would every other invalid byte sequence."""
    raw_path: bytes = request.scope.get("raw_path") or b""
    for part, what in ((raw_path, "path"), (request.scope.get("query_string") or b"", "query")):
        if b"%" not in part and part.isascii():
            continue
        try:
            unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProblemError(
                422, "invalid-input", f"the URL {what} is not UTF-8 once percent-decoded"
            ) from exc


async def read_json_body(request: Request, expected: str) -> None:
    """415 unless the body has ``expected`` media type; 422 unless it is JSON that can
    be stored. Parsed here with our own errors; FastAPI then reuses the parsed value."""
    if media_type(request) != expected:
        headers = {"Accept-Patch": MERGE_PATCH_TYPE} if expected == MERGE_PATCH_TYPE else {}
        got = request.headers.get("content-type")
        raise ProblemError(
            415,
            "unsupported-media-type",
            f"send the body as {expected}" + (f", not {got}" if got else ""),
            headers=headers,
        )
    body = await request.body()
    if not body.strip():
        raise ProblemError(422, "invalid-input", "the request body is empty; send a JSON object")
    try:
        # UTF-8 only (RFC 8259 §8.1): json.loads(bytes) would also guess UTF-16/32.
        value = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ProblemError(
            422, "invalid-input", f"the body is not valid JSON: {exc.msg} at position {exc.pos}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ProblemError(422, "invalid-input", "the body is not valid UTF-8") from exc
    except RecursionError as exc:
        raise ProblemError(422, "invalid-input", "the body is nested too deeply") from exc
    except DuplicateKey as exc:
        raise ProblemError(
            422, "invalid-input", f"the body has the member {exc.key[:100]!r} twice in one object"
        ) from exc
    except ValueError as exc:
        # An integer literal over Python's int<->str digit limit (4300 by default).
        raise ProblemError(
            422, "invalid-input", f"the body has an integer of more than {MAX_INT_DIGITS} digits"
        ) from exc
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProblemError(
                422, "invalid-input", "the body contains an unpaired UTF-16 surrogate escape"
            ) from exc
    request._json = value  # Starlette's cache: FastAPI's own parse reuses it


class ServiceRoute(APIRoute):
    fast: FastParams | None
    """How the fast lane reads this route's arguments (None: FastAPI's path only)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        methods = self.methods or set()
        self.body_type: str | None = None
        if self.body_field is not None:
            self.body_type = MERGE_PATCH_TYPE if "PATCH" in methods else JSON_TYPE
        self.is_write = bool(methods & WRITE_METHODS)
        self.id_field = "stream_id" if self.path_format.startswith("/v1/streams") else "record_id"
        self.fast = FastParams.of(self)
        body_type = self.body_type

        async def run(request: Request) -> Response:
            svc = services(request)
            try:
                check_url_text(request)
                if body_type is not None:
                    await read_json_body(request, body_type)
                return await handler(request)
            except Exception as exc:
                return problem_response(request, svc, exc)

        async def app(request: Request) -> Response:
            return await self.respond(request, run)

        return app

    async def respond(self, request: Request, run: Handler) -> Response:
        """Run the route (``run``) inside what every request of it gets: its log
        context, and the idempotency layer for a write that sends a key."""
        ctx = request_context.get()
        if ctx is not None:
            # Seen by every log line of this request, the Store's retries included.
            ctx["route"] = self.path_format
            if "id" in request.path_params:
                ctx[self.id_field] = request.path_params["id"]
        key = request.headers.get("idempotency-key")
        if self.is_write and key is not None:
            return await idempotent(request, key, run)
        return await run(request)

    async def serve_fast(self, request: Request) -> Response | None:
        """The fast lane's way in: the same checks, idempotency and errors as FastAPI's
        path, with the arguments read by ``self.fast``. None when the request has
        anything to report (a refused URL or body, an invalid argument): FastAPI's path
        then answers it exactly as it always did. Checked before the idempotency layer,
        as FastAPI's path would refuse it before the endpoint runs either way."""
        assert self.fast is not None
        try:
            check_url_text(request)
            if self.body_type is not None:
                await read_json_body(request, self.body_type)
        except ProblemError:
            return None
        values = self.fast.values(request, getattr(request, "_json", None))
        if values is None:
            return None
        endpoint = self.endpoint

        async def run(request: Request) -> Response:
            try:
                response: Response = await endpoint(**values)
                return response
            except Exception as exc:
                return problem_response(request, services(request), exc)

        return await self.respond(request, run)


def problem_response(request: Request, svc: Services, exc: BaseException) -> Response:
    """Render any exception of a route as problem+json (500 for unexpected ones)."""
    rid = request.scope.get("revstore.request_id")
    problem = from_exception(exc, svc.settings.retry_after)
    if problem is None or problem.kind == "internal":
        log.error(
            "unhandled error in %s %s",
            request.method,
            request.url.path,
            exc_info=exc,
            extra={"event": "error", "error_type": type(exc).__name__},
        )
        problem = internal_error(rid)
    if problem.status in (409, 412):
        route = request.scope.get("route")
        svc.metrics.conflicts.labels(getattr(route, "path_format", "?"), problem.kind).inc()
        log.info(
            "%s: %s",
            problem.kind,
            problem.detail,
            extra={
                "event": "conflict",
                "kind": problem.kind,
                "status": problem.status,
                **{
                    k: v
                    for k, v in problem.extra.items()
                    if k in ("current_revision", "current_version", "current_sequence", "item_ids")
                },
            },
        )
    elif problem.status == 503:
        log.warning(
            "unavailable: %s",
            problem.detail,
            extra={
                "event": "unavailable",
                "kind": problem.kind,
                "error_type": type(exc).__name__,
                **_db_fields(exc),
            },
        )
    return problem.response(request.url.path, rid)


def _db_fields(exc: BaseException) -> dict[str, Any]:
    """The database error code and constraint behind an error: its own, or the first
    along its causes (retries exhausted wrap the last Retryable; a problem wraps the
    store's error)."""
    err: BaseException | None = exc
    for _ in range(4):
        if err is None:
            break
        code = getattr(err, "code", None)
        constraint = getattr(err, "constraint", None)
        if code or constraint:
            return {"db_code": code, "constraint": constraint}
        err = err.__cause__
    return {}


async def idempotent(request: Request, key: str, run: Handler) -> Response:
    svc = services(request)
    if not idem.valid_key(key):
        svc.metrics.idempotency.labels("invalid").inc()
        return problem_response(
            request,
            svc,
            ProblemError(
                422,
                "invalid-input",
                f"Idempotency-Key must be 1 to {idem.MAX_KEY} printable ASCII characters",
            ),
        )
    body = await request.body()
    conditions = "\0".join(request.headers.get(h, "") for h in ("if-match", "if-none-match"))
    principal = request.scope.get(PRINCIPAL)
    if principal is not None:
        # With auth, a key is the caller's own: another API key sending it makes another
        # request (its author differs), refused as a reuse rather than replayed.
        conditions += f"\0key:{principal.id}"
    req_hash = idem.request_hash(
        request.method, request.url.path, request.url.query, conditions, body
    )
    owner = idem.new_owner()
    ctx = request_context.get()
    if ctx is not None:
        ctx["idempotency_key"] = key
    store = svc.idempotency
    deadline = asyncio.get_running_loop().time() + svc.settings.idempotency_wait
    delay = 0.01
    try:
        state: idem.Reservation | None = await store.reserve(key, req_hash, owner)
        while True:
            if state is None:
                # The holder released the key (its request failed): take it ourselves.
                state = await store.reserve(key, req_hash, owner)
            if state.outcome is idem.Outcome.RESERVED:
                break
            if state.outcome is idem.Outcome.ANSWERED:
                assert state.stored is not None
                svc.metrics.idempotency.labels("replayed").inc()
                return replay(request, state.stored)
            if state.outcome is idem.Outcome.APPLIED:
                # The first request wrote, then died (or lost its connection) before
                # storing its reply: rebuild the reply from the result it stored.
                assert state.applied is not None
                svc.metrics.idempotency.labels("replayed").inc()
                return await rebuilt(request, svc, key, req_hash, state.applied)
            if state.outcome is idem.Outcome.MISMATCH:
                svc.metrics.idempotency.labels("mismatch").inc()
                return problem_response(
                    request,
                    svc,
                    ProblemError(
                        422,
                        "idempotency-key-reused",
                        "this Idempotency-Key was used for a different request "
                        "(method, path, query, preconditions, body or API key differ)",
                    ),
                )
            if asyncio.get_running_loop().time() >= deadline:
                svc.metrics.idempotency.labels("in_progress").inc()
                after = svc.settings.retry_after
                return problem_response(
                    request,
                    svc,
                    ProblemError(
                        409,
                        "idempotency-in-progress",
                        "a request with this Idempotency-Key is still in progress; "
                        "retry later to get its response",
                        headers={"Retry-After": str(after)},
                        retry_after=after,
                    ),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            state = await store.lookup(key, req_hash)
    except RevstoreError as exc:
        # The key cannot be reserved or read: never run the write unprotected.
        return problem_response(request, svc, exc)

    svc.metrics.idempotency.labels("new").inc()
    # The write applies the key in its own transaction (see revstore.idempotency).
    request.scope[CLAIM] = store.claim(key, owner, req_hash)
    try:
        response = await run(request)
    except BaseException:
        # Cancelled (client gone, shutdown): free the key now rather than after the lease.
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await store.release(key, owner)
        raise
    try:
        if response.status_code >= 500:
            # Deletes the reservation only if the write did not commit (an ambiguous
            # commit that landed leaves the key applied: a re-send gets its reply).
            await store.release(key, owner)
        else:
            stored = idem.StoredResponse(
                response.status_code, idem.pick_headers(response.headers), bytes(response.body)
            )
            if not await store.complete(key, owner, stored) and not (
                # A re-send may have stored the same reply, rebuilt from the result,
                # between this write's commit and now: nothing was lost.
                await _answered(store, key, req_hash)
            ):
                log.warning(
                    "idempotency reservation lost before the response was stored",
                    extra={"event": "idempotency_lost"},
                )
    except RevstoreError:
        # The response goes back anyway. A write that committed applied the key with
        # its result, so re-sends are answered from it; a request that wrote nothing
        # (a 4xx) leaves a reservation that re-sends may take over after its lease.
        log.warning(
            "could not store the response of an idempotent request",
            exc_info=True,
            extra={"event": "idempotency_store_failed"},
        )
    return response


async def _answered(store: idem.IdempotencyStore, key: str, req_hash: str) -> bool:
    state = await store.lookup(key, req_hash)
    return state is not None and state.outcome is idem.Outcome.ANSWERED


async def rebuilt(
    request: Request, svc: Services, key: str, req_hash: str, applied: idem.Applied
) -> Response:
    """Replay the reply rebuilt from an applied result, and store it (best effort:
    every re-send would rebuild the same one)."""
    response = applied_reply(applied)
    stored = idem.StoredResponse(
        response.status_code, idem.pick_headers(response.headers), bytes(response.body)
    )
    try:
        await svc.idempotency.complete_applied(key, req_hash, stored)
    except RevstoreError:
        log.warning(
            "could not store a rebuilt idempotent response",
            exc_info=True,
            extra={"event": "idempotency_store_failed"},
        )
    return replay(request, stored)


def replay(request: Request, stored: idem.StoredResponse) -> Response:
    headers = {k: v for k, v in stored.headers.items() if k != "content-type"}
    headers["Idempotent-Replayed"] = "true"
    ctx = request_context.get()
    if ctx is not None:
        ctx["idempotent_replay"] = True
    return Response(
        content=stored.body if stored.status not in (204, 304) else b"",
        status_code=stored.status,
        headers=headers,
        media_type=stored.headers.get("content-type"),
    )
