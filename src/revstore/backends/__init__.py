"""Backends: one module per database, chosen from the URL scheme (``revstore.config``).

Only the chosen module is imported, so a SQLite user never loads a server driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from revstore.config import DRIVERS, MAX_OVERFLOW, POOL_SIZE, DatabaseURL, parse_url
from revstore.config import STRATEGIES as STRATEGIES
from revstore.content import check_text, shown
from revstore.errors import InvalidInput

if TYPE_CHECKING:
    from revstore.backends.aio import AsyncSqlBackend
    from revstore.backends.dialect import Dialect
    from revstore.backends.sql import SqlBackend
    from revstore.backends.threaded import ThreadedBackend

_MODULES = {
    "sqlite": "revstore.backends.sqlite",
    "postgresql": "revstore.backends.postgresql",
    "mysql": "revstore.backends.mysql",
}
_USAGE = "use sqlite:///path.db, postgresql://user@host/db or mysql://user@host/db"


def check_url(url: object) -> DatabaseURL:
    """Refuse a malformed database URL with InvalidInput (never a raw ValueError from
    the URL parser or the driver): not a string, no scheme, NUL or lone surrogates, an
    unknown database or driver, a port that is not a number from 1 to 65535."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput(f"database URL {shown(url)} is not a URL; {_USAGE}")
    check_text(url, "database URL", max_length=4096)
    parsed = parse_url(url)
    if parsed.driver and parsed.driver != DRIVERS[parsed.backend]:
        raise InvalidInput(
            f"unsupported driver {parsed.driver!r} for {parsed.scheme}; revstore uses "
            f"{DRIVERS[parsed.backend]} (write {parsed.scheme}://… without a driver)"
        )
    try:
        port = make_url(url).port
    except (ValueError, TypeError, ArgumentError) as exc:
        raise InvalidInput(f"database URL is malformed ({exc}); {_USAGE}") from None
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput(f"database URL has port {port}; a port is from 1 to 65535")
    return parsed


def open_async_backend(
    url: str,
    *,
    strategy: str | None = None,
    pool_size: int = POOL_SIZE,
    max_overflow: int = MAX_OVERFLOW,
    group_commit: bool = True,
    **options: Any,
) -> AsyncSqlBackend | ThreadedBackend:
    """The asyncio executor for ``url``: on the database's native async driver, or, for
    SQLite (``Dialect.async_in_threads``), the sync executor in threads."""
    from revstore.backends.aio import AsyncSqlBackend

    parsed = check_url(url)
    module = importlib.import_module(_MODULES[parsed.backend])
    dialect: Dialect = module.make_dialect(**options)
    if dialect.async_in_threads:
        from revstore.backends.threaded import ThreadedBackend

        sync = module.open_backend(
            parsed,
            strategy=strategy,
            pool_size=pool_size,
            max_overflow=max_overflow,
            group_commit=group_commit,
            **options,
        )
        return ThreadedBackend(sync, threads=pool_size)
    return AsyncSqlBackend(parsed, dialect, strategy, pool_size, max_overflow, group_commit)


def open_backend(url: str, **options: Any) -> SqlBackend:
    """Create the backend for ``url`` (``sqlite:///file.db``, ``postgresql://…``, ``mysql://…``)."""
    parsed = check_url(url)
    module = importlib.import_module(_MODULES[parsed.backend])
    backend: SqlBackend = module.open_backend(parsed, **options)
    return backend
