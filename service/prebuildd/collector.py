"""Where the service's observations end up: metrics, log lines, the latest plans, readiness.

The dispatcher reports every reconcile here (`observe`, failed ones too) and every sweep's
listing (`keep_only`); the service reports what the listener and the health probe see. The
collector decides nothing and writes nothing to the database: it turns those reports into
Prometheus series (prebuildd.metrics), log lines, the `/readyz` flags and the latest plan of
every preset, which the per-preset series (desired, running, eligible...) and the demo read.
Like Coder's metricscollector.go, it is kept apart from the loop that reconciles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from uuid import UUID

import anyio
import psycopg

from prebuildd import store
from prebuildd.config import redact_dsn
from prebuildd.events import EventKind
from prebuildd.http import Readiness
from prebuildd.metrics import Metrics, PresetMetricsRow
from prebuildd.model import Plan, PrebuildStatus
from prebuildd.reconciler import Outcome
from prebuildd.trigger import Trigger

log = logging.getLogger(__name__)


class MetricsCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Latest plan per preset, per template, for the per-preset gauges.
        self._plans: dict[UUID, dict[UUID, Plan]] = {}
        self._db_ok = False
        self._listener_ok = False

    # ---- readiness ---------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """For `/readyz`: read from the HTTP server's thread, so it only reads two flags."""
        return Readiness(db_ok=self._db_ok, listener_ok=self._listener_ok)

    def database_reachable(self, ok: bool) -> None:
        """The health probe's verdict."""
        self._db_ok = ok

    def database_error(self, exc: psycopg.Error, where: str) -> None:
        """A statement failed: log it (without a password), count it, and note a lost link."""
        # PoolTimeout is an OperationalError too: no connection could be had in time.
        if isinstance(exc, psycopg.OperationalError):
            self._db_ok = False
        self.metrics.reconcile_errors.labels(where).inc()
        log.error("database error", extra={"where": where, "error": redact_dsn(str(exc))})

    # ---- the listener --------------------------------------------------------------------

    def event_received(self, kind: EventKind) -> None:
        self.metrics.events_received.labels(str(kind)).inc()

    def invalid_event(self, payload: str, reason: str) -> None:
        self.metrics.events_invalid.inc()
        log.warning(
            "ignored an invalid notification", extra={"reason": reason, "size": len(payload)}
        )

    def listener_state(self, connected: bool) -> None:
        self._listener_ok = connected
        self.metrics.listener_connected.set(1 if connected else 0)

    def listener_reconnected(self) -> None:
        self.metrics.listener_reconnects.inc()

    # ---- reconciles ----------------------------------------------------------------------

    def observe(self, outcome: Outcome) -> None:
        """Record one reconcile: counters, histograms, its log lines, its plans."""
        m = self.metrics
        m.reconciles.labels(outcome.cause.trigger).inc()
        if outcome.error is not None:
            self._failed(outcome, outcome.error)
            return
        self._db_ok = True
        self._remember_plans(outcome)
        m.reconciliation_duration.observe(outcome.duration)
        if outcome.lag is not None:
            m.reconcile_lag.observe(outcome.lag)
        for kind, count in outcome.actions_by_kind().items():
            m.actions.labels(kind).inc(count)
        if outcome.failed_presets:
            m.reconcile_errors.labels("preset").inc(len(outcome.failed_presets))
        for plan in outcome.plans:
            for error in plan.errors:
                m.input_errors.labels(error.kind).inc()
        m.set_paused(outcome.paused)
        _log_outcome(outcome)

    def _failed(self, outcome: Outcome, error: BaseException) -> None:
        if isinstance(error, psycopg.Error):
            self.database_error(error, "database")
            return
        log.error("reconcile crashed", exc_info=error, extra={"templates": len(outcome.failed)})
        self.metrics.reconcile_errors.labels("template").inc()

    def _remember_plans(self, outcome: Outcome) -> None:
        by_template: dict[UUID, dict[UUID, Plan]] = {t: {} for t in outcome.locked}
        for plan in outcome.plans:
            by_template.setdefault(plan.preset.template_id, {})[plan.preset.id] = plan
        self._plans.update(by_template)

    def keep_only(self, templates: Iterable[UUID]) -> None:
        """A sweep listed every template that has prebuilds: forget the plans of the rest."""
        keep = set(templates)
        for template_id in [t for t in self._plans if t not in keep]:
            del self._plans[template_id]

    def latest_plans(self) -> Iterator[Plan]:
        """The most recent plan of every preset this replica reconciled."""
        for per_template in list(self._plans.values()):
            yield from per_template.values()

    # ---- the per-preset series -------------------------------------------------------------

    async def refresh(self, conn: store.Conn) -> None:
        """Read the lifetime totals and the pause flag, and publish a new per-preset snapshot."""
        totals = await store.read_metrics_rows(conn)
        paused = await store.read_paused(conn)
        self.metrics.set_paused(paused)
        self.metrics.set_preset_rows(self.preset_rows(totals), time.time())

    async def refresh_periodically(self, interval: float, connect: store.Connect) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                async with connect() as conn:
                    await self.refresh(conn)
            except psycopg.Error as exc:
                self.database_error(exc, "database")

    def preset_rows(self, totals: list[store.PresetMetricsTotals]) -> list[PresetMetricsRow]:
        # One row per active preset this replica planned, built or not: a preset whose every
        # create is rejected (validation_failed) has no build to total, and is exactly the one
        # an operator must see. Presets without builds report zero totals.
        by_preset = {total.preset_id: total for total in totals}
        plans = [p for p in self.latest_plans() if p.preset.is_active]
        plans.sort(key=lambda p: (*_labels(p), str(p.preset.id)))
        rows: list[PresetMetricsRow] = []
        seen: set[tuple[str, str, str]] = set()
        for plan in plans:
            key = _labels(plan)
            if key in seen:
                continue
            seen.add(key)
            total = by_preset.get(plan.preset.id)
            state = plan.state
            rows.append(
                PresetMetricsRow(
                    template_name=key[0],
                    preset_name=key[1],
                    organization_name=key[2],
                    desired=state.desired,
                    running=state.running,
                    eligible=state.eligible,
                    created_total=total.created_total if total else 0,
                    failed_total=total.failed_total if total else 0,
                    claimed_total=total.claimed_total if total else 0,
                    hard_limited=state.hard_limited,
                    # Stored, or found by this plan (stored by the same reconcile).
                    validation_failed=state.validation_failed
                    or plan.preset.prebuild_status is PrebuildStatus.VALIDATION_FAILED,
                    creates_held=state.held,
                )
            )
        return rows


def _labels(plan: Plan) -> tuple[str, str, str]:
    """The Prometheus labels of a preset's series (Coder's: template, preset, organization)."""
    p = plan.preset
    return (p.template_name, p.name, p.organization_name)


def _log_outcome(outcome: Outcome) -> None:
    cause = outcome.cause
    acted = [p for p in outcome.plans if p.actions]
    quiet = not acted and not outcome.failed_presets
    # A quiet sweep or timer is not news.
    level = logging.DEBUG if quiet and cause.trigger in _ROUTINE else logging.INFO
    log.log(
        level,
        "reconciled",
        extra={
            "trigger": str(cause.trigger),
            "template_id": str(outcome.locked[0]) if len(outcome.locked) == 1 else None,
            "templates": len(outcome.locked),
            "busy": len(outcome.busy),
            "events": cause.events,
            "actions": outcome.actions_by_kind(),
            "failed_presets": len(outcome.failed_presets),
            "duration_ms": round(outcome.duration * 1000, 2),
            "lag_ms": None if outcome.lag is None else round(outcome.lag * 1000, 2),
            "paused": outcome.paused,
            # Creates waiting under --max-pending-prebuild-jobs (0 without the cap).
            "creates_held": sum(p.state.held for p in outcome.plans),
        },
    )
    for plan in acted:
        log.info(
            "preset actions",
            extra={
                "template": plan.preset.template_name,
                "preset": plan.preset.name,
                "preset_id": str(plan.preset.id),
                "actions": [str(a.kind) for a in plan.actions],
                "reasons": list(plan.reasons),
            },
        )
    for plan in outcome.plans:
        for error in plan.errors:
            log.warning(
                "invalid preset settings",
                extra={
                    "preset_id": str(plan.preset.id),
                    "kind": str(error.kind),
                    "error": error.message,
                },
            )


_ROUTINE = frozenset({Trigger.SWEEP, Trigger.TIMER})
