"""`prebuildd migrate`: bring a database up to date, safely also while Coder runs.

An empty database gets the base schema (the subset of Coder's); any other is verified first
(prebuildd.migrate.coder_schema) so that a foreign schema that does not fit gets no leftovers.
Then the pending versioned files and the changed repeatable ones are applied
(prebuildd.migrate.files), and `migrate` ends with every trigger of sql/triggers/ in place and
enabled, or fails saying which is not (prebuildd.event_source). Error messages never carry
the connection string.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import TupleRow

from prebuildd.migrate.coder_schema import find_absent_optional, verify_schema
from prebuildd.migrate.files import (
    SqlFile,
    applied_checksums,
    apply_file,
    base_schema,
    changed_repeatable,
    pending_versioned,
    restore_event_triggers,
)
from prebuildd.migrate.locks import LockPolicy, connect, migration_lock, scalar
from prebuildd.queries import query

log = logging.getLogger("prebuildd.migrate")

Connection = psycopg.Connection[TupleRow]


@dataclass(frozen=True, slots=True)
class MigrateReport:
    """What one `migrate` call changed: applied file paths (relative to sql/), in order."""

    applied: tuple[str, ...]
    # True when the database was empty and the Coder subset was installed.
    installed_base_schema: bool
    # OPTIONAL_COLUMNS this database lacks ("template_version_presets.last_invalidated_at"):
    # what needs them is unavailable until Coder is upgraded.
    absent_optional: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def migrate(conninfo: str, *, lock_policy: LockPolicy | None = None) -> MigrateReport:
    """Bring the database up to date; safe to run any number of times, also concurrently.

    Each file is applied under `lock_policy` (see `LockPolicy`); a file that cannot get its
    locks in time raises MigrationLockTimeout, leaving every file applied before it in place.
    """
    policy = lock_policy or LockPolicy()
    with connect(conninfo) as conn, migration_lock(conn):
        return _migrate_locked(conn, policy)


def _migrate_locked(conn: Connection, policy: LockPolicy) -> MigrateReport:
    empty = not scalar(conn, "has_templates_table")
    if not empty:
        # Before creating anything: a foreign schema that does not fit gets no leftovers.
        verify_schema(conn)
    conn.execute(query("create_bookkeeping"))
    applied = applied_checksums(conn)
    todo: list[SqlFile] = [base_schema()] if empty else []
    todo += pending_versioned(applied)
    done: list[str] = []
    for file in todo:
        apply_file(conn, file, policy)
        done.append(file.path)
    if empty:
        # The subset and the manifest must agree; a slip shows here, not in production.
        verify_schema(conn)
    for file in changed_repeatable(applied):
        apply_file(conn, file, policy)
        done.append(file.path)
    done += restore_event_triggers(conn, policy)
    absent = find_absent_optional(conn)
    for column in absent:
        log.warning(
            "optional column absent: what needs it is unavailable until Coder is upgraded",
            extra={"column": column},
        )
    return MigrateReport(applied=tuple(done), installed_base_schema=empty, absent_optional=absent)
