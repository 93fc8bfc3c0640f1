"""Where the service's observations end up: metrics, log lines, the latest plans, readiness.

The dispatcher reports every reconcile here (`observe`, failed ones too) and every sweep
(`sweep_failed`, `sweep_succeeded`); the sweeper reports its listings (`swept`) and its checks
of the event triggers (`event_triggers`); the service reports what the listener and the health
probe see. The collector decides nothing and writes nothing to the database: it turns those
reports into Prometheus series (prebuildd.metrics), log lines, the `/readyz` snapshot and the
latest plan of every preset, which the per-preset series (desired, running, eligible...) and
the demo read. Like Coder's metricscollector.go, it is kept apart from the loop that
reconciles.

Readiness (prebuildd.http has the body): a failing reconcile path makes the replica unready,
not only a dead connection. "Failing" means `FAILING_AFTER` (3) consecutive failures with no
success in between: of sweeps (their listing), or of reconciles (a whole batch rolled back;
one preset's rolled-back savepoint is not a failing path). One success clears it. The "why"
names the count and the last error: its class, SQLSTATE and primary message, never its
DETAIL (which may hold row values) and never a connection string.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from uuid import UUID

import anyio
import psycopg

from prebuildd import store
from prebuildd.config import redact_dsn
from prebuildd.demand import DemandTotals
from prebuildd.event_source import TriggerCheck, UnannouncedWork
from prebuildd.events import EventKind
from prebuildd.http import Readiness
from prebuildd.metrics import Metrics, PresetMetricsRow
from prebuildd.model import Plan, PrebuildStatus
from prebuildd.queue import KeyMeta
from prebuildd.reconciler import Outcome
from prebuildd.trigger import Trigger

log = logging.getLogger(__name__)

# Consecutive failures (sweeps, or reconciles) after which /readyz reports the path failing.
FAILING_AFTER = 3
# Longest error text in /readyz and the failure logs.
_ERROR_CHARS = 300
# Templates named in one "sweep found work no event announced" log line.
_LOGGED_TEMPLATES = 10


def describe_error(exc: BaseException) -> str:
    """One line about an error, safe for /readyz: its class, SQLSTATE and primary message.

    Never DETAIL or the query (they may carry row values), never a connection string. Errors
    that are not the database's are bugs: their class only (the log has the traceback).
    """
    name = type(exc).__name__
    if not isinstance(exc, psycopg.Error):
        return name
    message = exc.diag.message_primary or (str(exc).strip().splitlines() or [""])[0]
    code = f" ({exc.sqlstate})" if exc.sqlstate else ""
    return redact_dsn(f"{name}{code}: {message}".strip())[:_ERROR_CHARS]


def _lost_link(exc: BaseException) -> bool:
    """The database could not be reached (not: it refused or canceled a statement).

    OperationalError covers both: a connection that broke or could not be had in time
    (PoolTimeout; no SQLSTATE, or class 08, or the server shutting down: 57P0x) and a
    statement the server canceled (QueryCanceled, 57014), which says nothing about the link.
    """
    if not isinstance(exc, psycopg.OperationalError):
        return False
    code = exc.sqlstate
    return code is None or code.startswith(("08", "57P"))


class _Streak:
    """Consecutive failures of one path, and the last one's description."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self.last = ""

    def failed(self, exc: BaseException) -> None:
        self.count += 1
        self.last = describe_error(exc)

    def succeeded(self) -> None:
        self.count = 0

    def why(self) -> str | None:
        if self.count < FAILING_AFTER:
            return None
        return f"{self.count} {self.what} in a row failed; the last: {self.last}"


class MetricsCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Latest plan per preset, per template, for the per-preset gauges.
        self._plans: dict[UUID, dict[UUID, Plan]] = {}
        self._db_ok = False
        self._db_why: str | None = None
        self._listener_ok = False
        self._sweeps = _Streak("sweeps")
        self._reconciles = _Streak("reconciles")
        self._triggers: TriggerCheck | None = None
        self._triggers_why: str | None = None
        self.unannounced = UnannouncedWork()

    # ---- readiness ---------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """For `/readyz`: read from the HTTP server's thread, so it only reads attributes."""
        triggers = self._triggers
        state = "unknown" if triggers is None else "ok" if triggers.ok else "missing"
        return Readiness(
            db_ok=self._db_ok,
            listener_ok=self._listener_ok,
            sweep_failing=self._sweeps.why(),
            reconciles_failing=self._reconciles.why(),
            db_why=self._db_why,
            event_triggers=state,
            event_triggers_why=self._triggers_why,
        )

    def database_reachable(self, ok: bool, why: str | None = None) -> None:
        """The health probe's verdict."""
        self._db_ok = ok
        self._db_why = None if ok else why

    def database_error(self, exc: psycopg.Error, where: str) -> None:
        """A statement failed: log it (without a password), count it, and note a lost link."""
        if _lost_link(exc):
            self._db_ok = False
            self._db_why = describe_error(exc)
        self.metrics.reconcile_errors.labels(where).inc()
        log.error("database error", extra={"where": where, "error": redact_dsn(str(exc))})

    # ---- sweeps and the event source -------------------------------------------------------

    def sweep_failed(self, exc: BaseException, trigger: Trigger, *, retry_in: float | None) -> None:
        """A sweep could not list the templates; the dispatcher retries it in `retry_in` s."""
        self._sweeps.failed(exc)
        self.metrics.reconcile_errors.labels("sweep").inc()
        if _lost_link(exc):
            self._db_ok = False
            self._db_why = describe_error(exc)
        log.error(
            "sweep failed",
            exc_info=None if isinstance(exc, psycopg.Error) else exc,
            extra={
                "trigger": str(trigger),
                "error": describe_error(exc),
                "failures_in_a_row": self._sweeps.count,
                "retry_in_s": None if retry_in is None else round(retry_in, 2),
            },
        )

    def sweep_succeeded(self) -> None:
        if self._sweeps.count:
            log.info("sweep succeeded again", extra={"after_failures": self._sweeps.count})
        self._sweeps.succeeded()

    def swept(self, templates: Iterable[UUID], *, periodic: bool) -> None:
        """A sweep listed every template that has prebuilds (and queued each one)."""
        listed = tuple(templates)
        self.keep_only(listed)
        self.unannounced.swept(listed, periodic=periodic)

    def event_triggers(self, result: TriggerCheck | psycopg.Error) -> None:
        """A check of the event triggers (prebuildd.event_source), or why it failed."""
        m = self.metrics
        if isinstance(result, psycopg.Error):
            # Unknown, not missing: keep the gauges' last values, say why in /readyz.
            self._triggers = None
            self._triggers_why = f"the check failed: {describe_error(result)}"
            log.warning("could not check the event triggers", extra={"error": self._triggers_why})
            return
        previous = self._triggers
        self._triggers = result
        self._triggers_why = None if result.ok else result.describe()
        m.event_triggers_ok.set(1 if result.ok else 0)
        m.event_triggers_missing.labels("missing").set(len(result.missing))
        m.event_triggers_missing.labels("disabled").set(len(result.disabled))
        changed = previous is None or (previous.missing, previous.disabled) != (
            result.missing,
            result.disabled,
        )
        if not result.ok and changed:
            log.warning(
                "event triggers do not fire",
                extra={
                    "missing": [str(t) for t in result.missing],
                    "disabled": [str(t) for t in result.disabled],
                    "expected": len(result.expected),
                    "fix": "run `prebuildd migrate` as the owner of Coder's tables",
                },
            )
        elif result.ok and previous is not None and not previous.ok:
            log.info("event triggers fire again", extra={"expected": len(result.expected)})

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
        self.unannounced.listening(connected)

    def listener_reconnected(self) -> None:
        self.metrics.listener_reconnects.inc()

    # ---- reconciles ----------------------------------------------------------------------

    def observe(self, outcome: Outcome, entries: Mapping[UUID, KeyMeta] | None = None) -> None:
        """Record one reconcile: counters, histograms, its log lines, its plans. `entries` are
        the queue entries behind it (for the work no event announced)."""
        m = self.metrics
        m.reconciles.labels(outcome.cause.trigger).inc()
        if entries is not None:
            self._unannounced(self.unannounced.reconciled(entries, outcome), outcome)
        if outcome.error is not None:
            self._reconciles.failed(outcome.error)
            self._failed(outcome, outcome.error)
            return
        self._reconciles.succeeded()
        self._db_ok = True
        self._db_why = None
        m.last_successful_reconcile.set(time.time())
        self._remember_plans(outcome)
        m.reconciliation_duration.labels(outcome.cause.trigger).observe(outcome.duration)
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

    def _unannounced(self, templates: tuple[UUID, ...], outcome: Outcome) -> None:
        if not templates:
            return
        self.metrics.sweep_found_work.inc(len(templates))
        acted: dict[UUID, list[str]] = {t: [] for t in templates}
        for plan in outcome.plans:
            if plan.preset.template_id in acted and plan.actions:
                acted[plan.preset.template_id] += [str(a.kind) for a in plan.actions]
        log.warning(
            "sweep found work no event announced",
            extra={
                "templates": len(templates),
                "template_ids": [str(t) for t in templates[:_LOGGED_TEMPLATES]],
                "actions": sorted({kind for kinds in acted.values() for kind in kinds}),
                "hint": "are the event triggers installed and firing? `/readyz` and "
                "prebuildd_event_triggers_ok tell; a trigger function that fails warns in "
                "PostgreSQL's log",
            },
        )

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
        demand = await store.read_demand_totals(conn)
        paused = await store.read_paused(conn)
        self.metrics.set_paused(paused)
        self.metrics.set_preset_rows(self.preset_rows(totals, demand), time.time())

    async def refresh_periodically(self, interval: float, connect: store.Connect) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                async with connect() as conn:
                    await self.refresh(conn)
            except psycopg.Error as exc:
                self.database_error(exc, "database")

    def preset_rows(
        self,
        totals: list[store.PresetMetricsTotals],
        demand: Mapping[UUID, DemandTotals] | None = None,
    ) -> list[PresetMetricsRow]:
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
            missed = (demand or {}).get(plan.preset.id)
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
                    misses_total=missed.misses_total if missed else 0,
                    claims_measured=missed.claims_measured if missed else 0,
                    saved_seconds_total=missed.saved_seconds_total if missed else 0.0,
                    suggested=state.suggested,
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
            # Where the duration went (Outcome.stages), milliseconds per stage.
            "stages_ms": {k: round(v * 1000, 2) for k, v in outcome.stages.items()},
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
