"""Row builders for integration tests: real rows that Coder's schema accepts.

A thin facade over prebuildd.seed, the one builder of Coder rows (sql/seed/coder_rows.sql),
shared with the benchmarks' fleets and the demo. Every builder inserts through a synchronous
psycopg connection and returns ids (a UUID, or a small frozen dataclass when a call creates
several rows). Defaults describe the common case -- an active, healthy template whose
prebuilds built fine and whose agents are ready -- and keyword arguments bend one thing at a
time.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from prebuildd import seed
from prebuildd.model import PREBUILDS_USER_ID
from prebuildd.queries import query

Conn = psycopg.Connection[Any]

# Tags of a job for an untagged (organization-scoped) provisioner, as Coder stores them.
UNTAGGED: Mapping[str, str] = {"scope": "organization", "owner": ""}

JOB_STATUSES = seed.JOB_STATUSES


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


# ---------------------------------------------------------------------------------------------
# Organizations, users, settings
# ---------------------------------------------------------------------------------------------


def make_org(conn: Conn, *, name: str | None = None) -> UUID:
    return seed.organization(conn, name=name, display_name=name or "Org")


def make_user(conn: Conn, *, username: str | None = None, email: str | None = None) -> UUID:
    return seed.user(conn, username=username, email=email)


def set_paused(conn: Conn, paused: bool | str) -> None:
    """Coder's pause switch; a str is stored verbatim (to test malformed settings)."""
    seed.prebuilds_settings(conn, paused)


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
    return seed.job(
        conn, organization_id=organization_id, initiator_id=initiator_id, status=status,
        job_type=job_type, provisioner=provisioner, tags=tags, input=input, file_id=file_id,
        worker_id=worker_id, created_at=created_at,
    )


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
    admin = created_by or make_user(conn)
    template_id, first = seed.template(
        conn, organization_id=org, created_by=admin, name=name, provisioner=provisioner,
        deleted=deleted, deprecated=deprecated, import_tags=import_tags, import_job=import_job,
    )
    return TemplateRef(template_id, org, first.id, first.import_job_id, admin)


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
    made = seed.version(
        conn, template_id, name=name, created_at=created_at, import_job=import_job,
        import_status=import_status, import_tags=import_tags,
    )
    if active:
        promote(conn, template_id, made.id)
    return made.id


def promote(conn: Conn, template_id: UUID, version_id: UUID) -> None:
    seed.promote(conn, template_id, version_id)


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
    return seed.preset(
        conn, version, desired=desired, name=name, ttl=ttl, timezone=timezone, status=status,
        last_invalidated_at=last_invalidated_at, parameters=parameters, schedules=schedules,
    )


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
    row = conn.execute(query("seed_preset_context"), {"preset_id": preset}).fetchone()
    if row is None:
        raise LookupError(f"no preset {preset}")
    version, template = row[0], row[1]
    workspace_id = seed.workspace(
        conn, template, owner_id=owner, name=name, created_at=created_at
    )
    made = seed.build(
        conn, workspace_id, version_id=version, number=1, transition=transition,
        initiator_id=initiator or owner, preset_id=preset, job_status=job_status,
        created_at=created_at, worker_id=worker_id,
    )
    if transition == "start" and job_status == "succeeded":
        for _ in range(agents):
            add_agent(conn, made.job_id, lifecycle="ready" if ready else "starting")
    return BuildRef(workspace_id, made.id, made.job_id, 1)


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
) -> BuildRef:
    """The next build of a workspace. Version and preset default to the latest build's; a
    build of a preset gets the preset's parameters."""
    row = conn.execute(query("seed_latest_build"), {"workspace_id": workspace_id}).fetchone()
    if row is None:
        raise LookupError(f"no workspace {workspace_id}")
    last_number, last_version, last_preset = row
    number = (last_number or 0) + 1
    version = version or last_version
    if version is None:
        raise ValueError("the first build of a workspace needs a version")
    made = seed.build(
        conn, workspace_id, version_id=version, number=number, transition=transition,
        initiator_id=initiator, preset_id=preset if preset is not None else last_preset,
        job_status=job_status, created_at=created_at, worker_id=worker_id,
    )
    return BuildRef(workspace_id, made.id, made.job_id, number)


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
    return seed.agent(
        conn, job_id, lifecycle=lifecycle, name=name, parent_id=parent, deleted=deleted
    )


def claim(conn: Conn, workspace_id: UUID, user: UUID) -> None:
    """What a claim does to the workspace row: a new owner (and name)."""
    name = f"claimed-{workspace_id.hex[:10]}"
    conn.execute(
        query("seed_hand_over"), {"workspace_id": workspace_id, "owner_id": user, "name": name}
    )


def ago(now: datetime, **delta: float) -> datetime:
    """`now` minus a timedelta, for readable `created_at=ago(now, minutes=5)`."""
    return now - timedelta(**delta)
