"""The /metrics exposition: Coder's names and labels under `prebuildd_`, snapshot semantics."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from prebuildd.metrics import Metrics, PresetMetricsRow

LABELS = {"template_name": "go", "preset_name": "large", "organization_name": "acme"}
EVENT = {"trigger": "event"}


def row(**overrides: object) -> PresetMetricsRow:
    values: dict[str, object] = {
        "template_name": "go",
        "preset_name": "large",
        "organization_name": "acme",
        "desired": 3,
        "running": 2,
        "eligible": 1,
        "created_total": 10,
        "failed_total": 4,
        "claimed_total": 6,
        "hard_limited": True,
        "validation_failed": False,
    }
    values.update(overrides)
    return PresetMetricsRow(**values)  # type: ignore[arg-type]


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, keyed by name and sorted labels."""
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def types(metrics: Metrics) -> dict[str, str]:
    text = metrics.render().decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def key(name: str, labels: dict[str, str] | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted((labels or {}).items()))


def test_preset_series_render_with_coder_names_labels_and_values() -> None:
    metrics = Metrics()
    metrics.set_preset_rows([row()], at=1_700_000_000.0)
    got = samples(metrics)
    expected = {
        "prebuildd_prebuilt_workspaces_created_total": 10,
        "prebuildd_prebuilt_workspaces_failed_total": 4,
        "prebuildd_prebuilt_workspaces_claimed_total": 6,
        "prebuildd_prebuilt_workspaces_desired": 3,
        "prebuildd_prebuilt_workspaces_running": 2,
        "prebuildd_prebuilt_workspaces_eligible": 1,
        "prebuildd_prebuilt_workspaces_preset_hard_limited": 1,
        "prebuildd_prebuilt_workspaces_preset_validation_failed": 0,
    }
    for name, value in expected.items():
        assert got[key(name, LABELS)] == value, name
    assert got[key("prebuildd_prebuilt_workspaces_metrics_last_updated")] == 1_700_000_000.0


def test_cumulative_counts_are_exposed_as_counters() -> None:
    metrics = Metrics()
    metrics.set_preset_rows([row()], at=0.0)
    kinds = types(metrics)
    for name in ("created", "failed", "claimed"):
        assert kinds[f"prebuildd_prebuilt_workspaces_{name}"] == "counter"
    assert kinds["prebuildd_prebuilt_workspaces_desired"] == "gauge"
    assert kinds["prebuildd_prebuilds_reconciliation_duration_seconds"] == "histogram"


def test_series_of_a_preset_missing_from_the_next_snapshot_disappear() -> None:
    metrics = Metrics()
    other = {**LABELS, "preset_name": "small"}
    metrics.set_preset_rows([row(), row(preset_name="small", desired=1)], at=1.0)
    assert key("prebuildd_prebuilt_workspaces_desired", other) in samples(metrics)

    metrics.set_preset_rows([row()], at=2.0)
    got = samples(metrics)
    assert not [k for k in got if ("preset_name", "small") in k[1]]
    assert got[key("prebuildd_prebuilt_workspaces_desired", LABELS)] == 3

    metrics.set_preset_rows([], at=3.0)
    assert not [k for k in samples(metrics) if ("preset_name", "large") in k[1]]


def test_paused_gauge_flips() -> None:
    metrics = Metrics()
    name = key("prebuildd_prebuilt_workspaces_reconciliation_paused")
    assert samples(metrics)[name] == 0
    metrics.set_paused(True)
    assert samples(metrics)[name] == 1
    metrics.set_paused(False)
    assert samples(metrics)[name] == 0


def test_process_metrics_exist_and_bounded_labels_start_at_zero() -> None:
    metrics = Metrics()
    metrics.events_received.labels("preset").inc(2)
    metrics.events_invalid.inc()
    metrics.listener_reconnects.inc()
    metrics.listener_connected.set(1)
    metrics.queue_depth.set(5)
    metrics.reconcile_lag.observe(0.02)
    metrics.reconciliation_duration.labels("event").observe(0.2)
    metrics.actions.labels("create").inc(3)
    got = samples(metrics)
    assert got[key("prebuildd_events_received_total", {"kind": "preset"})] == 2
    assert got[key("prebuildd_events_invalid_total")] == 1
    assert got[key("prebuildd_listener_reconnects_total")] == 1
    assert got[key("prebuildd_listener_connected")] == 1
    assert got[key("prebuildd_queue_depth")] == 5
    assert got[key("prebuildd_reconcile_lag_seconds_count")] == 1
    assert got[key("prebuildd_prebuilds_reconciliation_duration_seconds_count", EVENT)] == 1
    # Latency by trigger: every trigger's series exists from the start.
    sweep = {"trigger": "sweep"}
    assert got[key("prebuildd_prebuilds_reconciliation_duration_seconds_count", sweep)] == 0
    assert got[key("prebuildd_actions_total", {"kind": "create"})] == 3
    # Known label values exist before anything happened, so rate() works from the start.
    assert got[key("prebuildd_actions_total", {"kind": "delete"})] == 0
    assert got[key("prebuildd_reconciles_total", {"trigger": "sweep"})] == 0
    assert got[key("prebuildd_reconcile_errors_total", {"kind": "database"})] == 0
    assert got[key("prebuildd_input_errors_total", {"kind": "invalid_cron"})] == 0
    assert got[key("prebuildd_event_triggers_ok")] == 0  # unknown until checked
    assert got[key("prebuildd_event_triggers_missing", {"state": "disabled"})] == 0
    assert got[key("prebuildd_sweep_found_work_total")] == 0


def test_last_successful_reconcile_starts_at_the_process_start() -> None:
    before = time.time()
    metrics = Metrics()
    started = samples(metrics)[key("prebuildd_last_successful_reconcile_timestamp_seconds")]
    assert before <= started <= time.time()


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.queue_depth.set(7)
    assert samples(second)[key("prebuildd_queue_depth")] == 0
