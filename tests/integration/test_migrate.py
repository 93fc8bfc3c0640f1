"""`prebuildd migrate` and `--uninstall` on real PostgreSQL databases."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from prebuildd import migrate as migrate_module
from prebuildd.migrate import (
    BASE_SCHEMA,
    MigrateReport,
    MigrationError,
    SchemaMismatch,
    SqlFile,
    migrate,
    split_statements,
    uninstall,
    versioned_files,
)
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
    monkeypatch.setattr(migrate_module, "repeatable_files", lambda: [trigger_file(1)])
    assert migrate(db_url).applied == ("triggers/zz_test.sql",)
    assert migrate(db_url).applied == ()
    monkeypatch.setattr(migrate_module, "repeatable_files", lambda: [trigger_file(2)])
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
