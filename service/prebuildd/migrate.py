"""`prebuildd migrate`: install or verify the schema, apply prebuildd's own objects, uninstall.

Three kinds of SQL file, all below `sql/`:

* `schema/coder_subset.sql` -- the base: the part of Coder's schema prebuildd uses. Applied only
  to a database without a `templates` table. On any other database the same tables, columns and
  enum labels are *verified* against `REQUIRED_COLUMNS` / `REQUIRED_ENUM_LABELS` instead, and
  every gap is reported at once (`SchemaMismatch`) before anything is created.
* `schema/NNNN_*.sql` -- versioned files with prebuildd's own objects (its `prebuildd` schema,
  `prebuildd_*` indexes). Each is applied once, in file-name order, in its own transaction;
  editing one after it was applied is an error. A file whose first line is
  `-- prebuildd: no-transaction` runs statement by statement in autocommit instead (for
  CREATE INDEX CONCURRENTLY, which a transaction forbids); see `split_statements` for the rule.
* `functions/*.sql`, then `triggers/*.sql` -- repeatable files (Flyway's R__): idempotent by
  construction (CREATE OR REPLACE FUNCTION, DROP TRIGGER IF EXISTS + CREATE TRIGGER) and
  re-applied whenever their checksum differs from the recorded one. Functions come first so
  that triggers may call them.

`prebuildd.schema_migrations` records every applied file by its path relative to `sql/` and
its SHA-256. Concurrent migrations serialise on the session advisory lock `MIGRATION_LOCK_KEY`.
Error messages never carry the connection string.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from prebuildd.queries import query, read_sql_file, sql_root

Connection = psycopg.Connection[TupleRow]

# pg_advisory_lock key shared by every `prebuildd migrate` / `--uninstall`: the ASCII bytes of
# "prebuild" read as a big-endian bigint. Coder's own advisory lock ids are small integers.
MIGRATION_LOCK_KEY = 0x7072656275696C64
_LOCK_POLL_SECONDS = 0.1

BASE_SCHEMA = "schema/coder_subset.sql"
NO_TRANSACTION_MARKER = "-- prebuildd: no-transaction"
_VERSIONED_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Every table/view and column prebuildd reads or writes: exactly the columns of
# sql/schema/coder_subset.sql (tests/integration/test_schema_contract.py keeps the two equal).
REQUIRED_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "organizations": _names(
        "id name description created_at updated_at is_default display_name icon deleted"
    ),
    "users": _names(
        "id email username hashed_password created_at updated_at status rbac_roles login_type "
        "avatar_url deleted last_seen_at quiet_hours_schedule name github_com_user_id "
        "hashed_one_time_passcode one_time_passcode_expires_at is_system is_service_account"
    ),
    "site_configs": _names("key value"),
    "templates": _names(
        "id created_at updated_at organization_id deleted name provisioner active_version_id "
        "description default_ttl created_by icon user_acl group_acl display_name "
        "allow_user_cancel_workspace_jobs allow_user_autostart allow_user_autostop failure_ttl "
        "time_til_dormant time_til_dormant_autodelete autostop_requirement_days_of_week "
        "autostop_requirement_weeks autostart_block_days_of_week require_active_version "
        "deprecated activity_bump use_classic_parameter_flow disable_module_cache"
    ),
    "template_versions": _names(
        "id template_id organization_id created_at updated_at name readme job_id created_by "
        "external_auth_providers message archived source_example_id has_ai_task "
        "has_external_agent"
    ),
    "template_version_presets": _names(
        "id template_version_id name created_at desired_instances invalidate_after_secs "
        "prebuild_status scheduling_timezone is_default description icon last_invalidated_at"
    ),
    "template_version_preset_parameters": _names("id template_version_preset_id name value"),
    "template_version_preset_prebuild_schedules": _names(
        "id preset_id cron_expression desired_instances"
    ),
    "provisioner_jobs": _names(
        "id created_at updated_at started_at canceled_at completed_at error organization_id "
        "initiator_id provisioner storage_method type input worker_id file_id tags error_code "
        "trace_metadata job_status logs_length logs_overflowed"
    ),
    "workspaces": _names(
        "id created_at updated_at owner_id organization_id template_id deleted name "
        "autostart_schedule ttl last_used_at dormant_at deleting_at automatic_updates favorite "
        "next_start_at group_acl user_acl"
    ),
    "workspace_builds": _names(
        "id created_at updated_at workspace_id template_version_id build_number transition "
        "initiator_id provisioner_state job_id deadline reason daily_cost max_deadline "
        "template_version_preset_id has_ai_task has_external_agent"
    ),
    "workspace_build_parameters": _names("workspace_build_id name value"),
    "workspace_resources": _names(
        "id created_at job_id transition type name hide icon instance_type daily_cost module_path"
    ),
    "workspace_agents": _names(
        "id created_at updated_at name first_connected_at last_connected_at disconnected_at "
        "resource_id auth_token auth_instance_id architecture environment_variables "
        "operating_system instance_metadata resource_metadata directory version "
        "last_connected_replica_id connection_timeout_seconds troubleshooting_url motd_file "
        "lifecycle_state expanded_directory logs_length logs_overflowed started_at ready_at "
        "api_version display_order parent_id deleted"
    ),
    "notification_templates": _names(
        "id name title_template body_template actions group method kind enabled_by_default"
    ),
    "notification_messages": _names(
        "id notification_template_id user_id method status status_reason created_by payload "
        "attempt_count targets created_at updated_at leased_until next_retry_after queued_seconds "
        "dedupe_hash"
    ),
    "workspace_latest_builds": _names(
        "id workspace_id template_version_id job_id template_version_preset_id transition "
        "created_at job_status"
    ),
    "workspace_prebuilds": _names("id name template_id created_at ready current_preset_id"),
    "workspace_prebuild_builds": _names(
        "id workspace_id template_version_id transition job_id template_version_preset_id "
        "build_number"
    ),
}

# Enum labels prebuildd writes or compares against; older Coder releases lack some of them.
REQUIRED_ENUM_LABELS: Mapping[str, tuple[str, ...]] = {
    "workspace_transition": _names("start stop delete"),
    "provisioner_job_status": _names("pending running succeeded canceling canceled failed"),
    "provisioner_job_type": _names("workspace_build"),
    "provisioner_storage_method": _names("file"),
    "prebuild_status": _names("healthy hard_limited validation_failed"),
    "workspace_agent_lifecycle_state": _names("ready"),
    "build_reason": _names("initiator"),
    "automatic_updates": _names("never"),
    "notification_method": _names("smtp webhook inbox"),
}


class MigrationError(RuntimeError):
    """The database cannot be brought to the expected schema; the message says why."""


class SchemaMismatch(MigrationError):
    """The database has Coder's tables but lacks tables, columns or enum labels prebuildd uses."""

    def __init__(self, missing: tuple[str, ...]) -> None:
        self.missing = missing
        listing = "\n".join(f"  - {item}" for item in missing)
        super().__init__(
            f"the database's schema lacks {len(missing)} object(s) prebuildd needs "
            f"(is this Coder release too old?):\n{listing}"
        )


@dataclass(frozen=True, slots=True)
class MigrateReport:
    """What one `migrate` call changed: applied file paths (relative to sql/), in order."""

    applied: tuple[str, ...]
    # True when the database was empty and the Coder subset was installed.
    installed_base_schema: bool

    @property
    def changed(self) -> bool:
        return bool(self.applied)


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


def _as_sql(text: str) -> sql.SQL:
    # Text read from the files shipped with prebuildd, never from input: as trusted as a
    # literal. Executed without parameters, so psycopg sends it verbatim (several statements
    # allowed, `%` literal).
    return sql.SQL(text)


# ---------------------------------------------------------------------------------------------
# Locking
# ---------------------------------------------------------------------------------------------


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    # Polled rather than waited for: see the `try_migration_lock` query for the deadlock a
    # blocking wait would cause with CREATE INDEX CONCURRENTLY.
    while not _scalar(conn, "try_migration_lock", {"key": MIGRATION_LOCK_KEY}):
        time.sleep(_LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute(query("release_migration_lock"), {"key": MIGRATION_LOCK_KEY})


def _scalar(conn: Connection, name: str, params: Mapping[str, object] | None = None) -> object:
    row = conn.execute(query(name), params).fetchone()
    return None if row is None else row[0]


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def find_missing(conn: Connection) -> tuple[str, ...]:
    """Every required table, column and enum label the connected database lacks."""
    tables = [table for table, columns in REQUIRED_COLUMNS.items() for _ in columns]
    columns = [column for cols in REQUIRED_COLUMNS.values() for column in cols]
    rows = conn.execute(query("missing_columns"), {"tables": tables, "columns": columns})
    missing_tables: dict[str, None] = {}
    missing: list[str] = []
    for table, column, table_exists in rows.fetchall():
        if table_exists:
            missing.append(f"column {table}.{column}")
        else:
            missing_tables.setdefault(f"table {table}")
    types = [name for name, labels in REQUIRED_ENUM_LABELS.items() for _ in labels]
    labels = [label for values in REQUIRED_ENUM_LABELS.values() for label in values]
    label_rows = conn.execute(query("missing_enum_labels"), {"types": types, "labels": labels})
    enums = [f"enum label {name}.{label!r}" for name, label in label_rows.fetchall()]
    return (*missing_tables, *missing, *enums)


def verify_schema(conn: Connection) -> None:
    """Raise SchemaMismatch listing everything missing, or return quietly."""
    missing = find_missing(conn)
    if missing:
        raise SchemaMismatch(missing)


# ---------------------------------------------------------------------------------------------
# Applying files
# ---------------------------------------------------------------------------------------------


def _apply(conn: Connection, file: SqlFile, lock_timeout: timedelta) -> None:
    try:
        if file.no_transaction:
            _apply_statement_by_statement(conn, file)
        else:
            _apply_in_transaction(conn, file, lock_timeout)
    except psycopg.Error as exc:
        raise MigrationError(f"applying {file.path} failed: {exc}") from exc


def _apply_in_transaction(conn: Connection, file: SqlFile, lock_timeout: timedelta) -> None:
    with conn.transaction():
        timeout_ms = f"{int(lock_timeout.total_seconds() * 1000)}ms"
        conn.execute(query("set_local_lock_timeout"), {"timeout": timeout_ms})
        conn.execute(_as_sql(file.text))
        _record(conn, file)


def _apply_statement_by_statement(conn: Connection, file: SqlFile) -> None:
    # An interrupted CREATE INDEX CONCURRENTLY leaves an INVALID index that IF NOT EXISTS
    # would keep forever: drop those first (the statements come from our own query).
    for (drop,) in conn.execute(query("invalid_own_indexes")).fetchall():
        conn.execute(_as_sql(str(drop)))
    for statement in split_statements(file.text):
        conn.execute(_as_sql(statement))
    _record(conn, file)


def _record(conn: Connection, file: SqlFile) -> None:
    conn.execute(query("record_migration"), {"path": file.path, "checksum": file.checksum})


def _applied_checksums(conn: Connection) -> dict[str, str]:
    rows = conn.execute(query("applied_migrations")).fetchall()
    return {str(path): str(checksum) for path, checksum in rows}


def _pending_versioned(applied: Mapping[str, str]) -> list[SqlFile]:
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


def _changed_repeatable(applied: Mapping[str, str]) -> list[SqlFile]:
    return [file for file in repeatable_files() if applied.get(file.path) != file.checksum]


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def migrate(conninfo: str, *, lock_timeout: timedelta = timedelta(seconds=10)) -> MigrateReport:
    """Bring the database up to date; safe to run any number of times, also concurrently.

    `lock_timeout` bounds how long one transactional file waits for a table lock on a live
    database (the migration then fails and can simply be rerun).
    """
    with psycopg.connect(conninfo, autocommit=True) as conn, _migration_lock(conn):
        return _migrate_locked(conn, lock_timeout)


def _migrate_locked(conn: Connection, lock_timeout: timedelta) -> MigrateReport:
    empty = not _scalar(conn, "has_templates_table")
    if not empty:
        # Before creating anything: a foreign schema that does not fit gets no leftovers.
        verify_schema(conn)
    conn.execute(query("create_bookkeeping"))
    applied = _applied_checksums(conn)
    todo: list[SqlFile] = [base_schema()] if empty else []
    todo += _pending_versioned(applied)
    done: list[str] = []
    for file in todo:
        _apply(conn, file, lock_timeout)
        done.append(file.path)
    if empty:
        # The subset and the manifest must agree; a slip shows here, not in production.
        verify_schema(conn)
    for file in _changed_repeatable(applied):
        _apply(conn, file, lock_timeout)
        done.append(file.path)
    return MigrateReport(applied=tuple(done), installed_base_schema=empty)


def uninstall(conninfo: str) -> list[str]:
    """Drop prebuildd's own objects only; Coder's tables and data stay. Returns what went."""
    with psycopg.connect(conninfo, autocommit=True) as conn, _migration_lock(conn):
        try:
            with conn.transaction():
                objects = conn.execute(query("own_objects")).fetchall()
                for _description, statement in objects:
                    conn.execute(_as_sql(str(statement)))
        except psycopg.Error as exc:
            raise MigrationError(f"uninstall failed, nothing was removed: {exc}") from exc
    return [str(description) for description, _statement in objects]
