"""Backends: one module per database, chosen from the URL scheme.

Only the chosen module is imported, so a SQLite user never loads a server driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from revstore.content import check_text, shown
from revstore.errors import InvalidInput

if TYPE_CHECKING:
    from revstore.backends.sql import SqlBackend

_SCHEMES = {
    "sqlite": "revstore.backends.sqlite:SqliteBackend",
    "postgresql": "revstore.backends.postgresql:PostgresBackend",
    "postgres": "revstore.backends.postgresql:PostgresBackend",
    "mysql": "revstore.backends.mysql:MysqlBackend",
    "mariadb": "revstore.backends.mysql:MysqlBackend",
}

STRATEGIES = ("counter", "lock", "optimistic")


_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg", "postgres": "psycopg"}
_DRIVERS.update(mysql="pymysql", mariadb="pymysql")
_USAGE = "use sqlite:///path.db, postgresql://user@host/db or mysql://user@host/db"


def check_url(url: object) -> str:
    """Refuse a malformed database URL with InvalidInput (never a raw ValueError from
    the URL parser or the driver): not a string, no scheme, NUL or lone surrogates, an
    unknown database or driver, a port that is not a number from 1 to 65535."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput(f"database URL {shown(url)} is not a URL; {_USAGE}")
    check_text(url, "database URL", max_length=4096)
    scheme = url.split("://", 1)[0].lower()
    database, _, driver = scheme.partition("+")
    if database not in _SCHEMES:
        raise InvalidInput(
            f"unsupported database {database!r}; "
            "revstore supports sqlite, postgresql and mysql/mariadb"
        )
    if driver and driver != _DRIVERS[database]:
        raise InvalidInput(
            f"unsupported driver {driver!r} for {database}; revstore uses "
            f"{_DRIVERS[database]} (write {database}://… without a driver)"
        )
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ValueError, TypeError, ArgumentError) as exc:
        raise InvalidInput(f"database URL is malformed ({exc}); {_USAGE}") from None
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput(f"database URL has port {port}; a port is from 1 to 65535")
    return url


def open_backend(url: str, **options: Any) -> SqlBackend:
    """Create the backend for ``url`` (``sqlite:///file.db``, ``postgresql://…``, ``mysql://…``)."""
    check_url(url)
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    module_name, class_name = _SCHEMES[scheme].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: SqlBackend = cls(url, **options)
    return backend
