"""prebuildd's SQL files below `sql/`, which of them a database still needs, and applying one.

* `schema/coder_subset.sql` -- the base: the part of Coder's schema prebuildd and its
  development tools use. Applied only to a database without a `templates` table (on any other
  database the schema is verified instead: prebuildd.migrate.coder_schema).
* `schema/NNNN_*.sql` -- versioned files with prebuildd's own objects (its `prebuildd` schema,
  `prebuildd_*` indexes). Each is applied once, in file-name order, in its own transaction;
  editing one after it was applied is an error. A file whose first line is
  `-- prebuildd: no-transaction` runs statement by statement in autocommit instead (for
  CREATE INDEX CONCURRENTLY, which a transaction forbids); see `split_statements` for the rule.
* `functions/*.sql`, then `triggers/*.sql` -- repeatable files (Flyway's R__): idempotent by
  construction (CREATE OR REPLACE FUNCTION, DROP TRIGGER IF EXISTS + CREATE TRIGGER) and
  re-applied whenever their checksum differs from the recorded one. Functions come first so
  that triggers may call them. A trigger file is also re-applied when the catalog lacks one of
  its triggers or has it disabled (`restore_event_triggers`).

`prebuildd.schema_migrations` records every applied file by its path relative to `sql/` and
its SHA-256. Every file is applied under a `LockPolicy` (prebuildd.migrate.locks).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from prebuildd import event_source
from prebuildd.migrate.errors import MigrationError
from prebuildd.migrate.locks import LockPolicy, concurrent_index_timeout, with_lock_retries
from prebuildd.queries import query, read_sql_file, sql_root

log = logging.getLogger("prebuildd.migrate")

Connection = psycopg.Connection[TupleRow]

BASE_SCHEMA = "schema/coder_subset.sql"
NO_TRANSACTION_MARKER = "-- prebuildd: no-transaction"
_VERSIONED_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class SqlFile:
    path: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def no_transaction(self) -> bool:
        first_line = self.text.split("\n", 1)[0].strip()
        return first_line == NO_TRANSACTION_MARKER


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _files_in(folder: str, keep: re.Pattern[str]) -> list[SqlFile]:
    node = sql_root() / folder
    if not node.is_dir():
        return []
    names = sorted(entry.name for entry in node.iterdir() if keep.match(entry.name))
    return [SqlFile(f"{folder}/{name}", read_sql_file(folder, name)) for name in names]


def versioned_files() -> list[SqlFile]:
    """`sql/schema/NNNN_*.sql`, in the order they apply."""
    return _files_in("schema", _VERSIONED_NAME)


def repeatable_files() -> list[SqlFile]:
    """`sql/functions/*.sql`, then `sql/triggers/*.sql`, each folder in name order."""
    keep = re.compile(r"^[^.].*\.sql$")
    return [*_files_in("functions", keep), *_files_in("triggers", keep)]


def base_schema() -> SqlFile:
    folder, name = BASE_SCHEMA.split("/")
    return SqlFile(BASE_SCHEMA, read_sql_file(folder, name))


def split_statements(text: str) -> list[str]:
    """Statements of a no-transaction file.

    The rule (simple on purpose, no SQL parser): a statement ends on a line whose last
    non-blank character is `;`. Comment lines travel with the statement that follows them;
    blocks holding only comments are dropped. Dollar-quoted bodies are therefore not
    supported in such files -- they only hold statements like CREATE INDEX CONCURRENTLY.
    """
    statements: list[str] = []
    pending: list[str] = []
    for line in text.splitlines():
        pending.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(pending).strip())
            pending = []
    if _has_code(pending):
        raise MigrationError("a statement of a no-transaction file does not end with ';'")
    return [statement for statement in statements if _has_code(statement.splitlines())]


def _has_code(lines: list[str]) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in lines)


def as_sql(text: str) -> sql.SQL:
    # Text read from the files shipped with prebuildd, or produced by our own catalog queries
    # (identifiers quoted by format()), never from input: as trusted as a literal. Executed
    # without parameters, so psycopg sends it verbatim (several statements allowed, `%`
    # literal).
    return sql.SQL(text)


def apply_file(conn: Connection, file: SqlFile, policy: LockPolicy) -> None:
    try:
        if file.no_transaction:
            _apply_statement_by_statement(conn, file, policy)
        else:
            apply = partial(_apply_in_transaction, conn, file, policy)
            with_lock_retries(conn, file.path, policy, apply)
    except psycopg.Error as exc:
        raise MigrationError(f"applying {file.path} failed: {exc}") from exc


def _apply_in_transaction(conn: Connection, file: SqlFile, policy: LockPolicy) -> None:
    with conn.transaction():
        conn.execute(query("set_local_lock_timeout"), {"timeout": policy.timeout_setting})
        if file.path.startswith("functions/"):
            # One pin for every function file, so each SECURITY DEFINER function captures
            # the same search_path (FROM CURRENT) without each file repeating the rule.
            conn.execute(query("pin_function_search_path"))
        conn.execute(as_sql(file.text))
        _record(conn, file)


def _apply_statement_by_statement(conn: Connection, file: SqlFile, policy: LockPolicy) -> None:
    with concurrent_index_timeout(conn, file.path, policy):
        # An interrupted CREATE INDEX CONCURRENTLY leaves an INVALID index that IF NOT EXISTS
        # would keep forever: drop those first (the statements come from our own query).
        for (drop,) in conn.execute(query("invalid_own_indexes")).fetchall():
            conn.execute(as_sql(str(drop)))
        for statement in split_statements(file.text):
            conn.execute(as_sql(statement))
    _record(conn, file)


def _record(conn: Connection, file: SqlFile) -> None:
    conn.execute(query("record_migration"), {"path": file.path, "checksum": file.checksum})


def applied_checksums(conn: Connection) -> dict[str, str]:
    rows = conn.execute(query("applied_migrations")).fetchall()
    return {str(path): str(checksum) for path, checksum in rows}


def pending_versioned(applied: Mapping[str, str]) -> list[SqlFile]:
    pending: list[SqlFile] = []
    for file in versioned_files():
        recorded = applied.get(file.path)
        if recorded is None:
            pending.append(file)
        elif recorded != file.checksum:
            raise MigrationError(
                f"{file.path} was changed after it was applied to this database; versioned "
                "files are immutable: restore it and put the change in a new NNNN_*.sql file"
            )
    return pending


def changed_repeatable(applied: Mapping[str, str]) -> list[SqlFile]:
    return [file for file in repeatable_files() if applied.get(file.path) != file.checksum]


def restore_event_triggers(conn: Connection, policy: LockPolicy) -> list[str]:
    """Re-apply the trigger files whose triggers the catalog lacks or has disabled, although
    the files are recorded as applied: a Coder upgrade that recreates a table drops its
    triggers, an operator may disable one, a restore may lack them. So `migrate` after a Coder
    upgrade restores the event source (prebuildd.event_source), and verifies it did."""
    check = event_source.check_sync(conn)
    if check.ok:
        return []
    log.warning(
        "restoring event triggers",
        extra={
            "missing": [str(t) for t in check.missing],
            "disabled": [str(t) for t in check.disabled],
        },
    )
    by_path = {file.path: file for file in repeatable_files()}
    for path in check.files_to_reapply:
        apply_file(conn, by_path[path], policy)
    after = event_source.check_sync(conn)
    if not after.ok:
        raise MigrationError(f"the event triggers could not be restored: {after.describe()}")
    return list(check.files_to_reapply)
