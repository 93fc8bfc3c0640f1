"""`prebuildd run`: wires the listener, the queue, the workers, the sweep and the probes.

Data flows one way: notification -> listener -> queue -> worker -> reconciler -> store.
The listener only *wakes* templates; the database is the truth, and a sweep at start, after
every reconnect and every `sweep_interval` covers anything a lost notification missed.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from uuid import UUID

import anyio
import psycopg
from anyio.abc import TaskStatus
from psycopg_pool import AsyncConnectionPool

from prebuildd import store
from prebuildd.config import Settings, redact_dsn
from prebuildd.events import Event, EventKind
from prebuildd.http import HttpServerHandle, Readiness, start_http_server
from prebuildd.listener import Listener
from prebuildd.metrics import Metrics, PresetMetricsRow
from prebuildd.model import Plan, PrebuildStatus
from prebuildd.queries import query
from prebuildd.queue import QueueShutDown, Work, WorkQueue
from prebuildd.reconciler import Outcome, Reconciler, Trigger
from prebuildd.telemetry import set_db_namespace

log = logging.getLogger(__name__)

# After a reconcile could not lock a template (another replica holds it), look again after
# this long: the holder normally follows up itself, this only covers a holder that died.
BUSY_RETRY_SECONDS = 2.0
# After a failed reconcile (database down...), retry with this delay, doubling up to the cap.
ERROR_RETRY_SECONDS = 0.5
ERROR_RETRY_MAX_SECONDS = 10.0
# Changes a person made: reconciled at once, even inside the template's cooldown. The rest
# (provisioner progress: builds, job status, agents) is churn the cooldown may batch.
URGENT_EVENTS = frozenset(
    {
        EventKind.VERSION_PROMOTED,
        EventKind.TEMPLATE_CHANGED,
        EventKind.PRESET_CHANGED,
        EventKind.SCHEDULE_CHANGED,
        EventKind.CLAIMED,
    }
)
# On SIGTERM, how long reconciles in flight may run to their commit before being rolled back.
SHUTDOWN_GRACE_SECONDS = 3.0
# How often the per-preset metric series (created/failed/claimed totals) are refreshed.
METRICS_REFRESH_SECONDS = 15.0


class Service:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.metrics = metrics or Metrics()
        self.queue: WorkQueue[UUID] = WorkQueue(
            settle=settings.settle.total_seconds(), cooldown=settings.cooldown.total_seconds()
        )
        self.reconciler = Reconciler(settings.plan, clock=clock)
        self._clock = clock
        self._db_ok = False
        self._listener_ok = False
        self._started_sweep = False
        self._error_streak: dict[UUID, int] = {}
        # Latest plan per preset, for the per-preset gauges (desired/running/eligible).
        self._plans: dict[UUID, dict[UUID, Plan]] = {}
        self._http: HttpServerHandle | None = None
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            open=False,
            name="prebuildd",
            kwargs={"application_name": "prebuildd"},
            timeout=10.0,
        )
        # Called after every reconcile (the demo narrates them). The service itself keeps no
        # history of outcomes: at fleet scale they hold every plan of every sweep.
        self.on_outcome: Callable[[Outcome, Work[UUID] | None], None] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled (or SIGTERM/SIGINT when `handle_signals`), then stop cleanly."""
        await self.pool.open(wait=False)
        if self.settings.metrics_addr:
            self._http = start_http_server(self.settings.metrics_addr, self.metrics, self.readiness)
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(self._handle_signals, tg.cancel_scope)
                tg.start_soon(self._listener().run)
                for n in range(self.settings.concurrency):
                    tg.start_soon(self._worker, n)
                tg.start_soon(self._periodic_sweep)
                tg.start_soon(self._health_loop)
                tg.start_soon(self._metrics_loop)
                task_status.started()
        finally:
            await self._shutdown()

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http else None

    def latest_plans(self) -> Iterable[Plan]:
        """The most recent plan of every preset this replica reconciled."""
        for per_template in list(self._plans.values()):
            yield from per_template.values()

    def readiness(self) -> Readiness:
        return Readiness(db_ok=self._db_ok, listener_ok=self._listener_ok)

    async def _handle_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                # Take no new work; let reconciles in flight commit (they are short), and
                # cancel (roll back) whatever is still running after the grace period.
                self.queue.shutdown()
                drained = await self.queue.drain(SHUTDOWN_GRACE_SECONDS)
                if not drained:
                    log.warning("in-flight reconciles rolled back at shutdown")
                scope.cancel()
                return

    async def _shutdown(self) -> None:
        self.queue.shutdown()
        with anyio.CancelScope(shield=True):
            # Cancellation already rolled back any open reconcile transaction (psycopg rolls
            # back a transaction block left by an exception); closing returns the sockets.
            await self.pool.close(timeout=5.0)
            if self._http is not None:
                self._http.close()
        log.info("stopped")

    # ---- inputs: listener, sweeps, timers ----------------------------------------------

    def _listener(self) -> Listener:
        s = self.settings
        return Listener(
            self.conninfo,
            on_event=self._on_event,
            on_connected=self._on_connected,
            on_invalid=self._on_invalid,
            on_state=self._on_listener_state,
            liveness_interval=s.liveness_interval.total_seconds(),
            liveness_timeout=s.liveness_timeout.total_seconds(),
            max_backoff=s.reconnect_max_backoff.total_seconds(),
        )

    def _on_event(self, event: Event) -> None:
        self.metrics.events_received.labels(str(event.kind)).inc()
        if event.template_id is None:
            # A global change (the pause setting): every template may be affected.
            self._request_sweep("event")
            return
        self.queue.add(
            event.template_id,
            trigger="event",
            wall_time=event.at,
            urgent=event.kind in URGENT_EVENTS,
        )
        self.metrics.queue_depth.set(self.queue.depth())

    def _on_invalid(self, payload: str, reason: str) -> None:
        self.metrics.events_invalid.inc()
        log.warning(
            "ignored an invalid notification", extra={"reason": reason, "size": len(payload)}
        )

    def _on_connected(self) -> None:
        # Notifications sent while we were not listening are lost: look at everything.
        trigger = "sweep" if self._started_sweep else "startup"
        if self._started_sweep:
            self.metrics.listener_reconnects.inc()
        self._started_sweep = True
        self._request_sweep(trigger)

    def _on_listener_state(self, connected: bool) -> None:
        self._listener_ok = connected
        self.metrics.listener_connected.set(1 if connected else 0)

    def _request_sweep(self, trigger: str) -> None:
        # The sweep runs as queue work so it never overlaps a reconcile of the same template.
        self.queue.request_sweep(trigger=trigger)

    async def _periodic_sweep(self) -> None:
        interval = self.settings.sweep_interval.total_seconds()
        while True:
            await anyio.sleep(interval)
            await self._enqueue_all("sweep")

    async def _enqueue_all(self, trigger: str) -> None:
        try:
            async with self.pool.connection() as conn:
                ids = await store.list_prebuild_templates(conn)
        except psycopg.Error as exc:
            self._database_error(exc, "sweep")
            return
        for template_id in ids:
            self.queue.add(template_id, trigger=trigger, delay=0.0)
        self.metrics.queue_depth.set(self.queue.depth())

    def _schedule_timers(self, outcome: Outcome) -> None:
        now_wall = self._clock()
        now_mono = time.monotonic()
        for template_id, when in outcome.next_attention.items():
            delay = max(0.0, (when - now_wall).total_seconds())
            self.queue.add_at(template_id, now_mono + delay, trigger="timer")

    # ---- workers ---------------------------------------------------------------------

    async def _worker(self, number: int) -> None:
        while True:
            try:
                work = await self.queue.get(self.settings.max_batch)
            except QueueShutDown:
                return
            try:
                if work.full_sweep:
                    await self._full_sweep(work)
                else:
                    await self._reconcile_work(work)
            finally:
                self.queue.done(work)
                self.metrics.queue_depth.set(self.queue.depth())

    async def _full_sweep(self, work: Work[UUID]) -> None:
        meta = work.sweep_meta
        kind = "startup" if meta and "startup" in meta.triggers else "sweep"
        try:
            async with self.pool.connection() as conn:
                ids = await store.list_prebuild_templates(conn)
        except psycopg.Error as exc:
            self._database_error(exc, "sweep")
            self.queue.request_sweep(trigger="retry")
            return
        self._forget_templates_except(set(ids))
        batch = self.settings.max_batch
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            trigger = Trigger(kind, events=meta.events if meta else 0)
            if not await self._reconcile(chunk, trigger, work):
                self.queue.request_sweep(trigger="retry")
                return

    async def _reconcile_work(self, work: Work[UUID]) -> None:
        metas = [work.meta[k] for k in work.keys]
        kinds = {t for m in metas for t in m.triggers}
        kind = next((k for k in ("event", "startup", "timer", "sweep") if k in kinds), "retry")
        walls = [m.first_added_wall for m in metas if m.first_added_wall is not None]
        trigger = Trigger(
            kind, events=sum(m.events for m in metas), first_event_at=min(walls, default=None)
        )
        await self._reconcile(list(work.keys), trigger, work)

    async def _reconcile(self, ids: list[UUID], trigger: Trigger, work: Work[UUID]) -> bool:
        self.metrics.reconciles.labels(trigger.kind).inc()
        try:
            async with self.pool.connection() as conn:
                outcome = await self.reconciler.reconcile(conn, ids, trigger)
        except psycopg.Error as exc:
            self._database_error(exc, "database")
            self._retry_later(ids)
            return False
        except Exception:
            log.exception("reconcile crashed", extra={"templates": len(ids)})
            self.metrics.reconcile_errors.labels("template").inc()
            self._retry_later(ids)
            return False
        self._db_ok = True
        self._record(outcome, trigger, work)
        return True

    def _retry_later(self, ids: Iterable[UUID]) -> None:
        for template_id in ids:
            streak = self._error_streak.get(template_id, 0) + 1
            self._error_streak[template_id] = streak
            delay = min(ERROR_RETRY_MAX_SECONDS, ERROR_RETRY_SECONDS * 2 ** (streak - 1))
            self.queue.add(template_id, trigger="retry", delay=delay)

    def _database_error(self, exc: psycopg.Error, kind: str) -> None:
        # PoolTimeout is an OperationalError too: no connection could be had in time.
        if isinstance(exc, psycopg.OperationalError):
            self._db_ok = False
        self.metrics.reconcile_errors.labels(kind).inc()
        log.error("database error", extra={"where": kind, "error": redact_dsn(str(exc))})

    # ---- recording -------------------------------------------------------------------

    def _record(self, outcome: Outcome, trigger: Trigger, work: Work[UUID]) -> None:
        for template_id in outcome.locked:
            self._error_streak.pop(template_id, None)
        for template_id in outcome.busy:
            self.queue.add(template_id, trigger="retry", delay=BUSY_RETRY_SECONDS)
        self._schedule_timers(outcome)
        self._remember_plans(outcome)
        m = self.metrics
        m.reconciliation_duration.observe(outcome.duration)
        if outcome.lag is not None:
            m.reconcile_lag.observe(outcome.lag)
        for kind, count in outcome.actions_by_kind().items():
            m.actions.labels(kind).inc(count)
        if outcome.failed_presets:
            m.reconcile_errors.labels("preset").inc(len(outcome.failed_presets))
        for plan in outcome.plans:
            for error in plan.errors:
                m.input_errors.labels(_input_error_kind(error)).inc()
        m.set_paused(outcome.paused)
        self._log_outcome(outcome, trigger)
        if self.on_outcome is not None:
            self.on_outcome(outcome, work)

    def _log_outcome(self, outcome: Outcome, trigger: Trigger) -> None:
        acted = [p for p in outcome.plans if p.actions]
        if not acted and not outcome.failed_presets and trigger.kind in ("sweep", "timer"):
            level = logging.DEBUG  # a quiet sweep is not news
        else:
            level = logging.INFO
        log.log(
            level,
            "reconciled",
            extra={
                "trigger": trigger.kind,
                "template_id": str(outcome.locked[0]) if len(outcome.locked) == 1 else None,
                "templates": len(outcome.locked),
                "busy": len(outcome.busy),
                "events": trigger.events,
                "actions": outcome.actions_by_kind(),
                "failed_presets": len(outcome.failed_presets),
                "duration_ms": round(outcome.duration * 1000, 2),
                "lag_ms": None if outcome.lag is None else round(outcome.lag * 1000, 2),
                "paused": outcome.paused,
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
                    extra={"preset_id": str(plan.preset.id), "error": error},
                )

    def _remember_plans(self, outcome: Outcome) -> None:
        by_template: dict[UUID, dict[UUID, Plan]] = {t: {} for t in outcome.locked}
        for plan in outcome.plans:
            by_template.setdefault(plan.preset.template_id, {})[plan.preset.id] = plan
        self._plans.update(by_template)

    def _forget_templates_except(self, keep: set[UUID]) -> None:
        for template_id in list(self._plans):
            if template_id not in keep:
                del self._plans[template_id]

    # ---- background loops --------------------------------------------------------------

    async def _health_loop(self) -> None:
        interval = self.settings.liveness_interval.total_seconds()
        while True:
            try:
                with anyio.fail_after(self.settings.liveness_timeout.total_seconds() + 1):
                    async with self.pool.connection() as conn:
                        await conn.execute(query("ping"))
                        set_db_namespace(conn.info.dbname)
                self._db_ok = True
            except (psycopg.Error, TimeoutError):
                self._db_ok = False
            await anyio.sleep(interval)

    async def _metrics_loop(self) -> None:
        while True:
            await anyio.sleep(
                min(METRICS_REFRESH_SECONDS, self.settings.sweep_interval.total_seconds())
            )
            try:
                async with self.pool.connection() as conn:
                    rows = await store.read_metrics_rows(conn)
                    paused = await store.read_paused(conn)
            except psycopg.Error as exc:
                self._database_error(exc, "database")
                continue
            self.metrics.set_paused(paused)
            self.metrics.set_preset_rows(self._metric_rows(rows), time.time())

    def _metric_rows(self, totals: list[store.PresetMetricsTotals]) -> list[PresetMetricsRow]:
        # One row per active preset this replica planned, built or not: a preset whose every
        # create is rejected (validation_failed) has no build to total, and is exactly the one
        # an operator must see. Presets without builds report zero totals.
        by_preset = {total.preset_id: total for total in totals}
        plans = [p for per in self._plans.values() for p in per.values() if p.preset.is_active]
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
                    validation_failed=plan.preset.prebuild_status
                    is PrebuildStatus.VALIDATION_FAILED,
                )
            )
        return rows


def _labels(plan: Plan) -> tuple[str, str, str]:
    """The Prometheus labels of a preset's series (Coder's: template, preset, organization)."""
    p = plan.preset
    return (p.template_name, p.name, p.organization_name)


def _input_error_kind(error: str) -> str:
    """Map a planner error message onto the bounded `kind` label."""
    text = error.lower()
    for needle, kind in (
        ("timezone", "invalid_timezone"),
        ("overlap", "overlapping_schedules"),
        ("negative", "negative_desired"),
    ):
        if needle in text:
            return kind
    return "invalid_cron"
