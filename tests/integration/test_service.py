"""The event-driven engine end to end, in-process: real triggers, LISTEN, queue, reconciler,
store and simulated provisioner on a real PostgreSQL. The periodic sweep is set to an hour,
so everything that happens here was driven by notifications or by the plans' own timers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from _live import (
    CANCELED_CREATES,
    DELETE_BUILDS,
    ELIGIBLE,
    LIVE_PREBUILDS,
    PENDING_CREATES,
    eventually,
    fast_settings,
    fetch_value,
    reconciles,
    running_provisioner,
    running_service,
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from factories import make_org, make_preset, make_template, make_user, make_version, promote
from prebuildd.model import PlanConfig, Preset, PresetSnapshot
from prebuildd.plan import plan_preset
from prebuildd.reconciler import Cause, Outcome
from prebuildd.service import Service
from prebuildd.telemetry import setup_tracing
from prebuildd.trigger import Trigger

pytestmark = pytest.mark.anyio

WAIT = 60.0  # seconds; generous on a loaded machine, only reached when something is wrong


def _count(url: str, statement: str, **params: Any) -> Any:
    async def check_equals(expected: int) -> bool:
        return bool(await fetch_value(url, statement, params) == expected)

    return check_equals


async def _ready(service: Any) -> None:
    async def listening() -> bool:
        return bool(service.readiness().listener_ok)

    await eventually(listening)


async def test_promotion_cancels_stale_jobs_and_queues_new_version_without_a_sweep(
    db_url: str,
) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        old = make_preset(conn, tpl.version_id, name="dev", desired=2)
        v2 = make_version(conn, tpl.id, active=False)
        new = make_preset(conn, v2, name="dev", desired=2)
        conn.commit()
    # No provisioner: the creates stay pending, as they do when provisioners are saturated.
    async with running_service(db_url) as service:
        await _ready(service)
        await eventually(lambda: _count(db_url, PENDING_CREATES, preset=old)(2))
        with psycopg.connect(db_url) as conn:
            promote(conn, tpl.id, v2)
            conn.commit()
        await eventually(
            lambda: _both(
                _count(db_url, CANCELED_CREATES, preset=old)(2),
                _count(db_url, PENDING_CREATES, preset=new)(2),
            ),
            timeout=WAIT,
        )
        # The outcome, not the time: no sweep ran (the periodic one is an hour away), so
        # the promotion was acted on by its event.
        assert reconciles(service, "sweep") == 0
        assert reconciles(service, "event") >= 1


async def _both(*checks: Any) -> bool:
    return all([await c for c in checks])


async def test_claim_is_replaced_and_lowered_desired_deletes_surplus(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=3)
        user = make_user(conn)
        conn.commit()
    async with running_service(db_url) as service, running_provisioner(db_url):
        await _ready(service)
        await eventually(lambda: _count(db_url, ELIGIBLE, preset=preset)(3), timeout=WAIT)

        from prebuildd.claim import claim

        with psycopg.connect(db_url) as conn, conn.transaction():
            assert claim(conn, preset_id=preset, user_id=user, name="mine") is not None
        # The claim's notification wakes the template: a replacement brings it back to 3.
        await eventually(lambda: _count(db_url, ELIGIBLE, preset=preset)(3), timeout=WAIT)

        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE template_version_presets SET desired_instances = 1 WHERE id = %s",
                (preset,),
            )
            conn.commit()
        await eventually(lambda: _count(db_url, DELETE_BUILDS, preset=preset)(2), timeout=WAIT)
        await eventually(lambda: _count(db_url, LIVE_PREBUILDS, preset=preset)(1), timeout=WAIT)


async def test_ttl_expiry_is_acted_on_by_a_timer(db_url: str) -> None:
    ttl = 3
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        preset = make_preset(conn, tpl.version_id, desired=1, ttl=ttl)
        conn.commit()
    async with running_service(db_url) as service, running_provisioner(db_url):
        await _ready(service)
        await eventually(lambda: _count(db_url, ELIGIBLE, preset=preset)(1), timeout=WAIT)
        timers_before = reconciles(service, "timer")
        # Nothing else happens now; only the plan's reported expiry can wake the template.
        await eventually(lambda: _count(db_url, DELETE_BUILDS, preset=preset)(1), timeout=WAIT)
        first = await fetch_value(
            db_url,
            "SELECT min(w.created_at) FROM workspaces w JOIN workspace_builds b "
            "ON b.workspace_id = w.id WHERE b.template_version_preset_id = %(p)s",
            {"p": preset},
        )
        deleted_at = await fetch_value(
            db_url,
            "SELECT min(created_at) FROM workspace_builds WHERE transition = 'delete' "
            "AND template_version_preset_id = %(p)s",
            {"p": preset},
        )
        assert deleted_at >= first + timedelta(seconds=ttl), "deleted before it expired"
        assert reconciles(service, "timer") > timers_before
        # And a replacement is created for the expired one.
        await eventually(lambda: _count(db_url, ELIGIBLE, preset=preset)(1), timeout=WAIT)


async def test_every_reconcile_is_a_span_tree(db_url: str) -> None:
    exporter = InMemorySpanExporter()
    tracing = setup_tracing(service_version="test", extra_processor=SimpleSpanProcessor(exporter))
    try:
        with psycopg.connect(db_url) as conn:
            tpl = make_template(conn, make_org(conn))
            old = make_preset(conn, tpl.version_id, desired=1)
            v2 = make_version(conn, tpl.id, active=False)
            make_preset(conn, v2, desired=1)
            conn.commit()
        settings = fast_settings(sweep_interval=timedelta(milliseconds=700))
        async with running_service(db_url, settings) as service:
            await _ready(service)
            # The startup sweep fills the old version first; then the promotion has work.
            await eventually(lambda: _count(db_url, PENDING_CREATES, preset=old)(1))
            with psycopg.connect(db_url) as conn:
                promote(conn, tpl.id, v2)
                conn.commit()

            async def seen_all_triggers() -> bool:
                triggers = {
                    s.attributes.get("prebuildd.trigger")
                    for s in exporter.get_finished_spans()
                    if s.name == "prebuildd.reconcile" and s.attributes
                }
                return {"startup", "event", "sweep"} <= triggers

            await eventually(seen_all_triggers, timeout=WAIT)
    finally:
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "prebuildd.reconcile"]
    event_root = next(
        s
        for s in roots
        if s.attributes
        and s.attributes.get("prebuildd.trigger") == "event"
        and s.attributes.get("prebuildd.actions.create", 0)
    )
    attrs = event_root.attributes or {}
    assert attrs["prebuildd.template_id"] == str(tpl.id)
    assert attrs["prebuildd.events_coalesced"] >= 1
    assert attrs["prebuildd.lag_ms"] >= 0
    assert attrs["prebuildd.presets_seen"] == 2
    assert attrs["prebuildd.presets_acted"] == 2
    assert attrs["prebuildd.actions.cancel_pending"] == 1
    children = {
        s.name for s in spans if s.parent and s.parent.span_id == event_root.context.span_id
    }
    # Database spans follow OTel's conventions and never carry parameter values.
    db_spans = [s for s in spans if s.name == "SELECT prebuildd.snapshot_prebuilds"]
    assert db_spans
    db_attrs = db_spans[0].attributes or {}
    assert db_attrs["db.system.name"] == "postgresql"
    assert db_attrs["db.operation.name"] == "SELECT"
    assert db_attrs["db.query.summary"] == "SELECT prebuildd.snapshot_prebuilds"
    assert not any("param" in key for key in db_attrs)
    assert {
        "prebuildd.lock_templates",
        "prebuildd.read_snapshot",
        "prebuildd.plan",
        "prebuildd.action.create",
        "prebuildd.action.cancel_pending",
    } <= children


async def test_a_sweep_forgets_the_plans_of_templates_it_no_longer_lists(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        tpl = make_template(conn, make_org(conn))
        make_preset(conn, tpl.version_id, desired=1)
        conn.commit()
    service = Service(fast_settings(), db_url)  # wired, not running: the sweep is called here
    gone = UUID(int=0xDEAD)  # a template reconciled earlier, deleted since
    stale = plan_preset(PresetSnapshot(_preset_of(gone)), datetime.now(UTC), PlanConfig())
    service.collector.observe(Outcome(Cause(Trigger.EVENT), locked=(gone,), plans=[stale]))
    assert list(service.collector.latest_plans()) == [stale]
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        swept = await service.sweeper.sweep(conn, Trigger.SWEEP)
    assert tpl.id in swept.templates and gone not in swept.templates
    assert list(service.collector.latest_plans()) == []
    assert service.queue.depth() == len(swept.templates)


def _preset_of(template_id: UUID) -> Preset:
    return Preset(
        id=UUID(int=0xBEEF),
        name="p",
        template_id=template_id,
        template_name="gone",
        organization_id=UUID(int=1),
        organization_name="o",
        template_version_id=UUID(int=2),
        template_version_name="v",
        using_active_version=True,
        template_deleted=False,
        template_deprecated=False,
        desired_instances=1,
    )
