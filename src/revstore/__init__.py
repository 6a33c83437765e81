"""revstore: versioned records and sequenced streams in SQL databases, safe under any
number of concurrent writers."""

from revstore.async_store import AsyncStore
from revstore.errors import (
    AmbiguousCommit,
    ClaimLost,
    Conflict,
    DuplicateItem,
    InvalidInput,
    NotFound,
    RevstoreError,
    SchemaMismatch,
    SequenceConflict,
    Unavailable,
    VersionCompacted,
    VersionConflict,
)
from revstore.record import HistoryPage, Record, RecordPage, Version
from revstore.retry import RetryPolicy
from revstore.store import Store
from revstore.stream import AppendResult, ReadPage, StreamInfo, StreamItem, StreamPage

__version__ = "0.1.0"

__all__ = [
    "AmbiguousCommit",
    "AppendResult",
    "AsyncStore",
    "ClaimLost",
    "Conflict",
    "DuplicateItem",
    "HistoryPage",
    "InvalidInput",
    "NotFound",
    "ReadPage",
    "Record",
    "RecordPage",
    "RetryPolicy",
    "RevstoreError",
    "SchemaMismatch",
    "SequenceConflict",
    "Store",
    "StreamInfo",
    "StreamItem",
    "StreamPage",
    "Unavailable",
    "Version",
    "VersionCompacted",
    "VersionConflict",
]
