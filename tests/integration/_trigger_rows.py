"""Coder rows for the trigger and listener tests, and the set of triggers they exercise.

Each helper inserts one row (a job with its build, an agent with its resource) through
prebuildd.seed, the one builder of Coder rows, and returns its id. Jobs start out pending and
agents created, so that a test's own write makes the change a trigger reports. Nothing
commits: the caller decides which transaction a write belongs to, which is the point of
several trigger tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import psycopg
from psycopg.rows import TupleRow

from prebuildd import seed
from prebuildd.model import PREBUILDS_USER_ID

Conn = psycopg.Connection[TupleRow]

# Every prebuildd trigger: (name, table). The names are those of every release so far, so that
# an upgrade replaces each one in place (sql/triggers/<table>.sql).
EXPECTED_TRIGGERS = {
    ("prebuildd_agent_inserted_ready", "workspace_agents"),
    ("prebuildd_agent_ready", "workspace_agents"),
    ("prebuildd_build_inserted", "workspace_builds"),
    ("prebuildd_claimed", "workspaces"),
    ("prebuildd_job_status", "provisioner_jobs"),
    ("prebuildd_preset_added_or_removed", "template_version_presets"),
    ("prebuildd_preset_changed", "template_version_presets"),
    ("prebuildd_schedule_added_or_removed", "template_version_preset_prebuild_schedules"),
    ("prebuildd_schedule_changed", "template_version_preset_prebuild_schedules"),
    ("prebuildd_settings_deleted", "site_configs"),
    ("prebuildd_settings_inserted", "site_configs"),
    ("prebuildd_settings_updated", "site_configs"),
    ("prebuildd_template_changed", "templates"),
    ("prebuildd_template_inserted", "templates"),
    ("prebuildd_template_removed", "templates"),
    ("prebuildd_version_promoted", "templates"),
}


@dataclass(frozen=True, slots=True)
class TemplateRows:
    org_id: UUID
    owner_id: UUID
    template_id: UUID
    version_id: UUID
    preset_id: UUID


# The echo provisioner: nothing here is ever provisioned.
PROVISIONER = "echo"


def organization(conn: Conn) -> UUID:
    return seed.organization(conn)


def user(conn: Conn) -> UUID:
    return seed.user(conn)


def job(
    conn: Conn,
    org_id: UUID,
    initiator_id: UUID,
    *,
    job_type: str = "workspace_build",
    started: bool = False,
) -> UUID:
    """A job still pending, or running when `started`."""
    return seed.job(
        conn, organization_id=org_id, initiator_id=initiator_id,
        status="running" if started else "pending", job_type=job_type, provisioner=PROVISIONER,
    )


def template(conn: Conn, org_id: UUID, owner_id: UUID) -> tuple[UUID, UUID]:
    """A template and its (active) first version: (template_id, version_id)."""
    template_id, first = seed.template(
        conn, organization_id=org_id, created_by=owner_id, provisioner=PROVISIONER
    )
    return template_id, first.id


def version(
    conn: Conn,
    org_id: UUID,
    template_id: UUID | None,
    owner_id: UUID,
    *,
    version_id: UUID | None = None,
) -> UUID:
    return seed.version(
        conn, template_id, created_by=owner_id, organization_id=org_id, id=version_id
    ).id


def preset(conn: Conn, version_id: UUID, *, desired: int | None = 1) -> UUID:
    return seed.preset(conn, version_id, desired=desired)


def schedule(
    conn: Conn, preset_id: UUID, *, cron: str = "* 9-17 * * 1-5", desired: int = 2
) -> UUID:
    return seed.schedule(conn, preset_id, cron=cron, desired=desired)


def workspace(conn: Conn, org_id: UUID, template_id: UUID, owner_id: UUID) -> UUID:
    return seed.workspace(conn, template_id, owner_id=owner_id)


def build(
    conn: Conn,
    workspace_id: UUID,
    version_id: UUID,
    initiator_id: UUID,
    *,
    preset_id: UUID | None = None,
    number: int = 1,
    started: bool = False,
) -> tuple[UUID, UUID]:
    """A start build and its job, pending or (`started`) running: (build_id, job_id)."""
    made = seed.build(
        conn, workspace_id, version_id=version_id, number=number, transition="start",
        initiator_id=initiator_id, preset_id=preset_id,
        job_status="running" if started else "pending",
    )
    return made.id, made.job_id


def agent(conn: Conn, job_id: UUID, *, lifecycle: str = "created") -> UUID:
    return seed.agent(conn, job_id, lifecycle=lifecycle)


def template_with_preset(conn: Conn) -> TemplateRows:
    org_id = organization(conn)
    owner_id = user(conn)
    template_id, version_id = template(conn, org_id, owner_id)
    return TemplateRows(org_id, owner_id, template_id, version_id, preset(conn, version_id))


def prebuild(
    conn: Conn, rows: TemplateRows, *, owner_id: UUID = PREBUILDS_USER_ID, started: bool = False
) -> tuple[UUID, UUID]:
    """A workspace of `owner_id` (default: a prebuild) with build 1 started by that owner:
    (workspace_id, job_id)."""
    workspace_id = workspace(conn, rows.org_id, rows.template_id, owner_id)
    _, job_id = build(
        conn, workspace_id, rows.version_id, owner_id, preset_id=rows.preset_id, started=started
    )
    return workspace_id, job_id
