"""One reconcile of a set of templates: lock, read, plan, execute, record.

The reconciler is deliberately thin. Everything it decides comes from `plan.plan_preset`, every
byte it reads or writes goes through `store`. What it owns is the transaction shape:

* one transaction per reconcile, READ COMMITTED;
* first statement: per-template transaction-level advisory locks (`store.lock_templates`).
  Templates held by another replica are skipped; the holder receives the same notifications
  and runs its own follow-up, and we retry shortly as a safety net. Every read that decides a
  create runs *after* the lock is held, so two replicas can never both fill one deficit;
* with `--max-pending-prebuild-jobs`, the advisory locks of the organizations' provisioner
  tag sets the plans create for are taken next, all at once and in ascending order, before
  any preset's actions (prebuildd.throttle; sql/functions/throttle.sql): the pending jobs
  counted under them stay true until the commit;
* each action runs in a savepoint of its own: a failing action is rolled back, logged and
  counted, and stops neither the preset's other actions nor other presets. Only one failure
  condemns a preset (stores `validation_failed`): a create the create function refuses as
  invalid input, with its dedicated SQLSTATE (`store.is_invalid_preset`). Everything else --
  a unique violation because someone queued a build on the same prebuild meanwhile, a lock
  or statement timeout, a deadlock -- says nothing about the preset's input: it is retried by
  the next reconcile of the template (its next event, timer or the periodic sweep);
* provisioner wake-ups are `pg_notify` calls inside that transaction, delivered at commit, so
  a crash mid-cycle leaves neither half-written prebuilds nor phantom postings;
* time is the database's: the snapshot's pipeline reads `now()`, the plans are made at it and
  the writes record it, and the outcome carries the clock reading that the dispatcher turns
  `next_attention` into timers with (prebuildd.clock). A host whose wall clock is off neither
  expires prebuilds early nor misses a schedule boundary.

A dry run (`prebuildd reconcile --dry-run`, `prebuildd status`) is read-only instead: a READ ONLY
transaction that takes no lock at all (no per-template lock, not Coder's lock 7), so neither
replicas nor Coder's loop ever wait for an operator who looks. It reads and plans every
template it is given, and reports from pg_locks which of them a reconcile holds right now
(`Outcome.reconciling`) and whether Coder's own loop is in a cycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import psycopg
from opentelemetry import trace
from psycopg import AsyncConnection

from prebuildd import store, throttle
from prebuildd.clock import DatabaseClock
from prebuildd.config import CODER_NOTIFICATION_DEFAULTS, NotificationDelivery
from prebuildd.demand import HistoryCache
from prebuildd.gc_pause import deferred_collection
from prebuildd.model import Action, ActionKind, Create, Plan, PlanConfig
from prebuildd.plan import can_skip, plan_preset
from prebuildd.trigger import Trigger

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("prebuildd.reconciler")

# Up to this many templates, a reconcile takes its locks and reads its snapshot in one round
# trip (store.lock_and_read_snapshot); a busy template's rows are then read for nothing, so a
# sweep's batches (up to 200) lock first and read only what they hold.
LOCK_WITH_READS_MAX = 8


def utc_now() -> datetime:
    """This host's wall clock: only a fallback (see Reconciler), never a plan's `now`."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a reconcile runs, carried into its span, its log line and its metrics."""

    trigger: Trigger
    # Queue adds coalesced into this reconcile (notifications, timers, sweep entries...).
    events: int = 0
    # Epoch seconds of the earliest event that led here (`Event.event_at`: the writing
    # transaction's start on the database's clock); None when no notification did (timers,
    # sweeps).
    event_at: float | None = None


@dataclass(slots=True)
class Outcome:
    """What one reconcile saw and did, or which templates it failed for and why."""

    cause: Cause
    # Templates reconciled (their lock was free), and those another replica held. A dry run
    # takes no lock: every template it read and planned is in `locked`, none is `busy`.
    locked: tuple[UUID, ...] = ()
    busy: tuple[UUID, ...] = ()
    # Dry runs only, from pg_locks: the templates a reconcile elsewhere holds right now (their
    # plans may be overtaken by what it does), and whether Coder's loop is in a cycle.
    reconciling: tuple[UUID, ...] = ()
    coder_reconciling: bool = False
    # Set by the dispatcher when the reconcile failed as a whole (rolled back): its templates
    # and the error. The reconciler itself raises instead.
    failed: tuple[UUID, ...] = ()
    error: BaseException | None = None
    paused: bool = False
    plans: list[Plan] = field(default_factory=list)
    results: list[store.ActionResult] = field(default_factory=list)
    failed_presets: list[tuple[UUID, str]] = field(default_factory=list)
    next_attention: dict[UUID, datetime] = field(default_factory=dict)
    # The database's time the plans were made at, and the clock reading that turns
    # `next_attention` (database time) into queue delays. None when nothing was read.
    now: datetime | None = None
    clock: DatabaseClock | None = None
    # Templates of other presets that the cap on pending prebuild jobs dealt creates to
    # (prebuildd.throttle): their turn came, wake them.
    wake: tuple[UUID, ...] = ()
    duration: float = 0.0
    lag: float | None = None
    # Where the duration went, seconds per stage, in the order they ran: "lock_read" (the
    # locks and the snapshot in one round trip) or "lock" and "read", "plan", "throttle",
    # "status" (SetStatus actions), "actions" (every create, delete and cancel in one call),
    # "commit". Logged with the reconcile (bench/reaction.py reads them).
    stages: dict[str, float] = field(default_factory=dict)

    def actions_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[str(result.kind)] = counts.get(str(result.kind), 0) + 1
        return counts


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

        `dry_run`: plan only, in a read-only transaction without locks (module docstring).
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
        if self._config.max_pending_prebuild_jobs > 0:
            await self._share_room(conn, wanted, outcome, snapshot.now, lock=False)

    async def _locked_cycle(
        self, conn: AsyncConnection[object], template_ids: Sequence[UUID], outcome: Outcome
    ) -> None:
        stages = _Stages(outcome.stages)
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
        if self._config.max_pending_prebuild_jobs > 0:
            verdict = await self._share_room(conn, locked, outcome, snapshot.now, lock=True)
            stages.done("throttle")
        await self._execute(conn, snapshot.now, outcome, stages)
        if verdict is not None:
            if verdict.changed:
                with _tracer.start_as_current_span("prebuildd.throttle_record"):
                    await store.record_throttle_waits(conn, locked, verdict.waits)
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
        _collect_next_attention(outcome)

    async def _share_room(
        self,
        conn: AsyncConnection[object],
        templates: Sequence[UUID],
        outcome: Outcome,
        now: datetime,
        *,
        lock: bool,
    ) -> throttle.Verdict:
        """Cut the plans' creates to the room under the cap on pending prebuild jobs.

        With `lock`, the tag sets' advisory locks are taken here, before any preset's actions,
        in one ascending order (sql/functions/throttle.sql), and held to the commit; a dry run
        reads the same lines without them.
        """
        creates = [
            throttle.create_key(a)
            for plan in outcome.plans
            for a in plan.actions
            if isinstance(a, Create)
        ]
        with _tracer.start_as_current_span("prebuildd.throttle") as span:
            lines = await store.read_throttle_lines(conn, creates, templates, take_locks=lock)
            cap = self._config.max_pending_prebuild_jobs
            verdict = throttle.share(outcome.plans, lines, templates, cap, now)
            span.set_attribute("prebuildd.tag_sets", len(lines.pending))
            span.set_attribute("prebuildd.creates_held", sum(w.held for w in verdict.waits))
        outcome.plans = list(verdict.plans)
        # The cut plans' wake-ups replace the planner's (a held create's per-cycle "now").
        outcome.next_attention.clear()
        _collect_next_attention(outcome)
        return verdict

    async def _execute(
        self, conn: AsyncConnection[object], now: datetime, outcome: Outcome, stages: _Stages
    ) -> None:
        """Every plan's actions: status changes one by one, the rest in one call.

        A plan lists its SetStatus first (plan.plan_preset), so running the status changes
        before the batch keeps each preset's order. Each action is isolated in both paths: a
        failure rolls back that action alone (store.execute_actions).
        """
        batch: list[tuple[Plan, Action]] = []
        statuses = 0
        for plan in outcome.plans:
            for action in plan.actions:
                if action.kind in store.BATCHED_KINDS:
                    batch.append((plan, action))
                else:
                    await self._execute_action(conn, plan, action, now, outcome)
                    statuses += 1
        if statuses:
            stages.done("status")
        if batch:
            await self._execute_batch(conn, batch, now, outcome)
            stages.done("actions")

    async def _execute_batch(
        self,
        conn: AsyncConnection[object],
        batch: Sequence[tuple[Plan, Action]],
        now: datetime,
        outcome: Outcome,
    ) -> None:
        started = time.time_ns()
        try:
            with _tracer.start_as_current_span("prebuildd.actions") as span:
                span.set_attribute("prebuildd.actions", len(batch))
                results = await store.execute_actions(conn, [a for _, a in batch], now=now)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # the connection is gone: nothing else in this cycle can succeed
            # Nothing of the call was written (rolled back to its savepoint). Typically a
            # statement timeout, which the per-action blocks do not catch: replay one action
            # per statement, so that only the slow action fails.
            log.warning(
                "actions could not run in one call; running them one at a time",
                extra={"actions": len(batch), "error": _one_line(exc)},
            )
            for plan, action in batch:
                await self._execute_action(conn, plan, action, now, outcome)
            return
        ended = time.time_ns()
        for (plan, action), result in zip(batch, results, strict=True):
            _action_span(action, plan, result, started, ended)
            if isinstance(result, store.ActionFailure):
                await self._failed(conn, plan, action, result.sqlstate, result.message, outcome)
            else:
                outcome.results.append(result)

    async def _execute_action(
        self,
        conn: AsyncConnection[object],
        plan: Plan,
        action: Action,
        now: datetime,
        outcome: Outcome,
    ) -> None:
        preset_id = str(plan.preset.id)
        try:
            async with conn.transaction():  # a savepoint: this action only
                with _tracer.start_as_current_span(f"prebuildd.action.{action.kind}") as span:
                    span.set_attribute("prebuildd.preset_id", preset_id)
                    result = await store.execute(
                        conn, plan, action, now=now, notifications=self._notifications
                    )
                    _annotate_result(span, result)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # the connection is gone: nothing else in this cycle can succeed
            await self._failed(conn, plan, action, exc.sqlstate, _one_line(exc), outcome)
            return
        outcome.results.append(result)

    async def _failed(
        self,
        conn: AsyncConnection[object],
        plan: Plan,
        action: Action,
        sqlstate: str | None,
        message: str,
        outcome: Outcome,
    ) -> None:
        """An action failed and was rolled back alone: record, log, and judge the preset."""
        outcome.failed_presets.append((plan.preset.id, message))
        extra = {"preset_id": str(plan.preset.id), "action": str(action.kind), "error": message}
        if action.kind is ActionKind.CREATE and sqlstate == store.INVALID_PRESET:
            # Refused before anything was written, for a reason only a new template
            # version cures (Coder's `validation_failed`): stop retrying it.
            log.error("preset rejected as invalid input", extra=extra)
            await _mark_validation_failed(conn, plan)
        elif sqlstate == store.QUERY_CANCELED:
            log.error("preset action timed out; retried next reconcile", extra=extra)
        else:
            log.error("preset action failed; retried next reconcile", extra=extra)


async def _mark_validation_failed(conn: AsyncConnection[object], plan: Plan) -> None:
    try:
        async with conn.transaction():
            await store.mark_validation_failed(conn, plan.preset.id)
    except psycopg.Error:
        log.exception("could not store validation_failed", extra={"preset_id": str(plan.preset.id)})


class _Stages:
    """Times the stages of one reconcile into `Outcome.stages` (each from the previous one's
    end, so the stages add up to the reconcile up to its commit)."""

    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._last = time.monotonic()

    def done(self, stage: str) -> None:
        now = time.monotonic()
        self._into[stage] = self._into.get(stage, 0.0) + now - self._last
        self._last = now


def _action_span(
    action: Action,
    plan: Plan,
    result: store.ActionResult | store.ActionFailure,
    started_ns: int,
    ended_ns: int,
) -> None:
    """A span per action of the one call, as the per-statement path records them; its times
    are the call's (the actions ran inside it, one after the other)."""
    span = _tracer.start_span(f"prebuildd.action.{action.kind}", start_time=started_ns)
    span.set_attribute("prebuildd.preset_id", str(plan.preset.id))
    span.set_attribute("prebuildd.batched", True)
    if isinstance(result, store.ActionFailure):
        span.set_status(trace.Status(trace.StatusCode.ERROR, result.message))
    else:
        _annotate_result(span, result)
    span.end(end_time=ended_ns)


def _collect_next_attention(outcome: Outcome) -> None:
    for plan in outcome.plans:
        when = plan.next_attention
        if when is None:
            continue
        template = plan.preset.template_id
        current = outcome.next_attention.get(template)
        if current is None or when < current:
            outcome.next_attention[template] = when


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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


def _annotate_result(span: trace.Span, result: store.ActionResult) -> None:
    span.set_attribute("prebuildd.created", len(result.created))
    span.set_attribute("prebuildd.deleted", len(result.deleted))
    span.set_attribute("prebuildd.skipped", len(result.skipped))
    span.set_attribute("prebuildd.canceled", result.canceled)
