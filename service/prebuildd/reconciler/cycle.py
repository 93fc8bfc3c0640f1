"""The transaction of one reconcile (prebuildd.reconciler): lock, read the snapshot, plan at the
database's `now()`, then the throttle step and the plans' actions; or, for a dry run, a READ
ONLY transaction that reads and plans without a lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from uuid import UUID

from opentelemetry import trace
from psycopg import AsyncConnection

from prebuildd import store
from prebuildd.clock import DatabaseClock
from prebuildd.config import CODER_NOTIFICATION_DEFAULTS, NotificationDelivery
from prebuildd.demand import HistoryCache
from prebuildd.gc_pause import deferred_collection
from prebuildd.model import PlanConfig
from prebuildd.plan import can_skip, plan_preset
from prebuildd.reconciler.actions import execute_plans
from prebuildd.reconciler.outcome import Cause, Outcome, Stages, collect_next_attention
from prebuildd.reconciler.throttle_step import record_waits, share_room

_tracer = trace.get_tracer("prebuildd.reconciler")

# Up to this many templates, a reconcile takes its locks and reads its snapshot in one round
# trip (store.lock_and_read_snapshot); a busy template's rows are then read for nothing, so a
# sweep's batches (up to 200) lock first and read only what they hold.
LOCK_WITH_READS_MAX = 8


def utc_now() -> datetime:
    """This host's wall clock: only a fallback (see Reconciler), never a plan's `now`."""
    return datetime.now(UTC)


class Reconciler:
    def __init__(
        self,
        config: PlanConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        dry_run: bool = False,
        notifications: NotificationDelivery = CODER_NOTIFICATION_DEFAULTS,
    ) -> None:
        """`clock` is this host's wall clock. Plans, writes and timers never use it: they use
        the database's clock, read with every snapshot. It only dates an event's lag before
        the first snapshot was read (after that, the latest database clock reading does).

        `dry_run`: plan only, in a read-only transaction without locks (prebuildd.reconciler).
        `notifications`: how Coder delivers the notice of a preset reaching the hard limit.
        """
        self._config = config
        self._notifications = notifications
        self._clock = clock
        self._dry_run = dry_run
        # The latest reading of the database's clock (the lag of reconciles that read none).
        self._db_clock: DatabaseClock | None = None
        # Demand histories of templates with autoscale policies, read once per hour.
        self._histories = HistoryCache()

    async def reconcile(
        self, conn: AsyncConnection[object], template_ids: Sequence[UUID], cause: Cause
    ) -> Outcome:
        """Reconcile `template_ids` on `conn` (which must not be inside a transaction)."""
        outcome = Outcome(cause)
        started = time.monotonic()
        with _tracer.start_as_current_span("prebuildd.reconcile") as span:
            _annotate_start(span, template_ids, cause)
            async with conn.transaction():
                if self._dry_run:
                    await self._read_only_cycle(conn, template_ids, outcome)
                else:
                    await self._locked_cycle(conn, template_ids, outcome)
                committing = time.monotonic()
            ended = time.monotonic()
            outcome.stages["commit"] = ended - committing
            outcome.duration = ended - started
            outcome.lag = self._lag(cause, started)
            _annotate_end(span, outcome)
        return outcome

    def _lag(self, cause: Cause, started: float) -> float | None:
        """From the first event's commit (the database's time) to this reconcile's start, both
        on the database's clock; the host's wall clock only until one was read."""
        if cause.event_at is None:
            return None
        db_clock = self._db_clock
        at_start = db_clock.now(started) if db_clock is not None else self._clock()
        return max(0.0, at_start.timestamp() - cause.event_at)

    async def _read_only_cycle(
        self, conn: AsyncConnection[object], template_ids: Sequence[UUID], outcome: Outcome
    ) -> None:
        """A dry run: every template read and planned, no lock taken, nothing written."""
        wanted = tuple(dict.fromkeys(template_ids))
        with _tracer.start_as_current_span("prebuildd.read_snapshot") as span:
            snapshot = await store.read_snapshot(
                conn, wanted, config=self._config, read_only=True, histories=self._histories
            )
            span.set_attribute("prebuildd.presets", len(snapshot.presets))
        outcome.locked = wanted
        if snapshot.locks is not None:
            busy = snapshot.locks.reconciling
            outcome.reconciling = tuple(t for t in wanted if t in busy)
            outcome.coder_reconciling = snapshot.locks.coder_reconciling
        self._plan(snapshot, outcome, every_preset=True)
        cap = self._config.max_pending_prebuild_jobs
        if cap > 0:
            await share_room(conn, wanted, outcome, snapshot.now, cap, lock=False)

    async def _locked_cycle(
        self, conn: AsyncConnection[object], template_ids: Sequence[UUID], outcome: Outcome
    ) -> None:
        stages = Stages(outcome.stages)
        wanted = tuple(dict.fromkeys(template_ids))
        if len(wanted) <= LOCK_WITH_READS_MAX:
            # An event's few templates: the locks and the reads in one round trip (busy
            # templates are read for nothing, rarely).
            # Two sibling spans over the one round trip, as the two steps are traced apart.
            lock_span = _tracer.start_span("prebuildd.lock_templates")
            read_span = _tracer.start_span("prebuildd.read_snapshot")
            try:
                locked, snapshot = await store.lock_and_read_snapshot(
                    conn,
                    wanted,
                    config=self._config,
                    skip_idle=True,
                    histories=self._histories,
                )
                read_span.set_attribute("prebuildd.presets", len(snapshot.presets))
            finally:
                read_span.end()
                lock_span.end()
            stages.done("lock_read")
        else:
            with _tracer.start_as_current_span("prebuildd.lock_templates"):
                locked = await store.lock_templates(conn, wanted)
            stages.done("lock")
            snapshot = None
        outcome.locked = tuple(locked)
        held = set(locked)
        outcome.busy = tuple(t for t in wanted if t not in held)
        if not locked:
            return
        if snapshot is None:
            with _tracer.start_as_current_span("prebuildd.read_snapshot") as span:
                snapshot = await store.read_snapshot(
                    conn, locked, config=self._config, skip_idle=True, histories=self._histories
                )
                span.set_attribute("prebuildd.presets", len(snapshot.presets))
            stages.done("read")
        # Presets of retired versions with nothing left to clean up are most of a big fleet
        # and can produce no action: skip them (dry runs, whose plans are the product, don't).
        # The store already left them out (`skip_idle`); `can_skip` stays the rule.
        self._plan(snapshot, outcome, every_preset=False)
        stages.done("plan")
        if snapshot.paused:
            return
        verdict = None
        cap = self._config.max_pending_prebuild_jobs
        if cap > 0:
            verdict = await share_room(conn, locked, outcome, snapshot.now, cap, lock=True)
            stages.done("throttle")
        await execute_plans(conn, snapshot.now, outcome, stages, self._notifications)
        if verdict is not None:
            await record_waits(conn, locked, verdict)
            outcome.wake = verdict.wake

    def _plan(self, snapshot: store.Snapshot, outcome: Outcome, *, every_preset: bool) -> None:
        """Plan the snapshot's presets at the database's now (pure: plan.plan_preset)."""
        now = snapshot.now
        self._db_clock = snapshot.clock
        outcome.now, outcome.clock = now, snapshot.clock
        outcome.paused = snapshot.paused
        with _tracer.start_as_current_span("prebuildd.plan"), deferred_collection():
            outcome.plans = [
                plan_preset(ps, now, self._config)
                for ps in snapshot.presets
                if every_preset or not can_skip(ps)
            ]
        collect_next_attention(outcome)


def _annotate_start(span: trace.Span, template_ids: Sequence[UUID], cause: Cause) -> None:
    span.set_attribute("prebuildd.trigger", str(cause.trigger))
    span.set_attribute("prebuildd.templates", len(template_ids))
    if len(template_ids) == 1:
        span.set_attribute("prebuildd.template_id", str(template_ids[0]))
    span.set_attribute("prebuildd.events_coalesced", cause.events)


def _annotate_end(span: trace.Span, outcome: Outcome) -> None:
    if outcome.lag is not None:
        span.set_attribute("prebuildd.lag_ms", round(outcome.lag * 1000, 3))
    span.set_attribute("prebuildd.templates_locked", len(outcome.locked))
    span.set_attribute("prebuildd.templates_busy", len(outcome.busy))
    span.set_attribute("prebuildd.paused", outcome.paused)
    span.set_attribute("prebuildd.presets_seen", len(outcome.plans))
    span.set_attribute("prebuildd.presets_acted", sum(1 for p in outcome.plans if p.actions))
    span.set_attribute("prebuildd.presets_failed", len(outcome.failed_presets))
    for kind, count in outcome.actions_by_kind().items():
        span.set_attribute(f"prebuildd.actions.{kind}", count)
    if outcome.failed_presets:
        span.set_status(trace.Status(trace.StatusCode.ERROR, "some presets failed"))
