"""Backends: one module per database, chosen from the URL scheme.

Only the chosen module is imported, so a SQLite user never loads a server driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def open_backend(url: str, **options: Any) -> SqlBackend:
    """Create the backend for ``url`` (``sqlite:///file.db``, ``postgresql://…``, ``mysql://…``)."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput(
            f"database URL {url!r} is not a URL; use sqlite:///path.db, "
            "postgresql://user@host/db or mysql://user@host/db"
        )
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    target = _SCHEMES.get(scheme)
    if target is None:
        raise InvalidInput(
            f"unsupported database {scheme!r}; "
            "revstore supports sqlite, postgresql and mysql/mariadb"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: SqlBackend = cls(url, **options)
    return backend
