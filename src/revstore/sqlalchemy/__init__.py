"""revstore for your own SQLAlchemy models: ``Versioned`` rows with a history table,
for ``Session`` and ``AsyncSession`` (docs/sqlalchemy.md)."""

from revstore.sqlalchemy.history import Snapshot as Snapshot
from revstore.sqlalchemy.history import async_diff as async_diff
from revstore.sqlalchemy.history import async_get_version as async_get_version
from revstore.sqlalchemy.history import async_history as async_history
from revstore.sqlalchemy.history import async_restore as async_restore
from revstore.sqlalchemy.history import diff as diff
from revstore.sqlalchemy.history import get_version as get_version
from revstore.sqlalchemy.history import history as history
from revstore.sqlalchemy.history import restore as restore
from revstore.sqlalchemy.versioned import BulkWriteRefused as BulkWriteRefused
from revstore.sqlalchemy.versioned import ObjectVersionConflict as ObjectVersionConflict
from revstore.sqlalchemy.versioned import Versioned as Versioned
from revstore.sqlalchemy.versioned import set_change as set_change
