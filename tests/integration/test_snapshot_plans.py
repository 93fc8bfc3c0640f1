"""The store's narrowed read plans exactly what the full facts plan.

`snapshot_prebuilds` leaves out the per-build rows (`recent`) of presets where the planner
could act on none of them: no failure within the backoff lookback among the builds it would
return, and a newest build that did not fail. These tests plan every preset twice at the
snapshot's `now` -- from the store's snapshot, and from the same snapshot with
`recent_builds` replaced by *every* latest `start` build of the preset's live prebuilds, read
by a plain query here (the unbounded set the store's bounded, filtered rows stand for) -- and
require equal plans: every action, every counted state, reasons, next attention. On a
hand-made template with each case the filter decides on, under several planner settings,
and on the bench's seeded `tiny` fleet (drift included).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from factories import (
    add_build,
    ago,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_version,
)
from prebuildd import store
from prebuildd.model import PREBUILDS_USER_ID, BuildRecord, JobStatus, Plan, PlanConfig
from prebuildd.plan import plan_preset

# bench/ lives at the repository root, which is not on sys.path under the pytest script.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.fleet import SCALES, seed

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]

# Each setting moves the filter's edges: no hard limit, a limit of one build, a lookback that
# reaches the two-hour-old failures, one of whole days (the interval's days are 24 hours).
CONFIGS = (
    PlanConfig(),
    PlanConfig(failure_hard_limit=0),
    PlanConfig(failure_hard_limit=1),
    PlanConfig(backoff_lookback=timedelta(hours=3)),
    PlanConfig(backoff_lookback=timedelta(days=2), failure_hard_limit=2),
)

# Every latest `start` build of each live prebuild on its template's active version, by
# preset: what backoff and the hard limit are defined on, with no bound and no filter.
EVERY_LATEST_START = """
SELECT lb.template_version_preset_id, lb.created_at, j.job_status::text
FROM workspaces AS w
CROSS JOIN LATERAL (
    SELECT b.* FROM workspace_builds AS b
    WHERE b.workspace_id = w.id ORDER BY b.build_number DESC LIMIT 1
) AS lb
JOIN provisioner_jobs AS j ON j.id = lb.job_id
JOIN templates AS t ON t.id = w.template_id
WHERE w.template_id = ANY(%(template_ids)s)
  AND w.owner_id = %(owner)s
  AND NOT w.deleted
  AND lb.transition = 'start'
  AND lb.template_version_id = t.active_version_id
  AND lb.template_version_preset_id IS NOT NULL
"""


async def _both_plans(
    aconn: AConn, template_ids: Sequence[UUID], config: PlanConfig
) -> tuple[list[Plan], list[Plan], int]:
    """Plans from the store's snapshot and from the full facts; and how many presets the
    store sent no build rows for although they have failed latest builds (the filter's
    work: the comparison must have something to compare)."""
    async with aconn.transaction():
        snapshot = await store.read_snapshot(aconn, template_ids, config=config)
        rows = await (
            await aconn.execute(
                EVERY_LATEST_START,
                {"template_ids": list(template_ids), "owner": PREBUILDS_USER_ID},
            )
        ).fetchall()
    every: dict[UUID, list[BuildRecord]] = defaultdict(list)
    for preset_id, created_at, status in rows:
        every[preset_id].append(BuildRecord(created_at, JobStatus(status)))
    # The failures within the lookback, counted here from the same builds (the sessions run
    # in UTC, so the SQL interval's days are 24 hours, as timedelta's).
    since = snapshot.now - config.backoff_lookback
    failures = {
        preset_id: sum(
            1 for b in builds if b.job_status is JobStatus.FAILED and b.created_at >= since
        )
        for preset_id, builds in every.items()
    }
    narrowed = [plan_preset(ps, snapshot.now, config) for ps in snapshot.presets]
    full = [
        plan_preset(
            replace(
                ps,
                recent_builds=tuple(every.get(ps.preset.id, ())),
                failures_in_lookback=failures.get(ps.preset.id, 0),
            ),
            snapshot.now,
            config,
        )
        for ps in snapshot.presets
    ]
    filtered = sum(
        1
        for ps in snapshot.presets
        if not ps.recent_builds
        and any(b.job_status is JobStatus.FAILED for b in every.get(ps.preset.id, ()))
    )
    return narrowed, full, filtered


def _seed_every_case(conn: Conn) -> UUID:
    """One template whose active version has a preset per case the filter decides on."""
    org = make_org(conn)
    tpl = make_template(conn, org)
    version = make_version(conn, tpl.id, active=True)

    def preset(desired: int, **kw: Any) -> UUID:
        return make_preset(conn, version, desired=desired, **kw)

    now = datetime.now(UTC)

    def builds(p: UUID, *spec: tuple[str, float]) -> None:
        for status, minutes in spec:
            make_prebuild(conn, p, job_status=status, created_at=ago(now, minutes=minutes))

    # A failure two hours old among the latest builds, not the newest (the bench fleets'
    # shape): filtered under a one-hour lookback, a backoff under three hours.
    builds(preset(2), ("succeeded", 180), ("succeeded", 181), ("failed", 120), ("pending", 2))
    # A failure five minutes old, seven more within the hour: backoff for eight minutes.
    builds(
        preset(2),
        ("succeeded", 180),
        ("failed", 5),
        ("succeeded", 6),
        *(("failed", m) for m in range(7, 14)),
    )
    # The newest three failed two hours ago: the hard limit, whatever the lookback.
    builds(preset(1), ("failed", 120), ("failed", 121), ("failed", 122))
    # Newest failed long ago, the next one not: the hard limit of one only.
    builds(preset(1), ("failed", 90), ("succeeded", 100), ("failed", 110))
    # A failure and a success at the same instant, the newest (both within the bound: which
    # of two tied builds a bound of one keeps is the store's choice, not the filter's).
    builds(preset(2), ("failed", 150), ("succeeded", 150), ("succeeded", 200))
    # No failure at all; stored hard_limited with nothing failing (back to healthy).
    builds(preset(2), ("succeeded", 30), ("succeeded", 40), ("running", 1))
    builds(preset(1, status="hard_limited"), ("succeeded", 30))
    # A recent failure below the bound (rank 5 of max(1, limit 3)): never read.
    builds(preset(1), *(("succeeded", m) for m in (1, 2, 3, 4)), ("failed", 10))
    # A schedule raises the bound and the desired count: a failure at rank 3 counts (and
    # fourteen older ones within the hour make it a hold).
    builds(
        preset(1, schedules=[("* * * * *", 4)], timezone="UTC"),
        ("succeeded", 1),
        ("succeeded", 2),
        *(("failed", m) for m in range(10, 25)),
    )
    # Expired and surplus prebuilds next to an old failure (deletes from the same read).
    builds(
        preset(1, ttl=3600),
        ("succeeded", 300),
        ("succeeded", 200),
        ("failed", 150),
        ("succeeded", 20),
    )
    # A claimed-looking stop as the latest build keeps the workspace out of the starts.
    stopped = make_prebuild(conn, preset(1), job_status="failed", created_at=ago(now, hours=5))
    add_build(conn, stopped.workspace_id, transition="stop", created_at=ago(now, minutes=3))
    # The previous version: cleaned up, never backed off.
    old = make_preset(conn, tpl.version_id, desired=2)
    builds(old, ("succeeded", 60), ("failed", 1), ("pending", 2))
    conn.commit()
    return tpl.id


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: repr(c).split("(", 1)[1][:60])
async def test_every_case_plans_as_from_every_build(
    aconn: AConn, conn: Conn, config: PlanConfig
) -> None:
    template = _seed_every_case(conn)
    narrowed, full, _ = await _both_plans(aconn, [template], config)
    assert len(narrowed) == 12
    assert narrowed == full


async def test_the_filter_and_the_verdicts_are_exercised(aconn: AConn, conn: Conn) -> None:
    """Not a vacuous comparison: under the default settings the store leaves out some
    presets' rows, and the plans still back off and reach the hard limit where they should."""
    template = _seed_every_case(conn)
    narrowed, full, filtered = await _both_plans(aconn, [template], PlanConfig())
    assert narrowed == full
    assert filtered >= 3
    assert sum(1 for p in narrowed if p.state.backoff_until is not None) == 2
    assert sum(1 for p in narrowed if p.state.hard_limited) == 1
    assert any(p.actions for p in narrowed)


def _seed_quiet(conn: Conn) -> UUID:
    """A template where neither backoff nor the hard limit can act: failures only outside
    the lookback and never the newest build; so no preset of it gets a bound."""
    org = make_org(conn)
    tpl = make_template(conn, org)
    version = make_version(conn, tpl.id, active=True)
    now = datetime.now(UTC)
    for desired, spec in (
        (2, (("succeeded", 30), ("failed", 300), ("succeeded", 40), ("pending", 1))),
        (1, (("succeeded", 5), ("failed", 600))),
        (3, (("succeeded", 10), ("running", 2))),
    ):
        p = make_preset(conn, version, desired=desired)
        for status, minutes in spec:
            make_prebuild(conn, p, job_status=status, created_at=ago(now, minutes=minutes))
    conn.commit()
    return tpl.id


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: repr(c).split("(", 1)[1][:60])
async def test_a_batch_without_bounds_plans_as_from_every_build(
    aconn: AConn, conn: Conn, config: PlanConfig
) -> None:
    """No preset of the batch has a bound: the store skips ranking its builds altogether
    (`recent` empty), and still counts failures and plans as from every build -- alone, and
    batched with a template whose presets do get bounds."""
    quiet = _seed_quiet(conn)
    narrowed, full, filtered = await _both_plans(aconn, [quiet], config)
    assert len(narrowed) == 3
    assert narrowed == full
    assert filtered == 2  # old failures, left out
    assert all(p.state.backoff_until is None and not p.state.hard_limited for p in narrowed)
    busy = _seed_every_case(conn)
    narrowed, full, _ = await _both_plans(aconn, [quiet, busy], config)
    assert len(narrowed) == 15
    assert narrowed == full
    assert any(p.state.backoff_until is not None for p in narrowed)


async def test_failures_in_lookback_are_counted_without_bounds(aconn: AConn, conn: Conn) -> None:
    """`failures` does not depend on the ranked builds: under a lookback that reaches the
    quiet template's old failures (and so gives them bounds) and under one that does not
    (no bound, nothing ranked), the counts are the full facts' counts."""
    quiet = _seed_quiet(conn)
    for lookback, counted in ((timedelta(hours=12), 2), (timedelta(minutes=30), 0)):
        config = PlanConfig(backoff_lookback=lookback)
        async with aconn.transaction():
            snapshot = await store.read_snapshot(aconn, [quiet], config=config)
        assert sum(ps.failures_in_lookback for ps in snapshot.presets) == counted
        narrowed, full, _ = await _both_plans(aconn, [quiet], config)
        assert narrowed == full


async def test_seeded_bench_fleet_plans_as_from_every_build(aconn: AConn, db_url: str) -> None:
    spec = SCALES["tiny"]
    seed(db_url, spec, log=lambda _: None)
    templates = await store.list_prebuild_templates(aconn)
    await aconn.commit()
    assert len(templates) == spec.templates
    for config in CONFIGS:
        narrowed, full, filtered = await _both_plans(aconn, templates, config)
        assert len(narrowed) == spec.presets
        assert narrowed == full
        if config == PlanConfig():
            # Every active preset has a failure two hours old among its latest builds.
            assert filtered == spec.templates * spec.active_presets
        assert any(p.actions for p in narrowed)
