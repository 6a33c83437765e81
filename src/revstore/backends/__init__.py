"""Backends: one module per database, chosen from the URL scheme (``revstore.config``).

Only the chosen module is imported, so a SQLite user never loads a server driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from revstore.config import STRATEGIES as STRATEGIES
from revstore.config import parse_url

if TYPE_CHECKING:
    from revstore.backends.sql import SqlBackend

_MODULES = {
    "sqlite": "revstore.backends.sqlite:SqliteBackend",
    "postgresql": "revstore.backends.postgresql:PostgresBackend",
    "mysql": "revstore.backends.mysql:MysqlBackend",
}


def open_backend(url: str, **options: Any) -> SqlBackend:
    """Create the backend for ``url`` (``sqlite:///file.db``, ``postgresql://…``, ``mysql://…``)."""
    module_name, class_name = _MODULES[parse_url(url).backend].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: SqlBackend = cls(url, **options)
    return backend
