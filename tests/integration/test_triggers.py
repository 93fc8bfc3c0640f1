"""The NOTIFY triggers (sql/triggers/*.sql, sql/functions/notify_event.sql) on a real PostgreSQL.

Each test writes through `conn`, commits, and reads what a LISTENing session received
(`_inbox.Inbox`, which checks silence deterministically with a sentinel notification).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import LiteralString
from uuid import UUID

import _trigger_rows as rows
import psycopg
import pytest
from _inbox import Inbox
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from prebuildd import seed
from prebuildd.events import CHANNEL, EventKind
from prebuildd.migrate import migrate, repeatable_files
from prebuildd.model import PREBUILDS_USER_ID
from prebuildd.queries import read_sql_file

Conn = psycopg.Connection[TupleRow]


@pytest.fixture(scope="module")
def shared_db_url(pg_admin_url: str, template_db_url: str) -> Iterator[str]:
    """One migrated database for this module instead of one per test (saves ~0.6 s a test).

    Safe because every test creates its own template rows and asserts only on what its own
    commits send; the few global rows (site_configs) are removed by the tests that add them.
    """
    admin_params = conninfo_to_dict(pg_admin_url)
    template = str(conninfo_to_dict(template_db_url)["dbname"])
    name = f"t_triggers_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        yield make_conninfo("", **{**admin_params, "dbname": name})
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def conn(shared_db_url: str) -> Iterator[Conn]:
    """The writer (overrides the harness's `conn`, which opens a fresh database)."""
    with psycopg.connect(shared_db_url) as connection:
        yield connection


@pytest.fixture
def inbox(shared_db_url: str) -> Iterator[Inbox]:
    box = Inbox(shared_db_url)
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def tpl(conn: Conn, inbox: Inbox) -> rows.TemplateRows:
    """A template with an active version and a preset; its own events already drained."""
    made = rows.template_with_preset(conn)
    conn.commit()
    inbox.drain()
    return made


def commit_and_read(conn: Conn, inbox: Inbox) -> list[tuple[EventKind, UUID | None]]:
    conn.commit()
    return inbox.kinds()


# ---- installation ---------------------------------------------------------------------------


def test_all_triggers_are_installed_once_and_reapplying_is_harmless(
    conn: Conn, shared_db_url: str
) -> None:
    list_triggers = """
        SELECT tgname, relname FROM pg_trigger JOIN pg_class ON pg_class.oid = tgrelid
        WHERE tgname LIKE 'prebuildd_%' ORDER BY 1
    """
    assert set(conn.execute(list_triggers).fetchall()) == rows.EXPECTED_TRIGGERS
    # Executed without parameters: psycopg sends each file verbatim, as migrate does.
    for file in repeatable_files():
        conn.execute(file.text)
    conn.commit()
    migrate(shared_db_url)
    found = conn.execute(list_triggers).fetchall()
    assert len(found) == len(rows.EXPECTED_TRIGGERS)
    assert set(found) == rows.EXPECTED_TRIGGERS


# ---- templates ------------------------------------------------------------------------------


def test_new_template_counts_as_a_promotion(conn: Conn, inbox: Inbox) -> None:
    made = rows.template_with_preset(conn)
    # The version and preset carry the template id: the preset's event names it too.
    assert set(commit_and_read(conn, inbox)) == {
        (EventKind.VERSION_PROMOTED, made.template_id),
        (EventKind.PRESET_CHANGED, made.template_id),
    }


def test_promotion(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    new_version = rows.version(conn, tpl.org_id, tpl.template_id, tpl.owner_id)
    assert commit_and_read(conn, inbox) == []
    conn.execute(
        "UPDATE templates SET active_version_id = %s WHERE id = %s", [new_version, tpl.template_id]
    )
    assert commit_and_read(conn, inbox) == [(EventKind.VERSION_PROMOTED, tpl.template_id)]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE templates SET active_version_id = active_version_id WHERE id = %s",
        "UPDATE templates SET updated_at = now(), description = 'x' WHERE id = %s",
        "UPDATE templates SET deprecated = deprecated, deleted = deleted WHERE id = %s",
    ],
)
def test_template_updates_without_transition_are_silent(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows, statement: str
) -> None:
    conn.execute(statement, [tpl.template_id])
    assert commit_and_read(conn, inbox) == []


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE templates SET deprecated = 'use another one' WHERE id = %s",
        "UPDATE templates SET deleted = true WHERE id = %s",
    ],
)
def test_template_deprecated_or_deleted(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows, statement: str
) -> None:
    conn.execute(statement, [tpl.template_id])
    assert commit_and_read(conn, inbox) == [(EventKind.TEMPLATE_CHANGED, tpl.template_id)]


def test_template_hard_delete(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    conn.execute("DELETE FROM templates WHERE id = %s", [tpl.template_id])
    # The cascade removes the preset too, after its version: that event finds no template.
    assert commit_and_read(conn, inbox) == [(EventKind.TEMPLATE_CHANGED, tpl.template_id)]


# ---- presets and schedules ------------------------------------------------------------------


def test_preset_insert_and_delete(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    preset_id = rows.preset(conn, tpl.version_id, desired=None)
    assert commit_and_read(conn, inbox) == [(EventKind.PRESET_CHANGED, tpl.template_id)]
    conn.execute("DELETE FROM template_version_presets WHERE id = %s", [preset_id])
    assert commit_and_read(conn, inbox) == [(EventKind.PRESET_CHANGED, tpl.template_id)]


PRESET_UPDATE = "UPDATE template_version_presets SET {} WHERE id = %s"


@pytest.mark.parametrize(
    "assignment",
    [
        "desired_instances = 5",
        "desired_instances = NULL",
        "invalidate_after_secs = 3600",
        "scheduling_timezone = 'Europe/Berlin'",
        "last_invalidated_at = now()",
    ],
)
def test_preset_prebuild_settings_change(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows, assignment: str
) -> None:
    conn.execute(PRESET_UPDATE.format(assignment), [tpl.preset_id])
    assert commit_and_read(conn, inbox) == [(EventKind.PRESET_CHANGED, tpl.template_id)]


@pytest.mark.parametrize(
    "assignment",
    [
        "prebuild_status = 'hard_limited'",  # written by prebuildd itself: no echo
        "description = 'renamed'",
        "desired_instances = desired_instances, scheduling_timezone = scheduling_timezone",
    ],
)
def test_preset_updates_without_transition_are_silent(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows, assignment: str
) -> None:
    conn.execute(PRESET_UPDATE.format(assignment), [tpl.preset_id])
    assert commit_and_read(conn, inbox) == []


def test_preset_of_a_version_without_template_is_silent(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    # Coder imports a version before any template exists; the template insert reports it.
    orphan = rows.version(conn, tpl.org_id, None, tpl.owner_id)
    rows.preset(conn, orphan)
    assert commit_and_read(conn, inbox) == []


def test_schedule_insert_update_delete(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    schedule_id = rows.schedule(conn, tpl.preset_id)
    assert commit_and_read(conn, inbox) == [(EventKind.SCHEDULE_CHANGED, tpl.template_id)]
    update = "UPDATE template_version_preset_prebuild_schedules SET {} WHERE id = %s"
    conn.execute(update.format("desired_instances = 7"), [schedule_id])
    assert commit_and_read(conn, inbox) == [(EventKind.SCHEDULE_CHANGED, tpl.template_id)]
    conn.execute(update.format("cron_expression = cron_expression"), [schedule_id])
    assert commit_and_read(conn, inbox) == []
    conn.execute(
        "DELETE FROM template_version_preset_prebuild_schedules WHERE id = %s", [schedule_id]
    )
    assert commit_and_read(conn, inbox) == [(EventKind.SCHEDULE_CHANGED, tpl.template_id)]


# ---- builds and jobs ------------------------------------------------------------------------


def test_prebuild_build_insert(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    rows.prebuild(conn, tpl)
    assert commit_and_read(conn, inbox) == [(EventKind.BUILD_INSERTED, tpl.template_id)]


def test_user_build_insert_is_silent_unless_it_is_a_miss(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    poolless = rows.preset(conn, tpl.version_id, desired=None)
    conn.commit()
    inbox.drain()
    # A person's first build naming a preset that keeps a pool: a miss (issue 16).
    workspace_id, _ = rows.prebuild(conn, tpl, owner_id=tpl.owner_id)
    assert commit_and_read(conn, inbox) == [(EventKind.MISSED, tpl.template_id)]
    # Everything else people build: their later builds, a first build naming a preset
    # without a pool, or no preset.
    rows.build(conn, workspace_id, tpl.version_id, tpl.owner_id,
               preset_id=tpl.preset_id, number=2)  # fmt: skip
    for preset_id in (poolless, None):
        other = rows.workspace(conn, tpl.org_id, tpl.template_id, tpl.owner_id)
        rows.build(conn, other, tpl.version_id, tpl.owner_id, preset_id=preset_id)
    assert commit_and_read(conn, inbox) == []


JOB_UPDATE = "UPDATE provisioner_jobs SET {} WHERE id = %s"


@pytest.mark.parametrize(
    ("started", "assignment"),
    [
        (True, "completed_at = now(), error = 'boom'"),  # running -> failed
        (True, "canceled_at = now()"),  # running -> canceling
        (False, "canceled_at = now(), completed_at = now()"),  # pending -> canceled
        (False, "canceled_at = now()"),  # pending -> canceling
        (False, "completed_at = now(), error = 'boom'"),  # pending -> failed
    ],
)
def test_prebuild_job_status_transitions(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows, started: bool, assignment: str
) -> None:
    _, job_id = rows.prebuild(conn, tpl, started=started)
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format(assignment), [job_id])
    assert commit_and_read(conn, inbox) == [(EventKind.JOB_STATUS, tpl.template_id)]


def test_prebuild_job_canceling_to_canceled(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    _, job_id = rows.prebuild(conn, tpl, started=True)
    conn.execute(JOB_UPDATE.format("canceled_at = now()"), [job_id])
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format("completed_at = now()"), [job_id])  # canceling -> canceled
    assert commit_and_read(conn, inbox) == [(EventKind.JOB_STATUS, tpl.template_id)]


def test_prebuild_job_picked_up_is_silent(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    # pending -> running: the planner counts both as in progress, so nothing it decides can
    # change, and not announcing it halves what a prebuild's build costs Coder in NOTIFYs
    # (bench/trigger_overhead.py, docs/benchmarks.md). A failure is announced.
    _, job_id = rows.prebuild(conn, tpl)
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format("started_at = now(), worker_id = gen_random_uuid()"), [job_id])
    assert commit_and_read(conn, inbox) == []
    conn.execute(JOB_UPDATE.format("completed_at = now(), error = 'boom'"), [job_id])
    assert commit_and_read(conn, inbox) == [(EventKind.JOB_STATUS, tpl.template_id)]


# ---- a prebuild job's success: never announced ------------------------------------------------


def test_success_of_an_active_version_start_build_is_silent(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    # The create already counted toward `desired` while it ran: its success changes no
    # decision the service must take at once (issue 11: NOTIFY serialises Coder's commits).
    _, job_id = rows.prebuild(conn, tpl, started=True)
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format("completed_at = now()"), [job_id])
    assert commit_and_read(conn, inbox) == []
    # Control: the same job failing instead is announced (the trigger is there and runs).
    _, failing = rows.prebuild(conn, tpl, started=True)
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format("completed_at = now(), error = 'boom'"), [failing])
    assert commit_and_read(conn, inbox) == [(EventKind.JOB_STATUS, tpl.template_id)]


@pytest.mark.parametrize(
    "change",
    [
        "promote",
        "UPDATE templates SET deleted = true WHERE id = %s",
        "UPDATE templates SET deprecated = 'use another template' WHERE id = %s",
    ],
)
def test_success_of_an_inactive_presets_start_build_waits_for_its_agent(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows, change: LiteralString
) -> None:
    # Its preset became inactive while it ran (a promotion, a deleted or deprecated template;
    # prebuildd.plan.inactive_reason): the new prebuild is to be deleted. Its success is not
    # announced (announcing it needs a lookup on every success, measured too costly for
    # Coder's writers: docs/benchmarks.md); its agent becoming ready is, and that reconcile
    # deletes it (the sweep does on templates without agents).
    _, job_id = rows.prebuild(conn, tpl, started=True)
    agent_id = rows.agent(conn, job_id)
    if change == "promote":
        newer = rows.version(conn, tpl.org_id, tpl.template_id, tpl.owner_id)
        seed.promote(conn, tpl.template_id, newer)
    else:
        conn.execute(change, [tpl.template_id])
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format("completed_at = now()"), [job_id])
    assert commit_and_read(conn, inbox) == []
    conn.execute(AGENT_UPDATE.format("lifecycle_state = 'ready', ready_at = now()"), [agent_id])
    assert commit_and_read(conn, inbox) == [(EventKind.AGENT_READY, tpl.template_id)]


@pytest.mark.parametrize("version_active", [True, False])
def test_success_of_a_delete_build_is_silent(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows, version_active: bool
) -> None:
    # A deleting prebuild counted for nothing while it ran: its end leaves nothing to do,
    # whatever its version. Its failure is announced (the backoff and the hard limit).
    deletes = []
    for _ in range(2):
        workspace_id, _ = rows.prebuild(conn, tpl, started=True)
        conn.execute(
            "UPDATE provisioner_jobs SET completed_at = now() WHERE id IN "
            "(SELECT job_id FROM workspace_builds WHERE workspace_id = %s)",
            [workspace_id],
        )
        deletes.append(seed.build(
            conn, workspace_id, version_id=tpl.version_id, number=2, transition="delete",
            initiator_id=PREBUILDS_USER_ID, preset_id=tpl.preset_id, job_status="running",
        ).job_id)  # fmt: skip
    if not version_active:
        newer = rows.version(conn, tpl.org_id, tpl.template_id, tpl.owner_id)
        seed.promote(conn, tpl.template_id, newer)
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format("completed_at = now()"), [deletes[0]])
    assert commit_and_read(conn, inbox) == []
    conn.execute(JOB_UPDATE.format("completed_at = now(), error = 'boom'"), [deletes[1]])
    assert commit_and_read(conn, inbox) == [(EventKind.JOB_STATUS, tpl.template_id)]


@pytest.mark.parametrize(
    "assignment",
    [
        "updated_at = now()",  # the provisioner's heartbeat
        "logs_length = logs_length + 100, updated_at = now()",
        "error = '', updated_at = now()",  # an empty error is no error: still running
        "started_at = started_at",  # a re-sent acquisition
    ],
)
def test_running_prebuild_job_without_status_change_is_silent(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows, assignment: str
) -> None:
    _, job_id = rows.prebuild(conn, tpl, started=True)
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format(assignment), [job_id])
    assert commit_and_read(conn, inbox) == []


def test_user_workspace_job_is_silent(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    _, job_id = rows.prebuild(conn, tpl, owner_id=tpl.owner_id, started=True)
    conn.commit()
    inbox.drain()  # its first build was a miss
    conn.execute(JOB_UPDATE.format("completed_at = now(), error = 'boom'"), [job_id])
    assert commit_and_read(conn, inbox) == []


def test_template_import_job_is_silent(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    (import_job,) = conn.execute(
        "SELECT job_id FROM template_versions WHERE id = %s", [tpl.version_id]
    ).fetchone() or (None,)
    conn.execute(JOB_UPDATE.format("started_at = now()"), [import_job])
    assert commit_and_read(conn, inbox) == []


def test_job_of_a_prebuild_started_by_someone_else_is_left_to_the_sweep(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    # Only jobs the prebuilds user initiated notify, so users' jobs (Coder's bulk traffic)
    # never call the trigger function; an admin's build on a prebuild is rare and the
    # periodic sweep notices it.
    workspace_id, _ = rows.prebuild(conn, tpl, started=True)
    _, job_id = rows.build(conn, workspace_id, tpl.version_id, tpl.owner_id, number=2)
    conn.commit()
    inbox.drain()
    conn.execute(JOB_UPDATE.format("started_at = now()"), [job_id])
    assert commit_and_read(conn, inbox) == []


def test_bulk_update_of_one_template_sends_one_notification(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    jobs = [rows.prebuild(conn, tpl, started=True)[1] for _ in range(100)]
    assert commit_and_read(conn, inbox) == [(EventKind.BUILD_INSERTED, tpl.template_id)]
    conn.execute(
        "UPDATE provisioner_jobs SET completed_at = now(), error = 'boom' WHERE id = ANY(%s)",
        [jobs],
    )
    assert commit_and_read(conn, inbox) == [(EventKind.JOB_STATUS, tpl.template_id)]


def test_one_transaction_sends_one_notification_per_kind_and_template(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    other = rows.template_with_preset(conn)
    conn.commit()
    inbox.drain()
    jobs = [rows.prebuild(conn, t)[1] for t in (tpl, other, tpl, other)]
    conn.execute("UPDATE provisioner_jobs SET started_at = now() WHERE id = ANY(%s)", [jobs])
    conn.execute(
        "UPDATE provisioner_jobs SET completed_at = now(), error = 'boom' WHERE id = ANY(%s)",
        [jobs],
    )
    got = commit_and_read(conn, inbox)
    assert sorted(got) == sorted(
        (kind, template)
        for kind in (EventKind.BUILD_INSERTED, EventKind.JOB_STATUS)
        for template in (tpl.template_id, other.template_id)
    )


# ---- claims and agents ----------------------------------------------------------------------


def test_claim(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    workspace_id, _ = rows.prebuild(conn, tpl)
    conn.commit()
    inbox.drain()
    conn.execute(
        "UPDATE workspaces SET owner_id = %s, name = 'mine' WHERE id = %s",
        [tpl.owner_id, workspace_id],
    )
    assert commit_and_read(conn, inbox) == [(EventKind.CLAIMED, tpl.template_id)]
    # From one user to another is not a claim.
    conn.execute(
        "UPDATE workspaces SET owner_id = %s WHERE id = %s", [rows.user(conn), workspace_id]
    )
    assert commit_and_read(conn, inbox) == []


def test_prebuild_workspace_updates_that_are_not_claims_are_silent(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    workspace_id, _ = rows.prebuild(conn, tpl)
    conn.commit()
    inbox.drain()
    conn.execute(
        "UPDATE workspaces SET owner_id = owner_id, last_used_at = now() WHERE id = %s",
        [workspace_id],
    )
    assert commit_and_read(conn, inbox) == []


AGENT_UPDATE = "UPDATE workspace_agents SET {} WHERE id = %s"


def test_prebuild_agent_readiness_transitions(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    _, job_id = rows.prebuild(conn, tpl, started=True)
    agent_id = rows.agent(conn, job_id)
    conn.commit()
    inbox.drain()
    conn.execute(AGENT_UPDATE.format("lifecycle_state = 'starting'"), [agent_id])
    assert commit_and_read(conn, inbox) == []
    conn.execute(AGENT_UPDATE.format("lifecycle_state = 'ready', ready_at = now()"), [agent_id])
    assert commit_and_read(conn, inbox) == [(EventKind.AGENT_READY, tpl.template_id)]
    # The agent's connection bookkeeping, Coder's most frequent write to this table.
    conn.execute(AGENT_UPDATE.format("last_connected_at = now(), updated_at = now()"), [agent_id])
    conn.execute(AGENT_UPDATE.format("lifecycle_state = 'ready'"), [agent_id])
    assert commit_and_read(conn, inbox) == []
    conn.execute(AGENT_UPDATE.format("lifecycle_state = 'shutting_down'"), [agent_id])
    assert commit_and_read(conn, inbox) == [(EventKind.AGENT_READY, tpl.template_id)]


def test_prebuild_agent_inserted_ready(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    _, job_id = rows.prebuild(conn, tpl, started=True)
    conn.commit()
    inbox.drain()
    rows.agent(conn, job_id, lifecycle="ready")
    rows.agent(conn, rows.prebuild(conn, tpl)[1], lifecycle="created")
    # The second prebuild's build insert is reported; its non-ready agent is not.
    assert set(commit_and_read(conn, inbox)) == {
        (EventKind.AGENT_READY, tpl.template_id),
        (EventKind.BUILD_INSERTED, tpl.template_id),
    }


def test_user_workspace_agent_is_silent(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    _, job_id = rows.prebuild(conn, tpl, owner_id=tpl.owner_id, started=True)
    conn.commit()
    inbox.drain()  # its first build was a miss
    agent_id = rows.agent(conn, job_id)
    rows.agent(conn, job_id, lifecycle="ready")
    conn.execute(AGENT_UPDATE.format("lifecycle_state = 'ready'"), [agent_id])
    assert commit_and_read(conn, inbox) == []


# ---- the pause setting ----------------------------------------------------------------------


def test_settings_changes_are_global(conn: Conn, inbox: Inbox) -> None:
    upsert = """
        INSERT INTO site_configs (key, value) VALUES ('prebuilds_settings', %s)
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
    """
    settings = (EventKind.SETTINGS_CHANGED, None)
    conn.execute(upsert, [json.dumps({"reconciliation_paused": True})])
    assert commit_and_read(conn, inbox) == [settings]
    conn.execute(upsert, [json.dumps({"reconciliation_paused": False})])
    assert commit_and_read(conn, inbox) == [settings]
    conn.execute(upsert, [json.dumps({"reconciliation_paused": False})])  # same value
    assert commit_and_read(conn, inbox) == []
    conn.execute("DELETE FROM site_configs WHERE key = 'prebuilds_settings'")
    assert commit_and_read(conn, inbox) == [settings]


def test_other_site_configs_are_silent(conn: Conn, inbox: Inbox) -> None:
    conn.execute("INSERT INTO site_configs (key, value) VALUES ('last_update_check', 'x')")
    conn.execute("UPDATE site_configs SET value = 'y' WHERE key = 'last_update_check'")
    conn.execute("DELETE FROM site_configs WHERE key = 'last_update_check'")
    assert commit_and_read(conn, inbox) == []


# ---- payload --------------------------------------------------------------------------------


def test_payload_is_compact_versioned_and_stamped_with_the_transaction_start(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    (started,) = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone() or (0.0,)
    conn.execute("UPDATE templates SET deprecated = 'x' WHERE id = %s", [tpl.template_id])
    conn.execute("INSERT INTO site_configs (key, value) VALUES ('prebuilds_settings', '{}')")
    conn.commit()
    template_payload, global_payload = inbox.drain_raw()
    assert template_payload.startswith(f'{{"v":1,"k":"template_changed","t":"{tpl.template_id}"')
    assert global_payload.startswith('{"v":1,"k":"settings_changed","at":')
    for payload in (template_payload, global_payload):
        assert " " not in payload
        assert len(payload.encode()) < 200
        fields = json.loads(payload)
        assert fields["at"] == pytest.approx(started, abs=1e-6)
    assert set(json.loads(template_payload)) == {"v", "k", "t", "at"}
    assert set(json.loads(global_payload)) == {"v", "k", "at"}
    conn.execute("DELETE FROM site_configs WHERE key = 'prebuilds_settings'")
    conn.commit()


def test_rolled_back_writes_notify_nobody(conn: Conn, inbox: Inbox, tpl: rows.TemplateRows) -> None:
    conn.execute("UPDATE templates SET deleted = true WHERE id = %s", [tpl.template_id])
    conn.rollback()
    assert inbox.kinds() == []


def test_writer_needs_no_privilege_on_the_prebuildd_schema(
    conn: Conn, inbox: Inbox, tpl: rows.TemplateRows
) -> None:
    # Coder's own role writes the rows; it may never have been granted anything on our schema.
    role = f"coder_app_{uuid.uuid4().hex[:12]}"
    conn.execute(f"CREATE ROLE {role} NOLOGIN")
    conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    conn.commit()
    try:
        conn.execute(f"SET ROLE {role}")
        _, job_id = rows.prebuild(conn, tpl, started=True)
        conn.execute(JOB_UPDATE.format("completed_at = now(), error = 'boom'"), [job_id])
        assert set(commit_and_read(conn, inbox)) == {
            (EventKind.BUILD_INSERTED, tpl.template_id),
            (EventKind.JOB_STATUS, tpl.template_id),
        }
    finally:
        conn.rollback()
        conn.execute("RESET ROLE")
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
        conn.commit()


def test_prebuilds_user_is_the_one_the_triggers_know() -> None:
    text = read_sql_file("functions", "notify_event.sql")
    assert str(PREBUILDS_USER_ID) in text
    assert CHANNEL in text
