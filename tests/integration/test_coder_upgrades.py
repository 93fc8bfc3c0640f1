"""prebuildd installed in Coder's database never stands in the way of Coder's own upgrades.

Coder applies all pending migrations in one transaction when coderd starts; one failing
statement and coderd refuses to start. These tests run DDL patterns Coder's migration history
really uses, each in one transaction like Coder's migrator, against a database prebuildd
migrated, and then perform Coder's writes (issue 14, items 1 and 2):

* the catalog: no prebuildd object depends on a column or a type of Coder's (beyond a trigger's
  own table), checked from pg_depend -- with a control showing the check catches the kind of
  dependency the triggers of earlier releases had;
* Coder's DDL succeeds, and the events still flow after it; the same DDL against the triggers
  of earlier releases (`data/legacy_triggers_0001_notify.sql`, the file as released) fails
  with the error Coder met, so each case is a real one;
* after a column rename the trigger cannot read, Coder's write still succeeds (a WARNING, no
  notification), and events come back once the column does;
* a session that ran the trigger before Coder changed a column's type under it loses one event
  and heals;
* a stuck listener filling the notification queue cannot make Coder's commits fail;
* a database migrated by an earlier release ends up with exactly the current triggers.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import _trigger_rows as rows
import psycopg
import pytest
from _inbox import Inbox
from psycopg import sql
from psycopg.errors import Diagnostic
from psycopg.rows import TupleRow

from prebuildd.embedded import EmbeddedPostgres
from prebuildd.events import EventKind
from prebuildd.migrate import migrate, repeatable_files, versioned_files
from prebuildd.model import PREBUILDS_USER_ID
from prebuildd.queries import read_sql_file

Conn = psycopg.Connection[TupleRow]
Events = list[tuple[EventKind, UUID | None]]

LEGACY_TRIGGERS = Path(__file__).parent / "data" / "legacy_triggers_0001_notify.sql"


# Every dependency a prebuildd object (trigger, function, view, rule, type, default,
# constraint) has on an object in a schema other than pg_catalog, information_schema and
# prebuildd -- that is, on Coder's columns, types, tables, functions -- except the one a
# trigger must have on the table it is attached to (refobjsubid 0: the table as a whole).
FOREIGN_DEPENDENCIES = """
WITH ours (classid, objid, what, own_table) AS (
    SELECT 'pg_catalog.pg_trigger'::regclass, t.oid,
           format('trigger %s on %s', t.tgname, t.tgrelid::regclass), t.tgrelid
    FROM pg_catalog.pg_trigger t
    WHERE NOT t.tgisinternal AND t.tgname LIKE 'prebuildd\\_%'
    UNION ALL
    SELECT 'pg_catalog.pg_proc'::regclass, p.oid, format('function %s', p.oid::regprocedure),
           NULL::oid
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'prebuildd'::regnamespace
    UNION ALL
    SELECT 'pg_catalog.pg_class'::regclass, c.oid, format('relation %s', c.oid::regclass), NULL
    FROM pg_catalog.pg_class c
    WHERE c.relnamespace = 'prebuildd'::regnamespace
    UNION ALL
    SELECT 'pg_catalog.pg_rewrite'::regclass, r.oid,
           format('rule %s of %s', r.rulename, r.ev_class::regclass), NULL
    FROM pg_catalog.pg_rewrite r
    JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
    WHERE c.relnamespace = 'prebuildd'::regnamespace
    UNION ALL
    SELECT 'pg_catalog.pg_type'::regclass, ty.oid, format('type %s', ty.oid::regtype), NULL
    FROM pg_catalog.pg_type ty
    WHERE ty.typnamespace = 'prebuildd'::regnamespace
    UNION ALL
    SELECT 'pg_catalog.pg_attrdef'::regclass, d.oid,
           format('default of %s column %s', d.adrelid::regclass, d.adnum), NULL
    FROM pg_catalog.pg_attrdef d
    JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
    WHERE c.relnamespace = 'prebuildd'::regnamespace
    UNION ALL
    SELECT 'pg_catalog.pg_constraint'::regclass, con.oid, format('constraint %s', con.conname),
           NULL
    FROM pg_catalog.pg_constraint con
    WHERE con.connamespace = 'prebuildd'::regnamespace
)
SELECT ours.what, pg_catalog.pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
FROM ours
JOIN pg_catalog.pg_depend d ON d.classid = ours.classid AND d.objid = ours.objid
CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.refclassid, d.refobjid, d.refobjsubid) ref
WHERE ref.schema IS NOT NULL
  AND ref.schema NOT IN ('pg_catalog', 'information_schema', 'prebuildd')
  AND NOT (d.refclassid = 'pg_catalog.pg_class'::regclass
           AND d.refobjid = ours.own_table
           AND d.refobjsubid = 0)
ORDER BY 1, 2
"""

# prebuildd's indexes on Coder's tables (sql/schema/0001, 0003) and what each depends on.
OWN_INDEX_DEPENDENCIES = """
SELECT idx.relname, pg_catalog.pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid),
       d.refobjid = i.indrelid AS on_own_table
FROM pg_catalog.pg_class idx
JOIN pg_catalog.pg_index i ON i.indexrelid = idx.oid
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = idx.oid
WHERE idx.relkind = 'i'
  AND idx.relname LIKE 'prebuildd\\_%'
  AND d.refclassid = 'pg_catalog.pg_class'::regclass
ORDER BY 1, 2
"""

LIST_TRIGGERS = """
SELECT t.tgname, c.relname, t.tgenabled, t.tgqual IS NULL, t.tgattr = ''::int2vector
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal AND t.tgname LIKE 'prebuildd\\_%'
ORDER BY 1, 2
"""


# ---- helpers --------------------------------------------------------------------------------


class Warnings:
    """Collects the WARNINGs a connection receives (what Coder's session would be told)."""

    def __init__(self, conn: Conn) -> None:
        self.messages: list[str] = []
        conn.add_notice_handler(self._on_notice)

    def _on_notice(self, diag: Diagnostic) -> None:
        if diag.severity_nonlocalized == "WARNING" and diag.message_primary:
            self.messages.append(diag.message_primary)

    def take(self) -> list[str]:
        taken, self.messages = self.messages, []
        return taken


def install_legacy_triggers(conn: Conn) -> None:
    """What a database migrated by an earlier release held: the view of 0002 (dropped by 0004)
    and the trigger file with `UPDATE OF` lists and `WHEN` clauses."""
    conn.execute(read_sql_file("schema", "0002_pause_switch.sql"))
    conn.execute(LEGACY_TRIGGERS.read_text())
    conn.commit()


def coder_views(conn: Conn) -> list[tuple[str, str]]:
    """Coder's own views (name, definition) in creation order."""
    found = conn.execute(
        """
        SELECT c.relname, pg_catalog.pg_get_viewdef(c.oid)
        FROM pg_catalog.pg_class c
        WHERE c.relkind = 'v' AND c.relnamespace = current_schema()::regnamespace
        ORDER BY c.oid
        """
    ).fetchall()
    return [(str(name), str(body)) for name, body in found]


def recreate_enum(conn: Conn, type_name: str, columns: list[tuple[str, str]]) -> None:
    """Coder's way of changing an enum's labels (its migrations 000018, 000336, 000368): create
    a new type with the labels, convert every column to it through text, drop the old type,
    rename the new one. Coder's own views over those columns are dropped and recreated around
    it, as its migrations do; prebuildd's objects must need nothing of the kind."""
    labels = [
        str(label)
        for (label,) in conn.execute(
            "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = %s::regtype "
            "ORDER BY enumsortorder",
            [type_name],
        ).fetchall()
    ]
    labels.append("added_by_coder")
    new_type = sql.Identifier(f"new_{type_name}")
    views = coder_views(conn)
    for name, _ in reversed(views):
        conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(name)))
    conn.execute(
        sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
            new_type, sql.SQL(", ").join(sql.Literal(label) for label in labels)
        )
    )
    for table, column in columns:
        default = conn.execute(
            "SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
            "WHERE d.adrelid = %s::regclass AND a.attname = %s",
            [table, column],
        ).fetchone()
        col = sql.Identifier(column)
        alter = [sql.SQL("ALTER COLUMN {} TYPE {} USING ({}::text::{})").format(
            col, new_type, col, new_type
        )]  # fmt: skip
        if default is not None:
            label = str(default[0]).split("'")[1]
            alter.insert(0, sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(col))
            alter.append(
                sql.SQL("ALTER COLUMN {} SET DEFAULT {}::{}").format(
                    col, sql.Literal(label), new_type
                )
            )
        conn.execute(
            sql.SQL("ALTER TABLE {} {}").format(sql.Identifier(table), sql.SQL(", ").join(alter))
        )
    conn.execute(sql.SQL("DROP TYPE {}").format(sql.Identifier(type_name)))
    conn.execute(sql.SQL("ALTER TYPE {} RENAME TO {}").format(new_type, sql.Identifier(type_name)))
    for name, body in views:
        conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(sql.Identifier(name), sql.SQL(body)))


def alter_type(table: str, column: str, new_type: str) -> Callable[[Conn], None]:
    """Widen a column in place (int -> bigint, varchar -> text), as Coder's migrations do."""

    def run(conn: Conn) -> None:
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
                sql.Identifier(table), sql.Identifier(column), sql.SQL(new_type)
            )
        )

    return run


def in_one_transaction(url: str, migration: Callable[[Conn], None]) -> None:
    """Run a Coder migration the way Coder's migrator does: all of it in one transaction."""
    with psycopg.connect(url) as conn, conn.transaction():
        migration(conn)


# ---- Coder's DDL and the write that must still notify after it -------------------------------


# Each prepares its rows through `setup`, commits them and drains what that sent, then makes
# the write through `actor` (uncommitted) and returns the events it must send.


def _job_fails(setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox) -> Events:
    _, job_id = rows.prebuild(setup, tpl, started=True)
    setup.commit()
    inbox.drain()
    actor.execute(
        "UPDATE provisioner_jobs SET completed_at = now(), error = 'boom' WHERE id = %s", [job_id]
    )
    return [(EventKind.JOB_STATUS, tpl.template_id)]


def _agent_becomes_ready(setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox) -> Events:
    _, job_id = rows.prebuild(setup, tpl, started=True)
    agent_id = rows.agent(setup, job_id)
    setup.commit()
    inbox.drain()
    actor.execute(
        "UPDATE workspace_agents SET lifecycle_state = 'ready', ready_at = now() WHERE id = %s",
        [agent_id],
    )
    return [(EventKind.AGENT_READY, tpl.template_id)]


def _desired_count_changes(
    setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox
) -> Events:
    actor.execute(
        "UPDATE template_version_presets SET desired_instances = 5 WHERE id = %s", [tpl.preset_id]
    )
    return [(EventKind.PRESET_CHANGED, tpl.template_id)]


def _pause_switch_written(setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox) -> Events:
    actor.execute(
        "INSERT INTO site_configs (key, value) VALUES ('prebuilds_settings', %s) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        [f'{{"reconciliation_paused":true,"n":"{uuid.uuid4()}"}}'],
    )
    return [(EventKind.SETTINGS_CHANGED, None)]


def _template_promoted(setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox) -> Events:
    new_version = rows.version(setup, tpl.org_id, tpl.template_id, tpl.owner_id)
    setup.commit()
    inbox.drain()
    actor.execute(
        "UPDATE templates SET active_version_id = %s WHERE id = %s", [new_version, tpl.template_id]
    )
    return [(EventKind.VERSION_PROMOTED, tpl.template_id)]


def _schedule_changes(setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox) -> Events:
    schedule_id = rows.schedule(setup, tpl.preset_id)
    setup.commit()
    inbox.drain()
    actor.execute(
        "UPDATE template_version_preset_prebuild_schedules SET desired_instances = 9 WHERE id = %s",
        [schedule_id],
    )
    return [(EventKind.SCHEDULE_CHANGED, tpl.template_id)]


@dataclass(frozen=True)
class CoderMigration:
    name: str
    ddl: Callable[[Conn], None]
    # A write the triggers must still report afterwards; returns the events it must send.
    write: Callable[[Conn, Conn, rows.TemplateRows, Inbox], Events]
    # The error the triggers of earlier releases made this DDL fail with (None: it never did).
    legacy_error: str | None


MIGRATIONS = [
    CoderMigration(
        "enum recreated: provisioner_jobs.type",
        lambda conn: recreate_enum(conn, "provisioner_job_type", [("provisioner_jobs", "type")]),
        _job_fails,
        "cannot alter type of a column used in a trigger definition",
    ),
    CoderMigration(
        "enum recreated: workspace_agents.lifecycle_state",
        lambda conn: recreate_enum(
            conn, "workspace_agent_lifecycle_state", [("workspace_agents", "lifecycle_state")]
        ),
        _agent_becomes_ready,
        "cannot alter type of a column used in a trigger definition",
    ),
    CoderMigration(
        "int -> bigint: template_version_presets.desired_instances",
        alter_type("template_version_presets", "desired_instances", "bigint"),
        _desired_count_changes,
        "cannot alter type of a column used in a trigger definition",
    ),
    CoderMigration(
        "varchar -> text: site_configs.key",
        alter_type("site_configs", "key", "text"),
        _pause_switch_written,
        # The view of 0002 over site_configs; the WHEN of the settings triggers came next.
        "cannot alter type of a column used by a view or rule",
    ),
    CoderMigration(
        "varchar -> text: templates.name",
        alter_type("templates", "name", "text"),
        _template_promoted,
        None,
    ),
    # Indexed by prebuildd_preset_schedules_preset_desired (0003): the index is rebuilt.
    CoderMigration(
        "int -> bigint: template_version_preset_prebuild_schedules.desired_instances",
        alter_type("template_version_preset_prebuild_schedules", "desired_instances", "bigint"),
        _schedule_changes,
        None,
    ),
]


@pytest.fixture
def inbox(db_url: str) -> Iterator[Inbox]:
    box = Inbox(db_url)
    try:
        yield box
    finally:
        box.close()


def new_template(conn: Conn, inbox: Inbox) -> rows.TemplateRows:
    made = rows.template_with_preset(conn)
    conn.commit()
    inbox.drain()
    return made


# ---- the catalog ----------------------------------------------------------------------------


def test_no_prebuildd_object_depends_on_coders_columns_or_types(conn: Conn) -> None:
    assert conn.execute(FOREIGN_DEPENDENCIES).fetchall() == []
    found = {(str(name), str(table)) for name, table, *_ in conn.execute(LIST_TRIGGERS)}
    assert found == rows.EXPECTED_TRIGGERS
    # Control: the same query run over the objects of an earlier release finds what blocked
    # Coder -- so an empty answer above means something.
    install_legacy_triggers(conn)
    legacy = conn.execute(FOREIGN_DEPENDENCIES).fetchall()
    conn.rollback()
    assert ("trigger prebuildd_job_status on provisioner_jobs",
            "column type of table provisioner_jobs") in legacy  # fmt: skip
    assert ("trigger prebuildd_job_status on provisioner_jobs",
            "type provisioner_job_type") in legacy  # fmt: skip
    assert any(
        what.startswith("rule _RETURN of prebuildd.prebuilds_settings") for what, _ in legacy
    )


def test_the_only_column_dependencies_are_prebuildds_indexes_on_their_own_tables(
    conn: Conn,
) -> None:
    # An index necessarily depends on its columns. Unlike a trigger's WHEN or a view, it does
    # not block ALTER COLUMN TYPE: PostgreSQL rebuilds it within Coder's migration, as it
    # rebuilds Coder's own indexes (proved by the schedules case of test_coders_ddl_succeeds).
    # A rename leaves it as it is; dropping the column drops the index (the sweep's reads
    # would then be slower, never wrong).
    found = conn.execute(OWN_INDEX_DEPENDENCIES).fetchall()
    assert {str(name) for name, _, _ in found} == {
        "prebuildd_workspaces_template_owner",
        "prebuildd_presets_template_version",
        "prebuildd_preset_parameters_preset",
        "prebuildd_preset_schedules_preset",
        "prebuildd_preset_schedules_preset_desired",
        # sql/schema/0008_demand_index.sql: they replace 0001's prebuildd_workspace_builds_preset.
        "prebuildd_workspace_builds_preset_created",
        "prebuildd_workspace_builds_first_preset",
        "prebuildd_provisioner_jobs_prebuild_queue",
    }
    assert all(on_own_table for _, _, on_own_table in found), found


# ---- Coder's migrations ---------------------------------------------------------------------


@pytest.mark.parametrize("migration", MIGRATIONS, ids=lambda m: m.name)
def test_coders_ddl_succeeds_and_events_still_flow(
    db_url: str, conn: Conn, inbox: Inbox, migration: CoderMigration
) -> None:
    tpl = new_template(conn, inbox)
    in_one_transaction(db_url, migration.ddl)
    assert conn.execute(FOREIGN_DEPENDENCIES).fetchall() == []
    # A session opened after the upgrade, as coderd's after its restart.
    with psycopg.connect(db_url) as coder:
        warnings = Warnings(coder)
        expected = migration.write(conn, coder, tpl, inbox)
        coder.commit()
        assert warnings.take() == []
    assert inbox.kinds() == expected


@pytest.mark.parametrize(
    "migration", [m for m in MIGRATIONS if m.legacy_error], ids=lambda m: m.name
)
def test_the_same_ddl_failed_with_the_triggers_of_earlier_releases(
    db_url: str, conn: Conn, migration: CoderMigration
) -> None:
    install_legacy_triggers(conn)
    with pytest.raises(psycopg.errors.FeatureNotSupported) as failed:
        in_one_transaction(db_url, migration.ddl)
    assert str(migration.legacy_error) in str(failed.value)


def test_indexed_column_retyped_by_coder_keeps_prebuildds_index(db_url: str, conn: Conn) -> None:
    in_one_transaction(
        db_url,
        alter_type("template_version_preset_prebuild_schedules", "desired_instances", "bigint"),
    )
    index = conn.execute(
        """
        SELECT i.indisvalid, pg_catalog.pg_get_indexdef(i.indexrelid)
        FROM pg_catalog.pg_index i
        WHERE i.indexrelid = 'prebuildd_preset_schedules_preset_desired'::regclass
        """
    ).fetchone()
    assert index is not None
    assert index[0] is True
    assert "(preset_id, desired_instances)" in str(index[1])


# ---- a renamed column -----------------------------------------------------------------------


def _claim(coder: Conn, workspace_id: UUID, user_id: UUID) -> None:
    # Coder's claim: the prebuild changes hands (and name) in one UPDATE.
    coder.execute(
        "UPDATE workspaces SET owner_id = %s, name = %s WHERE id = %s",
        [user_id, f"mine-{uuid.uuid4().hex[:6]}", workspace_id],
    )


def test_claim_succeeds_after_coder_renames_a_column_the_trigger_reads(
    db_url: str, conn: Conn, inbox: Inbox
) -> None:
    tpl = new_template(conn, inbox)
    first, _ = rows.prebuild(conn, tpl)
    second, _ = rows.prebuild(conn, tpl)
    conn.commit()
    inbox.drain()
    rename = "ALTER TABLE workspaces RENAME COLUMN {} TO {}"
    in_one_transaction(db_url, lambda c: c.execute(rename.format("template_id", "tpl_id")))

    with psycopg.connect(db_url) as coder:
        warnings = Warnings(coder)
        _claim(coder, first, tpl.owner_id)
        coder.commit()
        owner = coder.execute("SELECT owner_id FROM workspaces WHERE id = %s", [first])
        assert owner.fetchone() == (tpl.owner_id,)
        coder.commit()
        (warning,) = warnings.take()
        prefix = "prebuildd: claimed event on workspaces not sent (SQLSTATE 42703)"
        assert warning.startswith(prefix)
        assert "template_id" in warning  # names the column, never a value
        assert str(first) not in warning and str(tpl.owner_id) not in warning
        assert inbox.kinds() == []

        # The column comes back (Coder's down migration, or a prebuildd that follows the
        # rename): the same session's next claim is reported again.
        in_one_transaction(db_url, lambda c: c.execute(rename.format("tpl_id", "template_id")))
        _claim(coder, second, tpl.owner_id)
        coder.commit()
        assert warnings.take() == []
    assert inbox.kinds() == [(EventKind.CLAIMED, tpl.template_id)]

    # `prebuildd migrate` afterwards: nothing to repair, every trigger in place and enabled.
    migrate(db_url)
    assert {(str(n), str(t)) for n, t, *_ in conn.execute(LIST_TRIGGERS)} == rows.EXPECTED_TRIGGERS


@dataclass(frozen=True)
class Rename:
    """Coder renames a column one trigger function reads, then writes with the new name."""

    kind: str
    table: str
    column: str
    # Prepares the rows, returns the write (statement, parameters) made after the rename.
    write: Callable[[Conn, rows.TemplateRows], tuple[str, list[object]]]


def _running_prebuild_job(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    _, job_id = rows.prebuild(conn, tpl, started=True)
    return "UPDATE provisioner_jobs SET completed_at = now() WHERE id = %s", [job_id]


def _prebuild_agent(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    _, job_id = rows.prebuild(conn, tpl, started=True)
    agent_id = rows.agent(conn, job_id)
    return "UPDATE workspace_agents SET renamed = 'ready' WHERE id = %s", [agent_id]


def _prebuild_to_claim(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    workspace_id, _ = rows.prebuild(conn, tpl)
    return "UPDATE workspaces SET renamed = %s WHERE id = %s", [tpl.owner_id, workspace_id]


def _second_prebuild_build(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    workspace_id, _ = rows.prebuild(conn, tpl, started=True)
    job_id = rows.job(conn, tpl.org_id, PREBUILDS_USER_ID)
    statement = (
        "INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, "
        "template_version_id, build_number, transition, initiator_id, job_id) "
        "VALUES (gen_random_uuid(), now(), now(), %s, %s, 2, 'stop', %s, %s)"
    )
    return statement, [workspace_id, tpl.version_id, PREBUILDS_USER_ID, job_id]


def _persons_first_build(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    """A person's workspace built from scratch from the preset (a miss)."""
    workspace_id = rows.workspace(conn, tpl.org_id, tpl.template_id, tpl.owner_id)
    job_id = rows.job(conn, tpl.org_id, tpl.owner_id)
    statement = (
        "INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, "
        "template_version_id, build_number, transition, initiator_id, job_id, "
        "template_version_preset_id) "
        "VALUES (gen_random_uuid(), now(), now(), %s, %s, 1, 'start', %s, %s, %s)"
    )
    return statement, [workspace_id, tpl.version_id, tpl.owner_id, job_id, tpl.preset_id]


def _new_version_to_promote(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    version_id = rows.version(conn, tpl.org_id, tpl.template_id, tpl.owner_id)
    return "UPDATE templates SET renamed = %s WHERE id = %s", [version_id, tpl.template_id]


def _preset(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    return "UPDATE template_version_presets SET renamed = 7 WHERE id = %s", [tpl.preset_id]


def _schedule(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    schedule_id = rows.schedule(conn, tpl.preset_id)
    statement = "UPDATE template_version_preset_prebuild_schedules SET desired_instances = 9 "
    return statement + "WHERE id = %s", [schedule_id]


def _pause_switch(conn: Conn, tpl: rows.TemplateRows) -> tuple[str, list[object]]:
    return "INSERT INTO site_configs (renamed, value) VALUES ('prebuilds_settings', '{}')", []


RENAMES = [
    Rename("job_status", "provisioner_jobs", "initiator_id", _running_prebuild_job),
    Rename("agent_ready", "workspace_agents", "lifecycle_state", _prebuild_agent),
    Rename("claimed", "workspaces", "owner_id", _prebuild_to_claim),
    # Read by the function's lookup, not from the row: the lookup's error is caught too.
    Rename("build_inserted", "workspaces", "template_id", _second_prebuild_build),
    Rename("missed", "template_version_presets", "desired_instances", _persons_first_build),
    Rename("version_promoted", "templates", "active_version_id", _new_version_to_promote),
    Rename("preset_changed", "template_version_presets", "desired_instances", _preset),
    Rename(
        "schedule_changed", "template_version_preset_prebuild_schedules", "preset_id", _schedule
    ),
    Rename("settings_changed", "site_configs", "key", _pause_switch),
]


@pytest.mark.parametrize("rename", RENAMES, ids=lambda r: f"{r.kind}: {r.table}.{r.column}")
def test_every_trigger_function_lets_coders_write_through_after_a_rename(
    db_url: str, conn: Conn, inbox: Inbox, rename: Rename
) -> None:
    tpl = new_template(conn, inbox)
    statement, params = rename.write(conn, tpl)
    conn.commit()
    inbox.drain()
    in_one_transaction(
        db_url,
        lambda c: c.execute(
            sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO renamed").format(
                sql.Identifier(rename.table), sql.Identifier(rename.column)
            )
        ),
    )
    with psycopg.connect(db_url) as coder:
        warnings = Warnings(coder)
        coder.execute(statement, params)
        coder.commit()
        (warning,) = warnings.take()
    assert warning.startswith(f"prebuildd: {rename.kind} event on ")
    assert "not sent (SQLSTATE 42703)" in warning
    assert inbox.kinds() == []


def test_the_same_claim_failed_with_the_triggers_of_earlier_releases(
    db_url: str, conn: Conn, inbox: Inbox
) -> None:
    install_legacy_triggers(conn)
    tpl = new_template(conn, inbox)
    workspace_id, _ = rows.prebuild(conn, tpl)
    conn.commit()
    in_one_transaction(
        db_url, lambda c: c.execute("ALTER TABLE workspaces RENAME COLUMN template_id TO tpl_id")
    )
    with psycopg.connect(db_url) as coder, pytest.raises(psycopg.errors.UndefinedColumn):
        _claim(coder, workspace_id, tpl.owner_id)


# ---- a column's type changed under a running session ----------------------------------------


@pytest.mark.parametrize(
    "migration",
    [m for m in MIGRATIONS if m.write in (_agent_becomes_ready, _desired_count_changes)],
    ids=lambda m: m.name,
)
def test_a_session_older_than_a_type_change_loses_one_event_and_heals(
    db_url: str, conn: Conn, inbox: Inbox, migration: CoderMigration
) -> None:
    # Coder's connection pool outlives a migration another coderd replica runs. PL/pgSQL keeps
    # per-session plans typed for the old column: the first call after the change fails inside
    # the function (WARNING, Coder's write commits), discards the plans, and the next works.
    with psycopg.connect(db_url) as coder:
        warnings = Warnings(coder)
        expected = migration.write(conn, coder, new_template(conn, inbox), inbox)
        coder.commit()  # the function has now run, and planned, in this session
        assert inbox.kinds() == expected

        in_one_transaction(db_url, migration.ddl)
        migration.write(conn, coder, new_template(conn, inbox), inbox)
        coder.commit()
        (warning,) = warnings.take()
        assert " not sent (SQLSTATE " in warning
        assert inbox.kinds() == []

        expected = migration.write(conn, coder, new_template(conn, inbox), inbox)
        coder.commit()
        assert warnings.take() == []
        assert inbox.kinds() == expected


# ---- a database migrated by an earlier release ----------------------------------------------


def test_upgrading_from_the_legacy_trigger_file_leaves_exactly_the_current_triggers(
    db_url: str, conn: Conn, inbox: Inbox
) -> None:
    install_legacy_triggers(conn)
    # Bookkeeping as that release left it: its trigger file recorded, none of today's files.
    legacy_files = [
        "schema/0001_indexes.sql", "schema/0002_pause_switch.sql",
        "schema/0003_schedule_bound_index.sql",
    ]  # fmt: skip
    conn.execute("DELETE FROM prebuildd.schema_migrations WHERE path <> ALL(%s)", [legacy_files])
    conn.execute(
        "INSERT INTO prebuildd.schema_migrations (path, checksum) "
        "VALUES ('triggers/0001_notify.sql', 'legacy')"
    )
    conn.commit()
    assert conn.execute(FOREIGN_DEPENDENCIES).fetchall() != []

    applied = migrate(db_url).applied
    assert set(applied) == {
        # Every versioned file newer than that release (0004_pause_switch_function.sql, ...).
        *(file.path for file in versioned_files() if file.path not in legacy_files),
        *(file.path for file in repeatable_files()),
    }
    assert "schema/0004_pause_switch_function.sql" in applied
    triggers = conn.execute(LIST_TRIGGERS).fetchall()
    assert {(str(name), str(table)) for name, table, *_ in triggers} == rows.EXPECTED_TRIGGERS
    # Enabled ('O'), no WHEN (tgqual), no UPDATE OF column list (tgattr).
    assert all(row[2:] == ("O", True, True) for row in triggers), triggers
    assert conn.execute(FOREIGN_DEPENDENCIES).fetchall() == []
    assert conn.execute("SELECT to_regclass('prebuildd.prebuilds_settings')").fetchone() == (None,)
    # And the events flow.
    assert inbox.kinds() == []
    expected = _job_fails(conn, conn, new_template(conn, inbox), inbox)
    conn.commit()
    assert inbox.kinds() == expected


# ---- the pause switch -----------------------------------------------------------------------


def test_pause_switch_function_cannot_be_redirected_to_a_temporary_table(
    conn: Conn, db_url: str
) -> None:
    conn.execute(
        "INSERT INTO site_configs (key, value) VALUES ('prebuilds_settings', %s)",
        ['{"reconciliation_paused":true}'],
    )
    conn.commit()
    config = conn.execute(
        "SELECT p.prosecdef, p.proconfig::text, p.prorettype::regtype::text "
        "FROM pg_catalog.pg_proc p WHERE p.oid = 'prebuildd.prebuilds_settings()'::regprocedure"
    ).fetchone()
    assert config is not None
    secdef, proconfig, returns = config
    assert secdef is True and returns == "text"
    assert str(proconfig).endswith(', pg_temp"}'), proconfig
    with psycopg.connect(db_url) as other:
        other.execute("CREATE TEMP TABLE site_configs (key text, value text)")
        other.execute("INSERT INTO site_configs VALUES ('prebuilds_settings', 'forged')")
        got = other.execute("SELECT prebuildd.prebuilds_settings()").fetchone()
    assert got == ('{"reconciliation_paused":true}',)
    public = conn.execute(
        "SELECT has_function_privilege('public', 'prebuildd.prebuilds_settings()', 'EXECUTE')"
    ).fetchone()
    assert public == (False,)


# ---- the notification queue -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_queue_url() -> Iterator[str]:
    """A private PostgreSQL whose notification queue holds 64 pages (512 kB) instead of 8 GB,
    so that a stuck listener can fill it within the test (max_notify_queue_pages, PG 17+)."""
    root = Path(tempfile.mkdtemp(prefix="pbd-queue-", dir="/tmp"))
    server = EmbeddedPostgres(root / "pg")
    url = server.start()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
        admin.execute("ALTER SYSTEM SET fsync = off")
    server.stop()
    server = EmbeddedPostgres(root / "pg")
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            pages = admin.execute("SHOW max_notify_queue_pages").fetchone()
        assert pages == ("64",)
        migrate(url)
        yield url
    finally:
        server.stop()


def _prebuild_claimed(setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox) -> Events:
    workspace_id, _ = rows.prebuild(setup, tpl)
    setup.commit()
    inbox.drain()
    _claim(actor, workspace_id, tpl.owner_id)
    return [(EventKind.CLAIMED, tpl.template_id)]


def _prebuild_build_started(
    setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox
) -> Events:
    workspace_id = rows.workspace(setup, tpl.org_id, tpl.template_id, PREBUILDS_USER_ID)
    setup.commit()
    inbox.drain()
    rows.build(actor, workspace_id, tpl.version_id, PREBUILDS_USER_ID)
    return [(EventKind.BUILD_INSERTED, tpl.template_id)]


def _job_picked_up_with_creates_waiting(
    setup: Conn, actor: Conn, tpl: rows.TemplateRows, inbox: Inbox
) -> Events:
    """A provisioner takes a prebuild job while creates of its tag set wait under the cap on
    pending prebuild jobs: the first template in line is woken (and nothing else is sent:
    pending -> running is no job_status event)."""
    _, job_id = rows.prebuild(setup, tpl)
    setup.execute(
        "INSERT INTO prebuildd.throttle_waits"
        " (preset_id, template_id, organization_id, tags, held, waiting_since)"
        " SELECT %s, %s, j.organization_id, j.tags, 3, now() FROM provisioner_jobs j"
        " WHERE j.id = %s",
        [tpl.preset_id, tpl.template_id, job_id],
    )
    setup.commit()
    inbox.drain()
    actor.execute(
        "UPDATE provisioner_jobs SET started_at = now(), worker_id = gen_random_uuid()"
        " WHERE id = %s",
        [job_id],
    )
    return [(EventKind.THROTTLE_TURN, tpl.template_id)]


# One write per trigger function and kind, each of which must send exactly its events.
EVENT_WRITES = [
    _job_fails,
    _job_picked_up_with_creates_waiting,
    _agent_becomes_ready,
    _prebuild_claimed,
    _prebuild_build_started,
    _template_promoted,
    _desired_count_changes,
    _schedule_changes,
    _pause_switch_written,
]


def test_a_full_notification_queue_never_fails_coders_commit(small_queue_url: str) -> None:
    url = small_queue_url
    with (
        psycopg.connect(url) as setup,
        psycopg.connect(url) as coder,
        psycopg.connect(url, autocommit=True) as stuck,
    ):
        # A listener that stopped reading: inside a transaction it processes nothing, so the
        # queue cannot be truncated past it.
        stuck.execute("LISTEN prebuildd_events")
        stuck.execute("BEGIN")
        stuck.execute("SELECT 1")
        filler = "x" * 7900  # about one queue page per notification
        usage = 0.0
        sent = 0
        while usage < 0.6:
            setup.execute("SELECT pg_notify('prebuildd_events', %s)", [f"{sent}{filler}"])
            setup.commit()
            sent += 1
            row = setup.execute("SELECT pg_notification_queue_usage()").fetchone()
            setup.commit()
            usage = float(row[0]) if row else 0.0

        warnings = Warnings(coder)
        inbox = Inbox(url)
        for write in EVENT_WRITES:
            tpl = rows.template_with_preset(setup)
            setup.commit()
            expected = write(setup, coder, tpl, inbox)
            coder.commit()  # Coder's write commits, and sends nothing
            kind = expected[0][0].value
            assert warnings.take() == [
                f"prebuildd: {kind} event not sent: notification queue too full"
            ]
            assert inbox.kinds() == []

        # Below the limit (a setting, for operators and for this test) every event is sent.
        coder.execute("SELECT set_config('prebuildd.max_notify_queue_usage', '0.99', false)")
        coder.commit()
        for write in EVENT_WRITES:
            tpl = rows.template_with_preset(setup)
            setup.commit()
            expected = write(setup, coder, tpl, inbox)
            coder.commit()
            assert warnings.take() == []
            assert inbox.kinds() == expected
        inbox.close()

        # What the limit protects from: at a full queue, NOTIFY fails at COMMIT, where no
        # exception handler runs -- it would have taken Coder's write with it.
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            for n in range(100):
                setup.execute("SELECT pg_notify('prebuildd_events', %s)", [f"f{n}{filler}"])
                setup.commit()
        setup.rollback()
        stuck.execute("ROLLBACK")
