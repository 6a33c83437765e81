"""Helpers shared by the service tests (imported by module name: pytest puts this
directory on sys.path)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

with warnings.catch_warnings():
    # Starlette asks for httpx2; the TestClient works the same with httpx.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"

AppFactory = Callable[..., TestClient]

__all__ = ["PROBLEM", "AppFactory", "TestClient", "assert_problem"]


def assert_problem(resp: Any, status: int, kind: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem of this status and revstore kind."""
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["type"] == f"urn:revstore:problem:{kind}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert body["request_id"] == resp.headers["x-request-id"]
    return body
