"""`provisioner_jobs.job_status` is derived exactly as Coder derives it, for every combination.

The oracle below is written from Coder's rule in prose, not from our SQL: a finished job
(`completed_at` set) failed when its error is non-empty, else was canceled when a cancel was
requested, else succeeded; an unfinished job failed on a non-empty error, is canceling once a
cancel was requested, pending until it starts, running after. A NULL error and '' both mean
"no error".
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from prebuildd.model import PREBUILDS_USER_ID, JobStatus

Conn = psycopg.Connection[tuple[object, ...]]

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ERRORS: tuple[str | None, ...] = (None, "", "terraform apply failed")


def expected_status(started: bool, completed: bool, canceled: bool, error: str | None) -> JobStatus:
    failed = bool(error)
    if completed:
        if failed:
            return JobStatus.FAILED
        return JobStatus.CANCELED if canceled else JobStatus.SUCCEEDED
    if failed:
        return JobStatus.FAILED
    if canceled:
        return JobStatus.CANCELING
    return JobStatus.RUNNING if started else JobStatus.PENDING


CASES = list(itertools.product((False, True), (False, True), (False, True), ERRORS))


@pytest.fixture
def conn(module_db_url: str) -> Iterator[Conn]:
    """One database for the module (overrides the harness's `conn`): nothing here commits,
    so every test's rows vanish with its transaction."""
    with psycopg.connect(module_db_url) as connection:
        yield connection
        connection.rollback()


@pytest.fixture
def org_id(conn: Conn) -> uuid.UUID:
    org = uuid.uuid4()
    conn.execute(
        "INSERT INTO organizations (id, name, description, created_at, updated_at, display_name)"
        " VALUES (%s, %s, '', now(), now(), 'Org')",
        (org, f"org-{org.hex[:8]}"),
    )
    return org


def _insert_job(
    conn: Conn,
    org: uuid.UUID,
    started: bool,
    completed: bool,
    canceled: bool,
    error: str | None,
) -> uuid.UUID:
    job = uuid.uuid4()
    conn.execute(
        """
        INSERT INTO provisioner_jobs (
            id, created_at, updated_at, started_at, completed_at, canceled_at, error,
            organization_id, initiator_id, provisioner, storage_method, type, input, file_id
        ) VALUES (
            %s, %s, %s, %s, %s, %s, %s,
            %s, %s, 'terraform', 'file', 'workspace_build', '{}', %s
        )
        """,
        (
            job,
            T0,
            T0,
            T0 + timedelta(seconds=1) if started else None,
            T0 + timedelta(seconds=3) if completed else None,
            T0 + timedelta(seconds=2) if canceled else None,
            error,
            org,
            PREBUILDS_USER_ID,
            uuid.uuid4(),
        ),
    )
    return job


@pytest.mark.parametrize(("started", "completed", "canceled", "error"), CASES)
def test_job_status_combination(
    conn: Conn,
    org_id: uuid.UUID,
    started: bool,
    completed: bool,
    canceled: bool,
    error: str | None,
) -> None:
    job = _insert_job(conn, org_id, started, completed, canceled, error)
    row = conn.execute("SELECT job_status::text FROM provisioner_jobs WHERE id = %s", (job,))
    assert row.fetchone() == (expected_status(started, completed, canceled, error).value,)


def test_job_status_follows_updates(conn: Conn, org_id: uuid.UUID) -> None:
    job = _insert_job(conn, org_id, False, False, False, None)
    steps = [
        ("UPDATE provisioner_jobs SET started_at = now() WHERE id = %s", "running"),
        ("UPDATE provisioner_jobs SET canceled_at = now() WHERE id = %s", "canceling"),
        ("UPDATE provisioner_jobs SET completed_at = now() WHERE id = %s", "canceled"),
        ("UPDATE provisioner_jobs SET error = 'boom' WHERE id = %s", "failed"),
    ]
    for statement, status in steps:
        conn.execute(statement, (job,))
        row = conn.execute("SELECT job_status::text FROM provisioner_jobs WHERE id = %s", (job,))
        assert row.fetchone() == (status,)


def test_job_status_cannot_be_written(conn: Conn, org_id: uuid.UUID) -> None:
    job = _insert_job(conn, org_id, False, False, False, None)
    with pytest.raises(psycopg.errors.GeneratedAlways):
        conn.execute("UPDATE provisioner_jobs SET job_status = 'succeeded' WHERE id = %s", (job,))
