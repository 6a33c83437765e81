"""revstore for your own SQLAlchemy models, for ``Session`` and ``AsyncSession``:
``Versioned`` rows with a history table (docs/sqlalchemy.md), ``Sequenced`` child rows
numbered gapless per scope, and units of work that retry (docs/sqlalchemy-sequenced.md)."""

from revstore.sqlalchemy.adopt import AdoptProgress as AdoptProgress
from revstore.sqlalchemy.adopt import AdoptResult as AdoptResult
from revstore.sqlalchemy.adopt import adopt as adopt
from revstore.sqlalchemy.adopt import adopt_rows as adopt_rows
from revstore.sqlalchemy.history import Snapshot as Snapshot
from revstore.sqlalchemy.history import async_diff as async_diff
from revstore.sqlalchemy.history import async_get_version as async_get_version
from revstore.sqlalchemy.history import async_history as async_history
from revstore.sqlalchemy.history import async_restore as async_restore
from revstore.sqlalchemy.history import diff as diff
from revstore.sqlalchemy.history import get_version as get_version
from revstore.sqlalchemy.history import history as history
from revstore.sqlalchemy.history import restore as restore
from revstore.sqlalchemy.sequenced import Sequenced as Sequenced
from revstore.sqlalchemy.sequenced import add_sequenced as add_sequenced
from revstore.sqlalchemy.sequenced import append as append
from revstore.sqlalchemy.sequenced import async_add_sequenced as async_add_sequenced
from revstore.sqlalchemy.sequenced import async_append as async_append
from revstore.sqlalchemy.transaction import async_transaction as async_transaction
from revstore.sqlalchemy.transaction import transaction as transaction
from revstore.sqlalchemy.versioned import BulkWriteRefused as BulkWriteRefused
from revstore.sqlalchemy.versioned import ObjectVersionConflict as ObjectVersionConflict
from revstore.sqlalchemy.versioned import Versioned as Versioned
from revstore.sqlalchemy.versioned import set_change as set_change
