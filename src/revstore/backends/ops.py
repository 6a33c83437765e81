"""What a protocol (``protocol``) asks its executor to do: the statements it yields."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import Executable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a SQLAlchemy Core statement (with ``params``: one dict, or a list for many)."""

    statement: Executable
    params: dict[str, Any] | list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Raw:
    """Run driver SQL as it is (``BEGIN IMMEDIATE``, ``COMMIT``, a dialect's hand-written
    one-statement write), with driver-style ``params`` if any."""

    sql: str
    params: dict[str, Any] | None = None


Op: TypeAlias = Execute | Raw
Step: TypeAlias = Generator[Op, Any, T]
"""A protocol: yields statements, is sent their results (a buffered SQLAlchemy
``Result``), returns a ``T``. A failed statement's translated error is thrown in."""

COMMIT = Raw("COMMIT")
