"""Prometheus metrics: Coder's prebuild metrics under the `prebuildd_` prefix, plus our own.

Everything lives in one `Metrics` object with its own `CollectorRegistry` (never the global
default), so tests and several services in one process do not share series. This module only
declares them; prebuildd.collector turns what the service observes into their values.

Two kinds of data:

* Per-preset series (desired, running, eligible, created/failed/claimed totals, hard-limited,
  validation-failed; claim misses, time saved by claims and the suggested pool size of
  demand-aware pools) come from a *snapshot* the collector replaces wholesale with
  `set_preset_rows`. The collector renders whatever the latest snapshot holds, so the series
  of a deleted preset vanish on the next snapshot and cardinality stays bounded by the number
  of live presets. The created/failed/claimed totals are cumulative counts that the database
  already keeps (as Coder derives them too), so they are exposed with type `counter` from the
  snapshot instead of being incremented here: a restart or a second replica reports the same
  numbers.
* Process-local instruments (events, queue, lag, listener, errors, reconcile duration) are
  ordinary prometheus_client objects, exposed as attributes for the modules that update them.

Labels with a known, bounded set of values are pre-initialised so that `rate()` works from the
first scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from prebuildd.model import ActionKind, InputErrorKind
from prebuildd.trigger import Trigger

PREFIX = "prebuildd_"
PRESET_LABELS = ("template_name", "preset_name", "organization_name")

# What started a reconcile (the `trigger` label and span attribute).
TRIGGERS = tuple(Trigger)
# Where a reconcile (or a sweep's listing) failed; kept small on purpose (it is a label).
RECONCILE_ERROR_KINDS = ("preset", "template", "database", "sweep")
# Invalid input found while planning (counted, then the planner falls back to a safe value).
INPUT_ERROR_KINDS = tuple(InputErrorKind)
# Why an expected event trigger does not fire (prebuildd.event_source).
TRIGGER_STATES = ("missing", "disabled")

# A reconcile touches one template (or a small batch): milliseconds usually, seconds when the
# database is slow; the tail buckets catch a stuck cycle.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# From the first event of a batch to the start of its reconcile: the settle window plus
# queueing, so sub-millisecond resolution is not useful but the low end matters.
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class PresetMetricsRow:
    """One preset's numbers in a metrics snapshot (built by prebuildd.collector)."""

    template_name: str
    preset_name: str
    organization_name: str
    desired: int
    running: int
    eligible: int
    created_total: int
    failed_total: int
    claimed_total: int
    hard_limited: bool
    validation_failed: bool
    # Creates held back by the cap on pending prebuild jobs at the preset's latest reconcile.
    creates_held: int = 0
    # Demand (sql/queries/demand.sql): lifetime misses; claims whose time saved was measurable
    # and the seconds saved over them; the pool size the forecast suggests (None: the preset
    # has no autoscale policy in force, and no series).
    misses_total: int = 0
    claims_measured: int = 0
    saved_seconds_total: float = 0.0
    suggested: int | None = None

    @property
    def labels(self) -> list[str]:
        return [self.template_name, self.preset_name, self.organization_name]


# (name suffix, help text, value of a row)
_PresetSeries = tuple[str, str, Callable[[PresetMetricsRow], float]]

# Rendered as counters.
_PRESET_COUNTERS: tuple[_PresetSeries, ...] = (
    (
        "prebuilt_workspaces_created_total",
        "Prebuilt workspaces created so far for each preset to reach its desired count.",
        lambda r: r.created_total,
    ),
    (
        "prebuilt_workspaces_failed_total",
        "Prebuilt workspaces of each preset whose build failed.",
        lambda r: r.failed_total,
    ),
    (
        "prebuilt_workspaces_claimed_total",
        "Prebuilt workspaces handed over to a user who created a workspace from the preset.",
        lambda r: r.claimed_total,
    ),
    (
        "prebuilt_workspaces_claim_misses_total",
        "Workspaces people created from the preset that were built from scratch although the "
        "preset keeps a pool (no prebuild was claimable).",
        lambda r: r.misses_total,
    ),
)
# The time a claim saved a person: the prebuild's create (queued to done) minus the claim
# build (queued to done), for claims where both succeeded; rendered as a summary (count, sum).
_SAVED = (
    "prebuilt_workspaces_claim_time_saved_seconds",
    "Time people did not wait thanks to a claim: the prebuild's create minus the claim build, "
    "over the claims where both succeeded.",
)
# Rendered as a gauge, for the presets with an autoscale policy in force only.
_SUGGESTED = (
    "prebuilt_workspaces_suggested",
    "Pool size the demand forecast suggests for presets with an autoscale policy (forecast "
    "or auto mode); in auto mode the desired count follows it.",
)
# Rendered as gauges.
_PRESET_GAUGES: tuple[_PresetSeries, ...] = (
    (
        "prebuilt_workspaces_desired",
        "How many prebuilt workspaces each preset should have right now.",
        lambda r: r.desired,
    ),
    (
        "prebuilt_workspaces_running",
        "Prebuilt workspaces whose latest build started successfully (claimable or not yet).",
        lambda r: r.running,
    ),
    (
        "prebuilt_workspaces_eligible",
        "Running prebuilt workspaces whose agents are ready, i.e. claimable now.",
        lambda r: r.eligible,
    ),
    (
        "prebuilt_workspaces_preset_hard_limited",
        "1 when the preset hit the failure hard limit and no longer gets new prebuilds.",
        lambda r: int(r.hard_limited),
    ),
    (
        "prebuilt_workspaces_preset_validation_failed",
        "1 when creating prebuilds for the preset was rejected as invalid input.",
        lambda r: int(r.validation_failed),
    ),
    (
        "prebuilt_workspaces_creates_held",
        "Creates the preset wants but holds back because its organization's provisioner tag "
        "set has --max-pending-prebuild-jobs create jobs waiting for a provisioner.",
        lambda r: r.creates_held,
    ),
)


class _PresetCollector(Collector):
    """Renders the latest snapshot; replacing the tuple is atomic, so no lock is needed."""

    def __init__(self) -> None:
        self.rows: tuple[PresetMetricsRow, ...] = ()

    def collect(self) -> Iterable[Metric]:
        rows = self.rows  # one read: a scrape sees one snapshot, never a mix of two
        yield from self._families(rows)

    def describe(self) -> Iterable[Metric]:
        # Lets the registry detect name clashes at registration without rendering rows.
        yield from self._families(())

    @staticmethod
    def _families(rows: Sequence[PresetMetricsRow]) -> Iterator[Metric]:
        for suffix, text, value in _PRESET_COUNTERS:
            counter = CounterMetricFamily(PREFIX + suffix, text, labels=PRESET_LABELS)
            for row in rows:
                counter.add_metric(row.labels, value(row))
            yield counter
        for suffix, text, value in _PRESET_GAUGES:
            gauge = GaugeMetricFamily(PREFIX + suffix, text, labels=PRESET_LABELS)
            for row in rows:
                gauge.add_metric(row.labels, value(row))
            yield gauge
        saved = SummaryMetricFamily(PREFIX + _SAVED[0], _SAVED[1], labels=PRESET_LABELS)
        for row in rows:
            saved.add_metric(row.labels, row.claims_measured, row.saved_seconds_total)
        yield saved
        suggested = GaugeMetricFamily(PREFIX + _SUGGESTED[0], _SUGGESTED[1], labels=PRESET_LABELS)
        for row in rows:
            if row.suggested is not None:
                suggested.add_metric(row.labels, row.suggested)
        yield suggested


class Metrics:
    """Every metric of the service, registered in `self.registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._presets = _PresetCollector()
        self.registry.register(self._presets)
        self._coder_style_gauges()
        self._event_metrics()
        self._reconcile_metrics()

    def _coder_style_gauges(self) -> None:
        self.reconciliation_paused = Gauge(
            PREFIX + "prebuilt_workspaces_reconciliation_paused",
            "1 while reconciliation is paused by the prebuilds_settings site config, else 0.",
            registry=self.registry,
        )
        self.metrics_last_updated = Gauge(
            PREFIX + "prebuilt_workspaces_metrics_last_updated",
            "Unix time (seconds) of the snapshot behind the per-preset series.",
            registry=self.registry,
        )
        # Coder's histogram has no label; ours has the trigger, so latency shows by cause.
        self.reconciliation_duration = Histogram(
            PREFIX + "prebuilds_reconciliation_duration_seconds",
            "Wall time of one reconcile, from taking the lock to the last action, by what "
            "triggered it.",
            ["trigger"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        for trigger in TRIGGERS:
            self.reconciliation_duration.labels(trigger)

    def _event_metrics(self) -> None:
        self.events_received = Counter(
            PREFIX + "events_received_total",
            "Valid notifications received from PostgreSQL, by event kind.",
            ["kind"],
            registry=self.registry,
        )
        self.events_invalid = Counter(
            PREFIX + "events_invalid_total",
            "Notifications ignored because their payload could not be parsed.",
            registry=self.registry,
        )
        self.listener_reconnects = Counter(
            PREFIX + "listener_reconnects_total",
            "Times the LISTEN connection was re-established after a loss.",
            registry=self.registry,
        )
        self.listener_connected = Gauge(
            PREFIX + "listener_connected",
            "1 while the LISTEN connection is up and answering liveness probes.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            PREFIX + "queue_depth",
            "Templates waiting in the work queue (queued or waiting for their ready time).",
            registry=self.registry,
        )

    def _reconcile_metrics(self) -> None:
        self.reconcile_lag = Histogram(
            PREFIX + "reconcile_lag_seconds",
            "Delay from the first event of a batch to the start of the reconcile it caused.",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.reconciles = Counter(
            PREFIX + "reconciles_total",
            "Reconciles started, by what triggered them.",
            ["trigger"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            PREFIX + "reconcile_errors_total",
            "Reconciles (or parts of one) that failed, by where they failed.",
            ["kind"],
            registry=self.registry,
        )
        self.actions = Counter(
            PREFIX + "actions_total",
            "Actions executed by reconciles, by action kind.",
            ["kind"],
            registry=self.registry,
        )
        self.input_errors = Counter(
            PREFIX + "input_errors_total",
            "Invalid preset or schedule settings met while planning, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.last_successful_reconcile = Gauge(
            PREFIX + "last_successful_reconcile_timestamp_seconds",
            "Unix time (seconds) the last reconcile that did not fail ended (templates held "
            "by another replica included); the process's start until the first one.",
            registry=self.registry,
        )
        self.last_successful_reconcile.set(time.time())
        _touch(self.reconciles, TRIGGERS)
        _touch(self.reconcile_errors, RECONCILE_ERROR_KINDS)
        _touch(self.actions, tuple(ActionKind))
        _touch(self.input_errors, INPUT_ERROR_KINDS)
        self._event_source_metrics()

    def _event_source_metrics(self) -> None:
        self.event_triggers_ok = Gauge(
            PREFIX + "event_triggers_ok",
            "1 when the last check found every trigger of sql/triggers/ present and enabled "
            "on Coder's tables; 0 otherwise, and before the first check.",
            registry=self.registry,
        )
        self.event_triggers_missing = Gauge(
            PREFIX + "event_triggers_missing",
            "Expected event triggers that do not fire for Coder's writes, at the last check: "
            "missing, or disabled. Changes to their tables wait for the periodic sweep; "
            "`prebuildd migrate` restores them.",
            ["state"],
            registry=self.registry,
        )
        for state in TRIGGER_STATES:
            self.event_triggers_missing.labels(state)
        self.sweep_found_work = Counter(
            PREFIX + "sweep_found_work_total",
            "Templates on which a periodic sweep performed actions that no event, timer or "
            "retry had queued since their previous reconcile, while the event source was "
            "trusted (listener connected): work the event source did not announce.",
            registry=self.registry,
        )

    def set_preset_rows(self, rows: Iterable[PresetMetricsRow], at: float) -> None:
        """Replace the per-preset snapshot; `at` is its unix time in seconds."""
        self._presets.rows = tuple(rows)
        self.metrics_last_updated.set(at)

    def set_paused(self, paused: bool) -> None:
        self.reconciliation_paused.set(1 if paused else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _touch(counter: Counter, values: Iterable[str]) -> None:
    """Create the child series with value 0 so they exist before the first increment."""
    for value in values:
        counter.labels(value)
