"""`prebuildd migrate`: install or verify the schema, apply prebuildd's own objects, uninstall.

Three kinds of SQL file, all below `sql/`:

* `schema/coder_subset.sql` -- the base: the part of Coder's schema prebuildd and its
  development tools use. Applied only to a database without a `templates` table. On any other
  database the tables, columns and enum labels prebuildd uses in production are *verified*
  against `REQUIRED_COLUMNS` / `REQUIRED_ENUM_LABELS` instead, and every gap is reported at
  once (`SchemaMismatch`) before anything is created. `OPTIONAL_COLUMNS` are used when present.
* `schema/NNNN_*.sql` -- versioned files with prebuildd's own objects (its `prebuildd` schema,
  `prebuildd_*` indexes). Each is applied once, in file-name order, in its own transaction;
  editing one after it was applied is an error. A file whose first line is
  `-- prebuildd: no-transaction` runs statement by statement in autocommit instead (for
  CREATE INDEX CONCURRENTLY, which a transaction forbids); see `split_statements` for the rule.
* `functions/*.sql`, then `triggers/*.sql` -- repeatable files (Flyway's R__): idempotent by
  construction (CREATE OR REPLACE FUNCTION, DROP TRIGGER IF EXISTS + CREATE TRIGGER) and
  re-applied whenever their checksum differs from the recorded one. Functions come first so
  that triggers may call them. A trigger file is also re-applied when the catalog lacks one of
  its triggers or has it disabled (a Coder upgrade that recreated the table, an operator's
  ALTER TABLE ... DISABLE TRIGGER): `migrate` ends with every trigger of sql/triggers/ in
  place and enabled, or fails saying which is not (prebuildd.event_source).

`prebuildd.schema_migrations` records every applied file by its path relative to `sql/` and
its SHA-256. Concurrent migrations serialise on the session advisory lock `MIGRATION_LOCK_KEY`.
Error messages never carry the connection string.

Never queue Coder behind a lock (`LockPolicy`). DDL on a table waits for the transactions
using it, and every query on that table after the DDL waits behind the DDL: one long report
on `workspaces` and a plain `DROP TRIGGER` would stall all of Coder's writes to it. So every
transactional file runs with a short `lock_timeout` and, when it gives up, is retried after a
jittered backoff until a total budget is spent; Coder's statements wait at most one timeout
behind us. Then `MigrationLockTimeout` names the file and the old transactions holding locks,
and nothing of that file was applied: rerunning `migrate` continues where it stopped.
`--uninstall` works the same way, one table at a time.

CREATE / DROP INDEX CONCURRENTLY are different: they take a lock that Coder's reads and
writes never conflict with, then wait by design for every transaction older than themselves
(any table), which a 200 ms lock_timeout would turn into a failure whenever Coder has a
transaction longer than that. They run with the whole budget as their lock_timeout instead:
Coder's reads and writes carry on; only DDL and VACUUM on that one table wait for the build.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from prebuildd import event_source
from prebuildd.queries import query, read_sql_file, sql_root

log = logging.getLogger("prebuildd.migrate")

Connection = psycopg.Connection[TupleRow]
T = TypeVar("T")

# pg_advisory_lock key shared by every `prebuildd migrate` / `--uninstall`: the ASCII bytes of
# "prebuild" read as a big-endian bigint. Coder's own advisory lock ids are small integers.
MIGRATION_LOCK_KEY = 0x7072656275696C64
_LOCK_POLL_SECONDS = 0.1

BASE_SCHEMA = "schema/coder_subset.sql"
NO_TRANSACTION_MARKER = "-- prebuildd: no-transaction"
_VERSIONED_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")

# application_name of the sessions of `migrate` and `--uninstall`.
APPLICATION_NAME = "prebuildd migrate"

# The oldest Coder release whose schema has everything in REQUIRED_COLUMNS.
OLDEST_CODER_RELEASE = "v2.25.0"


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Every table and column that prebuildd itself reads or writes in production: the service
# (`run`), `reconcile`, `status`, `pause`/`resume`, the triggers and prebuildd's own schema
# files. Development tools (`claim`, `provisioner`, `demo`) are not production: the subset
# schema (sql/schema/coder_subset.sql) holds more columns for them, and for realistic rows.
# tests/integration/test_schema_contract.py runs all of that on a database that has exactly
# these columns, so a query cannot silently need one more.
#
# Every column here exists in Coder since v2.25.0 (the first release with its pause switch,
# migration 000345); newer columns belong in OPTIONAL_COLUMNS. docs/coder-compatibility.md
# lists the releases verified.
REQUIRED_COLUMNS: Mapping[str, tuple[str, ...]] = {
    # Labels of plans and metrics, the hard-limit notification.
    "organizations": _names("id name"),
    # Recipients of the hard-limit notification (template admins) and its payload.
    "users": _names("id email username name deleted is_system rbac_roles"),
    # ... and the organization's admins and template admins.
    "organization_members": _names("user_id organization_id roles"),
    # The pause switch.
    "site_configs": _names("key value"),
    # Active version, retirement, the organization and provisioner of new jobs; triggers.
    "templates": _names("id name organization_id active_version_id deleted deprecated provisioner"),
    # A version's template, its import job (storage, file and tags of new jobs).
    "template_versions": _names("id template_id name created_at job_id"),
    "template_version_presets": _names(
        "id template_version_id name desired_instances invalidate_after_secs "
        "scheduling_timezone prebuild_status"
    ),
    "template_version_preset_parameters": _names("template_version_preset_id name value"),
    # What a create is checked against (the parameters' rules) and routed by (workspace tags).
    "template_version_parameters": _names(
        "template_version_id name display_name type form_type required default_value options "
        "validation_regex validation_min validation_max validation_error validation_monotonic "
        "display_order"
    ),
    "template_version_workspace_tags": _names("template_version_id key value"),
    "template_version_preset_prebuild_schedules": _names(
        "id preset_id cron_expression desired_instances"
    ),
    # The jobs of creates, deletes and cancels; job_status (generated by Coder from the
    # timestamps and error) is how every read tells a job's state.
    "provisioner_jobs": _names(
        "id created_at updated_at started_at canceled_at completed_at error organization_id "
        "initiator_id provisioner storage_method type input worker_id file_id tags "
        "trace_metadata job_status"
    ),
    "workspaces": _names(
        "id created_at updated_at owner_id organization_id template_id deleted name "
        "autostart_schedule ttl last_used_at automatic_updates favorite next_start_at"
    ),
    "workspace_builds": _names(
        "id created_at updated_at workspace_id template_version_id build_number transition "
        "initiator_id provisioner_state job_id deadline max_deadline reason "
        "template_version_preset_id"
    ),
    "workspace_build_parameters": _names("workspace_build_id name value"),
    # Readiness of a prebuild: its build's top-level, non-deleted agents.
    "workspace_resources": _names("id job_id"),
    "workspace_agents": _names("resource_id lifecycle_state parent_id deleted"),
    # The hard-limit notice: its template's name, own method and default, users' choices.
    "notification_templates": _names("id name method enabled_by_default"),
    "notification_preferences": _names("user_id notification_template_id disabled"),
    "notification_messages": _names(
        "id notification_template_id user_id method status created_by payload targets "
        "created_at dedupe_hash"
    ),
}

# Columns newer than v2.25.0 that prebuildd uses when they exist and does without otherwise.
# Reads name them so that they resolve late (see the snapshot_presets query); the writes
# that need one refuse with a clear error on a schema without it.
OPTIONAL_COLUMNS: Mapping[str, tuple[str, ...]] = {
    # Coder migration 000399, first released in v2.29.0: `prebuildd invalidate` writes it,
    # snapshot_presets reads it (absent: never invalidated).
    "template_version_presets": _names("last_invalidated_at"),
}

# Enum labels prebuildd writes, or compares against, in production.
REQUIRED_ENUM_LABELS: Mapping[str, tuple[str, ...]] = {
    "workspace_transition": _names("start delete"),
    "provisioner_job_status": _names("pending running succeeded failed"),
    "provisioner_job_type": _names("workspace_build"),
    "prebuild_status": _names("healthy hard_limited validation_failed"),
    "workspace_agent_lifecycle_state": _names("ready"),
    "build_reason": _names("initiator"),
    "automatic_updates": _names("never"),
    "notification_method": _names("smtp webhook inbox"),
    "notification_message_status": _names("pending"),
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
            f"(prebuildd supports Coder {OLDEST_CODER_RELEASE} and later; is this Coder "
            f"release older, or not Coder's schema?):\n{listing}"
        )


class MigrationLockTimeout(MigrationError):
    """A step could not get its locks within the budget; nothing of that step was applied."""

    def __init__(self, step: str, what_happened: str, holders: list[str]) -> None:
        self.step = step
        listing = "".join(f"\n  - {holder}" for holder in holders) or (
            "\n  - none any more (short transactions held the lock)"
        )
        super().__init__(
            f"{step}: {what_happened}. Nothing of this step was applied and the database is "
            "consistent: run the same command again. If it keeps failing, look for long or "
            "idle transactions on Coder's tables (pg_stat_activity: state 'idle in "
            "transaction', old xact_start; pg_locks) and end them, or allow more time with "
            "--lock-retry-for. Transactions older than this step that hold locks on tables "
            f"of this schema:{listing}"
        )


@dataclass(frozen=True, slots=True)
class LockPolicy:
    """How long DDL may keep Coder waiting, and how long to keep trying.

    `timeout`: lock_timeout of each attempt, i.e. the longest a Coder statement can queue
    behind one of our DDL statements. `retry_for`: total time one step keeps retrying (with
    jittered exponential backoff between attempts) before `MigrationLockTimeout`; also the
    lock_timeout of CREATE / DROP INDEX CONCURRENTLY, which wait for old transactions by design.
    """

    timeout: timedelta = timedelta(milliseconds=200)
    retry_for: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if self.timeout <= timedelta(0):
            raise ValueError("the lock timeout must be positive (0 would wait forever)")
        if self.retry_for < timedelta(0):
            raise ValueError("the retry budget cannot be negative")

    @property
    def timeout_setting(self) -> str:
        return _milliseconds(self.timeout)

    @property
    def concurrent_index_setting(self) -> str:
        return _milliseconds(max(self.retry_for, self.timeout))


def _milliseconds(span: timedelta) -> str:
    return f"{max(1, round(span.total_seconds() * 1000))}ms"


# Backoff between attempts: doubling from the first to the cap, each drawn from [d/2, d] so
# that two migrations (or a migration and an autovacuum) do not retry in lockstep.
_BACKOFF_FIRST_SECONDS = 0.05
_BACKOFF_CAP_SECONDS = 2.0


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
    # Text read from the files shipped with prebuildd, or produced by our own catalog queries
    # (identifiers quoted by format()), never from input: as trusted as a literal. Executed
    # without parameters, so psycopg sends it verbatim (several statements allowed, `%`
    # literal).
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


def _with_lock_retries(
    conn: Connection, step: str, policy: LockPolicy, attempt: Callable[[], T]
) -> T:
    """`attempt()` (one transaction that sets the lock timeout itself), retried while it fails
    on a lock timeout, until `policy.retry_for` is spent."""
    started = time.monotonic()
    first_attempt_at = datetime.now(UTC)
    delay = _BACKOFF_FIRST_SECONDS
    attempts = 0
    while True:
        attempts += 1
        try:
            return attempt()
        except errors.LockNotAvailable:
            elapsed = time.monotonic() - started
            pause = random.uniform(delay / 2, delay)
            if elapsed + pause > policy.retry_for.total_seconds():
                what = (
                    f"gave up after {attempts} attempt(s) over {elapsed:.1f}s, each waiting at "
                    f"most {policy.timeout_setting} for its locks (so that Coder's statements "
                    "never queued behind ours for longer)"
                )
                raise MigrationLockTimeout(
                    step, what, _old_lock_holders(conn, first_attempt_at)
                ) from None
            log.info(
                "lock busy, retrying",
                extra={"step": step, "attempt": attempts, "retry_in_s": round(pause, 3)},
            )
            time.sleep(pause)
            delay = min(delay * 2, _BACKOFF_CAP_SECONDS)


def _old_lock_holders(conn: Connection, since: datetime) -> list[str]:
    rows = conn.execute(query("old_lock_holders"), {"since": since}).fetchall()
    return [
        f"pid {pid} ({application}, {state}, transaction open for {age}) holds locks on {relations}"
        for pid, application, state, age, relations in rows
    ]


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def _pairs(manifest: Mapping[str, tuple[str, ...]]) -> tuple[list[str], list[str]]:
    firsts = [name for name, values in manifest.items() for _ in values]
    seconds = [value for values in manifest.values() for value in values]
    return firsts, seconds


def find_missing(conn: Connection) -> tuple[str, ...]:
    """Every required table, column and enum label the connected database lacks."""
    tables, columns = _pairs(REQUIRED_COLUMNS)
    rows = conn.execute(query("missing_columns"), {"tables": tables, "columns": columns})
    missing_tables: dict[str, None] = {}
    missing: list[str] = []
    for table, column, table_exists in rows.fetchall():
        if table_exists:
            missing.append(f"column {table}.{column}")
        else:
            missing_tables.setdefault(f"table {table}")
    types, labels = _pairs(REQUIRED_ENUM_LABELS)
    label_rows = conn.execute(query("missing_enum_labels"), {"types": types, "labels": labels})
    enums = [f"enum label {name}.{label!r}" for name, label in label_rows.fetchall()]
    return (*missing_tables, *missing, *enums)


def find_absent_optional(conn: Connection) -> tuple[str, ...]:
    """OPTIONAL_COLUMNS the connected database lacks, as "table.column"."""
    tables, columns = _pairs(OPTIONAL_COLUMNS)
    rows = conn.execute(query("missing_columns"), {"tables": tables, "columns": columns})
    return tuple(f"{table}.{column}" for table, column, _exists in rows.fetchall())


def verify_schema(conn: Connection) -> None:
    """Raise SchemaMismatch listing everything missing, or return quietly."""
    missing = find_missing(conn)
    if missing:
        raise SchemaMismatch(missing)


# ---------------------------------------------------------------------------------------------
# Applying files
# ---------------------------------------------------------------------------------------------


def _apply(conn: Connection, file: SqlFile, policy: LockPolicy) -> None:
    try:
        if file.no_transaction:
            _apply_statement_by_statement(conn, file, policy)
        else:
            apply = partial(_apply_in_transaction, conn, file, policy)
            _with_lock_retries(conn, file.path, policy, apply)
    except psycopg.Error as exc:
        raise MigrationError(f"applying {file.path} failed: {exc}") from exc


def _apply_in_transaction(conn: Connection, file: SqlFile, policy: LockPolicy) -> None:
    with conn.transaction():
        conn.execute(query("set_local_lock_timeout"), {"timeout": policy.timeout_setting})
        if file.path.startswith("functions/"):
            # One pin for every function file, so each SECURITY DEFINER function captures
            # the same search_path (FROM CURRENT) without each file repeating the rule.
            conn.execute(query("pin_function_search_path"))
        conn.execute(_as_sql(file.text))
        _record(conn, file)


def _apply_statement_by_statement(conn: Connection, file: SqlFile, policy: LockPolicy) -> None:
    with _concurrent_index_timeout(conn, file.path, policy):
        # An interrupted CREATE INDEX CONCURRENTLY leaves an INVALID index that IF NOT EXISTS
        # would keep forever: drop those first (the statements come from our own query).
        for (drop,) in conn.execute(query("invalid_own_indexes")).fetchall():
            conn.execute(_as_sql(str(drop)))
        for statement in split_statements(file.text):
            conn.execute(_as_sql(statement))
    _record(conn, file)


@contextmanager
def _concurrent_index_timeout(conn: Connection, step: str, policy: LockPolicy) -> Iterator[None]:
    """Statements of a no-transaction file (CREATE / DROP INDEX CONCURRENTLY) wait for older
    transactions by design; bound that wait by the whole budget instead of one short timeout.
    Session-level: each autocommit statement is its own transaction."""
    started = datetime.now(UTC)
    conn.execute(query("set_session_lock_timeout"), {"timeout": policy.concurrent_index_setting})
    try:
        yield
    except errors.LockNotAvailable:
        what = (
            f"a CONCURRENTLY index statement waited {policy.concurrent_index_setting} for older "
            "transactions to finish and gave up (Coder's reads and writes were never blocked; "
            "an index left half-built is dropped by the next run)"
        )
        raise MigrationLockTimeout(step, what, _old_lock_holders(conn, started)) from None
    finally:
        if not conn.closed and not conn.broken:
            conn.execute(query("reset_session_lock_timeout"))


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


def migrate(conninfo: str, *, lock_policy: LockPolicy | None = None) -> MigrateReport:
    """Bring the database up to date; safe to run any number of times, also concurrently.

    Each file is applied under `lock_policy` (see `LockPolicy`); a file that cannot get its
    locks in time raises MigrationLockTimeout, leaving every file applied before it in place.
    """
    policy = lock_policy or LockPolicy()
    with _connect(conninfo) as conn, _migration_lock(conn):
        return _migrate_locked(conn, policy)


def _connect(conninfo: str) -> Connection:
    # Named, so that an operator looking at pg_stat_activity / pg_locks sees who waits (unless
    # the connection string names the session itself).
    if conninfo_to_dict(conninfo).get("application_name"):
        return psycopg.connect(conninfo, autocommit=True)
    return psycopg.connect(conninfo, autocommit=True, application_name=APPLICATION_NAME)


def _migrate_locked(conn: Connection, policy: LockPolicy) -> MigrateReport:
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
        _apply(conn, file, policy)
        done.append(file.path)
    if empty:
        # The subset and the manifest must agree; a slip shows here, not in production.
        verify_schema(conn)
    for file in _changed_repeatable(applied):
        _apply(conn, file, policy)
        done.append(file.path)
    done += _restore_event_triggers(conn, policy)
    absent = find_absent_optional(conn)
    for column in absent:
        log.warning(
            "optional column absent: what needs it is unavailable until Coder is upgraded",
            extra={"column": column},
        )
    return MigrateReport(applied=tuple(done), installed_base_schema=empty, absent_optional=absent)


def _restore_event_triggers(conn: Connection, policy: LockPolicy) -> list[str]:
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
        _apply(conn, by_path[path], policy)
    after = event_source.check_sync(conn)
    if not after.ok:
        raise MigrationError(f"the event triggers could not be restored: {after.describe()}")
    return list(check.files_to_reapply)


def uninstall(conninfo: str, *, lock_policy: LockPolicy | None = None) -> list[str]:
    """Drop prebuildd's own objects only; Coder's tables and data stay. Returns what went.

    Never one long transaction over many of Coder's tables: each table's triggers go in a
    short transaction of their own, indexes with DROP INDEX CONCURRENTLY, then our schema, each
    step under `lock_policy`. A step that times out raises MigrationLockTimeout with the
    earlier steps done; running uninstall again finishes the job (and `migrate` in the
    meantime would restore everything, having forgotten its applied files first).
    """
    policy = lock_policy or LockPolicy()
    with _connect(conninfo) as conn, _migration_lock(conn):
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
    if _scalar(conn, "has_bookkeeping"):
        conn.execute(query("forget_applied_files"))

    by_table: dict[str, list[tuple[str, str]]] = {}
    for table, description, statement in conn.execute(query("own_triggers")).fetchall():
        by_table.setdefault(str(table), []).append((str(description), str(statement)))
    for table, triggers in by_table.items():
        step = f"dropping prebuildd's triggers on {table}"
        _with_lock_retries(conn, step, policy, partial(_run_in_transaction, conn, policy, triggers))
        removed += [description for description, _statement in triggers]

    indexes = conn.execute(query("own_indexes")).fetchall()
    with _concurrent_index_timeout(conn, "dropping prebuildd's indexes", policy):
        for description, statement in indexes:
            conn.execute(_as_sql(str(statement)))
            removed.append(str(description))

    own = [(str(d), None if s is None else str(s)) for d, s in conn.execute(query("own_schema"))]
    drops = [(d, s) for d, s in own if s is not None]
    step = "dropping schema prebuildd"
    _with_lock_retries(conn, step, policy, partial(_run_in_transaction, conn, policy, drops))
    removed += [description for description, _statement in own]
    return removed


def _run_in_transaction(
    conn: Connection, policy: LockPolicy, statements: list[tuple[str, str]]
) -> None:
    with conn.transaction():
        conn.execute(query("set_local_lock_timeout"), {"timeout": policy.timeout_setting})
        for _description, statement in statements:
            conn.execute(_as_sql(statement))
