"""Hits and misses counted from Coder's rows, on a real PostgreSQL (sql/queries/demand.sql).

One seeded history holds every kind of build that must and must not count: claims of two
presets, a claimed workspace its owner later used and deleted, an admin's build of an
unclaimed prebuild, a prebuild prebuildd deleted, people's first builds (their own and an
admin's on their behalf), builds of a preset without a pool, of no preset, of another template,
and events outside the windows. The same history is read three ways -- `status`'s 24 hours per
preset, the forecast's 14 days per (template, preset name) and hour of the week, and the
lifetime totals of the metrics -- and every number is checked exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString
from uuid import UUID, uuid4

import psycopg
import pytest
from _coder_schemas import EventInbox

from factories import (
    BuildRef,
    add_build,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
)
from prebuildd import store
from prebuildd.demand import HistoryCache, PresetDemand
from prebuildd.forecast import history_window, hour_floor, hour_of_week
from prebuildd.model import HOURS_PER_WEEK, PREBUILDS_USER_ID, AutoscaleMode, PlanConfig

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]

NOW = datetime.now(UTC)
H = hour_floor(NOW)  # the current hour: the forecast's history ends here
HOUR, MINUTE, DAY = timedelta(hours=1), timedelta(minutes=1), timedelta(days=1)


# prebuildd reads the database's now() with every snapshot. These tests pin it, for their own
# session only: now() and clock_timestamp() resolve to these functions when the session's
# search_path lists their schema before pg_catalog (bench/demand.py simulates time the same
# way).
PINNED_CLOCK: LiteralString = """
CREATE SCHEMA IF NOT EXISTS pinned_clock;
CREATE OR REPLACE FUNCTION pinned_clock.now() RETURNS timestamptz
    LANGUAGE sql STABLE
    AS $fn$ SELECT pg_catalog.current_setting('pinned.now')::timestamptz $fn$;
CREATE OR REPLACE FUNCTION pinned_clock.clock_timestamp() RETURNS timestamptz
    LANGUAGE sql VOLATILE
    AS $fn$ SELECT pg_catalog.current_setting('pinned.now')::timestamptz $fn$;
"""


@pytest.fixture
async def aconn(db_url: str) -> AsyncIterator[AConn]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as connection:
        await connection.execute(PINNED_CLOCK)
        await connection.execute(
            "SELECT pg_catalog.set_config('search_path',"
            " 'pinned_clock, pg_catalog, ' || pg_catalog.current_setting('search_path'), false)"
        )
        await pin(connection, NOW)
        yield connection


async def pin(conn: AConn, at: datetime) -> None:
    """The database's clock, as this session sees it, shows `at`."""
    await conn.execute("SELECT pg_catalog.set_config('pinned.now', %s::text, false)", (at,))


def claim_at(conn: Conn, prebuild: BuildRef, user: UUID, at: datetime, preset: UUID) -> BuildRef:
    """What Coder's claim writes: the owner changes and the user's `start` build is queued,
    naming the claimed preset, in one transaction."""
    conn.execute("UPDATE workspaces SET owner_id = %s WHERE id = %s", (user, prebuild.workspace_id))
    return add_build(
        conn, prebuild.workspace_id, transition="start", initiator=user, created_at=at,
        preset=preset,
    )  # fmt: skip


def job_takes(conn: Conn, build: BuildRef, duration: timedelta) -> None:
    """The build's job completed `duration` after the build was queued."""
    conn.execute(
        "UPDATE provisioner_jobs j SET completed_at = b.created_at + %s,"
        " started_at = b.created_at FROM workspace_builds b"
        " WHERE b.job_id = j.id AND b.id = %s",
        (duration, build.build_id),
    )


def job_pending(conn: Conn, build: BuildRef) -> None:
    conn.execute(
        "UPDATE provisioner_jobs SET started_at = NULL, completed_at = NULL, worker_id = NULL"
        " WHERE id = %s",
        (build.job_id,),
    )


@dataclass(frozen=True)
class History:
    template: UUID
    other_template: UUID
    small: UUID  # active version, desired 2, the policy's name
    large: UUID  # active version, desired 1
    plain: UUID  # active version, no pool (desired NULL)
    old_small: UUID  # the previous version's preset of the same name
    elsewhere: UUID  # the other template's preset
    # When each counted event happened: (time, preset, kind).
    events: tuple[tuple[datetime, UUID, str], ...]


def seed_history(conn: Conn) -> History:
    org = make_org(conn)
    user, admin = make_user(conn), make_user(conn)
    tpl = make_template(conn, org, name="python")
    old_small = make_preset(conn, tpl.version_id, name="small", desired=2)
    v2 = make_version(conn, tpl, active=True)
    small = make_preset(conn, v2, name="small", desired=2)
    large = make_preset(conn, v2, name="large", desired=1)
    plain = make_preset(conn, v2, name="plain", desired=None)
    other = make_template(conn, org, name="go")
    elsewhere = make_preset(conn, other.version_id, name="small", desired=1)
    # Versions three weeks old: the whole 14-day history belongs to these names.
    conn.execute(
        "UPDATE template_versions SET created_at = %s WHERE template_id = ANY(%s)",
        (H - 21 * DAY, [tpl.id, other.id]),
    )
    events: list[tuple[datetime, UUID, str]] = []

    # Hits.
    # 1. A prebuild from three days ago, claimed two hours ago; its create took 10 minutes,
    #    the claim build 1 minute: 9 minutes saved.
    a1 = make_prebuild(conn, small, created_at=H - 3 * DAY)
    job_takes(conn, a1, 10 * MINUTE)
    c1 = claim_at(conn, a1, user, H - 2 * HOUR + 10 * MINUTE, small)
    job_takes(conn, c1, 1 * MINUTE)
    events.append((H - 2 * HOUR + 10 * MINUTE, small, "hit"))
    # 2. Claimed within the last hour, its claim build still queued (time saved not
    #    measurable yet); the owner then stops, starts and deletes it: one hit, no more.
    a2 = make_prebuild(conn, small, created_at=H - 3 * HOUR)
    c2 = claim_at(conn, a2, user, H - HOUR + 20 * MINUTE, small)
    job_pending(conn, c2)
    for n, transition in enumerate(("stop", "start", "delete"), start=3):
        add_build(conn, a2.workspace_id, transition=transition, initiator=user,
                  created_at=H - HOUR + n * 10 * MINUTE)  # fmt: skip
    conn.execute("UPDATE workspaces SET deleted = true WHERE id = %s", (a2.workspace_id,))
    events.append((H - HOUR + 20 * MINUTE, small, "hit"))
    # 3. Claimed 26 hours ago (in the 14 days, not in the 24 hours); create 5 min, claim 30 s.
    a4 = make_prebuild(conn, small, created_at=H - 30 * HOUR)
    job_takes(conn, a4, 5 * MINUTE)
    c4 = claim_at(conn, a4, user, H - 26 * HOUR, small)
    job_takes(conn, c4, 30 * timedelta(seconds=1))
    events.append((H - 26 * HOUR, small, "hit"))
    # 4. Another preset of the template.
    b1 = make_prebuild(conn, large, created_at=H - 5 * HOUR)
    claim_at(conn, b1, user, H - HOUR + 5 * MINUTE, large)
    events.append((H - HOUR + 5 * MINUTE, large, "hit"))
    # 5. The previous version's preset of the same name, five days ago.
    o1 = make_prebuild(conn, old_small, created_at=H - 6 * DAY)
    claim_at(conn, o1, user, H - 5 * DAY, old_small)
    events.append((H - 5 * DAY, old_small, "hit"))

    # Not hits: an admin restarts an unclaimed prebuild; prebuildd deletes another one.
    a3 = make_prebuild(conn, small, created_at=H - 3 * HOUR)
    add_build(conn, a3.workspace_id, transition="stop", initiator=admin, created_at=H - 2 * HOUR)
    add_build(conn, a3.workspace_id, transition="start", initiator=admin,
              created_at=H - 2 * HOUR + MINUTE)  # fmt: skip
    a5 = make_prebuild(conn, small, created_at=H - 4 * HOUR)
    add_build(conn, a5.workspace_id, transition="delete", created_at=H - 3 * HOUR)

    # Misses: a person's first build naming a preset with a pool.
    m1 = make_prebuild(conn, small, owner=user, created_at=H - 3 * HOUR + MINUTE)
    add_build(conn, m1.workspace_id, transition="stop", initiator=user,
              created_at=H - 2 * HOUR + MINUTE)  # fmt: skip
    events.append((H - 3 * HOUR + MINUTE, small, "miss"))
    # ... an admin creating the workspace for the person;
    make_prebuild(conn, small, owner=user, initiator=admin, created_at=H - 4 * HOUR + MINUTE)
    events.append((H - 4 * HOUR + MINUTE, small, "miss"))
    # ... two days ago;
    make_prebuild(conn, small, owner=user, created_at=H - 2 * DAY)
    events.append((H - 2 * DAY, small, "miss"))
    # ... the other template's.
    make_prebuild(conn, elsewhere, owner=user, created_at=H - 2 * HOUR)
    events.append((H - 2 * HOUR, elsewhere, "miss"))

    # Not misses: a preset without a pool; fifteen days ago (before the 14 days; counted in the
    # lifetime total only).
    make_prebuild(conn, plain, owner=user, created_at=H - 2 * HOUR)
    make_prebuild(conn, small, owner=user, created_at=H - 15 * DAY)
    return History(tpl.id, other.id, small, large, plain, old_small, elsewhere, tuple(events))


@pytest.fixture
def history(conn: Conn) -> History:
    seeded = seed_history(conn)
    conn.commit()
    return seeded


def _set_policy(conn: Conn, preset: UUID, mode: str, lo: int, hi: int) -> None:
    conn.execute(
        "SELECT * FROM prebuildd.set_autoscale_policy(%s, %s, %s, %s)", (preset, mode, lo, hi)
    )
    conn.commit()


# ---------------------------------------------------------------------------------------------


async def test_status_window_counts_hits_and_misses_per_preset(
    aconn: AConn, history: History
) -> None:
    found = await store.read_recent_demand(
        aconn, [history.template, history.other_template], since=NOW - DAY, until=NOW
    )
    assert found == {
        history.small: PresetDemand(history.small, hits=2, misses=2),
        history.large: PresetDemand(history.large, hits=1, misses=0),
        history.elsewhere: PresetDemand(history.elsewhere, hits=0, misses=1),
    }
    assert found[history.small].hit_rate == 0.5
    # Narrowed by template.
    only = await store.read_recent_demand(aconn, [history.other_template], since=NOW - DAY,
                                          until=NOW)  # fmt: skip
    assert set(only) == {history.elsewhere}
    assert await store.read_recent_demand(aconn, [], since=NOW - DAY, until=NOW) == {}


async def test_forecast_history_by_template_preset_name_and_hour(
    aconn: AConn, conn: Conn, history: History
) -> None:
    _set_policy(conn, history.small, "forecast", 0, 5)
    snapshot = await store.read_snapshot(aconn, [history.template], config=PlanConfig())
    assert snapshot.now == NOW  # the pinned clock
    by_id = {ps.preset.id: ps for ps in snapshot.presets}
    small = by_id[history.small]
    assert small.policy is not None and small.policy.mode is AutoscaleMode.FORECAST
    assert by_id[history.large].policy is None and by_id[history.large].demand is None
    demand = small.demand
    assert demand is not None
    since, until = history_window(NOW)
    assert (demand.since, demand.until) == (since, until)
    expected_hits, expected_misses = [0] * HOURS_PER_WEEK, [0] * HOURS_PER_WEEK
    for at, preset, kind in history.events:
        # The name's presets of every version; the template's only; the 14 days only.
        if preset in (history.small, history.old_small) and since <= at < until:
            (expected_hits if kind == "hit" else expected_misses)[hour_of_week(at)] += 1
    assert list(demand.hits) == expected_hits
    assert list(demand.misses) == expected_misses
    assert (sum(demand.hits), sum(demand.misses)) == (4, 3)
    # Refill: the name's successful creates in the window (600 s, 300 s and four of 3 s).
    assert demand.refill_samples == 6
    assert demand.refill_seconds == pytest.approx(3.0)
    # The previous version's preset of that name shares the policy.
    assert by_id[history.old_small].policy == small.policy


async def test_lifetime_totals_for_the_metrics(aconn: AConn, history: History) -> None:
    totals = await store.read_demand_totals(aconn)
    small, large = totals[history.small], totals[history.large]
    # Misses: three, plus the one from fifteen days ago.
    assert small.misses_total == 4
    # Claims measured: #1 (600 - 60 s) and #3 (300 - 30 s); #2's claim build is pending.
    assert small.claims_measured == 2
    assert small.saved_seconds_total == pytest.approx(540 + 270)
    assert (large.misses_total, large.claims_measured) == (0, 1)
    assert large.saved_seconds_total == 0.0  # both builds took the factory's 3 s
    # Active presets with a pool only: not the previous version's, not the pool-less one.
    assert history.old_small not in totals and history.plain not in totals
    assert totals[history.elsewhere].misses_total == 1


async def test_the_history_is_read_once_per_template_and_hour(
    aconn: AConn, conn: Conn, history: History
) -> None:
    _set_policy(conn, history.small, "auto", 0, 5)
    cache = HistoryCache()

    async def misses(now: datetime, cache: HistoryCache) -> int:
        await pin(aconn, now)
        snap = await store.read_snapshot(
            aconn, [history.template], config=PlanConfig(), histories=cache
        )
        demand = next(ps.demand for ps in snap.presets if ps.preset.id == history.small)
        assert demand is not None
        return sum(demand.misses)

    assert await misses(NOW, cache) == 3
    # A miss of an earlier hour, committed now: the cached hour does not see it ...
    make_prebuild(conn, history.small, owner=make_user(conn), created_at=H - 5 * HOUR)
    conn.commit()
    assert await misses(NOW, cache) == 3
    # ... a fresh read does, and so does the next hour's.
    assert await misses(NOW, HistoryCache()) == 4
    assert await misses(NOW + HOUR, cache) == 4
    # A policy for another name of the template is read at once, within the hour.
    _set_policy(conn, history.large, "forecast", 0, 5)
    snap = await store.read_snapshot(
        aconn, [history.template], config=PlanConfig(), histories=cache
    )
    large = next(ps for ps in snap.presets if ps.preset.id == history.large)
    assert large.demand is not None and sum(large.demand.hits) == 1
    assert len(cache) == 1


async def test_mode_off_reads_no_demand(aconn: AConn, conn: Conn, history: History) -> None:
    _set_policy(conn, history.small, "off", 0, 0)
    snapshot = await store.read_snapshot(aconn, [history.template], config=PlanConfig())
    assert all(ps.policy is None and ps.demand is None for ps in snapshot.presets)


def test_prebuilds_user_is_never_a_person(conn: Conn, history: History) -> None:
    """Control on the seed itself: the hits are on workspaces people own now, built first by
    the prebuilds user; the misses on workspaces people own, built first by someone else."""
    rows = conn.execute(
        "SELECT count(*) FILTER (WHERE f.initiator_id = %(pb)s AND w.owner_id <> %(pb)s),"
        " count(*) FILTER (WHERE f.initiator_id <> %(pb)s)"
        " FROM workspace_builds f JOIN workspaces w ON w.id = f.workspace_id"
        " WHERE f.build_number = 1 AND w.template_id = %(t)s",
        {"pb": PREBUILDS_USER_ID, "t": history.template},
    ).fetchone()
    # Claimed prebuilds: #1, #2, #3, #4, #5; people's own first builds: 3 misses, the
    # pool-less preset's and the one from fifteen days ago.
    assert rows == (5, 5)


def test_a_miss_wakes_its_template_like_a_claim(db_url: str, conn: Conn) -> None:
    """The trigger on workspace_builds announces a person's first build naming a preset that
    keeps a pool (event `missed`, urgent); nothing else a person builds."""
    org = make_org(conn)
    user = make_user(conn)
    tpl = make_template(conn, org)
    pooled = make_preset(conn, tpl.version_id, name="pooled", desired=1)
    poolless = make_preset(conn, tpl.version_id, name="poolless", desired=None)
    conn.commit()
    inbox = EventInbox(db_url)
    try:
        assert inbox.payloads() == []

        miss = make_prebuild(conn, pooled, owner=user)
        conn.commit()
        got = [(p["k"], p.get("t")) for p in inbox.payloads()]
        assert got == [("missed", str(tpl.id))]

        # The person's next builds, a pool-less preset's first build, a first build without a
        # preset: silence.
        add_build(conn, miss.workspace_id, transition="stop", initiator=user)
        add_build(conn, miss.workspace_id, transition="start", initiator=user)
        make_prebuild(conn, poolless, owner=user)
        bare = uuid4()
        conn.execute(
            "INSERT INTO workspaces (id, created_at, updated_at, owner_id, organization_id,"
            " template_id, name, last_used_at) VALUES (%s, now(), now(), %s, %s, %s, %s, now())",
            (bare, user, org, tpl.id, "bare"),
        )
        add_build(conn, bare, transition="start", initiator=user, version=tpl.version_id)
        conn.commit()
        assert inbox.payloads() == []

        # The prebuilds user's own first build is a create, not a miss.
        make_prebuild(conn, pooled, job_status="pending")
        conn.commit()
        assert [p["k"] for p in inbox.payloads()] == ["build_inserted"]
    finally:
        inbox.close()
