"""Demand's pure side: rows -> histories, the hourly cache, and the per-preset series they feed
(claim misses, time saved by claims, the suggested pool size)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prometheus_client.parser import text_string_to_metric_families

from prebuildd import store
from prebuildd.collector import MetricsCollector
from prebuildd.demand import (
    DemandTotals,
    HistoryCache,
    PresetDemand,
    assemble_histories,
    policies_from_rows,
    recent_from_rows,
    totals_from_rows,
)
from prebuildd.forecast import history_window
from prebuildd.metrics import Metrics, PresetMetricsRow
from prebuildd.model import (
    HOURS_PER_WEEK,
    AutoscaleMode,
    AutoscalePolicy,
    DemandHistory,
    PlanConfig,
    Preset,
    PresetSnapshot,
)
from prebuildd.plan import plan_preset
from prebuildd.reconciler import Cause, Outcome
from prebuildd.trigger import Trigger

NOW = datetime(2025, 6, 2, 8, 20, tzinfo=UTC)  # Monday
SINCE, UNTIL = history_window(NOW)
T1, T2 = UUID(int=1), UUID(int=2)
P1, P2, P3 = UUID(int=11), UUID(int=12), UUID(int=13)


def test_histories_sum_every_version_of_a_name_by_hour() -> None:
    events = [
        (T1, "small", P1, 8, 2, 1),
        (T1, "small", P2, 8, 1, 0),  # an older version's preset of the same name
        (T1, "small", P1, 9, 0, 4),
        (T2, "small", P3, 8, 7, 7),  # another template's preset of that name
    ]
    refill = [
        (T1, "small", SINCE - timedelta(days=30), 240.0, 12),
        (T2, "small", UNTIL - timedelta(hours=5), None, 0),  # a young name, never built
        (T1, "quiet", SINCE, None, 0),  # a name with a policy and no demand
    ]
    found = assemble_histories(events, refill, since=SINCE, until=UNTIL)
    small = found[(T1, "small")]
    assert (small.hits[8], small.misses[8], small.misses[9]) == (3, 1, 4)
    assert sum(small.hits) + sum(small.misses) == 8
    assert (small.since, small.until) == (SINCE, UNTIL)
    assert (small.refill_seconds, small.refill_samples) == (240.0, 12)
    young = found[(T2, "small")]
    assert young.since == UNTIL - timedelta(hours=5) and young.refill_seconds is None
    assert found[(T1, "quiet")].hits == (0,) * HOURS_PER_WEEK
    # Demand of a name without a refill row (no policy) is not a history.
    assert set(found) == {(T1, "small"), (T2, "small"), (T1, "quiet")}


def test_recent_and_totals_and_policies_from_rows() -> None:
    recent = recent_from_rows([(T1, "small", P1, 8, 2, 1), (T1, "small", P1, 9, 1, 1)])
    assert recent == {P1: PresetDemand(P1, 3, 2)}
    assert recent[P1].hit_rate == 0.6 and PresetDemand(P2).hit_rate is None
    assert totals_from_rows([(P1, 4, 2, 810.0)]) == {P1: DemandTotals(P1, 4, 2, 810.0)}
    policies = policies_from_rows([(T1, "small", "auto", 1, 5)])
    assert policies == {(T1, "small"): AutoscalePolicy(T1, "small", AutoscaleMode.AUTO, 1, 5)}


def _history(until: datetime) -> DemandHistory:
    zeros = (0,) * HOURS_PER_WEEK
    return DemandHistory(since=until - timedelta(days=14), until=until, hits=zeros, misses=zeros)


def test_the_cache_holds_one_hour_per_template_and_knows_which_names_it_read() -> None:
    cache = HistoryCache()
    want = {T1: frozenset({"small"}), T2: frozenset({"small"})}
    assert cache.stale(want, UNTIL) == [T1, T2]
    cache.put(UNTIL, want, {(T1, "small"): _history(UNTIL)})
    assert cache.stale(want, UNTIL) == []
    assert cache.get((T1, "small"), UNTIL) == _history(UNTIL)
    assert cache.get((T2, "small"), UNTIL) is None  # read, and nothing there
    # A name whose policy appeared since: that template is read again, the other is not.
    assert cache.stale({T1: frozenset({"small", "large"}), T2: want[T2]}, UNTIL) == [T1]
    # The next hour: everything is stale; storing it drops the previous hour's entries.
    later = UNTIL + timedelta(hours=1)
    assert cache.stale(want, later) == [T1, T2]
    assert cache.get((T1, "small"), later) is None
    cache.put(later, {T1: want[T1]}, {(T1, "small"): _history(later)})
    assert len(cache) == 1 and cache.get((T1, "small"), UNTIL) is None


def _row(**overrides: object) -> PresetMetricsRow:
    values: dict[str, object] = {
        "template_name": "go", "preset_name": "large", "organization_name": "acme",
        "desired": 3, "running": 2, "eligible": 1, "created_total": 10, "failed_total": 4,
        "claimed_total": 6, "hard_limited": False, "validation_failed": False,
    }  # fmt: skip
    values.update(overrides)
    return PresetMetricsRow(**values)  # type: ignore[arg-type]


def test_demand_series_render_as_counter_summary_and_gauge() -> None:
    metrics = Metrics()
    with_policy = _row(misses_total=7, claims_measured=2, saved_seconds_total=810.0, suggested=4)
    without = _row(preset_name="small")
    metrics.set_preset_rows([with_policy, without], at=1.0)
    families = {
        f.name: f for f in text_string_to_metric_families(metrics.render().decode())
    }
    labels = {"template_name": "go", "preset_name": "large", "organization_name": "acme"}
    misses = families["prebuildd_prebuilt_workspaces_claim_misses"]
    assert misses.type == "counter"
    assert {s.value for s in misses.samples if s.labels == labels} == {7}
    saved = families["prebuildd_prebuilt_workspaces_claim_time_saved_seconds"]
    assert saved.type == "summary"
    by_name = {s.name: s.value for s in saved.samples if s.labels == labels}
    assert by_name == {
        "prebuildd_prebuilt_workspaces_claim_time_saved_seconds_count": 2,
        "prebuildd_prebuilt_workspaces_claim_time_saved_seconds_sum": 810.0,
    }
    suggested = families["prebuildd_prebuilt_workspaces_suggested"]
    assert suggested.type == "gauge"
    # Only the preset with a policy has a suggested size.
    assert [(s.labels["preset_name"], s.value) for s in suggested.samples] == [("large", 4)]


def test_the_collector_joins_demand_totals_and_the_plans_suggestion() -> None:
    c = MetricsCollector(Metrics())
    base = Preset(
        id=P1, name="small", template_id=T1, template_name="python", organization_id=T2,
        organization_name="acme", template_version_id=UUID(int=5), template_version_name="v",
        using_active_version=True, template_deleted=False, template_deprecated=False,
        desired_instances=1,
    )  # fmt: skip
    policy = AutoscalePolicy(T1, "small", AutoscaleMode.FORECAST, 0, 9)
    busy = dataclasses.replace(
        _history(UNTIL), hits=tuple(12 if h == 8 else 0 for h in range(HOURS_PER_WEEK))
    )
    planned = plan_preset(PresetSnapshot(base, policy=policy, demand=busy), NOW, PlanConfig())
    plain = plan_preset(
        PresetSnapshot(dataclasses.replace(base, id=P2, name="large")), NOW, PlanConfig()
    )
    c.observe(Outcome(Cause(Trigger.SWEEP), locked=(T1,), plans=[planned, plain]))
    totals = [store.PresetMetricsTotals(P1, "python", "small", "acme", 5, 1, 2)]
    rows = {r.preset_name: r for r in c.preset_rows(totals, {P1: DemandTotals(P1, 3, 2, 60.0)})}
    assert (rows["small"].misses_total, rows["small"].claims_measured) == (3, 2)
    assert rows["small"].saved_seconds_total == 60.0
    assert (rows["small"].desired, rows["small"].suggested) == (1, 3)
    assert (rows["large"].misses_total, rows["large"].suggested) == (0, None)
