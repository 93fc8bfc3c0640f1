"""Forecast-driven sizing end to end on a real PostgreSQL: `prebuildd autoscale` stores
policies (and refuses bad ones without storing anything), `reconcile` sizes pools from seeded
demand in `auto` mode -- never above max, never below what the template configured -- and
`forecast` mode reports without writing.

The demand is seeded at the current hour of the week, one and two weeks ago, and in the two
hours after it too, so that the forecast is the same if the test crosses an hour boundary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql

from factories import (
    add_build,
    make_org,
    make_prebuild,
    make_preset,
    make_template,
    make_user,
    make_version,
)
from prebuildd.cli import EXIT_OK, EXIT_USAGE, main
from prebuildd.forecast import ForecastConfig, hour_floor, predictive_quantile

Conn = psycopg.Connection[Any]

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
# Seeded demand: 12 misses in each of the three hours from the current one, in each of the
# last two weeks (24 in the two samples of each hour: 12 per hour); creates take 30 minutes,
# so 6 are expected during a refill, and 11 cover that at 95 % (the rate's uncertainty
# included).
MISSES_PER_HOUR_PER_WEEK = 12
REFILL = timedelta(minutes=30)
SUGGESTED = predictive_quantile(
    2 * MISSES_PER_HOUR_PER_WEEK, 2, REFILL / HOUR, ForecastConfig().service_level
)

CREATES: LiteralString = """
SELECT count(*) FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
WHERE b.template_version_preset_id = %s AND b.build_number = 1 AND b.transition = 'start'
  AND b.initiator_id = 'c42fdf75-3097-471c-8c33-fb52454d81c0' AND j.job_status = 'pending'
"""
POLICIES: LiteralString = "SELECT count(*) FROM prebuildd.autoscale_policies"


def run(url: str, *args: str) -> int:
    return main([args[0], *args[1:], "--database-url", url, "--log-level", "warning"])


def autoscale(url: str, *args: str) -> int:
    return main(["autoscale", *args, "--database-url", url, "--log-level", "warning"])


def scalar(url: str, statement: LiteralString, *params: object) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row[0]


@dataclass(frozen=True)
class World:
    template: UUID
    busy: UUID  # active preset "small", desired 1, with demand
    quiet: UUID  # active preset "large", desired 2, no demand
    old_busy: UUID  # the previous version's "small"
    plain: UUID  # a preset without a pool


def seed(url: str) -> World:
    now = datetime.now(UTC)
    hour = hour_floor(now)
    with psycopg.connect(url) as conn:
        org = make_org(conn)
        tpl = make_template(conn, org, name="python")
        old_busy = make_preset(conn, tpl.version_id, name="small", desired=1)
        v2 = make_version(conn, tpl, active=True)
        busy = make_preset(conn, v2, name="small", desired=1)
        quiet = make_preset(conn, v2, name="large", desired=2)
        plain = make_preset(conn, v2, name="plain", desired=None)
        conn.execute(
            "UPDATE template_versions SET created_at = %s WHERE template_id = %s",
            (hour - 30 * DAY, tpl.id),
        )
        people = [make_user(conn) for _ in range(4)]
        for week in (1, 2):
            for offset in range(3):
                start = hour - week * 7 * DAY + offset * HOUR
                for n in range(MISSES_PER_HOUR_PER_WEEK):
                    make_prebuild(conn, busy, owner=people[n % 4],
                                  created_at=start + timedelta(minutes=2 + 4 * n))  # fmt: skip
        # Successful creates that took 30 minutes (the refill time), since deleted.
        for n in range(3):
            created = make_prebuild(conn, busy, created_at=hour - 3 * DAY + n * HOUR)
            conn.execute(
                "UPDATE provisioner_jobs SET completed_at = created_at + %s WHERE id = %s",
                (REFILL, created.job_id),
            )
            add_build(conn, created.workspace_id, transition="delete",
                      created_at=hour - 2 * DAY)  # fmt: skip
            conn.execute(
                "UPDATE workspaces SET deleted = true WHERE id = %s", (created.workspace_id,)
            )
        conn.commit()
    return World(tpl.id, busy, quiet, old_busy, plain)


@pytest.fixture
def world(db_url: str) -> World:
    return seed(db_url)


def test_the_seeded_demand_suggests_more_than_configured() -> None:
    """Control: the numbers below mean something (the forecast wants 11, not 1)."""
    assert SUGGESTED == 11
    assert ForecastConfig().service_level == 0.95


def test_auto_grows_the_pool_up_to_max_and_no_further(db_url: str, world: World) -> None:
    assert autoscale(db_url, "set", "--preset", str(world.busy), "--mode", "auto",
                     "--max", "5") == EXIT_OK  # fmt: skip
    assert run(db_url, "reconcile", "--once") == EXIT_OK
    assert scalar(db_url, CREATES, world.busy) == 5  # max, not the forecast's 11
    assert run(db_url, "reconcile", "--once") == EXIT_OK
    assert scalar(db_url, CREATES, world.busy) == 5  # and it stays there
    # A higher max lets it reach the forecast.
    assert autoscale(db_url, "set", "--preset", str(world.busy), "--mode", "auto",
                     "--max", "50") == EXIT_OK  # fmt: skip
    assert run(db_url, "reconcile", "--once") == EXIT_OK
    assert scalar(db_url, CREATES, world.busy) == SUGGESTED


def test_auto_never_goes_below_what_the_template_configured(db_url: str, world: World) -> None:
    # No demand for "large" (configured 2): auto keeps 2, even with max 1; min raises it.
    assert autoscale(db_url, "set", "--preset", str(world.quiet), "--mode", "auto",
                     "--max", "1") == EXIT_OK  # fmt: skip
    assert run(db_url, "reconcile", "--once") == EXIT_OK
    assert scalar(db_url, CREATES, world.quiet) == 2
    assert autoscale(db_url, "set", "--preset", str(world.quiet), "--mode", "auto",
                     "--min", "3", "--max", "4") == EXIT_OK  # fmt: skip
    assert run(db_url, "reconcile", "--once") == EXIT_OK
    assert scalar(db_url, CREATES, world.quiet) == 3
    # The template's own count grows past the forecast: the template wins.
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE template_version_presets SET desired_instances = 6 WHERE id = %s",
            (world.quiet,),
        )
    assert run(db_url, "reconcile", "--once") == EXIT_OK
    assert scalar(db_url, CREATES, world.quiet) == 6


# Every table a reconcile could write (through prebuildd's functions or its own).
_WRITABLE = (
    ("public", "workspaces"),
    ("public", "workspace_builds"),
    ("public", "provisioner_jobs"),
    ("public", "workspace_build_parameters"),
    ("public", "template_version_presets"),
    ("public", "notification_messages"),
    ("prebuildd", "autoscale_policies"),
)
_DIGEST = sql.SQL("SELECT md5(COALESCE(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t")


def _fingerprint(url: str) -> dict[str, str]:
    """A digest of every row of the tables a reconcile could write."""
    found = {}
    with psycopg.connect(url) as conn:
        for schema, table in _WRITABLE:
            row = conn.execute(_DIGEST.format(sql.Identifier(schema, table))).fetchone()
            assert row is not None
            found[f"{schema}.{table}"] = str(row[0])
    return found


def test_forecast_mode_reports_and_writes_nothing(
    db_url: str, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(db_url, "reconcile", "--once") == EXIT_OK  # no policy: the configured counts
    assert scalar(db_url, CREATES, world.busy) == 1
    assert autoscale(db_url, "set", "--preset", str(world.busy), "--mode", "forecast",
                     "--max", "50") == EXIT_OK  # fmt: skip
    before = _fingerprint(db_url)
    capsys.readouterr()
    assert run(db_url, "reconcile", "--once") == EXIT_OK
    assert "created 0, deleted 0, canceled 0" in capsys.readouterr().out
    assert _fingerprint(db_url) == before

    assert run(db_url, "reconcile", "--once", "--dry-run") == EXIT_OK
    out = capsys.readouterr().out
    assert "why: forecast: " in out and "claim(s)+miss(es)" in out
    assert f"forecast mode: would aim for {SUGGESTED} instead of 1" in out

    assert run(db_url, "status") == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    rows = [dict(zip(header, line.split(), strict=False)) for line in lines[1:] if line]
    small = next(r for r in rows if r["PRESET"] == "small" and r["ACTIVE"] == "yes")
    assert (small["DESIRED"], small["SUGGESTED"]) == ("1", str(SUGGESTED))
    large = next(r for r in rows if r["PRESET"] == "large")
    assert large["SUGGESTED"] == "-"
    assert _fingerprint(db_url) == before


def test_status_shows_the_last_24_hours_of_claims_and_misses(
    db_url: str, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(db_url) as conn:
        user = make_user(conn)
        recent = datetime.now(UTC) - timedelta(minutes=30)
        for _ in range(3):
            make_prebuild(conn, world.busy, owner=user, created_at=recent)
        prebuild = make_prebuild(conn, world.busy, created_at=recent - HOUR)
        conn.execute("UPDATE workspaces SET owner_id = %s WHERE id = %s",
                     (user, prebuild.workspace_id))  # fmt: skip
        add_build(conn, prebuild.workspace_id, transition="start", initiator=user,
                  created_at=recent, preset=world.busy)  # fmt: skip
        conn.commit()
    capsys.readouterr()
    assert run(db_url, "status") == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[-5:] == ["CLAIMS_24H", "MISSES_24H", "HIT_RATE", "STATUS", "BUSY"]
    rows = [dict(zip(header, line.split(), strict=False)) for line in lines[1:] if line]
    small = next(r for r in rows if r["PRESET"] == "small" and r["ACTIVE"] == "yes")
    assert (small["CLAIMS_24H"], small["MISSES_24H"], small["HIT_RATE"]) == ("1", "3", "25%")
    large = next(r for r in rows if r["PRESET"] == "large")
    assert (large["CLAIMS_24H"], large["MISSES_24H"], large["HIT_RATE"]) == ("0", "0", "-")


# ---- the CLI contract -----------------------------------------------------------------------


def test_set_and_list_with_json(
    db_url: str, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert autoscale(db_url, "set", "--preset", str(world.busy), "--mode", "auto",
                     "--min", "1", "--max", "8", "--json") == EXIT_OK  # fmt: skip
    stored = json.loads(capsys.readouterr().out)
    assert {k: stored[k] for k in ("template_name", "preset_name", "mode", "min", "max")} == {
        "template_name": "python", "preset_name": "small", "mode": "auto", "min": 1, "max": 8,
    }  # fmt: skip
    assert stored["active_preset_id"] == str(world.busy)
    assert stored["template_id"] == str(world.template)
    assert stored["desired_instances"] == 1
    # The previous version's preset names the same (template, name): it replaces the policy.
    assert autoscale(db_url, "set", "--preset", str(world.old_busy), "--mode", "forecast",
                     "--max", "3") == EXIT_OK  # fmt: skip
    assert "python" in capsys.readouterr().out
    assert autoscale(db_url, "list", "--json") == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [(p["preset_name"], p["mode"], p["min"], p["max"]) for p in listed] == [
        ("small", "forecast", 0, 3)
    ]
    assert autoscale(db_url, "set", "--preset", str(world.busy), "--mode", "off") == EXIT_OK
    capsys.readouterr()
    assert autoscale(db_url, "list") == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["TEMPLATE", "PRESET", "MODE", "MIN", "MAX"]
    assert table[1].split()[:5] == ["python", "small", "off", "0", "0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "auto", "--min", "3", "--max", "2"], "must not exceed --max"),
        (["--mode", "auto", "--min", "-1", "--max", "2"], "--min must be >= 0"),
        (["--mode", "forecast", "--max", "-2"], "--max must be >= 0"),
        (["--mode", "auto"], "--max is required with --mode auto"),
        (["--mode", "auto", "--max", "2", "--preset", str(uuid4())], "no preset"),
        (["--mode", "auto", "--max", "2", "--preset", "PLAIN"], "has no desired_instances"),
    ],
)
def test_bad_policies_exit_2_and_store_nothing(
    db_url: str,
    world: World,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    preset = str(world.busy)
    if "--preset" in args:
        i = args.index("--preset")
        preset = str(world.plain) if args[i + 1] == "PLAIN" else args[i + 1]
        args = args[:i] + args[i + 2 :]
    capsys.readouterr()
    assert autoscale(db_url, "set", "--preset", preset, *args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.startswith("prebuildd: autoscale set: ")
    assert scalar(db_url, POLICIES) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--mode", "sometimes", "--max", "2"],
        ["--mode", "auto", "--max", "two"],
        ["--mode", "auto", "--min", "1.5", "--max", "2"],
        ["--mode", "auto", "--max", "2", "--preset", "not-a-uuid"],
    ],
)
def test_malformed_flags_exit_2_and_store_nothing(
    db_url: str, world: World, args: list[str]
) -> None:
    full = ["--preset", str(world.busy), *args] if "--preset" not in args else args
    with pytest.raises(SystemExit) as exited:
        autoscale(db_url, "set", *full)
    assert exited.value.code == EXIT_USAGE
    assert scalar(db_url, POLICIES) == 0


def test_setting_a_policy_wakes_the_template(db_url: str, world: World) -> None:
    """A policy changes the template's plans: `autoscale set` wakes it at once (an event, as
    for a change of the preset's own settings), so no sweep has to find the work."""
    from _coder_schemas import EventInbox

    inbox = EventInbox(db_url)
    try:
        assert inbox.payloads() == []
        assert autoscale(db_url, "set", "--preset", str(world.busy), "--mode", "auto",
                         "--max", "5") == EXIT_OK  # fmt: skip
        got = [(p["k"], p.get("t")) for p in inbox.payloads()]
        assert got == [("preset_changed", str(world.template))]
        # Refused: nothing stored, nothing sent.
        assert autoscale(db_url, "set", "--preset", str(world.plain), "--mode", "auto",
                         "--max", "5") == EXIT_USAGE  # fmt: skip
        assert inbox.payloads() == []
    finally:
        inbox.close()


def test_the_database_refuses_what_the_cli_would(db_url: str, world: World) -> None:
    """The function is the last line: the service role cannot store nonsense either."""
    cases = [
        (world.busy, "sometimes", 0, 1),
        (world.busy, "auto", 2, 1),
        (world.busy, "auto", -1, 1),
        (world.busy, "auto", 0, -1),
        (world.busy, None, 0, 1),
        (world.plain, "auto", 0, 1),
        (uuid4(), "auto", 0, 1),
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        for preset, mode, lo, hi in cases:
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute(
                    "SELECT * FROM prebuildd.set_autoscale_policy(%s, %s, %s, %s)",
                    (preset, mode, lo, hi),
                )
        # The table's own checks hold even for a direct write by the owner.
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO prebuildd.autoscale_policies"
                " (template_id, preset_name, mode, min_instances, max_instances)"
                " VALUES (%s, 'x', 'auto', 3, 2)",
                (world.template,),
            )
    assert scalar(db_url, POLICIES) == 0
