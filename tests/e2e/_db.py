"""What the drills read from PostgreSQL to judge the service: pools, integrity, backends.

Everything here looks at real rows from Coder's point of view, one statement per question,
so each answer is a consistent snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

# Per preset that wants prebuilds: its desired count, whether it is active (version active,
# template live), and its *live* prebuilds: unclaimed, not deleted, latest build a `start`
# whose job has not failed or been canceled (pending/running count: they fill the pool).
# Plus the history counters the churn drill's "no deficit filled twice" bound needs.
POOLS = """
WITH latest AS (
    SELECT DISTINCT ON (b.workspace_id)
        b.workspace_id, b.template_version_preset_id AS preset_id, b.transition, j.job_status
    FROM workspace_builds b
    JOIN provisioner_jobs j ON j.id = b.job_id
    JOIN workspaces w ON w.id = b.workspace_id
    WHERE w.owner_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0' AND NOT w.deleted
    ORDER BY b.workspace_id, b.build_number DESC
),
live AS (
    SELECT preset_id, count(*) AS n FROM latest
    WHERE transition = 'start' AND job_status IN ('pending', 'running', 'succeeded')
    GROUP BY preset_id
),
firsts AS (
    SELECT
        b.template_version_preset_id AS preset_id,
        count(*) AS creates,
        count(*) FILTER (
            WHERE w.owner_id <> 'c42fdf75-3097-471c-8c33-fb52454d81c0') AS claims,
        count(*) FILTER (WHERE j.job_status = 'failed') AS failed
    FROM workspace_builds b
    JOIN provisioner_jobs j ON j.id = b.job_id
    JOIN workspaces w ON w.id = b.workspace_id
    WHERE b.build_number = 1 AND b.transition = 'start'
      AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0'
    GROUP BY b.template_version_preset_id
)
SELECT
    p.id,
    p.desired_instances,
    (t.active_version_id = p.template_version_id AND NOT t.deleted AND t.deprecated = ''),
    COALESCE(live.n, 0),
    COALESCE(f.creates, 0),
    COALESCE(f.claims, 0),
    COALESCE(f.failed, 0)
FROM template_version_presets p
JOIN template_versions v ON v.id = p.template_version_id
JOIN templates t ON t.id = v.template_id
LEFT JOIN live ON live.preset_id = p.id
LEFT JOIN firsts f ON f.preset_id = p.id
WHERE p.desired_instances IS NOT NULL
"""

ELIGIBLE = """
SELECT count(*) FROM workspace_prebuilds p
JOIN workspace_latest_builds b ON b.workspace_id = p.id
WHERE p.current_preset_id = %(preset)s AND p.ready
  AND b.transition = 'start' AND b.job_status = 'succeeded'
"""

# Each query counts rows that must not exist.
INTEGRITY = {
    "workspaces without any build": """
        SELECT count(*) FROM workspaces w
        WHERE NOT EXISTS (SELECT 1 FROM workspace_builds b WHERE b.workspace_id = w.id)
    """,
    "workspaces whose first build is not number 1": """
        SELECT count(*) FROM (
            SELECT workspace_id FROM workspace_builds
            GROUP BY workspace_id HAVING min(build_number) <> 1
        ) AS x
    """,
    "builds without their job": """
        SELECT count(*) FROM workspace_builds b
        WHERE NOT EXISTS (SELECT 1 FROM provisioner_jobs j WHERE j.id = b.job_id)
    """,
    "duplicate build numbers": """
        SELECT count(*) FROM (
            SELECT workspace_id, build_number FROM workspace_builds
            GROUP BY workspace_id, build_number HAVING count(*) > 1
        ) AS x
    """,
    "workspace-build jobs without a build": """
        SELECT count(*) FROM provisioner_jobs j
        WHERE j.type = 'workspace_build'
          AND NOT EXISTS (SELECT 1 FROM workspace_builds b WHERE b.job_id = j.id)
    """,
}

# Backends of the service (pool and listener) in the current database.
SERVICE_BACKENDS = """
SELECT pid, application_name, state, backend_xid IS NOT NULL AS writing
FROM pg_stat_activity
WHERE datname = current_database()
  AND application_name IN ('prebuildd', 'prebuildd-listener')
"""

LISTENER_PIDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'prebuildd-listener'
"""

# Sessions of the service that have written (hold a transaction id) and now wait for a lock
# held by session %(holder)s: a reconcile stopped in the middle of its writes.
BLOCKED_WRITERS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'prebuildd'
  AND backend_xid IS NOT NULL AND %(holder)s = ANY(pg_blocking_pids(pid))
"""

# Terminates the listener's session and waits (up to 1 s) until it is gone. PostgreSQL checks
# every 100 ms, so the service may well have reconnected by the time this returns.
TERMINATE_LISTENERS = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 1000)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'prebuildd-listener'
"""


@dataclass(frozen=True, slots=True)
class Pool:
    """One preset's pool as the database sees it."""

    preset_id: UUID
    desired_instances: int
    active: bool
    live: int
    creates: int
    claims: int
    failed: int

    @property
    def target(self) -> int:
        """What the pool should hold: desired when active (negative counts as 0), else 0."""
        return max(self.desired_instances, 0) if self.active else 0


def read_pools(conn: psycopg.Connection[Any]) -> dict[UUID, Pool]:
    """Every preset's pool, from one statement (one snapshot)."""
    return {row[0]: Pool(*row) for row in conn.execute(POOLS).fetchall()}


def pools(url: str) -> dict[UUID, Pool]:
    with psycopg.connect(url, autocommit=True) as conn:
        return read_pools(conn)


def scalar(url: str, statement: str, params: dict[str, Any] | None = None) -> Any:
    """First column of the first row (None without rows), on a fresh connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(statement, params).fetchone()
    return None if row is None else row[0]


def eligible(url: str, preset: UUID) -> int:
    return int(scalar(url, ELIGIBLE, {"preset": preset}))


def integrity_problems(url: str) -> dict[str, int]:
    """Violated integrity checks and their counts; empty when all hold."""
    with psycopg.connect(url, autocommit=True) as conn:
        counts = {name: conn.execute(sql).fetchone() for name, sql in INTEGRITY.items()}
    return {name: int(row[0]) for name, row in counts.items() if row and row[0]}


def assert_integrity(url: str) -> None:
    problems = integrity_problems(url)
    assert not problems, f"torn writes in the database: {problems}"


def service_backends(url: str) -> list[tuple[int, str, str | None, bool]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(SERVICE_BACKENDS).fetchall())


def listener_pids(url: str) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {row[0] for row in conn.execute(LISTENER_PIDS).fetchall()}


@dataclass(frozen=True, slots=True)
class Holder:
    """An open transaction holding a row lock; `pid` is its backend."""

    url: str
    pid: int

    def blocked_writers(self) -> set[int]:
        """Service sessions that wrote and now wait for this lock."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(BLOCKED_WRITERS, {"holder": self.pid}).fetchall()
        return {row[0] for row in rows}


@contextlib.contextmanager
def holding_version(url: str, version_id: UUID) -> Iterator[Holder]:
    """Hold FOR UPDATE on a template version's row until the block ends (then roll back).

    A create inserts the workspace and its job first, then the build, whose foreign key on
    template_versions takes FOR KEY SHARE on this row: the reconcile stops there, mid-write
    (it holds a transaction id and its template's advisory lock), until the block ends.
    Reads never wait for it (plain SELECTs take no row lock), so nothing else is held up.
    """
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_backend_pid() FROM template_versions WHERE id = %s FOR UPDATE",
            (version_id,),
        ).fetchone()
        assert row is not None, f"no template version {version_id}"
        try:
            yield Holder(url, int(row[0]))
        finally:
            conn.rollback()
