"""`prebuildd migrate` and `--uninstall` on real PostgreSQL databases."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import LiteralString

import psycopg
import pytest
from psycopg import sql

from prebuildd.migrate import (
    BASE_SCHEMA,
    LockPolicy,
    MigrateReport,
    MigrationError,
    MigrationLockTimeout,
    SchemaMismatch,
    SqlFile,
    migrate,
    repeatable_files,
    split_statements,
    uninstall,
    versioned_files,
)
from prebuildd.migrate import files as migrate_files
from prebuildd.model import PREBUILDS_USER_ID
from prebuildd.queries import read_sql_file

Snapshot = frozenset[tuple[str, ...]]

# Every object of the database that a migration could create, alter or drop.
_CATALOG = """
SELECT 'rel', n.nspname, c.relname, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL
SELECT 'fn', n.nspname, p.oid::regprocedure::text, md5(p.prosrc)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'trigger', t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t WHERE NOT t.tgisinternal
UNION ALL
SELECT 'type', n.nspname, t.typname, ''
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL
SELECT 'schema', nspname, '', '' FROM pg_namespace
"""


def snapshot(url: str) -> Snapshot:
    with psycopg.connect(url) as conn:
        return frozenset(tuple(str(v) for v in row) for row in conn.execute(_CATALOG))


def scalar(url: str, statement: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(statement, params).fetchone()
        return None if row is None else row[0]


def recorded(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT path, checksum FROM prebuildd.schema_migrations").fetchall()
    return {str(path): str(checksum) for path, checksum in rows}


def own_index_names(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'i' AND relname LIKE 'prebuildd%'"
        ).fetchall()
    return {str(name) for (name,) in rows}


VERSIONED = [file.path for file in versioned_files()]


# ---------------------------------------------------------------------------------------------
# Empty database
# ---------------------------------------------------------------------------------------------


def test_empty_database_gets_subset_and_own_objects(empty_db_url: str) -> None:
    report = migrate(empty_db_url)
    assert report.installed_base_schema
    assert report.applied[: 1 + len(VERSIONED)] == (BASE_SCHEMA, *VERSIONED)
    assert set(recorded(empty_db_url)) == set(report.applied)
    assert scalar(empty_db_url, "SELECT count(*) FROM users WHERE id = %s", (PREBUILDS_USER_ID,))
    assert "prebuildd_workspaces_template_owner" in own_index_names(empty_db_url)


def test_second_run_applies_nothing_and_changes_nothing(empty_db_url: str) -> None:
    migrate(empty_db_url)
    before = snapshot(empty_db_url)
    marks = recorded(empty_db_url)
    second = migrate(empty_db_url)
    assert second == MigrateReport(applied=(), installed_base_schema=False)
    assert not second.changed
    assert snapshot(empty_db_url) == before
    assert recorded(empty_db_url) == marks


def test_concurrent_migrations_both_succeed(empty_db_url: str) -> None:
    reports: list[MigrateReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(migrate(empty_db_url))
        except BaseException as exc:  # the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(r.installed_base_schema for r in reports) == [False, True]
    applied = [path for report in reports for path in report.applied]
    assert len(applied) == len(set(applied)), "a file was applied twice"
    assert set(recorded(empty_db_url)) == set(applied)


# ---------------------------------------------------------------------------------------------
# A database that already has Coder's tables
# ---------------------------------------------------------------------------------------------


def _install_coder_subset_by_hand(url: str) -> None:
    """What a Coder deployment looks like to prebuildd: Coder's tables, none of our objects."""
    folder, name = BASE_SCHEMA.split("/")
    with psycopg.connect(url) as conn:
        conn.execute(read_sql_file(folder, name))


def test_coder_database_gets_only_own_objects(empty_db_url: str) -> None:
    _install_coder_subset_by_hand(empty_db_url)
    coder_tables = scalar(empty_db_url, "SELECT count(*) FROM pg_tables WHERE schemaname='public'")
    report = migrate(empty_db_url)
    assert not report.installed_base_schema
    assert BASE_SCHEMA not in report.applied
    assert report.applied[: len(VERSIONED)] == tuple(VERSIONED)
    after = scalar(empty_db_url, "SELECT count(*) FROM pg_tables WHERE schemaname='public'")
    assert after == coder_tables


FOREIGN_SCHEMA = """
CREATE TABLE organizations (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE templates (id uuid PRIMARY KEY, name text NOT NULL, deleted boolean);
CREATE TABLE workspaces (id uuid PRIMARY KEY, owner_id uuid, template_id uuid);
"""


def test_foreign_schema_with_gaps_fails_listing_all_and_creates_nothing(
    empty_db_url: str,
) -> None:
    with psycopg.connect(empty_db_url) as conn:
        conn.execute(FOREIGN_SCHEMA)
    before = snapshot(empty_db_url)

    with pytest.raises(SchemaMismatch) as caught:
        migrate(empty_db_url)

    missing = caught.value.missing
    # Whole tables that are absent are named once, as tables.
    assert "table provisioner_jobs" in missing
    assert "table template_version_presets" in missing
    assert "table workspace_agents" in missing
    assert not any(item.startswith("column provisioner_jobs.") for item in missing)
    # Tables that exist are checked column by column, every gap listed.
    assert "column templates.active_version_id" in missing
    assert "column templates.deprecated" in missing
    assert "column workspaces.deleted" in missing
    assert "column templates.provisioner" in missing
    assert "column templates.name" not in missing
    # Only what production uses: organizations (id, name) is complete; Coder's views, which
    # only development tools read, are not demanded.
    assert not any(item.startswith("column organizations.") for item in missing)
    assert "table workspace_latest_builds" not in missing
    assert "enum label prebuild_status.'hard_limited'" in missing
    message = str(caught.value)
    for item in missing:
        assert item in message
    assert snapshot(empty_db_url) == before, "a failed verification must create nothing"


# ---------------------------------------------------------------------------------------------
# Versioned and repeatable files
# ---------------------------------------------------------------------------------------------


def test_changed_versioned_file_is_an_error(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE prebuildd.schema_migrations SET checksum = 'edited' WHERE path = %s",
            (VERSIONED[0],),
        )
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(db_url)


def test_repeatable_file_reapplied_only_when_changed(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def trigger_file(version: int) -> SqlFile:
        return SqlFile(
            "triggers/zz_test.sql",
            f"""
            CREATE OR REPLACE FUNCTION prebuildd.test_version() RETURNS int
                LANGUAGE sql AS $$ SELECT {version} $$;
            DROP TRIGGER IF EXISTS prebuildd_test ON templates;
            CREATE TRIGGER prebuildd_test AFTER UPDATE ON templates
                FOR EACH STATEMENT EXECUTE FUNCTION prebuildd.test_notify();
            """,
        )

    with psycopg.connect(db_url) as conn:
        conn.execute(
            "CREATE FUNCTION prebuildd.test_notify() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NULL; END $$"
        )
    # The module whose changed_repeatable() calls it (a re-export would not be seen).
    monkeypatch.setattr(migrate_files, "repeatable_files", lambda: [trigger_file(1)])
    assert migrate(db_url).applied == ("triggers/zz_test.sql",)
    assert migrate(db_url).applied == ()
    monkeypatch.setattr(migrate_files, "repeatable_files", lambda: [trigger_file(2)])
    assert migrate(db_url).applied == ("triggers/zz_test.sql",)
    assert scalar(db_url, "SELECT prebuildd.test_version()") == 2


def test_split_statements_rule() -> None:
    text = (
        "-- prebuildd: no-transaction\n"
        "-- about the first\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS a\n"
        "    ON t (x);\n"
        "\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS b ON t (y)  ;  \n"
        "-- trailing comment\n"
    )
    assert split_statements(text) == [
        "-- prebuildd: no-transaction\n-- about the first\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS a\n    ON t (x);",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS b ON t (y)  ;",
    ]
    with pytest.raises(MigrationError):
        split_statements("CREATE INDEX a ON t (x)\n")


def test_no_transaction_marker_detected() -> None:
    marked = [file for file in versioned_files() if file.no_transaction]
    assert marked, "the index file must run outside a transaction"
    for file in marked:
        assert "CONCURRENTLY" in file.text


# ---------------------------------------------------------------------------------------------
# Uninstall
# ---------------------------------------------------------------------------------------------


def test_uninstall_removes_own_objects_and_keeps_coder_data(db_url: str) -> None:
    org = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO organizations (id, name, description, created_at, updated_at, "
            "display_name) VALUES (%s, 'acme', '', now(), now(), 'Acme')",
            (org,),
        )
        # What the triggers helper installs: functions in our schema, prebuildd_* triggers;
        # plus a trigger with another name that calls our function (it is ours too).
        conn.execute(
            "CREATE FUNCTION prebuildd.on_change() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER prebuildd_templates_changed AFTER UPDATE ON templates "
            "FOR EACH ROW EXECUTE FUNCTION prebuildd.on_change()"
        )
        conn.execute(
            "CREATE TRIGGER odd_name AFTER INSERT ON workspaces "
            "FOR EACH ROW EXECUTE FUNCTION prebuildd.on_change()"
        )
    coder_before = {row for row in snapshot(db_url) if row[0] == "rel" and row[1] == "public"} - {
        row for row in snapshot(db_url) if row[2].startswith("prebuildd")
    }

    removed = uninstall(db_url)

    assert "trigger prebuildd_templates_changed on public.templates" in removed
    assert "index public.prebuildd_workspaces_template_owner" in removed
    assert "function prebuildd.on_change()" in removed
    assert removed[-1] == "schema prebuildd"
    after = snapshot(db_url)
    assert not any("prebuildd" in "".join(row) for row in after if row[0] != "fn"), after
    assert not any(row[1] == "prebuildd" for row in after)
    assert {row for row in after if row[0] == "rel" and row[1] == "public"} == coder_before
    assert scalar(db_url, "SELECT count(*) FROM organizations WHERE id = %s", (org,)) == 1
    assert scalar(db_url, "SELECT count(*) FROM users WHERE id = %s", (PREBUILDS_USER_ID,)) == 1
    assert uninstall(db_url) == []

    # And back: on the now "foreign" Coder schema, only our objects are installed again.
    report = migrate(db_url)
    assert not report.installed_base_schema
    assert report.applied[: len(VERSIONED)] == tuple(VERSIONED)


def test_every_versioned_file_can_be_applied_again(db_url: str) -> None:
    """After an interrupted uninstall, `migrate` re-applies every file (uninstall forgets the
    applied files first): each versioned file must therefore be idempotent."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for file in versioned_files():
            if file.no_transaction:
                for statement in split_statements(file.text):
                    conn.execute(sql.SQL(statement))
            else:
                with conn.transaction():
                    conn.execute(sql.SQL(file.text))


# ---------------------------------------------------------------------------------------------
# Locks: migrate and uninstall never make Coder wait behind them
# ---------------------------------------------------------------------------------------------

# A write's table lock (ROW EXCLUSIVE), as every UPDATE of Coder's takes it; no row needed.
CODER_WRITE: dict[str, LiteralString] = {
    "templates": "UPDATE templates SET updated_at = updated_at WHERE false",
    "workspaces": "UPDATE workspaces SET updated_at = updated_at WHERE false",
}
SHORT = LockPolicy(timeout=timedelta(milliseconds=100), retry_for=timedelta(seconds=1))
# Generous bound for anything a test waits for; never a measured figure.
PATIENCE_SECONDS = 60.0


class Blocker:
    """An open transaction of Coder's that has written to `table` and is not done yet (a long
    request, an idle-in-transaction session): it holds the table's write lock until released.
    """

    def __init__(self, url: str, table: str) -> None:
        self.conn = psycopg.connect(url)
        self.conn.execute(CODER_WRITE[table])
        self.pid = self.conn.info.backend_pid

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.commit()
            self.conn.close()


def coder_write(url: str, table: str, *, statement_timeout: str = "60s") -> None:
    """One autocommit write of Coder's; `statement_timeout` only keeps a stuck test finite."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (statement_timeout,))
        conn.execute(CODER_WRITE[table])


class InThread:
    """Run `work()` in a thread; `.result()` re-raises what it raised."""

    def __init__(self, work: Callable[[], object]) -> None:
        self._outcome: list[object] = []
        self._error: list[BaseException] = []

        def run() -> None:
            try:
                self._outcome.append(work())
            except BaseException as exc:  # handed to the test by result()
                self._error.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def result(self) -> object:
        self.thread.join(timeout=PATIENCE_SECONDS)
        assert not self.thread.is_alive(), "still running"
        if self._error:
            raise self._error[0]
        return self._outcome[0]


class RetryWatch(logging.Handler):
    """Set when migrate logs that a step of `step_contains` hit a busy lock and will retry."""

    def __init__(self, step_contains: str) -> None:
        super().__init__(level=logging.INFO)
        self.step_contains = step_contains
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        step = str(getattr(record, "step", ""))
        if record.getMessage() == "lock busy, retrying" and self.step_contains in step:
            self.seen.set()


@pytest.fixture
def retry_watch() -> Iterator[Callable[[str], RetryWatch]]:
    logger = logging.getLogger("prebuildd.migrate")
    level = logger.level
    handlers: list[RetryWatch] = []

    def watch(step_contains: str) -> RetryWatch:
        handler = RetryWatch(step_contains)
        logger.addHandler(handler)
        handlers.append(handler)
        logger.setLevel(logging.INFO)
        return handler

    yield watch
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


def _stale_repeatables(url: str) -> list[str]:
    """Make the next migrate re-apply every repeatable file (as after an upgrade)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE prebuildd.schema_migrations SET checksum = 'stale'"
            " WHERE path LIKE 'triggers/%' OR path LIKE 'functions/%'"
        )
    return [file.path for file in repeatable_files()]


_OWN_TRIGGERS = """
SELECT tgrelid::regclass::text || ' ' || tgname || ' ' || md5(pg_get_triggerdef(oid))
FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'prebuildd\\_%'
"""


def own_triggers(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(row[0]) for row in conn.execute(_OWN_TRIGGERS)}


def _waiting_on(url: str, table: str) -> bool:
    """Some session waits for a lock on `table` (a request queued behind a holder)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
            (table,),
        ).fetchone()
    return bool(row and row[0])


def _eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_migrate_waiting_for_a_lock_never_queues_coders_writes(
    db_url: str, retry_watch: Callable[[str], RetryWatch]
) -> None:
    files = _stale_repeatables(db_url)
    triggers = own_triggers(db_url)
    watch = retry_watch("triggers/")
    blocker = Blocker(db_url, "templates")
    try:
        running = InThread(lambda: migrate(db_url))
        assert watch.seen.wait(PATIENCE_SECONDS), "migrate never met the blocker's lock"

        # Migrate is retrying; a Coder write to the same table goes through meanwhile.
        coder_write(db_url, "templates")
        assert running.running, "migrate finished although the blocker still holds the lock"
    finally:
        blocker.release()
    report = running.result()
    assert isinstance(report, MigrateReport)
    assert list(report.applied) == files
    assert own_triggers(db_url) == triggers
    assert set(recorded(db_url).values()) - {"stale"} == set(recorded(db_url).values())


def test_without_the_lock_timeout_coders_writes_would_queue(db_url: str) -> None:
    """The control: the same scenario with a lock_timeout that never fires shows what the
    test above guards against -- Coder's write stuck behind our waiting DDL."""
    _stale_repeatables(db_url)
    blocker = Blocker(db_url, "templates")
    try:
        patient = LockPolicy(timeout=timedelta(hours=1), retry_for=timedelta(hours=1))
        running = InThread(lambda: migrate(db_url, lock_policy=patient))
        _eventually(lambda: _waiting_on(db_url, "templates"), "migrate waits for templates")
        with pytest.raises(psycopg.errors.QueryCanceled):
            coder_write(db_url, "templates", statement_timeout="2s")
        assert running.running
    finally:
        blocker.release()
    assert isinstance(running.result(), MigrateReport)


def test_migrate_gives_up_with_a_clear_message_and_a_rerun_completes(db_url: str) -> None:
    files = _stale_repeatables(db_url)
    triggers = own_triggers(db_url)
    blocker = Blocker(db_url, "templates")
    try:
        with pytest.raises(MigrationLockTimeout) as caught:
            migrate(db_url, lock_policy=SHORT)
        # Nothing of the file that gave up was applied; the triggers are as they were.
        assert caught.value.step in files
        assert recorded(db_url)[caught.value.step] == "stale"
        assert own_triggers(db_url) == triggers
    finally:
        blocker.release()
    message = str(caught.value)
    assert caught.value.step in message
    assert "run the same command again" in message
    assert f"pid {blocker.pid} " in message, "the old transaction holding the lock is named"
    assert "--lock-retry-for" in message

    report = migrate(db_url, lock_policy=SHORT)
    assert caught.value.step in report.applied
    assert "stale" not in recorded(db_url).values()
    assert own_triggers(db_url) == triggers


# CREATE INDEX CONCURRENTLY waiting for a transaction to end (its virtual transaction id).
_INDEX_BUILD_WAITING = """
SELECT count(*) FROM pg_stat_activity
WHERE application_name = 'prebuildd migrate' AND wait_event = 'virtualxid'
"""


def test_concurrent_index_builds_wait_for_old_transactions_without_blocking_coder(
    empty_db_url: str,
) -> None:
    """CREATE INDEX CONCURRENTLY waits by design for the transactions that are writing to its
    table (and for older snapshots); Coder's new writes to that table carry on meanwhile."""
    _install_coder_subset_by_hand(empty_db_url)
    blocker = Blocker(empty_db_url, "workspaces")
    try:
        running = InThread(lambda: migrate(empty_db_url))
        _eventually(
            lambda: bool(scalar(empty_db_url, _INDEX_BUILD_WAITING)),
            "an index build waits for the old transaction",
        )
        coder_write(empty_db_url, "workspaces")
        assert running.running
    finally:
        blocker.release()
    report = running.result()
    assert isinstance(report, MigrateReport)
    assert report.applied[: len(VERSIONED)] == tuple(VERSIONED)
    assert "prebuildd_workspaces_template_owner" in own_index_names(empty_db_url)


def test_a_concurrent_index_build_that_gives_up_is_redone_by_the_next_run(
    empty_db_url: str,
) -> None:
    _install_coder_subset_by_hand(empty_db_url)
    blocker = Blocker(empty_db_url, "workspaces")
    try:
        with pytest.raises(MigrationLockTimeout) as caught:
            migrate(empty_db_url, lock_policy=SHORT)
    finally:
        blocker.release()
    assert caught.value.step == VERSIONED[0]
    assert "CONCURRENTLY" in str(caught.value)
    assert f"pid {blocker.pid} " in str(caught.value)
    assert VERSIONED[0] not in recorded(empty_db_url)

    report = migrate(empty_db_url, lock_policy=SHORT)
    assert report.applied[: len(VERSIONED)] == tuple(VERSIONED)
    invalid = scalar(empty_db_url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid")
    assert invalid == 0
    assert "prebuildd_workspaces_template_owner" in own_index_names(empty_db_url)


def test_uninstall_waiting_for_a_lock_never_queues_coders_writes(
    db_url: str, retry_watch: Callable[[str], RetryWatch]
) -> None:
    watch = retry_watch("triggers on public.workspaces")
    blocker = Blocker(db_url, "workspaces")
    try:
        running = InThread(lambda: uninstall(db_url))
        assert watch.seen.wait(PATIENCE_SECONDS), "uninstall never met the blocker's lock"
        coder_write(db_url, "workspaces")
        assert running.running
        # The other tables' triggers are already gone: one table at a time.
        assert {t.split()[0] for t in own_triggers(db_url)} == {"workspaces"}
    finally:
        blocker.release()
    removed = running.result()
    assert isinstance(removed, list) and removed[-1] == "schema prebuildd"
    assert own_triggers(db_url) == set()
    assert own_index_names(db_url) == set()


@pytest.mark.parametrize("then", ["uninstall", "migrate"])
def test_interrupted_uninstall_is_finished_by_a_rerun_or_undone_by_migrate(
    db_url: str, template_db_url: str, then: str
) -> None:
    full = own_triggers(db_url)
    blocker = Blocker(db_url, "workspaces")
    try:
        with pytest.raises(MigrationLockTimeout) as caught:
            uninstall(db_url, lock_policy=SHORT)
    finally:
        blocker.release()
    assert "workspaces" in caught.value.step
    assert "run the same command again" in str(caught.value)
    # Partial: only the table that timed out still has its triggers.
    left = own_triggers(db_url)
    assert left and left < full
    assert {t.split()[0] for t in left} == {"workspaces"}

    if then == "uninstall":
        uninstall(db_url, lock_policy=SHORT)
        assert own_triggers(db_url) == set()
        assert own_index_names(db_url) == set()
        assert scalar(db_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'prebuildd'") == 0
    else:
        # uninstall forgot the applied files first, so migrate restores everything.
        migrate(db_url, lock_policy=SHORT)
        assert own_triggers(db_url) == full
        assert own_index_names(db_url) == own_index_names(template_db_url)
