"""A schedule boundary wakes a running `prebuildd run` whose host clock is off (issue 13).

The process runs under libfaketime, which shifts what the C library tells it the time is (so
Python's `time.time()` and `datetime.now()`) by an hour either way, as on a host whose clock
drifted: the service must still cross the boundary when the *database's* clock does
(reconciler and dispatcher take `now` from the database), by a timer its own plan asked for,
with the periodic sweep an hour away. A local hour is brought to within seconds by a zone the
test writes (tests/_zones.py), found by the child through PYTHONTZPATH.

Positive control: the same environment must really shift a child's clock (checked first),
or the test would prove nothing.

Needs libfaketime (Debian's package; `make test` installs it); fails when missing, skips
only with PREBUILDD_TEST_SKIP_TOOLS=1 outside CI.
"""

from __future__ import annotations

import glob
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from _db import scalar
from _procs import Processes, child_env, error_records, eventually, reconciled

from _prometheus import tool_missing
from _zones import zone_with_an_hour_starting_at
from factories import make_org, make_preset, make_template

pytestmark = pytest.mark.slow

WAIT = 60.0  # seconds; only ever reached when something is wrong
SKEWS = [
    pytest.param("+1h", 3600.0, id="host-an-hour-fast"),
    pytest.param("-1h", -3600.0, id="host-an-hour-slow"),
]
CREATES = (
    "SELECT count(*), clock_timestamp() FROM workspace_builds"
    " WHERE template_version_preset_id = %(p)s AND build_number = 1 AND transition = 'start'"
)


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if found:
        return found[0]
    tool_missing("libfaketime is not installed: apt-get install libfaketime (`make test` does)")


def _shifted_env(library: str, offset: str, zones: Path) -> dict[str, str]:
    return {
        "LD_PRELOAD": library,
        "FAKETIME": offset,
        # Only the wall clock is off on such a host; its monotonic clock runs as usual.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONTZPATH": str(zones),
    }


def _child_clock_offset(env: dict[str, str]) -> float:
    """How far the wall clock of a child started with `env` is from ours, in seconds."""
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return float(out.stdout.strip()) - (before + time.time()) / 2


def _creates_and_clock(url: str, preset: UUID) -> tuple[int, datetime]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(CREATES, {"p": preset}).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def _db_now(url: str) -> datetime:
    value = scalar(url, "SELECT clock_timestamp()")
    assert isinstance(value, datetime)
    return value


@pytest.mark.parametrize(("offset", "seconds"), SKEWS)
def test_a_schedule_boundary_wakes_a_service_whose_host_clock_is_off(
    db_url: str, tmp_path: Path, offset: str, seconds: float
) -> None:
    env = _shifted_env(_libfaketime(), offset, tmp_path)
    shift = _child_clock_offset(env)
    assert abs(shift - seconds) < 120, f"libfaketime did not shift the child's clock ({shift:.0f}s)"

    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1, timezone="UTC")
        conn.commit()

    with Processes(db_url) as procs:
        # No provisioner: the creates stay pending and are easy to count.
        service = procs.service(env=env)
        eventually(
            lambda: _creates_and_clock(db_url, preset)[0] == 1,
            timeout=WAIT,
            what="the first prebuild created",
            on_timeout=procs.dump,
        )
        # A local hour starts 8 s from now on the database's clock; its schedule wants 3.
        # The change wakes the template (an event); its plan asks for a timer.
        boundary = _db_now(db_url).replace(microsecond=0) + timedelta(seconds=8)
        zone, hour = zone_with_an_hour_starting_at(tmp_path, boundary)
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

        # Up to just before the boundary (database time) nothing more was created. The count
        # and the clock come from one statement, so a slow machine cannot fake a failure.
        while True:
            count, at = _creates_and_clock(db_url, preset)
            if at >= boundary - timedelta(milliseconds=300):
                break
            assert count == 1, f"the schedule applied at {at}, before its hour ({boundary})"
            time.sleep(0.1)

        eventually(
            lambda: _creates_and_clock(db_url, preset)[0] == 3,
            timeout=WAIT,
            what="the scheduled prebuilds created",
            on_timeout=procs.dump,
        )
        early = scalar(
            db_url,
            "SELECT count(*) FROM workspace_builds WHERE template_version_preset_id = %(p)s"
            " AND created_at < %(b)s",
            {"p": preset, "b": boundary},
        )
        assert early == 1, "the scheduled creates happened before the boundary"
        # The creates came from a timer the plan asked for, not from a sweep.
        timers: list[dict[str, Any]] = [
            r for r in reconciled(service, trigger="timer") if r.get("actions", {}).get("create")
        ]
        assert timers, procs.dump()
        sweeps = reconciled(service, trigger="sweep")
        assert not sweeps, "no periodic sweep may have run (it is an hour away)"
        assert not error_records(service), procs.dump()
