"""The one schema definition (SQLAlchemy Core metadata) shared by every backend.

Content is stored as the canonical JSON *text* rather than a native JSON type, so
every backend hands back exactly the bytes that were hashed.

The metadata always describes the newest schema, :data:`SCHEMA_VERSION`, and
``revstore_schema`` records which version a database has. Changing a table means
changing it here, bumping :data:`SCHEMA_VERSION` and appending the step that turns
the previous version into this one to ``revstore.migrations.MIGRATIONS``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql

# Ids compare byte for byte everywhere. MySQL's default collations fold case and
# MariaDB's *_bin collations ignore trailing spaces, so "Doc" / "doc " would collide.
Id = (
    String(255)
    .with_variant(String(255, collation="C"), "postgresql")
    .with_variant(mysql.VARCHAR(255, collation="utf8mb4_0900_bin"), "mysql")
    .with_variant(mysql.VARCHAR(255, collation="utf8mb4_nopad_bin"), "mariadb")
)
Json = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Timestamp = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Hash = String(64)

SCHEMA_VERSION = 4
"""The version these tables are. 1 is the release before versions were recorded (the
same five tables, no ``revstore_schema``); 2 adds ``revstore_schema``; 3 adds
``revstore_api_keys``; 4 adds ``revstore_retention`` and ``revstore_compacted``."""

metadata = MetaData()

records = Table(
    "revstore_records",
    metadata,
    Column("namespace", Id, nullable=False),
    Column("id", Id, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("content", Json, nullable=False),
    Column("content_hash", Hash, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("namespace", "id", name="revstore_records_pk"),
    mysql_charset="utf8mb4",
)

versions = Table(
    "revstore_versions",
    metadata,
    Column("namespace", Id, nullable=False),
    Column("record_id", Id, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("content", Json, nullable=False),
    Column("content_hash", Hash, nullable=False),
    Column("author", String(255), nullable=True),
    Column("summary", String(1000), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    # The last line of defence: with the counter and lock strategies it never fires.
    PrimaryKeyConstraint("namespace", "record_id", "version", name="revstore_versions_pk"),
    UniqueConstraint("namespace", "record_id", "revision", name="revstore_versions_revision_uq"),
    mysql_charset="utf8mb4",
)

streams = Table(
    "revstore_streams",
    metadata,
    Column("namespace", Id, nullable=False),
    Column("id", Id, nullable=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("item_count", BigInteger, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("namespace", "id", name="revstore_streams_pk"),
    mysql_charset="utf8mb4",
)

stream_items = Table(
    "revstore_stream_items",
    metadata,
    Column("namespace", Id, nullable=False),
    Column("stream_id", Id, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("item_id", Id, nullable=True),
    Column("body", Json, nullable=False),
    Column("body_hash", Hash, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("namespace", "stream_id", "sequence", name="revstore_stream_items_pk"),
    # NULL item ids never collide (SQL NULL semantics on every backend).
    UniqueConstraint("namespace", "stream_id", "item_id", name="revstore_stream_items_item_uq"),
    mysql_charset="utf8mb4",
)

idempotency = Table(
    "revstore_idempotency",
    metadata,
    Column("key", Id, nullable=False),
    Column("request_hash", Hash, nullable=False),
    Column("status", Integer, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", Json, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("key", name="revstore_idempotency_pk"),
    Index("revstore_idempotency_expires_ix", "expires_at"),
    mysql_charset="utf8mb4",
)

schema_version = Table(
    "revstore_schema",
    metadata,
    # One row (id = 1): the schema version of this database. Written under the schema
    # lock only (see SqlBackend.create_schema); 0 means a first creation was cut short.
    Column("id", Integer, nullable=False, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("id", name="revstore_schema_pk"),
    mysql_charset="utf8mb4",
)

api_keys = Table(
    "revstore_api_keys",
    metadata,
    # The public part of a token (``rsk_<id>_<secret>``): a key is found by it, then its
    # hash is compared in constant time. The token itself is never stored.
    Column("id", String(32), nullable=False),
    Column("token_hash", Hash, nullable=False),
    Column("name", String(255), nullable=False),
    # One namespace, or "*" for every namespace (see revstore.apikeys).
    Column("namespace", Id, nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp, nullable=True),
    PrimaryKeyConstraint("id", name="revstore_api_keys_pk"),
    mysql_charset="utf8mb4",
)

retention = Table(
    "revstore_retention",
    metadata,
    # One row per namespace with a policy (see revstore.retention): keep the last
    # ``keep_last`` versions of each record, and / or those younger than
    # ``max_age_seconds``; a version either rule keeps is kept.
    Column("namespace", Id, nullable=False),
    Column("keep_last", BigInteger, nullable=True),
    Column("max_age_seconds", BigInteger, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("namespace", name="revstore_retention_pk"),
    mysql_charset="utf8mb4",
)

compacted = Table(
    "revstore_compacted",
    metadata,
    # The oldest version retention kept of a record: a version below it was removed
    # (VersionCompacted), one at or above it exists or never did. Only ever raised.
    Column("namespace", Id, nullable=False),
    Column("record_id", Id, nullable=False),
    Column("first_version", BigInteger, nullable=False),
    PrimaryKeyConstraint("namespace", "record_id", name="revstore_compacted_pk"),
    mysql_charset="utf8mb4",
)
