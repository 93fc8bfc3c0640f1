"""`prebuildd migrate --uninstall`: drop prebuildd's own objects, one short step at a time."""

from __future__ import annotations

from functools import partial

import psycopg
from psycopg.rows import TupleRow

from prebuildd.migrate.errors import MigrationError
from prebuildd.migrate.files import as_sql
from prebuildd.migrate.locks import (
    LockPolicy,
    MigrationLockTimeout,
    concurrent_index_timeout,
    connect,
    migration_lock,
    scalar,
    with_lock_retries,
)
from prebuildd.queries import query

Connection = psycopg.Connection[TupleRow]


def uninstall(conninfo: str, *, lock_policy: LockPolicy | None = None) -> list[str]:
    """Drop prebuildd's own objects only; Coder's tables and data stay. Returns what went.

    Never one long transaction over many of Coder's tables: each table's triggers go in a
    short transaction of their own, indexes with DROP INDEX CONCURRENTLY, then our schema, each
    step under `lock_policy`. A step that times out raises MigrationLockTimeout with the
    earlier steps done; running uninstall again finishes the job (and `migrate` in the
    meantime would restore everything, having forgotten its applied files first).
    """
    policy = lock_policy or LockPolicy()
    with connect(conninfo) as conn, migration_lock(conn):
        try:
            return _uninstall_locked(conn, policy)
        except MigrationLockTimeout:
            raise
        except psycopg.Error as exc:
            raise MigrationError(
                f"uninstall failed: {exc}; what was removed before stays removed, run it again"
            ) from exc


def _uninstall_locked(conn: Connection, policy: LockPolicy) -> list[str]:
    removed: list[str] = []
    if scalar(conn, "has_bookkeeping"):
        conn.execute(query("forget_applied_files"))

    by_table: dict[str, list[tuple[str, str]]] = {}
    for table, description, statement in conn.execute(query("own_triggers")).fetchall():
        by_table.setdefault(str(table), []).append((str(description), str(statement)))
    for table, triggers in by_table.items():
        step = f"dropping prebuildd's triggers on {table}"
        with_lock_retries(conn, step, policy, partial(_run_in_transaction, conn, policy, triggers))
        removed += [description for description, _statement in triggers]

    indexes = conn.execute(query("own_indexes")).fetchall()
    with concurrent_index_timeout(conn, "dropping prebuildd's indexes", policy):
        for description, statement in indexes:
            conn.execute(as_sql(str(statement)))
            removed.append(str(description))

    own = [(str(d), None if s is None else str(s)) for d, s in conn.execute(query("own_schema"))]
    drops = [(d, s) for d, s in own if s is not None]
    step = "dropping schema prebuildd"
    with_lock_retries(conn, step, policy, partial(_run_in_transaction, conn, policy, drops))
    removed += [description for description, _statement in own]
    return removed


def _run_in_transaction(
    conn: Connection, policy: LockPolicy, statements: list[tuple[str, str]]
) -> None:
    with conn.transaction():
        conn.execute(query("set_local_lock_timeout"), {"timeout": policy.timeout_setting})
        for _description, statement in statements:
            conn.execute(as_sql(statement))
