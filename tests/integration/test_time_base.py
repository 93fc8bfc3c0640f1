"""The service's time base is the database's clock, not the host's (issue 10 item 10).

Coder's timestamps (a prebuild's age, a build's failure) come from the database server. A
replica whose wall clock is off by an hour must still expire a prebuild exactly when its TTL
is over and cross a schedule boundary when the *database's* clock crosses it: the service runs
here with its wall-clock hook (`Service(clock=...)`) shifted by an hour either way.

A schedule boundary only comes at a whole local hour, so the schedule test brings one to within
seconds of the database's clock with a time zone of its own: a fixed UTC offset (whole seconds)
written as a TZif file, found through zoneinfo's search path like any IANA zone.
"""

from __future__ import annotations

import time
import zoneinfo
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import psycopg
import pytest
from _live import (
    DELETE_BUILDS,
    PENDING_CREATES,
    eventually,
    fetch_value,
    reconciles,
    running_service,
)

from _zones import zone_with_an_hour_starting_at
from factories import make_org, make_prebuild, make_preset, make_template, make_user
from prebuildd.model import PlanConfig
from prebuildd.reconciler import Cause, Reconciler
from prebuildd.schedule import resolve_timezone
from prebuildd.trigger import Trigger

pytestmark = pytest.mark.anyio

HOUR = timedelta(hours=1)
WAIT = 60.0  # seconds; generous on a loaded machine, only reached when something is wrong
SKEWS = [
    pytest.param(timedelta(0), id="host-on-time"),
    pytest.param(HOUR, id="host-an-hour-fast"),
    pytest.param(-HOUR, id="host-an-hour-slow"),
]


def _skewed(skew: timedelta) -> Callable[[], datetime]:
    def clock() -> datetime:
        return datetime.now(UTC) + skew

    return clock


async def _db_now(url: str) -> datetime:
    value = await fetch_value(url, "SELECT clock_timestamp()")
    assert isinstance(value, datetime)
    return value


# What a check "not yet" needs: a count and the database's clock during the same statement.
_DELETES_AND_CLOCK = """
SELECT count(*), clock_timestamp() FROM workspace_builds
WHERE template_version_preset_id = %(p)s AND transition = 'delete'
"""
_CREATES_AND_CLOCK = """
SELECT count(*), clock_timestamp() FROM workspace_builds
WHERE template_version_preset_id = %(p)s AND build_number = 1 AND transition = 'start'
"""


async def _fetch_row(url: str, statement: str, params: dict[str, Any]) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(statement, params)  # type: ignore[arg-type]
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _until_db_time(url: str, instant: datetime) -> None:
    """Sleep until the database's clock shows `instant`."""
    while (left := (instant - await _db_now(url)).total_seconds()) > 0:
        await anyio.sleep(min(left, 0.2))


def _count(url: str, statement: str, preset: UUID) -> Callable[[int], Any]:
    def equals(expected: int) -> Any:
        async def check() -> bool:
            return bool(await fetch_value(url, statement, {"preset": preset}) == expected)

        return check

    return equals


@pytest.mark.parametrize("skew", SKEWS)
async def test_ttl_expiry_follows_the_databases_clock(db_url: str, skew: timedelta) -> None:
    ttl = 4
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1, ttl=ttl)
        # A ready prebuild, created (as Coder would) at the database's time.
        make_prebuild(conn, preset)
        conn.commit()
    created = await fetch_value(db_url, "SELECT min(created_at) FROM workspaces")
    expires = created + timedelta(seconds=ttl)
    deletes = _count(db_url, DELETE_BUILDS, preset)
    async with running_service(db_url, clock=_skewed(skew)) as service:
        # Until the database's clock reaches the TTL, the prebuild stays: a host an hour fast
        # must not expire it at once. (Count and clock read in one statement: a slow machine
        # that reaches the TTL first makes the check say nothing, never fail falsely.)
        await _until_db_time(db_url, expires - timedelta(milliseconds=500))
        count, at = await _fetch_row(db_url, _DELETES_AND_CLOCK, {"p": preset})
        assert at >= expires or count == 0, "expired before its TTL by the database's clock"
        # And then it goes, by the plan's own timer: a host an hour slow must not wait an hour.
        await eventually(deletes(1), timeout=WAIT)
        deleted_at = await fetch_value(
            db_url,
            "SELECT created_at FROM workspace_builds WHERE transition = 'delete'"
            " AND template_version_preset_id = %(p)s",
            {"p": preset},
        )
        assert deleted_at >= expires, "the delete build records the database's time"
        assert reconciles(service, "timer") >= 1


async def test_event_lag_is_measured_on_the_databases_clock(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event's lag compares its transaction's start (the database's clock) with the
    reconcile's start on the same clock: a host an hour fast must not report an hour of lag
    (and fire the lag alert)."""
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        make_preset(conn, tpl.version_id, desired=1)
        conn.commit()
    event_at = (await _db_now(db_url)).timestamp()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + HOUR.total_seconds())
    reconciler = Reconciler(PlanConfig(), clock=_skewed(HOUR))
    async with await psycopg.AsyncConnection.connect(db_url) as aconn:
        cause = Cause(Trigger.EVENT, events=1, event_at=event_at)
        outcome = await reconciler.reconcile(aconn, [tpl.id], cause)
    assert outcome.locked == (tpl.id,)
    assert outcome.lag is not None and 0 <= outcome.lag < 60


# ---- schedules ------------------------------------------------------------------------------


@pytest.fixture
def zone_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory searched for time zones first (restored afterwards)."""
    before = zoneinfo.TZPATH
    zoneinfo.reset_tzpath([str(tmp_path), *before])
    try:
        yield tmp_path
    finally:
        zoneinfo.reset_tzpath(list(before))


def _zone_with_an_hour_starting_at(folder: Path, boundary: datetime) -> tuple[str, int]:
    """A new zone in which a local hour starts at `boundary` (whole seconds), and that hour."""
    name, hour = zone_with_an_hour_starting_at(folder, boundary)
    local = boundary.astimezone(resolve_timezone(name))
    assert (local.minute, local.second, local.hour) == (0, 0, hour)
    return name, hour


@pytest.mark.parametrize("skew", SKEWS)
async def test_a_schedule_boundary_is_crossed_at_the_databases_time(
    db_url: str, zone_dir: Path, skew: timedelta
) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1, timezone="UTC")
        conn.commit()
    creates = _count(db_url, PENDING_CREATES, preset)
    # No provisioner: the creates stay pending and are easy to count.
    async with running_service(db_url, clock=_skewed(skew)) as service:
        await eventually(creates(1))
        # Now a local hour starts 4 s from now on the database's clock, and its schedule wants
        # 3. The change wakes the template (an event); its plan asks for a timer.
        boundary = (await _db_now(db_url)).replace(microsecond=0) + timedelta(seconds=4)
        zone, hour = _zone_with_an_hour_starting_at(zone_dir, boundary)
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE template_version_presets SET scheduling_timezone = %s WHERE id = %s",
                (zone, preset),
            )
            conn.execute(
                "INSERT INTO template_version_preset_prebuild_schedules"
                " (preset_id, cron_expression, desired_instances) VALUES (%s, %s, 3)",
                (preset, f"* {hour} * * *"),
            )
            conn.commit()
        await _until_db_time(db_url, boundary - timedelta(milliseconds=300))
        # (Count and clock read in one statement: see the TTL test.)
        count, at = await _fetch_row(db_url, _CREATES_AND_CLOCK, {"p": preset})
        assert at >= boundary or count == 1, "the schedule applied before its hour"
        await eventually(creates(3), timeout=WAIT)
        before = await fetch_value(
            db_url,
            "SELECT count(*) FROM workspace_builds WHERE template_version_preset_id = %(p)s"
            " AND created_at < %(boundary)s",
            {"p": preset, "boundary": boundary},
        )
        assert before == 1, "the scheduled creates happened at the boundary, not before"
        assert reconciles(service, "timer") >= 1


# ---- commands that write an instant ---------------------------------------------------------


class _HostAnHourFast(datetime):
    """Python's clock on a host an hour fast (patched into the modules under test)."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + HOUR


def test_invalidate_records_the_databases_time(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prebuildd invalidate` expires the prebuilds created before *the database's* now: a
    host an hour fast must not also expire the replacements of the next hour."""
    from prebuildd import cli, cli_commands

    # The module of the `invalidate` handler (prebuildd.cli only dispatches to it).
    monkeypatch.setattr(cli_commands, "datetime", _HostAnHourFast, raising=False)
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1)
        conn.commit()
        before = _scalar(conn, "SELECT clock_timestamp()")
        args = ["invalidate", "--preset", str(preset), "--database-url", db_url]
        assert cli.main(args) == cli.EXIT_OK
        after = _scalar(conn, "SELECT clock_timestamp()")
        stored = _scalar(
            conn, "SELECT last_invalidated_at FROM template_version_presets WHERE id = %s", preset
        )
    assert before <= stored <= after


def test_a_claim_records_the_databases_time(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prebuildd import claim as claims

    monkeypatch.setattr(claims, "datetime", _HostAnHourFast, raising=False)
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1)
        make_prebuild(conn, preset)
        user = make_user(conn)
        conn.commit()
        before = _scalar(conn, "SELECT clock_timestamp()")
        with conn.transaction():
            claimed = claims.claim(conn, preset_id=preset, user_id=user, name="mine")
        after = _scalar(conn, "SELECT clock_timestamp()")
        assert claimed is not None
        build_at = _scalar(
            conn, "SELECT created_at FROM workspace_builds WHERE id = %s", claimed.build_id
        )
        used_at = _scalar(
            conn, "SELECT last_used_at FROM workspaces WHERE id = %s", claimed.workspace_id
        )
    assert before <= build_at <= after
    assert before <= used_at <= after


def _scalar(conn: psycopg.Connection[Any], statement: Any, *params: object) -> Any:
    row = conn.execute(statement, params or None).fetchone()
    conn.commit()
    assert row is not None
    return row[0]
