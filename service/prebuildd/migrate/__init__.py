"""`prebuildd migrate`: install or verify the schema, apply prebuildd's own objects, uninstall.

An empty database gets the part of Coder's schema prebuildd uses; any other database is
verified against what prebuildd needs of Coder's schema, every gap reported at once, before
anything is created. Then prebuildd's own SQL files are applied (its `prebuildd` schema,
indexes, functions, triggers), each file once or whenever it changed, without ever queueing
Coder behind a lock for longer than a short timeout. Safe to run any number of times, also
concurrently; error messages never carry the connection string.

* coder_schema.py  what prebuildd needs of Coder's schema (`REQUIRED_COLUMNS`,
                   `OPTIONAL_COLUMNS`, `REQUIRED_ENUM_LABELS`) and the check against it;
* files.py         the SQL files below `sql/`, which a database still needs, applying one;
* locks.py         `LockPolicy`: short lock timeouts, retries with backoff, the migration
                   lock, `MigrationLockTimeout`;
* install.py       `migrate`: the order of it all;
* teardown.py      `uninstall`: prebuildd's own objects dropped, one short step at a time;
* errors.py        `MigrationError`, which every failure above is.
"""

from prebuildd.migrate.coder_schema import (
    OLDEST_CODER_RELEASE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    REQUIRED_ENUM_LABELS,
    SchemaMismatch,
    find_absent_optional,
    find_missing,
    verify_schema,
)
from prebuildd.migrate.errors import MigrationError
from prebuildd.migrate.files import (
    BASE_SCHEMA,
    NO_TRANSACTION_MARKER,
    SqlFile,
    base_schema,
    repeatable_files,
    split_statements,
    versioned_files,
)
from prebuildd.migrate.install import MigrateReport, migrate
from prebuildd.migrate.locks import (
    APPLICATION_NAME,
    MIGRATION_LOCK_KEY,
    LockPolicy,
    MigrationLockTimeout,
)
from prebuildd.migrate.teardown import uninstall

__all__ = [
    "APPLICATION_NAME",
    "BASE_SCHEMA",
    "MIGRATION_LOCK_KEY",
    "NO_TRANSACTION_MARKER",
    "OLDEST_CODER_RELEASE",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "REQUIRED_ENUM_LABELS",
    "LockPolicy",
    "MigrateReport",
    "MigrationError",
    "MigrationLockTimeout",
    "SchemaMismatch",
    "SqlFile",
    "base_schema",
    "find_absent_optional",
    "find_missing",
    "migrate",
    "repeatable_files",
    "split_statements",
    "uninstall",
    "verify_schema",
    "versioned_files",
]
