"""The store's reads against a real PostgreSQL: snapshot values, narrowing, locks, settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from factories import (
    TemplateRef,
    add_agent,
    add_build,
    ago,
    claim,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
    set_paused,
)
from prebuildd import store
from prebuildd.model import (
    BuildRecord,
    InProgress,
    JobStatus,
    PlanConfig,
    PrebuildStatus,
    Preset,
    PresetSnapshot,
    RunningPrebuild,
    Schedule,
)
from prebuildd.plan import can_skip
from prebuildd.queries import query
from prebuildd.store import snapshot as snapshot_reads

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]
NOW = datetime.now(UTC).replace(microsecond=0)
CONFIG = PlanConfig(backoff_lookback=timedelta(hours=1), failure_hard_limit=3)


async def snapshot_of(aconn: AConn, *template_ids: UUID) -> store.Snapshot:
    async with aconn.transaction():
        return await store.read_snapshot(aconn, template_ids, config=CONFIG)


def by_preset(snapshot: store.Snapshot) -> dict[UUID, PresetSnapshot]:
    return {ps.preset.id: ps for ps in snapshot.presets}


# ---------------------------------------------------------------------------------------------
# The seeded scenario: every field of PresetSnapshot
# ---------------------------------------------------------------------------------------------


class Seed:
    """One template with an active and an inactive version, plus a second template."""

    def __init__(self, conn: Conn) -> None:
        self.org = make_org(conn, name="acme")
        self.user = make_user(conn)
        self.tpl: TemplateRef = make_template(conn, self.org, name="python")
        self.old_version = self.tpl.version_id
        self.version = make_version(conn, self.tpl.id, active=True, name="v2")
        self.invalidated = ago(NOW, hours=3)
        self.active = make_preset(
            conn, self.version, name="large", desired=3, ttl=7200, timezone="Europe/Paris",
            schedules=[("* 9-17 * * 1-5", 5)], parameters={"size": "large"},
            last_invalidated_at=self.invalidated,
        )
        self.limited = make_preset(conn, self.version, name="small", desired=1,
                                   status="hard_limited")
        self.no_prebuilds = make_preset(conn, self.version, name="none", desired=None)
        self.inactive = make_preset(conn, self.old_version, name="old", desired=2)
        self._prebuilds_of_active(conn)
        self._prebuilds_of_inactive(conn)
        self.other = make_template(conn, self.org, name="other")
        other_preset = make_preset(conn, self.other.version_id, desired=1)
        make_prebuild(conn, other_preset)
        make_prebuild(conn, other_preset, job_status="pending")

    def _prebuilds_of_active(self, conn: Conn) -> None:
        p = self.active
        self.ready = make_prebuild(conn, p, created_at=ago(NOW, minutes=50))
        self.not_ready = make_prebuild(conn, p, created_at=ago(NOW, minutes=40), ready=False)
        self.no_agent = make_prebuild(conn, p, created_at=ago(NOW, minutes=30), agents=0)
        # A non-ready sub-agent and a deleted non-ready agent do not count.
        self.with_sub = make_prebuild(conn, p, created_at=ago(NOW, minutes=20))
        top = conn.execute(
            "SELECT a.id FROM workspace_agents a JOIN workspace_resources r"
            " ON r.id = a.resource_id WHERE r.job_id = %s", (self.with_sub.job_id,),
        ).fetchone()
        assert top is not None
        add_agent(conn, self.with_sub.job_id, lifecycle="starting", parent=top[0])
        add_agent(conn, self.with_sub.job_id, lifecycle="start_error", deleted=True)
        # Outcomes: a recent failure, an old failure.
        self.failed_recent = make_prebuild(conn, p, job_status="failed",
                                           created_at=ago(NOW, minutes=5))
        self.failed_old = make_prebuild(conn, p, job_status="failed",
                                        created_at=ago(NOW, hours=2))
        # In progress: two starting, one stopping, one deleting.
        self.pending = make_prebuild(conn, p, job_status="pending", created_at=ago(NOW, minutes=1))
        self.building = make_prebuild(conn, p, job_status="running",
                                      created_at=ago(NOW, minutes=2))
        stopping = make_prebuild(conn, p, created_at=ago(NOW, minutes=59))
        add_build(conn, stopping.workspace_id, transition="stop", job_status="running",
                  created_at=ago(NOW, minutes=3))
        deleting = make_prebuild(conn, p, created_at=ago(NOW, minutes=58))
        add_build(conn, deleting.workspace_id, transition="delete", job_status="pending",
                  created_at=ago(NOW, minutes=4))
        # Never counted: a claimed prebuild, a deleted one, a user's workspace.
        claimed = make_prebuild(conn, p, created_at=ago(NOW, minutes=45))
        claim(conn, claimed.workspace_id, self.user)
        gone = make_prebuild(conn, p, created_at=ago(NOW, minutes=44))
        conn.execute("UPDATE workspaces SET deleted = true WHERE id = %s", (gone.workspace_id,))
        make_prebuild(conn, p, owner=self.user, job_status="pending")

    def _prebuilds_of_inactive(self, conn: Conn) -> None:
        p = self.inactive
        self.old_running = make_prebuild(conn, p, created_at=ago(NOW, days=2))
        # Queued and never picked up: cancelable. Picked up (worker set): not cancelable.
        make_prebuild(conn, p, job_status="pending", created_at=ago(NOW, minutes=7))
        make_prebuild(conn, p, job_status="pending", created_at=ago(NOW, minutes=8),
                      worker_id=UUID(int=7))
        # Running on the old version: neither cancelable nor in progress (inactive version).
        make_prebuild(conn, p, job_status="running", created_at=ago(NOW, minutes=9))


@pytest.fixture
def seed(conn: Conn) -> Seed:
    s = Seed(conn)
    conn.commit()
    return s


async def test_snapshot_values(aconn: AConn, seed: Seed) -> None:
    snap = await snapshot_of(aconn, seed.tpl.id)
    presets = by_preset(snap)
    assert snap.paused is False
    assert set(presets) == {seed.active, seed.limited, seed.inactive}

    active = presets[seed.active]
    assert active.preset == Preset(
        id=seed.active, name="large", template_id=seed.tpl.id, template_name="python",
        organization_id=seed.org, organization_name="acme", template_version_id=seed.version,
        template_version_name="v2", using_active_version=True, template_deleted=False,
        template_deprecated=False, desired_instances=3, invalidate_after_secs=7200,
        last_invalidated_at=seed.invalidated, scheduling_timezone="Europe/Paris",
        prebuild_status=PrebuildStatus.HEALTHY,
    )
    assert [(s.cron_expression, s.desired_instances) for s in active.schedules] == [
        ("* 9-17 * * 1-5", 5)
    ]
    assert all(isinstance(s, Schedule) for s in active.schedules)
    running = {r.workspace_id: r for r in active.running}
    assert running == {
        seed.ready.workspace_id: RunningPrebuild(
            seed.ready.workspace_id, running[seed.ready.workspace_id].name, seed.version,
            seed.active, ago(NOW, minutes=50), True),
        seed.not_ready.workspace_id: RunningPrebuild(
            seed.not_ready.workspace_id, running[seed.not_ready.workspace_id].name,
            seed.version, seed.active, ago(NOW, minutes=40), False),
        seed.no_agent.workspace_id: RunningPrebuild(
            seed.no_agent.workspace_id, running[seed.no_agent.workspace_id].name, seed.version,
            seed.active, ago(NOW, minutes=30), False),
        seed.with_sub.workspace_id: RunningPrebuild(
            seed.with_sub.workspace_id, running[seed.with_sub.workspace_id].name, seed.version,
            seed.active, ago(NOW, minutes=20), True),
    }
    assert all(r.name.startswith("ws-") for r in active.running)
    assert active.in_progress == InProgress(starting=2, stopping=1, deleting=1)
    assert active.pending_cancelable == 0
    # Latest start builds, newest first; bound max(desired 3, schedule 5, limit 3) = 5.
    assert active.recent_builds == (
        BuildRecord(ago(NOW, minutes=1), JobStatus.PENDING),
        BuildRecord(ago(NOW, minutes=2), JobStatus.RUNNING),
        BuildRecord(ago(NOW, minutes=5), JobStatus.FAILED),
        BuildRecord(ago(NOW, minutes=20), JobStatus.SUCCEEDED),
        BuildRecord(ago(NOW, minutes=30), JobStatus.SUCCEEDED),
    )
    assert active.failures_in_lookback == 1

    limited = presets[seed.limited]
    assert limited.preset.prebuild_status is PrebuildStatus.HARD_LIMITED
    assert limited == PresetSnapshot(preset=limited.preset)

    inactive = presets[seed.inactive]
    assert inactive.preset.using_active_version is False
    assert inactive.preset.is_active is False
    assert [r.workspace_id for r in inactive.running] == [seed.old_running.workspace_id]
    assert inactive.running[0].template_version_id == seed.old_version
    assert inactive.pending_cancelable == 1
    assert inactive.in_progress == InProgress()
    assert inactive.failures_in_lookback == 0


async def test_recent_builds_bound_by_hard_limit(aconn: AConn, conn: Conn) -> None:
    org = make_org(conn)
    tpl = make_template(conn, org)
    preset = make_preset(conn, tpl.version_id, desired=1)
    for minutes in range(1, 7):
        make_prebuild(conn, preset, job_status="failed", created_at=ago(NOW, minutes=minutes))
    conn.commit()
    snap = await snapshot_of(aconn, tpl.id)
    (ps,) = snap.presets
    assert [b.created_at for b in ps.recent_builds] == [ago(NOW, minutes=m) for m in (1, 2, 3)]
    assert ps.failures_in_lookback == 6


async def test_deleted_and_deprecated_templates(aconn: AConn, conn: Conn) -> None:
    org = make_org(conn)
    deleted = make_template(conn, org, deleted=True)
    deprecated = make_template(conn, org, deprecated="use another")
    p1 = make_preset(conn, deleted.version_id)
    p2 = make_preset(conn, deprecated.version_id)
    make_prebuild(conn, p1)
    conn.commit()
    presets = by_preset(await snapshot_of(aconn, deleted.id, deprecated.id))
    assert presets[p1].preset.template_deleted and not presets[p1].preset.is_active
    assert len(presets[p1].running) == 1
    assert presets[p2].preset.template_deprecated and not presets[p2].preset.is_active


# ---------------------------------------------------------------------------------------------
# Narrowing
# ---------------------------------------------------------------------------------------------


async def test_rows_of_other_templates_never_appear(aconn: AConn, seed: Seed) -> None:
    snap = await snapshot_of(aconn, seed.other.id)
    assert {ps.preset.template_id for ps in snap.presets} == {seed.other.id}
    (ps,) = snap.presets
    assert len(ps.running) == 1 and ps.in_progress.starting == 1
    assert (await snapshot_of(aconn)).presets == ()
    both = await snapshot_of(aconn, seed.tpl.id, seed.other.id, seed.tpl.id)
    assert len(both.presets) == 4


async def test_list_prebuild_templates(aconn: AConn, seed: Seed, conn: Conn) -> None:
    without = make_template(conn, seed.org)
    make_preset(conn, without.version_id, desired=None)
    conn.commit()
    async with aconn.transaction():
        listed = await store.list_prebuild_templates(aconn)
    assert set(listed) == {seed.tpl.id, seed.other.id}


# ---------------------------------------------------------------------------------------------
# Pause flag
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "paused"),
    [
        (None, False),
        (True, True),
        (False, False),
        ('{"reconciliation_paused": true, "other": 1}', True),
        ("{}", False),
        ("", False),
        ("not json", True),
        ("[true]", True),
    ],
)
async def test_paused(aconn: AConn, conn: Conn, value: bool | str | None, paused: bool) -> None:
    if value is not None:
        set_paused(conn, value)
        conn.commit()
    async with aconn.transaction():
        assert await store.read_paused(aconn) is paused
        snap = await store.read_snapshot(aconn, [], config=CONFIG)
    assert snap.paused is paused


# ---------------------------------------------------------------------------------------------
# Advisory locks
# ---------------------------------------------------------------------------------------------


async def test_lock_templates_from_two_connections(db_url: str) -> None:
    a, b, c = UUID(int=1), UUID(int=2), UUID(int=3)
    async with (
        await psycopg.AsyncConnection.connect(db_url) as first,
        await psycopg.AsyncConnection.connect(db_url) as second,
    ):
        async with first.transaction():
            assert await store.lock_templates(first, [a, b, a]) == [a, b]
            async with second.transaction():
                assert await store.lock_templates(second, [c, b, a]) == [c]
            # The second transaction ended: its lock on c is gone, ours are kept.
            async with second.transaction():
                assert await store.lock_templates(second, [a, c]) == [c]
        # The first transaction committed: everything is free again.
        async with second.transaction():
            assert await store.lock_templates(second, [a, b]) == [a, b]
        async with first.transaction():
            assert await store.lock_templates(first, []) == []


async def test_lock_key_space(db_url: str) -> None:
    tid = UUID(int=42)
    async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
        await store.lock_templates(conn, [tid])
        # objsubid 2: the two-int form (objsubid 1 is the bigint form, Coder's lock 7, which
        # prebuildd also takes, shared: see test_coder_coexistence.py).
        cur = await conn.execute(
            "SELECT classid::bigint, objid::bigint FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND objsubid = 2"
        )
        rows = await cur.fetchall()
        cur = await conn.execute("SELECT hashtext(%s::text)", (str(tid),))
        row = await cur.fetchone()
        assert row is not None
        expected = row[0] & 0xFFFFFFFF
        assert rows == [(store.LOCK_KEY_SPACE, expected)]


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


async def test_metrics_rows(aconn: AConn, conn: Conn) -> None:
    org = make_org(conn, name="metrics-org")
    user = make_user(conn)
    tpl = make_template(conn, org, name="metrics-tpl")
    preset = make_preset(conn, tpl.version_id, name="p")
    make_prebuild(conn, preset)
    make_prebuild(conn, preset, job_status="failed")
    claimed = make_prebuild(conn, preset)
    claim(conn, claimed.workspace_id, user)
    # Later builds and user workspaces are not prebuild creations.
    add_build(conn, claimed.workspace_id, transition="start", initiator=user)
    make_prebuild(conn, preset, owner=user)
    gone = make_template(conn, org, deleted=True)
    make_prebuild(conn, make_preset(conn, gone.version_id))
    conn.commit()
    async with aconn.transaction():
        rows = await store.read_metrics_rows(aconn)
    assert rows == [
        store.PresetMetricsTotals(preset, "metrics-tpl", "p", "metrics-org", 3, 1, 1)
    ]


# ---------------------------------------------------------------------------------------------
# Connection state and plans
# ---------------------------------------------------------------------------------------------


async def test_caller_settings_and_row_factory_are_respected(db_url: str, seed: Seed) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, row_factory=dict_row) as conn:
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            snap = await store.read_snapshot(conn, [seed.tpl.id], config=CONFIG)
            cur = await conn.execute("SELECT current_setting('plan_cache_mode') AS mode")
            assert await cur.fetchone() == {"mode": "force_custom_plan"}
        assert len(snap.presets) == 3
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        again = await store.read_snapshot(conn, [seed.tpl.id], config=CONFIG)
        plain = await conn.execute("SELECT current_setting('plan_cache_mode')")
        assert await plain.fetchone() == ("auto",)
    # The same state (the database's clock, read with it, has moved on meanwhile).
    assert (again.presets, again.paused) == (snap.presets, snap.paused)


async def test_generic_plans_inside_an_autocommit_connections_transaction(
    db_url: str, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reconciler wraps its reads in conn.transaction(), autocommit or not: the reads get
    # their generic plans there too, and the caller's setting is back afterwards.
    sent: list[str] = []
    # read_snapshot's own module: patching the package's name would not reach its calls.
    real_start = snapshot_reads.start

    async def spy(conn: AConn, name: str, params: Any) -> Any:
        sent.append(name)
        return await real_start(conn, name, params)

    monkeypatch.setattr(snapshot_reads, "start", spy)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        plain = await store.read_snapshot(conn, [seed.tpl.id], config=CONFIG)
        assert "generic_plans_begin" not in sent
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            inside = await store.read_snapshot(conn, [seed.tpl.id], config=CONFIG)
            cur = await conn.execute("SELECT current_setting('plan_cache_mode')")
            assert await cur.fetchone() == ("force_custom_plan",)
    assert "generic_plans_begin" in sent
    assert (inside.presets, inside.paused) == (plain.presets, plain.paused)


# Tables whose size grows with the fleet: a one-template read must never scan them.
FLEET_TABLES = {
    "workspaces", "workspace_builds", "provisioner_jobs", "workspace_resources",
    "workspace_agents", "template_versions", "template_version_presets",
    "template_version_preset_prebuild_schedules",
}

SEED_FLEET = """
WITH t AS (
    INSERT INTO templates (id, created_at, updated_at, organization_id, name, provisioner,
                           active_version_id, created_by)
    SELECT gen_random_uuid(), now(), now(), %(org)s, 'fleet-' || g, 'terraform',
           gen_random_uuid(), %(admin)s
    FROM generate_series(1, %(templates)s) AS g
    RETURNING id, active_version_id
), old_versions AS (
    -- A template's history is most of these tables: earlier versions, with their presets.
    INSERT INTO template_versions (id, template_id, organization_id, created_at, updated_at,
                                   name, readme, job_id, created_by)
    SELECT gen_random_uuid(), t.id, %(org)s, now(), now(), 'old-' || k, '', gen_random_uuid(),
           %(admin)s
    FROM t CROSS JOIN generate_series(1, 4) AS k
    RETURNING id
), old_presets AS (
    INSERT INTO template_version_presets (id, template_version_id, name, desired_instances)
    SELECT gen_random_uuid(), o.id, 'p' || k, CASE WHEN k = 1 THEN 1 END
    FROM old_versions AS o CROSS JOIN generate_series(1, 3) AS k
), v AS (
    INSERT INTO template_versions (id, template_id, organization_id, created_at, updated_at,
                                   name, readme, job_id, created_by)
    SELECT t.active_version_id, t.id, %(org)s, now(), now(), 'v1', '', gen_random_uuid(),
           %(admin)s
    FROM t
    RETURNING id
), p AS (
    INSERT INTO template_version_presets (id, template_version_id, name, desired_instances)
    SELECT gen_random_uuid(), v.id, 'p' || k, 3 FROM v CROSS JOIN generate_series(1, 3) AS k
    RETURNING id, template_version_id
), s AS (
    INSERT INTO template_version_preset_prebuild_schedules
        (preset_id, cron_expression, desired_instances)
    SELECT p.id, '* 9-17 * * 1-5', 5 FROM p
), w AS (
    SELECT gen_random_uuid() AS id, gen_random_uuid() AS build_id, gen_random_uuid() AS job_id,
           p.id AS preset_id, p.template_version_id, t.id AS template_id, k
    FROM p
    JOIN t ON t.active_version_id = p.template_version_id
    CROSS JOIN generate_series(1, 8) AS k
), ws AS (
    INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id, template_id,
                            name, last_used_at)
    SELECT w.id, now(), now(),
           CASE WHEN w.k <= 6 THEN 'c42fdf75-3097-471c-8c33-fb52454d81c0'::uuid ELSE %(admin)s
           END,
           %(org)s, w.template_id, 'w-' || w.id, now()
    FROM w
), j AS (
    INSERT INTO provisioner_jobs (id, created_at, updated_at, started_at, completed_at,
                                  organization_id, initiator_id, provisioner, storage_method,
                                  type, input, file_id)
    SELECT w.job_id, now(), now(), now(), now(), %(org)s,
           'c42fdf75-3097-471c-8c33-fb52454d81c0', 'terraform', 'file', 'workspace_build',
           '{}', gen_random_uuid()
    FROM w
), b AS (
    INSERT INTO workspace_builds (id, created_at, updated_at, workspace_id, template_version_id,
                                  build_number, transition, initiator_id, job_id,
                                  template_version_preset_id)
    SELECT w.build_id, now(), now(), w.id, w.template_version_id, 1, 'start',
           'c42fdf75-3097-471c-8c33-fb52454d81c0', w.job_id, w.preset_id
    FROM w
), r AS (
    INSERT INTO workspace_resources (id, created_at, job_id, transition, type, name)
    SELECT w.build_id, now(), w.job_id, 'start', 'vm', 'main' FROM w
)
INSERT INTO workspace_agents (id, created_at, updated_at, name, resource_id, auth_token,
                              architecture, operating_system, lifecycle_state)
SELECT gen_random_uuid(), now(), now(), 'main', w.build_id, gen_random_uuid(), 'amd64',
       'linux', 'ready'
FROM w
"""


def _scanned_tables(plan: dict[str, Any]) -> set[tuple[str, str]]:
    found = set()
    if "Relation Name" in plan:
        found.add((plan["Node Type"], plan["Relation Name"]))
    for child in plan.get("Plans", []):
        found |= _scanned_tables(child)
    return found


def test_one_template_read_uses_indexes(conn: Conn) -> None:
    org, admin = make_org(conn), make_user(conn)
    # Seed a 200-template fleet without firing row triggers (a superuser-only switch, fine in
    # a test database): only the shape of the data matters here.
    conn.execute("SET session_replication_role = replica")
    conn.execute(SEED_FLEET, {"org": org, "admin": admin, "templates": 200})
    conn.execute("RESET session_replication_role")
    conn.commit()
    conn.execute("ANALYZE")
    target = conn.execute("SELECT id FROM templates ORDER BY name LIMIT 1 OFFSET 7").fetchone()
    assert target is not None
    params = {"template_ids": [target[0]], "hard_limit": 3, "backoff_lookback": timedelta(hours=1)}
    cursor = psycopg.ClientCursor(conn)
    for name in ("snapshot_presets", "snapshot_schedules", "snapshot_prebuilds"):
        cursor.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query(name), params)
        row = cursor.fetchone()
        assert row is not None
        scans = _scanned_tables(row[0][0]["Plan"])
        seq = {table for node, table in scans if node == "Seq Scan"}
        assert not seq & FLEET_TABLES, f"{name} scans {seq & FLEET_TABLES}: {scans}"


async def test_skip_idle_leaves_out_exactly_what_the_planner_would_skip(
    aconn: AConn, seed: Seed, conn: Conn
) -> None:
    """A reconcile's snapshot (`skip_idle`) drops the inactive presets with nothing to do,
    before building them: exactly those `plan.can_skip` skips, nothing else."""
    # An idle retired preset (no prebuild at all) and a retired one with only a cancelable job.
    idle = make_preset(conn, seed.old_version, name="idle", desired=1)
    queued = make_preset(conn, seed.old_version, name="queued", desired=1)
    make_prebuild(conn, queued, job_status="pending")
    conn.commit()
    async with aconn.transaction():
        every = await store.read_snapshot(aconn, [seed.tpl.id], config=CONFIG)
        kept = await store.read_snapshot(aconn, [seed.tpl.id], config=CONFIG, skip_idle=True)
    assert {ps.preset.id for ps in every.presets} == {
        seed.active, seed.limited, seed.inactive, idle, queued
    }
    assert [ps for ps in every.presets if not can_skip(ps)] == list(kept.presets)
    assert {ps.preset.id for ps in kept.presets} == {seed.active, seed.limited, seed.inactive,
                                                     queued}
