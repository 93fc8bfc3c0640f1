"""The one builder of Coder rows (sql/seed/coder_rows.sql, prebuildd.seed).

Tests, benchmarks, the demo and the compose stack's example pools build Coder's rows with it,
so what it writes is checked here once: never installed by `migrate` and gone with its
session; one call over many rows writes what many calls of one row write (the fleets use the
first, the tests the second); jobs are in the status asked for; a build carries the job and
parameters Coder's builder gives it; agents' times follow their lifecycle; bad input is
refused; and it installs on the oldest supported Coder schema.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from _coder_schemas import coder_like

from prebuildd import seed
from prebuildd.migrate import repeatable_files, versioned_files
from prebuildd.model import PREBUILDS_USER_ID

Conn = psycopg.Connection[Any]

SEED_FUNCTIONS = """
SELECT n.nspname = pg_catalog.pg_my_temp_schema()::regnamespace::text, p.proname
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname LIKE 'seed\\_%'
ORDER BY 2
"""


@pytest.fixture(scope="module")
def shared_url(module_db_url: str) -> str:
    """Every test here writes rows of its own organization: one database for the module."""
    return module_db_url


@pytest.fixture
def db(shared_url: str) -> Iterator[Conn]:
    with psycopg.connect(shared_url) as conn:
        yield conn
        conn.rollback()


def _template(conn: Conn) -> tuple[UUID, UUID, UUID, UUID]:
    """(organization, admin, template, its active version)."""
    org = seed.organization(conn)
    admin = seed.user(conn)
    template, first = seed.template(conn, organization_id=org, created_by=admin)
    return org, admin, template, first.id


# ---------------------------------------------------------------------------------------------
# Never part of a database: pg_temp, one session
# ---------------------------------------------------------------------------------------------


def test_migrate_installs_nothing_of_the_builder(template_db_url: str) -> None:
    migrated = [f.path for f in versioned_files()] + [f.path for f in repeatable_files()]
    assert migrated and not [path for path in migrated if "seed" in str(path)]
    with psycopg.connect(template_db_url) as conn:
        assert conn.execute(SEED_FUNCTIONS).fetchall() == []


def test_the_builder_lives_in_its_session_only(shared_url: str) -> None:
    with psycopg.connect(shared_url, autocommit=True) as mine:
        seed.install(mine)
        functions = mine.execute(SEED_FUNCTIONS).fetchall()
        assert {temp for temp, _ in functions} == {True}
        assert "seed_builds" in {name for _, name in functions}
        with psycopg.connect(shared_url) as other:
            # Another session sees them in a temporary schema not its own, and cannot call them.
            assert other.execute(SEED_FUNCTIONS).fetchall() == [
                (False, name) for _, name in functions
            ]
            assert other.execute("SELECT to_regproc('pg_temp.seed_builds')").fetchone() == (None,)
    # The server drops a closed session's temporary objects as its backend exits, a moment
    # after the client has gone: wait for it (generously), then nothing is left.
    with psycopg.connect(shared_url, autocommit=True) as later:
        deadline = time.monotonic() + 60
        while later.execute(SEED_FUNCTIONS).fetchall() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert later.execute(SEED_FUNCTIONS).fetchall() == []


def test_a_rolled_back_install_is_made_again(db: Conn) -> None:
    seed.install(db)
    db.rollback()
    assert db.execute("SELECT to_regproc('pg_temp.seed_builds')").fetchone() == (None,)
    org = seed.organization(db)  # installs again, in this transaction
    assert db.execute("SELECT count(*) FROM organizations WHERE id = %s", [org]).fetchone() == (1,)


# ---------------------------------------------------------------------------------------------
# What it writes
# ---------------------------------------------------------------------------------------------

JOB_FACTS = """
SELECT j.job_status::text, j.started_at - j.created_at, j.canceled_at - j.created_at,
       j.completed_at - j.created_at, j.error IS NOT NULL, j.worker_id IS NOT NULL,
       j.type::text, j.provisioner::text, j.tags, j.input
FROM provisioner_jobs j
WHERE j.id = ANY(%s)
ORDER BY j.job_status::text
"""


def test_one_call_of_many_rows_writes_what_many_calls_of_one_row_write(db: Conn) -> None:
    org, admin, _, _ = _template(db)
    one_by_one = [
        seed.job(db, organization_id=org, initiator_id=admin, status=status)
        for status in seed.JOB_STATUSES
    ]
    together = [uuid4() for _ in seed.JOB_STATUSES]
    db.execute(
        "SELECT pg_temp.seed_jobs(id => %s, organization_id => %s, initiator_id => %s,"
        " status => %s)",
        [together, [org] * len(together), [admin] * len(together), list(seed.JOB_STATUSES)],
    )

    made = db.execute("SELECT count(*) FROM provisioner_jobs WHERE id = ANY(%s)", [together])
    assert made.fetchone() == (len(seed.JOB_STATUSES),)
    singles = db.execute(JOB_FACTS, [one_by_one]).fetchall()
    assert db.execute(JOB_FACTS, [together]).fetchall() == singles
    # Coder's derivation (the generated job_status) gives back the status asked for.
    assert sorted(row[0] for row in singles) == sorted(seed.JOB_STATUSES)
    started = {row[0] for row in singles if row[1] is not None}
    assert started == {"running", "succeeded", "failed", "canceling"}
    assert {row[0] for row in singles if row[5]} == started, "a started job has a worker"
    assert {row[0] for row in singles if row[4]} == {"failed"}


def test_a_build_carries_coders_job_and_its_presets_parameters(db: Conn) -> None:
    org, _, template, version = _template(db)
    preset = seed.preset(db, version, desired=1, parameters={"region": "eu", "size": "l"})
    workspace = seed.workspace(db, template, owner_id=PREBUILDS_USER_ID)
    first = seed.build(
        db, workspace, version_id=version, number=1, transition="start",
        initiator_id=PREBUILDS_USER_ID, preset_id=preset, job_status="pending",
    )  # fmt: skip
    row = db.execute(
        "SELECT j.organization_id, j.provisioner::text, j.type::text, j.job_status::text,"
        "       j.input, j.file_id = ij.file_id, j.initiator_id, b.build_number,"
        "       b.template_version_preset_id"
        " FROM workspace_builds b"
        " JOIN provisioner_jobs j ON j.id = b.job_id"
        " JOIN template_versions v ON v.id = b.template_version_id"
        " JOIN provisioner_jobs ij ON ij.id = v.job_id"
        " WHERE b.id = %s",
        [first.id],
    ).fetchone()
    assert row == (
        org, "terraform", "workspace_build", "pending", {"workspace_build_id": str(first.id)},
        True, PREBUILDS_USER_ID, 1, preset,
    )  # fmt: skip
    parameters = db.execute(
        "SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = %s"
        " ORDER BY name",
        [first.id],
    ).fetchall()
    assert parameters == [("region", "eu"), ("size", "l")]

    stop = seed.build(
        db, workspace, version_id=version, number=2, transition="stop",
        initiator_id=PREBUILDS_USER_ID,
    )  # fmt: skip
    assert db.execute(
        "SELECT count(*) FROM workspace_build_parameters WHERE workspace_build_id = %s",
        [stop.id],
    ).fetchone() == (0,), "a build of no preset has no preset parameters"


@pytest.mark.parametrize(
    ("lifecycle", "connected", "ready"),
    [("created", False, False), ("starting", True, False), ("ready", True, True),
     ("start_error", True, False), ("off", True, True)],
)  # fmt: skip
def test_an_agents_times_follow_its_lifecycle(
    db: Conn, lifecycle: str, connected: bool, ready: bool
) -> None:
    _, _, template, version = _template(db)
    workspace = seed.workspace(db, template, owner_id=PREBUILDS_USER_ID)
    build = seed.build(
        db, workspace, version_id=version, number=1, transition="start",
        initiator_id=PREBUILDS_USER_ID,
    )  # fmt: skip
    agent = seed.agent(db, build.job_id, lifecycle=lifecycle)
    row = db.execute(
        "SELECT a.lifecycle_state::text, a.first_connected_at IS NOT NULL,"
        "       a.started_at IS NOT NULL, a.ready_at IS NOT NULL, r.job_id, r.transition::text"
        " FROM workspace_agents a JOIN workspace_resources r ON r.id = a.resource_id"
        " WHERE a.id = %s",
        [agent],
    ).fetchone()
    assert row == (lifecycle, connected, connected, ready, build.job_id, "start")


def test_unknown_job_statuses_are_refused(db: Conn) -> None:
    org, admin, _, _ = _template(db)
    with pytest.raises(ValueError, match="unknown job status 'done'"):
        seed.job(db, organization_id=org, initiator_id=admin, status="done")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown job status done"):
        db.execute(
            "SELECT pg_temp.seed_jobs(ARRAY[gen_random_uuid()], ARRAY[%s::uuid],"
            " ARRAY[%s::uuid], status => ARRAY['done'])",
            [org, admin],
        )


# ---------------------------------------------------------------------------------------------
# On every supported Coder schema
# ---------------------------------------------------------------------------------------------


def test_the_builder_serves_the_oldest_supported_release(empty_db_url: str) -> None:
    """v2.25.0 lacks template_version_presets.last_invalidated_at: the file installs all the
    same, every row builds, and only a preset given that column needs it."""
    removed = coder_like(empty_db_url, "v2.25.0")
    assert ("template_version_presets", "last_invalidated_at") in removed
    with psycopg.connect(empty_db_url) as conn:
        _, _, template, version = _template(conn)
        preset = seed.preset(conn, version, desired=2, parameters={"region": "eu"})
        workspace = seed.workspace(conn, template, owner_id=PREBUILDS_USER_ID)
        build = seed.build(
            conn, workspace, version_id=version, number=1, transition="start",
            initiator_id=PREBUILDS_USER_ID, preset_id=preset,
        )  # fmt: skip
        seed.agent(conn, build.job_id)
        conn.commit()
        with pytest.raises(psycopg.errors.UndefinedColumn, match="last_invalidated_at"):
            seed.preset(conn, version, desired=1, last_invalidated_at=datetime.now(UTC))
