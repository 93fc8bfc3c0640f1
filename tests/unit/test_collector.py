"""The metrics collector: what one observed reconcile turns into (series, readiness, plans), and
the per-preset rows it builds from its plans and the database's totals."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from uuid import UUID

import psycopg

from prebuildd import store
from prebuildd.collector import MetricsCollector
from prebuildd.metrics import Metrics
from prebuildd.model import (
    Plan,
    PlanConfig,
    PrebuildStatus,
    Preset,
    PresetSnapshot,
    Schedule,
)
from prebuildd.plan import plan_preset
from prebuildd.reconciler import Cause, Outcome
from prebuildd.trigger import Trigger

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


def preset(n: int, template: int, **changes: object) -> Preset:
    base = Preset(
        id=UUID(int=n),
        name=f"p{n}",
        template_id=UUID(int=template),
        template_name=f"t{template}",
        organization_id=UUID(int=99),
        organization_name="acme",
        template_version_id=UUID(int=100 + template),
        template_version_name="v1",
        using_active_version=True,
        template_deleted=False,
        template_deprecated=False,
        desired_instances=2,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def plan(p: Preset, *schedules: Schedule) -> Plan:
    return plan_preset(PresetSnapshot(p, schedules=schedules), NOW, PlanConfig())


def value(c: MetricsCollector, name: str, **labels: str) -> float | None:
    return c.metrics.registry.get_sample_value(name, labels)


def test_a_reconcile_counts_by_trigger_and_input_errors_by_their_typed_kind() -> None:
    c = MetricsCollector(Metrics())
    bad_cron = plan(preset(1, 1, scheduling_timezone="UTC"), Schedule(UUID(int=7), "0 9 * * *", 3))
    negative = plan(preset(2, 1, desired_instances=-1))
    outcome = Outcome(Cause(Trigger.TIMER), locked=(UUID(int=1),), plans=[bad_cron, negative])
    c.observe(outcome)
    assert value(c, "prebuildd_reconciles_total", trigger="timer") == 1
    assert value(c, "prebuildd_input_errors_total", kind="invalid_cron") == 1
    assert value(c, "prebuildd_input_errors_total", kind="negative_desired") == 1
    assert value(c, "prebuildd_input_errors_total", kind="invalid_timezone") == 0
    assert c.readiness().db_ok, "a reconcile that worked proves the database is reachable"


def test_every_trigger_has_a_series_from_the_first_scrape() -> None:
    c = MetricsCollector(Metrics())
    for trigger in Trigger:
        assert value(c, "prebuildd_reconciles_total", trigger=str(trigger)) == 0


def test_a_failed_reconcile_is_counted_where_it_failed() -> None:
    c = MetricsCollector(Metrics())
    c.database_reachable(True)
    lost = psycopg.OperationalError("server closed the connection")
    c.observe(Outcome(Cause(Trigger.EVENT), failed=(UUID(int=1),), error=lost))
    assert value(c, "prebuildd_reconcile_errors_total", kind="database") == 1
    assert not c.readiness().db_ok
    c.observe(Outcome(Cause(Trigger.EVENT), failed=(UUID(int=1),), error=KeyError("bug")))
    assert value(c, "prebuildd_reconcile_errors_total", kind="template") == 1
    assert value(c, "prebuildd_reconciles_total", trigger="event") == 2


def test_plans_are_kept_per_template_and_forgotten_when_a_sweep_no_longer_lists_it() -> None:
    c = MetricsCollector(Metrics())
    one, two = plan(preset(1, 1)), plan(preset(2, 2))
    c.observe(Outcome(Cause(Trigger.SWEEP), locked=(UUID(int=1), UUID(int=2)), plans=[one, two]))
    assert sorted(p.preset.id.int for p in c.latest_plans()) == [1, 2]
    # Template 1 reconciled again without its preset (it no longer wants prebuilds).
    c.observe(Outcome(Cause(Trigger.EVENT), locked=(UUID(int=1),), plans=[]))
    assert [p.preset.id.int for p in c.latest_plans()] == [2]
    c.keep_only([UUID(int=3)])
    assert list(c.latest_plans()) == []


def test_preset_rows_cover_active_planned_presets_with_their_totals() -> None:
    c = MetricsCollector(Metrics())
    built = plan(preset(1, 1))
    rejected = plan(preset(2, 1, prebuild_status=PrebuildStatus.VALIDATION_FAILED))
    retired = plan(preset(3, 1, using_active_version=False))
    c.observe(
        Outcome(Cause(Trigger.SWEEP), locked=(UUID(int=1),), plans=[built, rejected, retired])
    )
    totals = [store.PresetMetricsTotals(UUID(int=1), "t1", "p1", "acme", 5, 1, 2)]
    rows = {r.preset_name: r for r in c.preset_rows(totals)}
    assert set(rows) == {"p1", "p2"}  # the retired version's preset has no series
    assert (rows["p1"].created_total, rows["p1"].failed_total, rows["p1"].claimed_total) == (
        5,
        1,
        2,
    )
    assert rows["p1"].desired == 2 and not rows["p1"].validation_failed
    assert rows["p2"].created_total == 0 and rows["p2"].validation_failed


# ---- readiness: a failing reconcile path (issue 10 item 7) -----------------------------------


def test_reconciles_failing_repeatedly_make_the_replica_unready_until_one_works() -> None:
    c = MetricsCollector(Metrics())
    c.database_reachable(True)
    c.listener_state(True)
    timeout = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    for n in range(3):
        assert c.readiness().reconciles_failing is None, n
        c.observe(Outcome(Cause(Trigger.EVENT), failed=(UUID(int=1),), error=timeout))
    state = c.readiness()
    assert not state.ready
    assert state.reconciles_failing == (
        "3 reconciles in a row failed; the last: QueryCanceled (57014): "
        "canceling statement due to statement timeout"
    )
    c.observe(Outcome(Cause(Trigger.RETRY), locked=(UUID(int=1),)))
    assert c.readiness().reconciles_failing is None and c.readiness().ready


def test_error_descriptions_carry_no_password_and_no_detail() -> None:
    from prebuildd.collector import describe_error

    lost = psycopg.OperationalError(
        "connection to server failed: postgresql://prebuildd:s3cret@db/coder refused"
    )
    assert "s3cret" not in describe_error(lost)
    assert describe_error(lost).startswith("OperationalError: connection to server failed")
    assert describe_error(KeyError("a row value")) == "KeyError"


def test_a_successful_reconcile_is_timed_by_trigger_and_dated() -> None:
    c = MetricsCollector(Metrics())
    started = value(c, "prebuildd_last_successful_reconcile_timestamp_seconds")
    outcome = Outcome(Cause(Trigger.TIMER), locked=(UUID(int=1),), duration=0.3)
    c.observe(outcome)
    count = "prebuildd_prebuilds_reconciliation_duration_seconds_count"
    assert value(c, count, trigger="timer") == 1
    assert value(c, count, trigger="event") == 0
    done = value(c, "prebuildd_last_successful_reconcile_timestamp_seconds")
    assert started is not None and done is not None and done >= started
    failed = Outcome(Cause(Trigger.EVENT), failed=(UUID(int=1),), error=RuntimeError())
    c.observe(failed)
    assert value(c, "prebuildd_last_successful_reconcile_timestamp_seconds") == done


# ---- the event source (issue 14 item 3) ------------------------------------------------------


def test_event_trigger_checks_set_the_gauges_and_readyz_detail() -> None:
    from prebuildd.event_source import evaluate, expected_triggers

    c = MetricsCollector(Metrics())
    assert c.readiness().event_triggers == "unknown"
    every = [(t.table, t.name, "O") for t in expected_triggers()]
    c.event_triggers(evaluate(every))
    assert c.readiness().event_triggers == "ok"
    assert value(c, "prebuildd_event_triggers_ok") == 1

    broken = [(t, n, "D" if n == "prebuildd_job_status" else s) for t, n, s in every]
    c.event_triggers(evaluate([r for r in broken if r[1] != "prebuildd_claimed"]))
    state = c.readiness()
    assert state.event_triggers == "missing"
    assert state.event_triggers_why is not None
    assert "missing prebuildd_claimed on workspaces" in state.event_triggers_why
    assert value(c, "prebuildd_event_triggers_ok") == 0
    assert value(c, "prebuildd_event_triggers_missing", state="missing") == 1
    assert value(c, "prebuildd_event_triggers_missing", state="disabled") == 1

    c.event_triggers(psycopg.errors.InsufficientPrivilege("permission denied for pg_trigger"))
    assert c.readiness().event_triggers == "unknown"
    assert "the check failed" in (c.readiness().event_triggers_why or "")


def test_work_a_periodic_sweep_found_unannounced_is_counted() -> None:
    from prebuildd.queue import KeyMeta
    from prebuildd.store import ActionResult

    c = MetricsCollector(Metrics())
    t = UUID(int=1)
    c.listener_state(True)
    c.swept([t], periodic=False)  # the startup sweep, reconciled
    c.observe(Outcome(Cause(Trigger.STARTUP), locked=(t,)), {t: KeyMeta(0.0, None, 1, frozenset())})
    c.swept([t], periodic=True)
    p = plan(preset(1, 1))
    acted = Outcome(
        Cause(Trigger.SWEEP),
        locked=(t,),
        plans=[p],
        results=[ActionResult(p.actions[0].kind, p.preset.id, created=(UUID(int=9),))],
    )
    c.observe(acted, {t: KeyMeta(0.0, None, 1, frozenset({Trigger.SWEEP}))})
    assert value(c, "prebuildd_sweep_found_work_total") == 1
