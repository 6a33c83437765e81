"""Configuration in one place: database URLs, defaults and limits.

Every part of revstore (the store, the backends, the CLI, the service, the lab) reads
its URL scheme, its defaults and its limits from here, so a scheme or a limit is
decided once. Imports nothing from the rest of revstore but the error hierarchy, so
any module can use it without an import cycle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from revstore.errors import InvalidInput

# ----------------------------------------------------------------- URLs

BackendName = Literal["sqlite", "postgresql", "mysql"]

SCHEMES: Final[dict[str, BackendName]] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}
"""URL scheme (before any ``+driver``) → the backend that serves it."""

DRIVERS: Final[dict[BackendName, str]] = {
    "sqlite": "pysqlite",
    "postgresql": "psycopg",
    "mysql": "pymysql",
}
"""The sync DBAPI driver each backend runs on when the URL names none."""

ASYNC_DRIVERS: Final[dict[BackendName, str]] = {
    "sqlite": "aiosqlite",
    "postgresql": "psycopg",  # psycopg's async API: SQLAlchemy's psycopg_async dialect
    "mysql": "asyncmy",
}
"""The native asyncio driver of each backend: what ``AsyncStore`` runs on for the
servers, and what an ``AsyncSession`` over ``revstore.sqlalchemy`` models uses.
(``AsyncStore`` on SQLite, which has no I/O to wait on, runs sqlite3 in threads:
``backends.threaded``.)"""

DEFAULT_URL: Final = "sqlite:///revstore.db"
ENV_URL: Final = "REVSTORE_URL"
"""The environment variable the CLI, the lab and the service read the URL from."""

PREPARE_THRESHOLD: Final = "prepare_threshold"
"""revstore's own URL query parameter (PostgreSQL; taken off before the URL reaches libpq)."""
AUTO: Final = "auto"
PREPARE_AFTER: Final = 5
"""psycopg's default: a statement text run this many times on a connection is prepared."""


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed revstore database URL (``sqlite:///f.db``, ``postgresql://…``, ``mysql://…``)."""

    url: str
    """As given."""
    backend: BackendName
    scheme: str
    """The scheme as written, lower case, without ``+driver`` (``postgres``, ``mariadb``…)."""
    driver: str | None
    """The ``+driver`` part, if the URL names one."""
    rest: str
    """Everything after ``://``."""

    def sqlalchemy(self, dialect: str | None = None, driver: str | None = None) -> str:
        """The URL for SQLAlchemy: ``dialect+driver://rest``. The dialect defaults to the
        backend's own name (MySQL: ``mysql``; ``mariadb`` selects MariaDB's dialect),
        the driver to the one the URL names, else the backend's sync driver."""
        name = dialect or self.backend
        return f"{name}+{driver or self.driver or DRIVERS[self.backend]}://{self.rest}"


def parse_url(url: object) -> DatabaseURL:
    """Parse ``url``; :class:`InvalidInput` when it is not a URL of a supported database."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput(
            f"database URL {url!r} is not a URL; use sqlite:///path.db, "
            "postgresql://user@host/db or mysql://user@host/db"
        )
    head, rest = url.split("://", 1)
    scheme, _, driver = head.lower().partition("+")
    backend = SCHEMES.get(scheme)
    if backend is None:
        raise InvalidInput(
            f"unsupported database {scheme!r}; "
            "revstore supports sqlite, postgresql and mysql/mariadb"
        )
    return DatabaseURL(url, backend, scheme, driver or None, rest)


def backend_of(url: str | None) -> BackendName | None:
    """The backend ``url`` names, or None (not a URL, or not a database revstore knows)."""
    try:
        return parse_url(url).backend
    except InvalidInput:
        return None


def db_url(given: str | None) -> str:
    """The database URL to use: the one given, else ``$REVSTORE_URL``, else the default."""
    return given or os.environ.get(ENV_URL) or DEFAULT_URL


def with_query(url: str, name: str, value: str) -> str:
    """``url`` with the query parameter ``name=value`` added unless it already has one."""
    if f"{name}=" in url.partition("?")[2]:
        return url
    return url + ("&" if "?" in url else "?") + f"{name}={value}"


def prepare_threshold(url: str) -> tuple[str, int | str | None]:
    """Split ``?prepare_threshold=auto|none|N`` off ``url``: the URL for the engine, and
    when psycopg may prepare statements server-side (after N executions of one
    statement text on a connection; ``None``: never; ``"auto"``, the default: after
    ``PREPARE_AFTER``, except on a connection that goes through a pooler).

    Why it matters: behind a pooler in transaction mode (PgBouncer < 1.21, or ≥ 1.21
    without ``max_prepared_statements``) consecutive transactions of one client
    connection run on different server connections, so a statement psycopg prepared
    on one is missing on the next (26000) or already there under the same name
    (42P05). Unnamed statements, the only kind used with ``none``, pass any pooler.
    Prepared statements do pay on a direct connection: the counter statements are
    CTEs whose parse and plan are a large part of their cost (docs/operations.md).
    """
    base, sep, query = url.partition("?")
    value: int | str | None = AUTO
    if not sep:
        return url, value
    kept = []
    for part in query.split("&"):
        name, _, raw = part.partition("=")
        if name != PREPARE_THRESHOLD:
            if part:
                kept.append(part)
            continue
        word = unquote(raw).strip().lower()
        if word == AUTO:
            value = AUTO
        elif word in ("none", "off", "never"):
            value = None
        elif word.isascii() and word.isdigit() and len(word) <= 6:
            value = int(word)
        else:
            raise InvalidInput(
                f"{PREPARE_THRESHOLD}={raw!r} in the database URL: give 'auto' (the "
                "default), 'none' (never prepare: behind a transaction pooler) or a "
                "number of executions"
            )
    return base + ("?" + "&".join(kept) if kept else ""), value


# ----------------------------------------------------------------- strategies

STRATEGIES: Final = ("counter", "lock", "optimistic")
"""How a write takes its next number (see ``revstore.backends.strategy``)."""

# ----------------------------------------------------------------- limits and defaults

MAX_DEPTH: Final = 100
"""Content may nest at most this many arrays/objects inside each other: ``[[1]]`` is
depth 2, a scalar is depth 0."""
DEFAULT_MAX_CONTENT_BYTES: Final = 1024 * 1024
MAX_ID_LENGTH: Final = 255
MAX_NUMBER: Final = 2**63 - 1
"""Revisions, versions and sequences are 64-bit signed integers in every backend."""
MAX_INT_DIGITS: Final = 4300
"""Integers in content have at most this many decimal digits: Python's default limit
for int <-> str conversion (``sys.get_int_max_str_digits``), fixed here so that what
is accepted does not depend on how the interpreter is configured."""
DEFAULT_MAX_BATCH_ITEMS: Final = 1000
DEFAULT_MAX_PAGE_BYTES: Final = 8 * 1024 * 1024
"""A page of ``history``, ``read`` or ``list`` ends before its content passes this many
bytes (canonical JSON, UTF-8), with at least one item."""
MAX_PAGE_LIMIT: Final = 1000
MAX_AUTHOR: Final = 255
MAX_SUMMARY: Final = 1000
MAX_IDEMPOTENCY_KEY: Final = 255
LIST_SCAN_ROWS: Final = 2000
"""A ``list`` page looks at most this many ids (or limit + 1), live or deleted: past
them it ends early, even empty, with ``next_after`` set."""

# Connections.
POOL_SIZE: Final = 16
MAX_OVERFLOW: Final = 32
CONNECT_TIMEOUT: Final = 10
"""Seconds (PostgreSQL, MySQL) to open one connection."""
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000

# Retry policy (``revstore.retry.RetryPolicy``).
RETRY_MAX_ATTEMPTS: Final = 12
RETRY_MAX_SECONDS: Final = 10.0
RETRY_INITIAL_WAIT: Final = 0.002
RETRY_MAX_WAIT: Final = 0.25
