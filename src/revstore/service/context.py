"""What the routes need from the app, in one typed object on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from revstore.service.idempotency import IdempotencyStore
from revstore.service.metrics import Metrics
from revstore.service.settings import Settings
from revstore.store import Store


@dataclass(frozen=True, slots=True)
class Services:
    store: Store
    settings: Settings
    metrics: Metrics
    idempotency: IdempotencyStore
    owns_store: bool


def services(conn: HTTPConnection) -> Services:
    svc: Services = conn.app.state.services
    return svc
