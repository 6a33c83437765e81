"""The fast lane: valid requests to the service's routes skip FastAPI's router walk and
its per-request dependency machinery; everything else takes FastAPI's path.

Measured under load (``benchmarks/results/2026-11-30-http-profile.md``), about half of
the server's CPU per request went to Starlette/FastAPI routing and FastAPI's request
handler (telemetry context, endpoint context, ``solve_dependencies``), not to
validation itself. The lane keeps what matters to a request and drops only that:

* **Routing.** A route is found by the same regular expression Starlette matches, among
  the routes whose path has the request's segment count and first two segments (the
  only ones that can match), in the router's order: the first route matching path and
  method, as Starlette picks it. No match, a root path, HEAD, or a route the lane does
  not serve: FastAPI's router decides (404, 405, redirects, the docs, /ui).
* **Parameters.** Each path, query and header parameter and the body is validated by
  the very pydantic field FastAPI built for it (same types, limits, patterns and
  defaults), read from the request the way FastAPI reads it (the last query value, the
  first header). If anything is invalid, the URL is not UTF-8, or the body is refused,
  the request goes down FastAPI's path unchanged (its body replayed), which answers
  with the error it always gave. The lane only serves requests it has fully validated.
* **The rest is shared.** A served request runs the route's own wrapper
  (``ServiceRoute.respond``: log context, idempotency, errors as problems) and its
  endpoint; the outer middleware (request id, log line, metrics, auth, body limit) runs
  for both paths.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, get_args, get_origin

from fastapi import params
from fastapi.routing import APIRoute
from starlette.convertors import StringConvertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from revstore.service.middleware import replay_body

if TYPE_CHECKING:
    from fastapi._compat import ModelField

    from revstore.service.routing import ServiceRoute

_SEQUENCES = (list, tuple, set, frozenset, Sequence)


def _is_sequence(annotation: Any) -> bool:
    """FastAPI reads every value of a sequence parameter (``getlist``); the lane reads
    one, so such a parameter keeps the route on FastAPI's path."""
    origin = get_origin(annotation)
    if origin is None:
        return (
            isinstance(annotation, type)
            and issubclass(annotation, _SEQUENCES)
            and not issubclass(annotation, (str, bytes))
        )
    if isinstance(origin, type) and issubclass(origin, _SEQUENCES):
        return True
    return any(_is_sequence(arg) for arg in get_args(annotation))


_IMMUTABLE = (str, bytes, int, float, bool, type(None))


class _Param:
    __slots__ = ("alias", "copy_default", "default", "field", "loc", "name", "required")

    def __init__(self, field: ModelField, where: str) -> None:
        self.field = field
        self.name = field.name
        self.alias = field.alias
        self.loc = (where, field.alias)
        self.required = field.field_info.is_required()
        self.default = None if self.required else field.default
        # FastAPI hands each request its own copy of a default; one that cannot change
        # needs none.
        self.copy_default = not isinstance(self.default, _IMMUTABLE)


class FastParams:
    """How one route's arguments are read and validated without ``solve_dependencies``.

    ``of(route)`` is None for a route the lane cannot serve exactly as FastAPI does:
    sub-dependencies, an injected ``Response`` or background tasks, cookies, parameter
    models, sequence or JSON-typed parameters, an embedded or form body, aliases with
    choices, defaults that FastAPI would validate, or an endpoint whose result FastAPI
    would serialize (only endpoints returning a ``Response`` are served).
    """

    __slots__ = ("body", "headers", "path", "query", "request_name")

    def __init__(
        self,
        path: list[_Param],
        query: list[_Param],
        headers: list[_Param],
        body: ModelField | None,
        request_name: str | None,
    ) -> None:
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.request_name = request_name

    @classmethod
    def of(cls, route: APIRoute) -> FastParams | None:
        dep = route.dependant
        if (
            dep.dependencies
            or dep.cookie_params
            or dep.response_param_name
            or dep.background_tasks_param_name
            or dep.websocket_param_name
            or dep.http_connection_param_name
            or dep.security_scopes_param_name
            or not _returns_response(route)
        ):
            return None
        groups: list[list[_Param]] = []
        for fields, where in (
            (dep.path_params, "path"),
            (dep.query_params, "query"),
            (dep.header_params, "header"),
        ):
            group = []
            for field in fields:
                info = field.field_info
                if (
                    not isinstance(info, params.Param)
                    or info.validation_alias is not None
                    or info.validate_default
                    or any(type(item).__name__ == "Json" for item in info.metadata)
                    or _is_sequence(info.annotation)
                    or _is_model(info.annotation)
                ):
                    return None
                group.append(_Param(field, where))
            groups.append(group)
        body: ModelField | None = None
        if dep.body_params:
            if (
                len(dep.body_params) != 1
                or route._embed_body_fields
                or isinstance(dep.body_params[0].field_info, params.Form)
            ):
                return None
            body = dep.body_params[0]
        return cls(groups[0], groups[1], groups[2], body, dep.request_param_name)

    def values(self, request: Request, body: Any) -> dict[str, Any] | None:
        """The endpoint's arguments, or None when any is missing or invalid (FastAPI's
        path then reports it)."""
        values: dict[str, Any] = {}
        if self.request_name is not None:
            values[self.request_name] = request
        if self.path and not _read(self.path, request.path_params, values):
            return None
        if self.query and not _read(self.query, request.query_params, values):
            return None
        if self.headers and not _read(self.headers, _first_headers(request), values):
            return None
        if self.body is not None:
            value, errors = self.body.validate(body, values, loc=("body",))
            if errors:
                return None
            values[self.body.name] = value
        return values


def _read(params_: list[_Param], source: Any, values: dict[str, Any]) -> bool:
    for p in params_:
        raw = source.get(p.alias)
        if raw is None:
            if p.required:
                return False
            values[p.name] = copy.deepcopy(p.default) if p.copy_default else p.default
            continue
        value, errors = p.field.validate(raw, values, loc=p.loc)
        if errors:
            return False
        values[p.name] = value
    return True


def _first_headers(request: Request) -> dict[str, str]:
    """Each header's first value by name, as ``Headers.get`` reads it (ASGI servers
    give names in lower case), in one pass instead of one scan per parameter."""
    out: dict[str, str] = {}
    for key, value in reversed(request.scope["headers"]):
        out[key.decode("latin-1")] = value.decode("latin-1")
    return out


def _is_model(annotation: Any) -> bool:
    from pydantic import BaseModel

    return any(
        isinstance(a, type) and issubclass(a, BaseModel)
        for a in (annotation, *get_args(annotation))
    )


def _returns_response(route: APIRoute) -> bool:
    from typing import get_type_hints

    try:
        hints = get_type_hints(route.endpoint)
    except Exception:  # an annotation that does not resolve: leave it to FastAPI
        return False
    ret = hints.get("return")
    return isinstance(ret, type) and issubclass(ret, Response)


class FastLane:
    """Innermost middleware: serves the requests of ``routes`` that it can, hands the
    others to FastAPI (``app``) untouched."""

    def __init__(self, app: ASGIApp, routes: Iterable[Any]) -> None:
        self.app = app
        routes = list(routes)
        # (segment count, first segment, second segment) -> the routes that can match
        # such a path, in the router's order (Starlette takes the first full match).
        # A route of another shape (a Mount, a parameter spanning segments) may match
        # any path: it keeps its place in every list and, when it matches, FastAPI
        # serves the request.
        shapes = [_shape(route) for route in routes]
        self.index: dict[tuple[int, str, str], list[tuple[Any, ServiceRoute | None]]] = {
            key: [] for key in shapes if key is not None
        }
        for route, key in zip(routes, shapes, strict=True):
            served = route if getattr(route, "fast", None) is not None else None
            first = _first_segment(route)
            for k, entries in self.index.items():
                if key is not None:
                    if k == key:
                        entries.append((route, served))
                elif first is None or first == k[1]:
                    # Only a route whose path starts elsewhere (/docs, /ui) cannot
                    # match: every other one is asked, in its place.
                    entries.append((_Other(route), None))

    def match(self, scope: Scope) -> tuple[ServiceRoute, dict[str, Any]] | None:
        """The route Starlette would pick for this request and its path parameters, if
        the lane serves it."""
        if scope.get("root_path") or scope["method"] == "HEAD":
            return None
        path: str = scope["path"]
        segments = path.split("/", 3)
        if len(segments) < 3:
            return None
        entries = self.index.get((path.count("/"), segments[1], segments[2]))
        if not entries:
            return None
        method = scope["method"]
        for route, served in entries:
            if isinstance(route, _Other):
                if route.matches(scope):
                    return None
                continue
            found = route.path_regex.match(path)
            if found is None or method not in route.methods:
                continue
            if served is None:
                return None
            return served, found.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        matched = self.match(scope)
        if matched is None:
            await self.app(scope, receive, send)
            return
        route, path_params = matched
        server_receive = receive
        body: bytes | None = None
        if route.fast is not None and route.fast.body is not None:
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            receive = replay_body(body, server_receive)
        scope["path_params"] = {**scope.get("path_params", {}), **path_params}
        scope["endpoint"] = route.endpoint
        scope["route"] = route
        request = Request(scope, receive, send)
        response = await route.serve_fast(request)
        if response is None:
            # Declined (something to report): FastAPI's path, from the same scope and
            # the same body, given again. Its router sets the route keys again.
            again = server_receive if body is None else replay_body(body, server_receive)
            await self.app(scope, again, send)
            return
        await response(scope, receive, send)


class _Other:
    """A route of another kind: asked through Starlette's own ``matches``."""

    __slots__ = ("route",)

    def __init__(self, route: Any) -> None:
        self.route = route

    def matches(self, scope: Scope) -> bool:
        from starlette.routing import Match

        match, _ = self.route.matches(scope)
        return bool(match != Match.NONE)


def _first_segment(route: Any) -> str | None:
    """The literal first segment of a route's path (``docs`` for /docs/assets), or None
    when it has none (a parameter, or no path we can read)."""
    fmt = getattr(route, "path_format", None)
    if not isinstance(fmt, str) or not fmt.startswith("/"):
        return None
    first = fmt.split("/", 2)[1]
    return None if "{" in first or not first else first


def _shape(route: Any) -> tuple[int, str, str] | None:
    """The index key of a route's paths, or None for one outside the lane's reach (not
    an APIRoute, or a path parameter that can span segments)."""
    if not isinstance(route, APIRoute):
        return None
    if any(not isinstance(c, StringConvertor) for c in route.param_convertors.values()):
        return None
    fmt = route.path_format
    segments = fmt.split("/", 3)
    if len(segments) < 3 or "{" in segments[1] or "{" in segments[2]:
        return None
    return (fmt.count("/"), segments[1], segments[2])
