"""Minimal Coder rows for the trigger and listener tests (not the shared factories), and the
set of triggers they exercise.

Each helper inserts one row with only the columns Coder requires and returns its id. Nothing
commits: the caller decides which transaction a write belongs to, which is the point of
several trigger tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from uuid import UUID, uuid4

import psycopg
from psycopg.rows import TupleRow

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


def organization(conn: Conn) -> UUID:
    org_id = uuid4()
    conn.execute(
        """
        INSERT INTO organizations (id, name, description, created_at, updated_at, display_name)
        VALUES (%(id)s, %(name)s, '', now(), now(), %(name)s)
        """,
        {"id": org_id, "name": f"org-{org_id.hex[:8]}"},
    )
    return org_id


def user(conn: Conn) -> UUID:
    user_id = uuid4()
    name = f"user-{user_id.hex[:8]}"
    conn.execute(
        """
        INSERT INTO users (id, email, username, hashed_password, created_at, updated_at)
        VALUES (%(id)s, %(email)s, %(name)s, 'x'::bytea, now(), now())
        """,
        {"id": user_id, "email": f"{name}@example.com", "name": name},
    )
    return user_id


def job(
    conn: Conn,
    org_id: UUID,
    initiator_id: UUID,
    *,
    job_type: str = "workspace_build",
    started: bool = False,
) -> UUID:
    job_id = uuid4()
    conn.execute(
        """
        INSERT INTO provisioner_jobs (
            id, created_at, updated_at, started_at, organization_id, initiator_id,
            provisioner, storage_method, type, input, file_id
        ) VALUES (
            %(id)s, now(), now(), CASE WHEN %(started)s THEN now() END, %(org)s, %(initiator)s,
            'echo', 'file', %(type)s::provisioner_job_type, %(input)s::jsonb, gen_random_uuid()
        )
        """,
        {
            "id": job_id,
            "started": started,
            "org": org_id,
            "initiator": initiator_id,
            "type": job_type,
            "input": json.dumps({}),
        },
    )
    return job_id


def template(conn: Conn, org_id: UUID, owner_id: UUID) -> tuple[UUID, UUID]:
    """A template and its (active) first version: (template_id, version_id)."""
    template_id, version_id = uuid4(), uuid4()
    conn.execute(
        """
        INSERT INTO templates (
            id, created_at, updated_at, organization_id, name, provisioner, active_version_id,
            created_by
        ) VALUES (%(id)s, now(), now(), %(org)s, %(name)s, 'echo', %(version)s, %(owner)s)
        """,
        {
            "id": template_id,
            "org": org_id,
            "name": f"tpl-{template_id.hex[:8]}",
            "version": version_id,
            "owner": owner_id,
        },
    )
    version(conn, org_id, template_id, owner_id, version_id=version_id)
    return template_id, version_id


def version(
    conn: Conn,
    org_id: UUID,
    template_id: UUID | None,
    owner_id: UUID,
    *,
    version_id: UUID | None = None,
) -> UUID:
    version_id = version_id or uuid4()
    import_job = job(conn, org_id, owner_id, job_type="template_version_import")
    conn.execute(
        """
        INSERT INTO template_versions (
            id, template_id, organization_id, created_at, updated_at, name, readme, job_id,
            created_by
        ) VALUES (%(id)s, %(template)s, %(org)s, now(), now(), %(name)s, '', %(job)s, %(owner)s)
        """,
        {
            "id": version_id,
            "template": template_id,
            "org": org_id,
            "name": f"v-{version_id.hex[:8]}",
            "job": import_job,
            "owner": owner_id,
        },
    )
    return version_id


def preset(conn: Conn, version_id: UUID, *, desired: int | None = 1) -> UUID:
    preset_id = uuid4()
    conn.execute(
        """
        INSERT INTO template_version_presets (id, template_version_id, name, desired_instances)
        VALUES (%(id)s, %(version)s, %(name)s, %(desired)s)
        """,
        {
            "id": preset_id,
            "version": version_id,
            "name": f"p-{preset_id.hex[:8]}",
            "desired": desired,
        },
    )
    return preset_id


def schedule(
    conn: Conn, preset_id: UUID, *, cron: str = "* 9-17 * * 1-5", desired: int = 2
) -> UUID:
    schedule_id = uuid4()
    conn.execute(
        """
        INSERT INTO template_version_preset_prebuild_schedules (
            id, preset_id, cron_expression, desired_instances
        ) VALUES (%(id)s, %(preset)s, %(cron)s, %(desired)s)
        """,
        {"id": schedule_id, "preset": preset_id, "cron": cron, "desired": desired},
    )
    return schedule_id


def workspace(conn: Conn, org_id: UUID, template_id: UUID, owner_id: UUID) -> UUID:
    workspace_id = uuid4()
    conn.execute(
        """
        INSERT INTO workspaces (
            id, created_at, updated_at, owner_id, organization_id, template_id, name
        ) VALUES (%(id)s, now(), now(), %(owner)s, %(org)s, %(template)s, %(name)s)
        """,
        {
            "id": workspace_id,
            "owner": owner_id,
            "org": org_id,
            "template": template_id,
            "name": f"ws-{workspace_id.hex[:8]}",
        },
    )
    return workspace_id


def build(
    conn: Conn,
    workspace_id: UUID,
    version_id: UUID,
    job_id: UUID,
    initiator_id: UUID,
    *,
    preset_id: UUID | None = None,
    number: int = 1,
) -> UUID:
    build_id = uuid4()
    conn.execute(
        """
        INSERT INTO workspace_builds (
            id, created_at, updated_at, workspace_id, template_version_id, build_number,
            transition, initiator_id, job_id, template_version_preset_id
        ) VALUES (
            %(id)s, now(), now(), %(workspace)s, %(version)s, %(number)s,
            'start', %(initiator)s, %(job)s, %(preset)s
        )
        """,
        {
            "id": build_id,
            "workspace": workspace_id,
            "version": version_id,
            "number": number,
            "initiator": initiator_id,
            "job": job_id,
            "preset": preset_id,
        },
    )
    return build_id


def agent(conn: Conn, job_id: UUID, *, lifecycle: str = "created") -> UUID:
    resource_id, agent_id = uuid4(), uuid4()
    conn.execute(
        """
        INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
        VALUES (%(id)s, now(), %(job)s, 'start', 'null_resource', 'dev')
        """,
        {"id": resource_id, "job": job_id},
    )
    conn.execute(
        """
        INSERT INTO workspace_agents (
            id, created_at, updated_at, name, resource_id, auth_token, architecture,
            operating_system, lifecycle_state
        ) VALUES (
            %(id)s, now(), now(), %(name)s, %(resource)s, gen_random_uuid(), 'amd64', 'linux',
            %(lifecycle)s::workspace_agent_lifecycle_state
        )
        """,
        {
            "id": agent_id,
            "name": f"agent-{agent_id.hex[:8]}",
            "resource": resource_id,
            "lifecycle": lifecycle,
        },
    )
    return agent_id


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
    job_id = job(conn, rows.org_id, owner_id, started=started)
    build(conn, workspace_id, rows.version_id, job_id, owner_id, preset_id=rows.preset_id)
    return workspace_id, job_id
