"""Prometheus metrics of one service app.

Each app gets its own registry (several apps may live in one test process). With
several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR (an empty directory, before the
server starts): every worker then writes its samples there and /metrics aggregates
all of them. Without it, each worker reports only its own requests.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip

UNMATCHED = "<unmatched>"
"""Route label of requests that matched no route (keeps the label set bounded)."""

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
OTHER_METHOD = "<other>"
"""Method label of any other method: clients may send any token as a method, and one
series per invented method would grow the metrics (and /metrics) without bound."""


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER_METHOD


current_metrics: ContextVar[Metrics | None] = ContextVar("revstore_metrics", default=None)


class Metrics:
    def __init__(self) -> None:
        # The *_created series double the output and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "revstore_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "revstore_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "revstore_http_requests_in_progress",
            "HTTP requests being served.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.conflicts = Counter(
            "revstore_conflicts",
            "Requests refused because an expectation did not hold (409/412).",
            ["route", "kind"],
            registry=r,
        )
        self.retries = Counter(
            "revstore_retries",
            "Transactions re-run after a transient database error.",
            ["op", "db_code"],
            registry=r,
        )
        self.retries_exhausted = Counter(
            "revstore_retries_exhausted",
            "Operations that gave up after the retry budget (answered 503).",
            ["op"],
            registry=r,
        )
        self.idempotency = Counter(
            "revstore_idempotency_requests",
            "Writes carrying an Idempotency-Key, by outcome.",
            ["outcome"],
            registry=r,
        )

        # The children of the two per-request series, by label values: ``labels()``
        # validates and locks on every call, and it ran twice per request. The label
        # sets are bounded (method_label, route templates, statuses), so is this cache.
        self._request_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one served request and its latency (the same series as
        ``requests.labels(method, route, status).inc()`` and
        ``latency.labels(method, route).observe(seconds)``)."""
        key = (method, route, str(status))
        series = self._request_series.get(key)
        if series is None:
            series = (self.requests.labels(*key), self.latency.labels(method, route))
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RetryCounter(logging.Handler):
    """Counts revstore's retry log records into the metrics of the app serving the
    request that made them (found through a context variable)."""

    def emit(self, record: logging.LogRecord) -> None:
        metrics = current_metrics.get()
        if metrics is None:
            return
        event = getattr(record, "event", None)
        op = str(getattr(record, "op", "") or "")
        if event == "retry":
            metrics.retries.labels(op, str(getattr(record, "db_code", "") or "")).inc()
        elif event == "retries_exhausted":
            metrics.retries_exhausted.labels(op).inc()


_installed = False


def install_retry_counter() -> None:
    """Attach the counter to ``revstore.retry`` once per process."""
    global _installed
    if _installed:
        return
    logger = logging.getLogger("revstore.retry")
    logger.addHandler(RetryCounter())
    if not logger.isEnabledFor(logging.INFO):
        # Retries are logged at INFO; below that the handler would never see them.
        logger.setLevel(logging.INFO)
    _installed = True
