"""Row builders for integration tests: real rows that Coder's schema accepts.

Every builder inserts through a synchronous psycopg connection with parameterised SQL and
returns ids (a UUID, or a small frozen dataclass when a call creates several rows). Defaults
describe the common case -- an active, healthy template whose prebuilds built fine and whose
agents are ready -- and keyword arguments bend one thing at a time.

Nothing here commits: call `conn.commit()` before another connection (the service under test,
an AsyncConnection, a LISTENer) has to see the rows.

Builders never read the clock implicitly where a test may care: pass `created_at=` to place a
row in time; the default is the database's `now()` (transaction start).

    org = make_org(conn)
    tpl = make_template(conn, org)                           # template + active version
    preset = make_preset(conn, tpl.version_id, desired=2, parameters={"region": "eu"})
    pb = make_prebuild(conn, preset)                         # running, ready prebuild
    make_prebuild(conn, preset, job_status="failed")         # a failed create
    v2 = make_version(conn, tpl.id, active=True)             # promotion
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from prebuildd.model import PREBUILDS_USER_ID

Conn = psycopg.Connection[Any]

# Tags of a job for an untagged (organization-scoped) provisioner, as Coder stores them.
UNTAGGED: Mapping[str, str] = {"scope": "organization", "owner": ""}

JOB_STATUSES = ("pending", "running", "succeeded", "failed", "canceling", "canceled")


@dataclass(frozen=True, slots=True)
class TemplateRef:
    """A template and the version it was created with (active unless changed since)."""

    id: UUID
    organization_id: UUID
    version_id: UUID
    import_job_id: UUID | None
    created_by: UUID


@dataclass(frozen=True, slots=True)
class BuildRef:
    """One workspace build and its provisioner job."""

    workspace_id: UUID
    build_id: UUID
    job_id: UUID
    build_number: int


# A prebuild is identified by its workspace and first build; the same shape serves both.
PrebuildRef = BuildRef


def _short() -> str:
    return uuid.uuid4().hex[:10]


# ---------------------------------------------------------------------------------------------
# Organizations, users, settings
# ---------------------------------------------------------------------------------------------


def make_org(conn: Conn, *, name: str | None = None) -> UUID:
    org_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO organizations (id, name, description, created_at, updated_at, display_name)"
        " VALUES (%s, %s, '', now(), now(), %s)",
        (org_id, name or f"org-{_short()}", name or "Org"),
    )
    return org_id


def make_user(conn: Conn, *, username: str | None = None, email: str | None = None) -> UUID:
    user_id = uuid.uuid4()
    username = username or f"user-{_short()}"
    conn.execute(
        "INSERT INTO users (id, email, username, hashed_password, created_at, updated_at,"
        " status, login_type) VALUES (%s, %s, %s, 'x'::bytea, now(), now(), 'active', 'password')",
        (user_id, email or f"{username}@example.com", username),
    )
    return user_id


def set_paused(conn: Conn, paused: bool | str) -> None:
    """Coder's pause switch; a str is stored verbatim (to test malformed settings)."""
    value = paused if isinstance(paused, str) else json.dumps({"reconciliation_paused": paused})
    conn.execute(
        "INSERT INTO site_configs (key, value) VALUES ('prebuilds_settings', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (value,),
    )


# ---------------------------------------------------------------------------------------------
# Provisioner jobs
# ---------------------------------------------------------------------------------------------


def make_job(
    conn: Conn,
    *,
    organization_id: UUID,
    initiator_id: UUID,
    status: str = "succeeded",
    job_type: str = "workspace_build",
    provisioner: str = "terraform",
    tags: Mapping[str, str] = UNTAGGED,
    file_id: UUID | None = None,
    input: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
    worker_id: UUID | None = None,
) -> UUID:
    """A provisioner job whose timestamps (and error) give it `status`.

    running/succeeded/failed jobs get a worker unless `worker_id` is given; pending and
    canceled ones have none unless given (to build "picked up but not started" cases).
    """
    if status not in JOB_STATUSES:
        raise ValueError(f"unknown job status {status!r}")
    job_id = uuid.uuid4()
    started = status in ("running", "succeeded", "failed", "canceling")
    completed = status in ("succeeded", "failed", "canceled")
    canceled = status in ("canceling", "canceled")
    worker = worker_id or (uuid.uuid4() if started else None)
    conn.execute(
        """
        INSERT INTO provisioner_jobs (
            id, created_at, updated_at, started_at, canceled_at, completed_at, error,
            organization_id, initiator_id, provisioner, storage_method, type, input,
            worker_id, file_id, tags
        )
        SELECT %(id)s, c.at, c.at,
               CASE WHEN %(started)s THEN c.at + interval '1 second' END,
               CASE WHEN %(canceled)s THEN c.at + interval '2 seconds' END,
               CASE WHEN %(completed)s THEN c.at + interval '3 seconds' END,
               CASE WHEN %(failed)s THEN 'boom' END,
               %(org)s, %(initiator)s, %(provisioner)s, 'file', %(type)s, %(input)s,
               %(worker)s, %(file)s, %(tags)s
        FROM (SELECT COALESCE(%(created_at)s::timestamptz, now()) AS at) AS c
        """,
        {
            "id": job_id,
            "started": started,
            "canceled": canceled,
            "completed": completed,
            "failed": status == "failed",
            "org": organization_id,
            "initiator": initiator_id,
            "provisioner": provisioner,
            "type": job_type,
            "input": Jsonb(dict(input or {})),
            "worker": worker,
            "file": file_id or uuid.uuid4(),
            "tags": Jsonb(dict(tags)),
            "created_at": created_at,
        },
    )
    return job_id


# ---------------------------------------------------------------------------------------------
# Templates, versions, presets
# ---------------------------------------------------------------------------------------------


def make_template(
    conn: Conn,
    org: UUID,
    *,
    name: str | None = None,
    provisioner: str = "terraform",
    created_by: UUID | None = None,
    deleted: bool = False,
    deprecated: str = "",
    import_tags: Mapping[str, str] = UNTAGGED,
    import_job: bool = True,
) -> TemplateRef:
    """A template with one version, which is its active version."""
    template_id, version_id = uuid.uuid4(), uuid.uuid4()
    admin = created_by or make_user(conn)
    # templates.active_version_id has no foreign key (Coder's template and first version
    # reference each other), so the template goes first, pointing at the version to come.
    conn.execute(
        "INSERT INTO templates (id, created_at, updated_at, organization_id, deleted, name,"
        " provisioner, active_version_id, created_by, deprecated)"
        " VALUES (%s, now(), now(), %s, %s, %s, %s, %s, %s, %s)",
        (template_id, org, deleted, name or f"tpl-{_short()}", provisioner, version_id, admin,
         deprecated),
    )
    job_id = _insert_version(
        conn, template_id, version_id, org, admin, provisioner,
        name=None, import_tags=import_tags, import_job=import_job, import_status="succeeded",
        created_at=None,
    )
    return TemplateRef(template_id, org, version_id, job_id, admin)


def make_version(
    conn: Conn,
    template: TemplateRef | UUID,
    *,
    active: bool,
    name: str | None = None,
    import_tags: Mapping[str, str] = UNTAGGED,
    import_job: bool = True,
    import_status: str = "succeeded",
    created_at: datetime | None = None,
) -> UUID:
    """A new version of `template`; `active=True` promotes it (updates active_version_id).

    `import_job=False` leaves template_versions.job_id pointing at no job (Coder has no
    foreign key there): creates on such a version are invalid input.
    """
    template_id = template.id if isinstance(template, TemplateRef) else template
    row = conn.execute(
        "SELECT organization_id, created_by, provisioner FROM templates WHERE id = %s",
        (template_id,),
    ).fetchone()
    if row is None:
        raise LookupError(f"no template {template_id}")
    org, admin, provisioner = row
    version_id = uuid.uuid4()
    _insert_version(
        conn, template_id, version_id, org, admin, provisioner,
        name=name, import_tags=import_tags, import_job=import_job,
        import_status=import_status, created_at=created_at,
    )
    if active:
        promote(conn, template_id, version_id)
    return version_id


def promote(conn: Conn, template_id: UUID, version_id: UUID) -> None:
    conn.execute(
        "UPDATE templates SET active_version_id = %s, updated_at = now() WHERE id = %s",
        (version_id, template_id),
    )


def _insert_version(
    conn: Conn,
    template_id: UUID,
    version_id: UUID,
    org: UUID,
    admin: UUID,
    provisioner: str,
    *,
    name: str | None,
    import_tags: Mapping[str, str],
    import_job: bool,
    import_status: str,
    created_at: datetime | None,
) -> UUID | None:
    job_id: UUID | None = None
    if import_job:
        job_id = make_job(
            conn, organization_id=org, initiator_id=admin, status=import_status,
            job_type="template_version_import", provisioner=provisioner, tags=import_tags,
            input={"template_version_id": str(version_id)}, created_at=created_at,
        )
    conn.execute(
        "INSERT INTO template_versions (id, template_id, organization_id, created_at,"
        " updated_at, name, readme, job_id, created_by)"
        " VALUES (%s, %s, %s, COALESCE(%s::timestamptz, clock_timestamp()),"
        " COALESCE(%s::timestamptz, clock_timestamp()), %s, '', %s, %s)",
        (version_id, template_id, org, created_at, created_at, name or f"v-{_short()}",
         job_id or uuid.uuid4(), admin),
    )
    return job_id


def make_preset(
    conn: Conn,
    version: UUID,
    *,
    name: str | None = None,
    desired: int | None = 1,
    ttl: int | None = None,
    timezone: str = "",
    schedules: Sequence[tuple[str, int]] = (),
    parameters: Mapping[str, str] | None = None,
    status: str = "healthy",
    last_invalidated_at: datetime | None = None,
) -> UUID:
    """A preset of `version`; `desired=None` is a preset without prebuilds.

    `ttl` is invalidate_after_secs; `schedules` are (cron, desired_instances) pairs.
    """
    preset_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO template_version_presets (id, template_version_id, name, desired_instances,"
        " invalidate_after_secs, scheduling_timezone, prebuild_status, last_invalidated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (preset_id, version, name or f"preset-{_short()}", desired, ttl, timezone, status,
         last_invalidated_at),
    )
    for param_name, value in (parameters or {}).items():
        conn.execute(
            "INSERT INTO template_version_preset_parameters"
            " (template_version_preset_id, name, value) VALUES (%s, %s, %s)",
            (preset_id, param_name, value),
        )
    for cron, wanted in schedules:
        conn.execute(
            "INSERT INTO template_version_preset_prebuild_schedules"
            " (preset_id, cron_expression, desired_instances) VALUES (%s, %s, %s)",
            (preset_id, cron, wanted),
        )
    return preset_id


def add_parameter(
    conn: Conn,
    version: UUID,
    name: str,
    *,
    type: str = "string",
    default_value: str = "",
    required: bool = False,
    options: Sequence[str] = (),
    validation_regex: str = "",
    validation_min: int | None = None,
    validation_max: int | None = None,
    validation_error: str = "",
    display_order: int = 0,
) -> None:
    """A parameter of `version` (template_version_parameters), as Coder's import stores it."""
    conn.execute(
        "INSERT INTO template_version_parameters (template_version_id, name, description,"
        " type, mutable, default_value, icon, options, validation_regex, validation_min,"
        " validation_max, validation_error, required, display_order)"
        " VALUES (%s, %s, '', %s, false, %s, '', %s, %s, %s, %s, %s, %s, %s)",
        (version, name, type, default_value,
         Jsonb([{"name": v, "description": "", "value": v, "icon": ""} for v in options]),
         validation_regex, validation_min, validation_max, validation_error, required,
         display_order),
    )


def add_workspace_tags(conn: Conn, version: UUID, tags: Mapping[str, str]) -> None:
    """`version`'s coder_workspace_tags: key -> the value's HCL source text."""
    for key, expression in tags.items():
        conn.execute(
            "INSERT INTO template_version_workspace_tags (template_version_id, key, value)"
            " VALUES (%s, %s, %s)",
            (version, key, expression),
        )


# ---------------------------------------------------------------------------------------------
# Workspaces, builds, agents
# ---------------------------------------------------------------------------------------------


def make_prebuild(
    conn: Conn,
    preset: UUID,
    *,
    transition: str = "start",
    job_status: str = "succeeded",
    created_at: datetime | None = None,
    ready: bool = True,
    agents: int = 1,
    owner: UUID = PREBUILDS_USER_ID,
    initiator: UUID | None = None,
    name: str | None = None,
    worker_id: UUID | None = None,
) -> BuildRef:
    """A workspace of the preset's template with build 1 of the preset's version.

    Defaults: an unclaimed prebuild (owned and built by the prebuilds user) whose `start`
    succeeded and whose one agent is ready. A succeeded `start` gets `agents` top-level agents,
    `ready` or still `starting`. Pass `owner=`/`initiator=` a user for a user's workspace.
    """
    version, template, org = _preset_context(conn, preset)
    workspace_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id,"
        " template_id, name, last_used_at)"
        " VALUES (%s, COALESCE(%s::timestamptz, now()), COALESCE(%s::timestamptz, now()),"
        " %s, %s, %s, %s, now())",
        (workspace_id, created_at, created_at, owner, org, template, name or f"ws-{_short()}"),
    )
    build = add_build(
        conn, workspace_id, transition=transition, job_status=job_status,
        initiator=initiator or owner, created_at=created_at, preset=preset, version=version,
        worker_id=worker_id,
    )
    if transition == "start" and job_status == "succeeded":
        for _ in range(agents):
            add_agent(conn, build.job_id, lifecycle="ready" if ready else "starting")
    return build


def add_build(
    conn: Conn,
    workspace_id: UUID,
    *,
    transition: str,
    job_status: str = "succeeded",
    initiator: UUID = PREBUILDS_USER_ID,
    created_at: datetime | None = None,
    preset: UUID | None = None,
    version: UUID | None = None,
    worker_id: UUID | None = None,
    parameters: Mapping[str, str] | None = None,
) -> BuildRef:
    """The next build of a workspace. Version and preset default to the latest build's.

    Parameters default to the preset's (or, without a preset, none).
    """
    ws = conn.execute(
        "SELECT w.organization_id, t.provisioner,"
        " (SELECT max(b.build_number) FROM workspace_builds b WHERE b.workspace_id = w.id),"
        " (SELECT b.template_version_id FROM workspace_builds b WHERE b.workspace_id = w.id"
        "  ORDER BY b.build_number DESC LIMIT 1),"
        " (SELECT b.template_version_preset_id FROM workspace_builds b"
        "  WHERE b.workspace_id = w.id ORDER BY b.build_number DESC LIMIT 1)"
        " FROM workspaces w JOIN templates t ON t.id = w.template_id WHERE w.id = %s",
        (workspace_id,),
    ).fetchone()
    if ws is None:
        raise LookupError(f"no workspace {workspace_id}")
    org, provisioner, last_number, last_version, last_preset = ws
    number = (last_number or 0) + 1
    version = version or last_version
    preset = preset if preset is not None else last_preset
    if version is None:
        raise ValueError("the first build of a workspace needs a version")
    build_id = uuid.uuid4()
    job_id = make_job(
        conn, organization_id=org, initiator_id=initiator, status=job_status,
        provisioner=provisioner, created_at=created_at, worker_id=worker_id,
        input={"workspace_build_id": str(build_id)},
    )
    conn.execute(
        "INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id,"
        " template_version_id, build_number, transition, initiator_id, job_id, reason,"
        " template_version_preset_id)"
        " VALUES (%s, COALESCE(%s::timestamptz, now()), COALESCE(%s::timestamptz, now()),"
        " %s, %s, %s, %s, %s, %s, 'initiator', %s)",
        (build_id, created_at, created_at, workspace_id, version, number, transition,
         initiator, job_id, preset),
    )
    values = parameters if parameters is not None else _preset_parameters(conn, preset)
    for param_name, value in values.items():
        conn.execute(
            "INSERT INTO workspace_build_parameters (workspace_build_id, name, value)"
            " VALUES (%s, %s, %s)",
            (build_id, param_name, value),
        )
    return BuildRef(workspace_id, build_id, job_id, number)


def add_agent(
    conn: Conn,
    job_id: UUID,
    *,
    lifecycle: str = "ready",
    parent: UUID | None = None,
    deleted: bool = False,
    name: str | None = None,
) -> UUID:
    """An agent on a new resource of the job (`parent` makes it a sub-agent)."""
    resource_id, agent_id = uuid.uuid4(), uuid.uuid4()
    conn.execute(
        "INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)"
        " VALUES (%s, now(), %s, 'start', 'docker_container', %s)",
        (resource_id, job_id, f"res-{_short()}"),
    )
    conn.execute(
        "INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id,"
        " auth_token, architecture, operating_system, lifecycle_state, parent_id, deleted)"
        " VALUES (%s, now(), now(), %s, %s, %s, 'amd64', 'linux', %s, %s, %s)",
        (agent_id, name or f"agent-{_short()}", resource_id, uuid.uuid4(), lifecycle, parent,
         deleted),
    )
    return agent_id


def claim(conn: Conn, workspace_id: UUID, user: UUID) -> None:
    """What a claim does to the workspace row: a new owner (and name)."""
    conn.execute(
        "UPDATE workspaces SET owner_id = %s, name = %s, updated_at = now() WHERE id = %s",
        (user, f"claimed-{_short()}", workspace_id),
    )


def ago(now: datetime, **delta: float) -> datetime:
    """`now` minus a timedelta, for readable `created_at=ago(now, minutes=5)`."""
    return now - timedelta(**delta)


# ---------------------------------------------------------------------------------------------
# Lookups
# ---------------------------------------------------------------------------------------------


def _preset_context(conn: Conn, preset: UUID) -> tuple[UUID, UUID, UUID]:
    row = conn.execute(
        "SELECT v.id, t.id, t.organization_id FROM template_version_presets p"
        " JOIN template_versions v ON v.id = p.template_version_id"
        " JOIN templates t ON t.id = v.template_id WHERE p.id = %s",
        (preset,),
    ).fetchone()
    if row is None:
        raise LookupError(f"no preset {preset}")
    return row[0], row[1], row[2]


def _preset_parameters(conn: Conn, preset: UUID | None) -> dict[str, str]:
    if preset is None:
        return {}
    rows = conn.execute(
        "SELECT name, value FROM template_version_preset_parameters"
        " WHERE template_version_preset_id = %s ORDER BY name",
        (preset,),
    ).fetchall()
    return {name: value for name, value in rows}
