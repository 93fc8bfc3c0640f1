"""A broken event source is noticed, counted and repaired (issue 14 item 3), on a real
PostgreSQL: the service checks its triggers at startup and with every sweep, counts the work a
periodic sweep finds that no event announced, shows both in /metrics and /readyz, and
`prebuildd migrate` restores dropped or disabled triggers although its files are unchanged."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

import anyio
import psycopg
import pytest
from _live import (
    ELIGIBLE,
    eventually,
    fast_settings,
    fetch_value,
    running_provisioner,
    running_service,
)

from factories import make_org, make_preset, make_template
from prebuildd import event_source
from prebuildd.migrate import migrate
from prebuildd.service import Service

pytestmark = pytest.mark.anyio

BREAK = """
DROP TRIGGER prebuildd_claimed ON workspaces;
ALTER TABLE provisioner_jobs DISABLE TRIGGER prebuildd_job_status;
"""


def _check(url: str) -> event_source.TriggerCheck:
    with psycopg.connect(url, autocommit=True) as conn:
        return event_source.check_sync(conn)


def test_migrate_restores_dropped_and_disabled_triggers(db_url: str) -> None:
    assert _check(db_url).ok
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(BREAK)
        # Coder's own upgrade path: a table recreated under the same name has no triggers.
        conn.execute("ALTER TABLE template_version_preset_prebuild_schedules DISABLE TRIGGER ALL")
    broken = _check(db_url)
    assert [str(t) for t in broken.missing] == ["prebuildd_claimed on workspaces"]
    assert {str(t) for t in broken.disabled} == {
        "prebuildd_job_status on provisioner_jobs",
        "prebuildd_schedule_added_or_removed on template_version_preset_prebuild_schedules",
        "prebuildd_schedule_changed on template_version_preset_prebuild_schedules",
    }

    report = migrate(db_url)  # every file's checksum is unchanged
    assert report.applied == (
        "triggers/provisioner_jobs.sql",
        "triggers/template_version_preset_prebuild_schedules.sql",
        "triggers/workspaces.sql",
    )
    assert _check(db_url).ok
    assert migrate(db_url).applied == ()  # and then nothing more to do


def _readyz(port: int | None) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _metric(service: Service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


async def _holds(value: bool) -> bool:
    return value


async def test_the_service_notices_a_broken_event_source_and_migrate_repairs_it(
    db_url: str,
) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1)
        conn.commit()

    async def eligible(n: int) -> bool:
        return bool(await fetch_value(db_url, ELIGIBLE, {"preset": preset}) == n)

    settings = fast_settings(sweep_interval=timedelta(seconds=1))
    async with running_service(db_url, settings) as service, running_provisioner(db_url):
        port = service.http_port
        await eventually(lambda: eligible(1), timeout=30)
        await eventually(lambda: _holds(_metric(service, "prebuildd_event_triggers_ok") == 1))
        status, body = await anyio.to_thread.run_sync(_readyz, port)
        assert (status, body["event_triggers"]) == (200, "ok") and "why" not in body
        # Filling the pool was announced event by event, with a sweep every second meanwhile.
        assert _metric(service, "prebuildd_sweep_found_work_total") == 0

        # Quiet: the provisioner's last events are in (a reconcile named by the sweep alone
        # means no event was queued with it), so nothing but the sweep can find what follows.
        sweeps = _metric(service, "prebuildd_reconciles_total", trigger="sweep")
        await eventually(
            lambda: _holds(_metric(service, "prebuildd_reconciles_total", trigger="sweep") > sweeps)
        )
        # A change no trigger announces (this session fires none): only the periodic sweep
        # finds it, and counts it.
        with psycopg.connect(db_url) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute(
                "UPDATE template_version_presets SET desired_instances = 2 WHERE id = %s",
                (preset,),
            )
            conn.commit()
        await eventually(
            lambda: _holds(_metric(service, "prebuildd_sweep_found_work_total") >= 1), timeout=15
        )
        await eventually(lambda: eligible(2), timeout=30)

        # A Coder upgrade (or an operator) drops one trigger and disables another.
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(BREAK)

        def broken_seen() -> bool:
            return (
                _metric(service, "prebuildd_event_triggers_ok") == 0
                and _metric(service, "prebuildd_event_triggers_missing", state="missing") == 1
                and _metric(service, "prebuildd_event_triggers_missing", state="disabled") == 1
            )

        await eventually(lambda: _holds(broken_seen()), timeout=15)
        status, body = await anyio.to_thread.run_sync(_readyz, port)
        # Reported, not gating: the sweep still keeps the pools right (prebuildd.http).
        assert status == 200 and body["ready"] is True
        assert body["event_triggers"] == "missing"
        why = body["why"]["event_triggers"]
        assert "missing prebuildd_claimed on workspaces" in why
        assert "disabled prebuildd_job_status on provisioner_jobs" in why
        assert "prebuildd migrate" in why

        report = await anyio.to_thread.run_sync(migrate, db_url)
        assert {"triggers/workspaces.sql", "triggers/provisioner_jobs.sql"} <= set(report.applied)
        await eventually(lambda: _holds(_metric(service, "prebuildd_event_triggers_ok") == 1))
        status, body = await anyio.to_thread.run_sync(_readyz, port)
        assert (status, body["event_triggers"]) == (200, "ok") and "why" not in body
