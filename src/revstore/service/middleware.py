"""Pure ASGI middleware: the request context (id, log line, metrics, last-resort 500)
and the body limit (413 before anything parses the body)."""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from revstore.service.logs import request_context
from revstore.service.metrics import UNMATCHED, Metrics, current_metrics, method_label
from revstore.service.problems import ProblemError, internal_error

log = logging.getLogger("revstore.http")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    """Outermost: gives every request an id (X-Request-Id, accepted when sane), writes
    one JSON log line and the request metrics, and turns anything that escaped the
    routes into a 500 problem without internals."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        # 32 random hex digits, as uuid4().hex gave, without building a UUID object.
        rid = incoming if incoming and _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
        scope["revstore.request_id"] = rid
        method = scope["method"]
        ctx: dict[str, Any] = {"request_id": rid, "method": method}
        token = request_context.set(ctx)
        mtoken = current_metrics.set(self.metrics)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode("latin-1")),
                ]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "unhandled error in %s %s", method, scope.get("path"), extra={"event": "error"}
            )
            if not started:
                problem = internal_error(rid)
                await problem.response(scope.get("path"), rid)(scope, receive, send_with_id)
        finally:
            self.metrics.in_progress.dec()
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path_format", None) or UNMATCHED
            self.metrics.observe_request(method_label(method), template, status, elapsed)
            if log.isEnabledFor(logging.INFO):
                # Built and handled directly: the JSON line carries no file or line, so
                # the caller lookup ``log.info`` makes (a stack walk) is skipped.
                extra = {
                    "event": "request",
                    "route": template,
                    "path": scope.get("path"),
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                }
                args = (method, template, status)
                msg = "%s %s %s"
                log.handle(
                    log.makeRecord(
                        log.name, logging.INFO, __file__, 0, msg, args, None, "__call__", extra
                    )
                )
            current_metrics.reset(mtoken)
            request_context.reset(token)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive that gives an already read ``body`` once, then defers to the
    server's (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodyLimitMiddleware:
    """Refuses a body over ``max_bytes`` with 413: at once when Content-Length says so,
    else while counting the streamed chunks. The accepted body is buffered (it is at
    most ``max_bytes``) and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await self._refuse(scope, receive, send, 400, "invalid Content-Length")
                return
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, f"Content-Length is {size} bytes")
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._too_large(
                    scope, receive, send, f"the body exceeds {self.max_bytes} bytes"
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay_body(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        await self._refuse(
            scope,
            receive,
            send,
            413,
            f"{why}; the limit is {self.max_bytes} bytes",
        )

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        kind = "payload-too-large" if status == 413 else "bad-request"
        problem = ProblemError(status, kind, detail, headers={"Connection": "close"})
        response: JSONResponse = problem.response(
            scope.get("path"), scope.get("revstore.request_id")
        )
        await response(scope, receive, send)
