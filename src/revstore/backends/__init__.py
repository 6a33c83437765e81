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
    "sqlite": "revstore.backends.sqlite",
    "postgresql": "revstore.backends.postgresql",
    "mysql": "revstore.backends.mysql",
}


def open_backend(url: str, **options: Any) -> SqlBackend:
    """Create the backend for ``url`` (``sqlite:///file.db``, ``postgresql://…``, ``mysql://…``)."""
    parsed = parse_url(url)
    module = importlib.import_module(_MODULES[parsed.backend])
    backend: SqlBackend = module.open_backend(parsed, **options)
    return backend
