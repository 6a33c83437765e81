"""API-key auth for the service: who may call ``/v1/...`` and, when a write names no
author, whose name it carries.

A pure ASGI middleware (``AuthMiddleware``), wired in ``app.create_app`` when
``Settings.auth`` is on. It runs before routing and before the idempotency layer, so
a refused request never reserves, answers or reads an Idempotency-Key, and never has
its body buffered:

- ``/v1/...`` needs ``Authorization: Bearer <token>`` of a live key (401 otherwise,
  with ``WWW-Authenticate: Bearer``);
- the key must cover every ``namespace`` the query names (``default`` when none) and,
  for PUT, PATCH, POST and DELETE, have the ``write`` role or more, and ``admin`` to
  set or apply retention (403 otherwise);
- everything else (``/healthz``, ``/readyz``, ``/metrics``, ``/docs``,
  ``/openapi.json``) stays open: probes and scrapers carry no token.

Verified keys are cached in the process for :data:`CACHE_SECONDS`, keyed by the
token's hash, so a revoked key stops working within that time on every worker.
Tokens are never logged: log lines name the key id only.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Final

from starlette.datastructures import QueryParams
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from revstore.apikeys import ApiKey, hash_token
from revstore.async_store import AsyncStore
from revstore.errors import RevstoreError
from revstore.service.logs import request_context
from revstore.service.problems import ProblemError, from_exception

CACHE_SECONDS: Final = 2.0
"""How long a verified key is trusted without asking the database again: the longest
a revoked key keeps working in a running service."""
CACHE_ENTRIES: Final = 4096
PROTECTED_PREFIX: Final = "/v1/"
ADMIN_PREFIX: Final = "/v1/retention"
"""Writes under it (set or apply a retention policy) need the ``admin`` role."""
WRITE_METHODS: Final = frozenset({"PUT", "PATCH", "POST", "DELETE"})
PRINCIPAL: Final = "revstore.api_key"
"""Where the verified :class:`ApiKey` of a request is kept in the ASGI scope."""
AUTH_MODES: Final = ("required", "off")
CHALLENGE: Final = 'Bearer realm="revstore"'


def is_loopback(host: str) -> bool:
    """``host`` (as given to ``--host``) only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def auth_required(mode: str | None, host: str) -> bool:
    """``--auth``: ``required``, ``off``, or None (required unless ``host`` is loopback)."""
    if mode is None:
        return not is_loopback(host)
    if mode not in AUTH_MODES:
        raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    return mode == "required"


def default_author(conn: HTTPConnection, given: str | None) -> str | None:
    """The author of a write: the one the request names, else its key's name."""
    if given is not None:
        return given
    key: ApiKey | None = conn.scope.get(PRINCIPAL)
    return key.name if key is not None else None


def bearer_token(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class KeyCache:
    """Verified keys by token hash, for ``CACHE_SECONDS``; unknown tokens are not
    cached (a key created a moment ago works at once).

    ``store`` gives the app's store (opened in the app's loop); the cache is used by
    that loop only, so it needs no lock: it changes only between awaits."""

    def __init__(self, store: Callable[[], AsyncStore], seconds: float = CACHE_SECONDS) -> None:
        self.store = store
        self.seconds = seconds
        self._entries: dict[str, tuple[float, ApiKey]] = {}

    async def verify(self, token: str) -> ApiKey | None:
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and now - hit[0] < self.seconds:
            return hit[1]
        key = await self.store().api_keys.verify(token)
        if key is None:
            self._entries.pop(digest, None)
        else:
            if len(self._entries) >= CACHE_ENTRIES:
                self._entries.clear()  # bounded; refilled from the database
            self._entries[digest] = (now, key)
        return key


def unauthorized(detail: str, error: str | None = None) -> ProblemError:
    challenge = CHALLENGE + (f', error="{error}"' if error else "")
    return ProblemError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def check(key: ApiKey, method: str, namespaces: list[str], path: str = "") -> ProblemError | None:
    """Why ``key`` may not make this request (None: it may)."""
    for namespace in namespaces:
        if not key.covers(namespace):
            return ProblemError(
                403,
                "forbidden",
                f"API key {key.id} is for namespace {key.namespace!r}, not {namespace[:100]!r}",
            )
    if method in WRITE_METHODS and path.startswith(ADMIN_PREFIX) and not key.may("admin"):
        return ProblemError(
            403,
            "forbidden",
            f"API key {key.id} has the {key.role} role; changing retention needs admin",
        )
    if method in WRITE_METHODS and not key.may("write"):
        return ProblemError(
            403, "forbidden", f"API key {key.id} has the {key.role} role and may not write"
        )
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyCache, retry_after: int = 1) -> None:
        self.app = app
        self.keys = keys
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        problem = await self._authorize(scope)
        if problem is not None:
            response = problem.response(scope.get("path"), scope.get("revstore.request_id"))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _authorize(self, scope: Scope) -> ProblemError | None:
        token = bearer_token(scope)
        if token is None:
            return unauthorized("send an API key: Authorization: Bearer <token>")
        try:
            key = await self.keys.verify(token)
        except RevstoreError as exc:
            problem = from_exception(exc, self.retry_after)
            assert problem is not None
            return problem
        if key is None:
            # Unknown, malformed, revoked or wrong secret: one answer for all.
            return unauthorized("the API key is not valid (unknown or revoked)", "invalid_token")
        scope[PRINCIPAL] = key
        ctx = request_context.get()
        if ctx is not None:
            ctx["key_id"] = key.id  # the id, never the token
        query = QueryParams(scope.get("query_string", b""))
        # Every value counts: a query naming two namespaces must be allowed both.
        namespaces = sorted(set(query.getlist("namespace"))) or ["default"]
        return check(key, scope["method"], namespaces, scope["path"])
