"""Service configuration: one frozen value, built from arguments or the environment
(the ``serve`` command passes its options to uvicorn's worker processes that way)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from revstore.config import DEFAULT_MAX_PAGE_BYTES as DEFAULT_MAX_PAGE_BYTES
from revstore.config import DEFAULT_URL as DEFAULT_URL
from revstore.config import ENV_URL as ENV_URL

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_IDEMPOTENCY_TTL = 24 * 3600.0

ENV_REQUIRE_IF_MATCH = "REVSTORE_REQUIRE_IF_MATCH"
ENV_MAX_BODY_BYTES = "REVSTORE_MAX_BODY_BYTES"
ENV_MAX_PAGE_BYTES = "REVSTORE_MAX_PAGE_BYTES"
ENV_IDEMPOTENCY_TTL = "REVSTORE_IDEMPOTENCY_TTL"
ENV_POOL_SIZE = "REVSTORE_POOL_SIZE"
ENV_MAX_OVERFLOW = "REVSTORE_MAX_OVERFLOW"
ENV_AUTH = "REVSTORE_AUTH"
ENV_FAST_LANE = "REVSTORE_FAST_LANE"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _auth(value: str | None) -> bool:
    """REVSTORE_AUTH: ``required`` or ``off`` (unset: off, as for ``create_app``)."""
    text = (value or "off").strip().lower()
    if text not in ("required", "off"):
        raise ValueError(f"{ENV_AUTH} must be required or off, got {value!r}")
    return text == "required"


@dataclass(frozen=True, slots=True)
class Settings:
    url: str = DEFAULT_URL
    require_if_match: bool = False
    """Record writes without a precondition (If-Match, If-None-Match: *, or
    expected_revision) are refused with 428."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Request bodies over this size are refused with 413 before they are parsed."""
    max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES
    """A page of versions, items or records ends before its content passes this many
    bytes (at least one per page); ``next_after`` continues. Applies when the app
    opens its store from a URL (a Store or AsyncStore passed in keeps its own
    ``max_page_bytes``)."""
    idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL
    """How long a stored response answers re-sends of the same Idempotency-Key."""
    idempotency_wait: float = 5.0
    """How long a re-send waits for the first request with its key to finish (then 409)."""
    idempotency_lease: float | None = None
    """After this long a reservation whose write never committed (a crashed process)
    may be taken over. None (the default): computed from the Store's retry policy so
    that it outlives every retry of a live request (``revstore.idempotency.lease_for``,
    about 4 minutes with the default policy). A request that outlived it anyway loses
    its key: its write rolls back (409), it never writes twice."""
    retry_after: int = 1
    """Seconds announced in Retry-After on 503 and on an in-progress 409."""
    pool_size: int = 16
    max_overflow: int = 32
    """Database connections per process, when the app opens its own AsyncStore (from a
    URL or a sync Store): at most pool_size + max_overflow (the Store's defaults).
    Requests run concurrently on the process's event loop; when every connection
    is busy, a request waits for one (SQLAlchemy's pool timeout, 30 s)."""

    retention_interval: float = 2.0
    """Seconds between the rounds that apply retention policies to the records this
    process wrote (``revstore.service.retention``); 0 turns them off."""

    auth: bool = False
    """``/v1/...`` requests need an API key (``revstore.service.auth``). ``revstore
    serve`` turns it on by default when it binds a non-loopback address."""

    fast_lane: bool = True
    """Serve valid requests to the API's routes without FastAPI's router walk and
    dependency machinery (``revstore.service.fastlane``); same answers, less CPU.
    False (``REVSTORE_FAST_LANE=0``) sends every request down FastAPI's path."""

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be 1 or more, got {self.max_body_bytes}")
        if self.max_page_bytes < 1:
            raise ValueError(f"max_page_bytes must be 1 or more, got {self.max_page_bytes}")
        lease = self.idempotency_lease
        if (
            self.idempotency_ttl <= 0
            or self.idempotency_wait < 0
            or (lease is not None and lease <= 0)
        ):
            raise ValueError("idempotency durations must be positive")
        if self.retention_interval < 0:
            raise ValueError("retention_interval must be 0 (off) or positive")

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            url=env.get(ENV_URL) or DEFAULT_URL,
            require_if_match=_flag(env.get(ENV_REQUIRE_IF_MATCH)),
            max_body_bytes=int(env.get(ENV_MAX_BODY_BYTES) or DEFAULT_MAX_BODY_BYTES),
            max_page_bytes=int(env.get(ENV_MAX_PAGE_BYTES) or DEFAULT_MAX_PAGE_BYTES),
            idempotency_ttl=float(env.get(ENV_IDEMPOTENCY_TTL) or DEFAULT_IDEMPOTENCY_TTL),
            pool_size=int(env.get(ENV_POOL_SIZE) or 16),
            max_overflow=int(env.get(ENV_MAX_OVERFLOW) or 32),
            auth=_auth(env.get(ENV_AUTH)),
            fast_lane=_flag(env.get(ENV_FAST_LANE) or "1"),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes ``from_env`` rebuild these settings in a worker."""
        return {
            ENV_URL: self.url,
            ENV_REQUIRE_IF_MATCH: "1" if self.require_if_match else "0",
            ENV_MAX_BODY_BYTES: str(self.max_body_bytes),
            ENV_MAX_PAGE_BYTES: str(self.max_page_bytes),
            ENV_IDEMPOTENCY_TTL: str(self.idempotency_ttl),
            ENV_POOL_SIZE: str(self.pool_size),
            ENV_MAX_OVERFLOW: str(self.max_overflow),
            ENV_AUTH: "required" if self.auth else "off",
            ENV_FAST_LANE: "1" if self.fast_lane else "0",
        }
