"""Coder rows for tests, benchmarks and `prebuildd demo`, from one builder.

The builder is SQL, `sql/seed/coder_rows.sql`: one set-based function per kind of Coder row
(organizations, users, jobs, templates, versions, presets, schedules, workspaces, builds,
agents), created in the session's pg_temp by `install()` -- never by `migrate`, never in a
production database. The functions here build one row at a time through it (the named
queries of `sql/queries/seed.sql`) and return the new rows' ids; the benchmarks' fleets call
the same SQL functions with arrays of hundreds of thousands of rows (bench/sql/fleet.sql), and
the compose stack's example pools include the file with psql (deploy/seed/example-pools.sql).

Every argument left at None takes the builder's default, written next to it in
coder_rows.sql: an active, healthy, untagged, terraform-provisioned world whose jobs succeeded
and whose agents are ready. Nothing here commits: the rows belong to the caller's transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from prebuildd.queries import query, read_sql_file

Conn = psycopg.Connection[Any]

# Coder's derived job statuses a job can be built in (provisioner_jobs.job_status).
JOB_STATUSES = ("pending", "running", "succeeded", "failed", "canceling", "canceled")


@dataclass(frozen=True, slots=True)
class Version:
    """A template version and its import job (None: built without one)."""

    id: UUID
    import_job_id: UUID | None


@dataclass(frozen=True, slots=True)
class Build:
    id: UUID
    job_id: UUID


def install(conn: Conn) -> None:
    """Create the builder's functions in this session, unless it already has them.

    They live in pg_temp: until the session ends, or until the transaction that created them
    rolls back (hence the check on every call, which costs one round trip).
    """
    installed = conn.execute(query("seed_installed")).fetchone()
    if not (installed and installed[0]):
        # A file of the package, never input: as trusted as a literal.
        conn.execute(sql.SQL(read_sql_file("seed", "coder_rows.sql")))


def _build(conn: Conn, name: str, params: Mapping[str, object]) -> None:
    install(conn)
    conn.execute(query(name), params)


def _json(value: Mapping[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(dict(value))


# ---------------------------------------------------------------------------------------------
# Organizations, users, settings
# ---------------------------------------------------------------------------------------------


def organization(
    conn: Conn,
    *,
    id: UUID | None = None,
    name: str | None = None,
    display_name: str | None = None,
    description: str | None = None,
) -> UUID:
    org_id = id or uuid.uuid4()
    _build(conn, "seed_organization", {
        "id": org_id, "name": name, "display_name": display_name, "description": description,
    })  # fmt: skip
    return org_id


def user(
    conn: Conn,
    *,
    id: UUID | None = None,
    username: str | None = None,
    email: str | None = None,
    name: str | None = None,
) -> UUID:
    user_id = id or uuid.uuid4()
    _build(conn, "seed_user", {"id": user_id, "username": username, "email": email, "name": name})
    return user_id


def prebuilds_settings(conn: Conn, paused: bool | str) -> None:
    """Coder's pause switch; a str is stored verbatim (to test malformed settings)."""
    value = paused if isinstance(paused, str) else json.dumps({"reconciliation_paused": paused})
    conn.execute(query("seed_prebuilds_settings"), {"value": value})


# ---------------------------------------------------------------------------------------------
# Provisioner jobs
# ---------------------------------------------------------------------------------------------


def job(
    conn: Conn,
    *,
    organization_id: UUID,
    initiator_id: UUID,
    status: str | None = None,
    job_type: str | None = None,
    provisioner: str | None = None,
    tags: Mapping[str, str] | None = None,
    input: Mapping[str, Any] | None = None,
    file_id: UUID | None = None,
    worker_id: UUID | None = None,
    created_at: datetime | None = None,
    id: UUID | None = None,
) -> UUID:
    """A job in `status` (one of JOB_STATUSES), written as the timestamps Coder derives it from."""
    if status is not None and status not in JOB_STATUSES:
        raise ValueError(f"unknown job status {status!r}")
    job_id = id or uuid.uuid4()
    _build(conn, "seed_job", {
        "id": job_id, "organization_id": organization_id, "initiator_id": initiator_id,
        "status": status, "job_type": job_type, "input": _json(input),
        "created_at": created_at, "provisioner": provisioner, "tags": _json(tags),
        "file_id": file_id, "worker_id": worker_id,
    })  # fmt: skip
    return job_id


# ---------------------------------------------------------------------------------------------
# Templates, versions, presets
# ---------------------------------------------------------------------------------------------


def template(
    conn: Conn,
    *,
    organization_id: UUID,
    created_by: UUID,
    name: str | None = None,
    display_name: str | None = None,
    provisioner: str | None = None,
    deleted: bool | None = None,
    deprecated: str | None = None,
    version_name: str | None = None,
    import_job: bool = True,
    import_tags: Mapping[str, str] | None = None,
    id: UUID | None = None,
    version_id: UUID | None = None,
) -> tuple[UUID, Version]:
    """A template and its first version, which is its active version."""
    template_id, first = id or uuid.uuid4(), version_id or uuid.uuid4()
    _build(conn, "seed_template", {
        "id": template_id, "organization_id": organization_id, "created_by": created_by,
        "active_version_id": first, "name": name, "display_name": display_name,
        "provisioner": provisioner, "deleted": deleted, "deprecated": deprecated,
    })  # fmt: skip
    made = version(
        conn, template_id, name=version_name, import_job=import_job, import_tags=import_tags,
        id=first,
    )
    return template_id, made


def version(
    conn: Conn,
    template_id: UUID | None,
    *,
    created_by: UUID | None = None,
    name: str | None = None,
    created_at: datetime | None = None,
    import_job: bool = True,
    import_status: str | None = None,
    import_tags: Mapping[str, str] | None = None,
    organization_id: UUID | None = None,
    id: UUID | None = None,
) -> Version:
    """A version of `template_id` (not promoted: see `promote`) with its import job.

    `import_job=False` leaves template_versions.job_id pointing at no job (Coder has no
    foreign key there). Without a template, `created_by` and `organization_id` are needed.
    """
    version_id, job_id = id or uuid.uuid4(), uuid.uuid4()
    _build(conn, "seed_version", {
        "id": version_id, "template_id": template_id, "created_by": created_by, "name": name,
        "created_at": created_at, "job_id": job_id, "import_job": import_job,
        "import_status": import_status, "import_tags": _json(import_tags),
        "organization_id": organization_id,
    })  # fmt: skip
    return Version(version_id, job_id if import_job else None)


def promote(conn: Conn, template_id: UUID, version_id: UUID) -> None:
    conn.execute(query("seed_promote"), {"template_id": template_id, "version_id": version_id})


def preset(
    conn: Conn,
    version_id: UUID,
    *,
    desired: int | None,
    name: str | None = None,
    ttl: int | None = None,
    timezone: str | None = None,
    status: str | None = None,
    last_invalidated_at: datetime | None = None,
    parameters: Mapping[str, str] | None = None,
    schedules: Sequence[tuple[str, int]] = (),
    id: UUID | None = None,
) -> UUID:
    """A preset of a version; `desired=None` is a preset without prebuilds.

    `ttl` is invalidate_after_secs; `schedules` are (cron, desired_instances) pairs, read in
    `timezone`.
    """
    preset_id = id or uuid.uuid4()
    _build(conn, "seed_preset", {
        "id": preset_id, "template_version_id": version_id, "desired_instances": desired,
        "name": name, "invalidate_after_secs": ttl, "scheduling_timezone": timezone,
        "prebuild_status": status, "last_invalidated_at": last_invalidated_at,
    })  # fmt: skip
    if parameters:
        _build(conn, "seed_preset_parameters", {
            "preset_id": preset_id, "names": list(parameters), "values": list(parameters.values()),
        })  # fmt: skip
    for cron, wanted in schedules:
        schedule(conn, preset_id, cron=cron, desired=wanted)
    return preset_id


def schedule(
    conn: Conn, preset_id: UUID, *, cron: str, desired: int, id: UUID | None = None
) -> UUID:
    schedule_id = id or uuid.uuid4()
    _build(conn, "seed_schedule", {
        "id": schedule_id, "preset_id": preset_id, "cron_expression": cron,
        "desired_instances": desired,
    })  # fmt: skip
    return schedule_id


# ---------------------------------------------------------------------------------------------
# Workspaces, builds, agents
# ---------------------------------------------------------------------------------------------


def workspace(
    conn: Conn,
    template_id: UUID,
    *,
    owner_id: UUID,
    name: str | None = None,
    created_at: datetime | None = None,
    id: UUID | None = None,
) -> UUID:
    """A workspace of the template (in the template's organization), without builds."""
    workspace_id = id or uuid.uuid4()
    _build(conn, "seed_workspace", {
        "id": workspace_id, "template_id": template_id, "owner_id": owner_id, "name": name,
        "created_at": created_at,
    })  # fmt: skip
    return workspace_id


def build(
    conn: Conn,
    workspace_id: UUID,
    *,
    version_id: UUID,
    number: int,
    transition: str,
    initiator_id: UUID,
    preset_id: UUID | None = None,
    job_status: str | None = None,
    created_at: datetime | None = None,
    worker_id: UUID | None = None,
    id: UUID | None = None,
) -> Build:
    """Build `number` of a workspace with its job (in `job_status`) and, for a build of a
    preset, the preset's parameters."""
    if job_status is not None and job_status not in JOB_STATUSES:
        raise ValueError(f"unknown job status {job_status!r}")
    build_id, job_id = id or uuid.uuid4(), uuid.uuid4()
    _build(conn, "seed_build", {
        "id": build_id, "workspace_id": workspace_id, "template_version_id": version_id,
        "build_number": number, "transition": transition, "initiator_id": initiator_id,
        "preset_id": preset_id, "job_status": job_status, "created_at": created_at,
        "job_id": job_id, "worker_id": worker_id,
    })  # fmt: skip
    return Build(build_id, job_id)


def agent(
    conn: Conn,
    job_id: UUID,
    *,
    lifecycle: str | None = None,
    name: str | None = None,
    parent_id: UUID | None = None,
    deleted: bool | None = None,
    id: UUID | None = None,
) -> UUID:
    """An agent on a new resource of the job (`parent_id` makes it a sub-agent)."""
    agent_id = id or uuid.uuid4()
    _build(conn, "seed_agent", {
        "id": agent_id, "job_id": job_id, "lifecycle_state": lifecycle, "name": name,
        "parent_id": parent_id, "deleted": deleted,
    })  # fmt: skip
    return agent_id
