"""Bad input of every kind in one database, against a real `prebuildd run` process.

Each bad thing must be logged (a JSON line naming it) and counted (/metrics), and none may stop
the valid presets, several of which share a template with the bad ones, from being reconciled
to exactly their desired count.
"""

from __future__ import annotations

import uuid
from collections import Counter
from uuid import UUID

import psycopg
import pytest
from _db import assert_integrity, pools, scalar
from _procs import Proc, Processes, Record, eventually, scrape

from factories import make_org, make_preset, make_template

pytestmark = pytest.mark.slow

CAP = 50  # --max-creates-per-cycle for this drill


def _seed(url: str) -> tuple[dict[str, UUID], dict[UUID, int]]:
    """Presets by name, and the pool each must end with."""
    with psycopg.connect(url) as conn:
        org = make_org(conn, name="acme")
        mixed = make_template(conn, org, name="mixed").version_id
        ids = {
            "valid-a": make_preset(conn, mixed, name="valid-a", desired=3),
            # Covers every hour in UTC: desired 2 from the schedule, not 1.
            "valid-sched": make_preset(
                conn, mixed, name="valid-sched", desired=1, timezone="UTC",
                schedules=[("* * * * *", 2)],
            ),
            # The minute field must be '*': invalid cron, falls back to desired_instances.
            "bad-cron": make_preset(
                conn, mixed, name="bad-cron", desired=2, schedules=[("0 9 * * *", 5)]
            ),
            "bad-tz": make_preset(
                conn, mixed, name="bad-tz", desired=1, timezone="Mars/Olympus_Mons",
                schedules=[("* * * * *", 4)],
            ),
            "overlap": make_preset(
                conn, mixed, name="overlap", desired=2, timezone="UTC",
                schedules=[("* * * * *", 5), ("* 0-23 * * 1-5", 6)],
            ),
            "negative": make_preset(conn, mixed, name="negative", desired=-3),
        }
        # A version whose import job does not exist: every create is invalid input.
        broken = make_template(conn, org, name="broken", import_job=False).version_id
        ids["no-import"] = make_preset(conn, broken, name="no-import", desired=1)
        # A template whose active version row does not exist: its presets are inactive.
        dangling = make_template(conn, org, name="dangling")
        ids["dangling"] = make_preset(conn, dangling.version_id, name="dangling", desired=2)
        conn.execute(
            "UPDATE templates SET active_version_id = %s WHERE id = %s",
            (uuid.uuid4(), dangling.id),
        )
        conn.commit()
    targets = {
        "valid-a": 3, "valid-sched": 2, "bad-cron": 2, "bad-tz": 1, "overlap": 2,
        "negative": 0, "no-import": 0, "dangling": 0,
    }
    return ids, {ids[name]: n for name, n in targets.items()}


def _at_targets(url: str, targets: dict[UUID, int]) -> bool:
    live = {p: pool.live for p, pool in pools(url).items()}
    return all(live.get(p, 0) == n for p, n in targets.items())


GARBAGE = (
    "not json at all",
    "x" * 7900,  # as large as PostgreSQL lets a payload be, and not JSON
    "[1, 2, 3]",
    '{"v": 2, "k": "job_status", "t": "6f1c6a56-8a4b-4f0c-9d7e-1b2c3d4e5f60"}',
    '{"v": 1, "k": "job_status", "t": "not-a-uuid"}',
    '{"v": 1, "k": "no_such_kind", "t": "6f1c6a56-8a4b-4f0c-9d7e-1b2c3d4e5f60"}',
)


def _send_garbage(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for payload in GARBAGE:
            conn.execute("SELECT pg_notify('prebuildd_events', %s)", (payload,))
        # Oversized payloads never reach a listener: PostgreSQL refuses them at NOTIFY.
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT pg_notify('prebuildd_events', %s)", ("y" * 9000,))


def test_bad_input_is_logged_counted_and_contained(db_url: str) -> None:
    ids, targets = _seed(db_url)
    with Processes(db_url) as procs:
        service = procs.service("--max-creates-per-cycle", str(CAP), sweep="2s")
        port = service.metrics_port()
        eventually(
            lambda: _at_targets(db_url, targets), timeout=60, what="every pool at its target",
            on_timeout=service.tail,
        )
        _send_garbage(db_url)
        _check_logged_and_counted(service, port, ids)
        _check_huge_desired_is_bounded_per_reconcile(db_url, service)
        # Still there after the burst of the huge preset and several sweeps.
        assert _at_targets(db_url, targets), {p: pools(db_url)[p].live for p in targets}
    status = scalar(
        db_url, "SELECT prebuild_status FROM template_version_presets WHERE id = %(p)s",
        {"p": ids["no-import"]},
    )
    assert status == "validation_failed"
    assert_integrity(db_url)


def _check_logged_and_counted(service: Proc, port: int, ids: dict[str, UUID]) -> None:
    def logged() -> list[Record] | None:
        records = service.records("ignored an invalid notification")
        return records if len(records) >= len(GARBAGE) else None

    invalid = eventually(logged, timeout=60, what="every garbage notification logged")
    assert len(invalid) == len(GARBAGE)
    assert max(r["size"] for r in invalid) == 7900

    # Planner input errors: one warning per preset per reconcile, naming the preset.
    warned = Counter(r["preset_id"] for r in service.records("invalid preset settings"))
    for name in ("bad-cron", "bad-tz", "overlap", "negative"):
        assert warned[str(ids[name])] >= 1, f"{name} not logged: {warned}"
    for name in ("valid-a", "valid-sched", "no-import", "dangling"):
        assert warned[str(ids[name])] == 0, f"{name} wrongly reported"
    rejected = {r["preset_id"] for r in service.records("preset rejected as invalid input")}
    assert rejected == {str(ids["no-import"])}

    labels = {"template_name": "broken", "preset_name": "no-import", "organization_name": "acme"}

    def shortfalls() -> list[str]:
        m = scrape(port)
        missing = [
            f"input_errors_total{{kind={kind}}}"
            for kind in (
                "invalid_cron", "invalid_timezone", "overlapping_schedules", "negative_desired"
            )
            if not m.value("prebuildd_input_errors_total", kind=kind)
        ]
        if m.value("prebuildd_events_invalid_total") != len(GARBAGE):
            missing.append(f"events_invalid_total={m.value('prebuildd_events_invalid_total')}")
        if not m.value("prebuildd_reconcile_errors_total", kind="preset"):
            missing.append("reconcile_errors_total{kind=preset}")
        if m.value("prebuildd_prebuilt_workspaces_preset_validation_failed", **labels) != 1:
            missing.append("prebuilt_workspaces_preset_validation_failed{no-import}")
        return missing

    eventually(
        lambda: not shortfalls(), timeout=60, what="every bad input counted in /metrics",
        interval=0.5, on_timeout=lambda: f"missing: {shortfalls()}",
    )


FIRST_BUILDS_BY_CYCLE = """
SELECT count(*) FROM workspace_builds
WHERE template_version_preset_id = %(p)s AND build_number = 1
GROUP BY created_at ORDER BY created_at
"""


def _check_huge_desired_is_bounded_per_reconcile(url: str, service: Proc) -> None:
    """desired = 100000: each reconcile creates exactly CAP; the rest follows cycle by cycle."""
    with psycopg.connect(url) as conn:
        tpl = make_template(conn, make_org(conn), name="huge")
        huge = make_preset(conn, tpl.version_id, name="huge", desired=100_000)
        conn.commit()
    count = "SELECT count(*) FROM workspace_builds WHERE template_version_preset_id = %(p)s"
    eventually(lambda: scalar(url, count, {"p": huge}) >= CAP, timeout=60, what="first cycle")
    # Stop the follow-ups (each cycle's own builds wake the next) before the table balloons.
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE template_version_presets SET desired_instances = 0 WHERE id = %s", (huge,)
        )
    service.wait_for(
        lambda r: r.get("msg") == "reconciled" and r.get("template_id") == str(tpl.id)
        and not r.get("actions"),
        timeout=60,
        what="an idle reconcile of the huge template",
    )
    with psycopg.connect(url) as conn:
        cycles = [row[0] for row in conn.execute(FIRST_BUILDS_BY_CYCLE, {"p": huge})]
    print(f"huge desired: {len(cycles)} capped cycle(s) of {cycles[0]} before desired was lowered")
    assert cycles[0] == CAP, cycles
    assert all(n == CAP for n in cycles), cycles
