"""One reconcile of a set of templates: lock, read, plan, execute, record.

The reconciler is deliberately thin. Everything it decides comes from `plan.plan_preset`, every
byte it reads or writes goes through `store`. What it owns is the transaction shape:

* one transaction per reconcile, READ COMMITTED;
* first statement: per-template transaction-level advisory locks (`store.lock_templates`).
  Templates held by another replica are skipped; the holder receives the same notifications
  and runs its own follow-up, and we retry shortly as a safety net. Every read that decides a
  create runs *after* the lock is held, so two replicas can never both fill one deficit;
* each action runs in a savepoint of its own: a failing action is rolled back, logged and
  counted, and stops neither the preset's other actions nor other presets. Only one failure
  condemns a preset (stores `validation_failed`): a create the create function refuses as
  invalid input, with its dedicated SQLSTATE (`store.is_invalid_preset`). Everything else --
  a unique violation because someone queued a build on the same prebuild meanwhile, a lock
  or statement timeout, a deadlock -- says nothing about the preset's input: it is retried by
  the next reconcile of the template (its next event, timer or the periodic sweep);
* provisioner wake-ups are `pg_notify` calls inside that transaction, delivered at commit, so
  a crash mid-cycle leaves neither half-written prebuilds nor phantom postings.
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

from prebuildd import store
from prebuildd.gc_pause import deferred_collection
from prebuildd.model import Action, ActionKind, Plan, PlanConfig
from prebuildd.plan import can_skip, plan_preset
from prebuildd.trigger import Trigger

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("prebuildd.reconciler")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a reconcile runs, carried into its span, its log line and its metrics."""

    trigger: Trigger
    # Queue adds coalesced into this reconcile (notifications, timers, sweep entries...).
    events: int = 0
    # Wall-clock epoch seconds of the earliest event that led here (`Event.event_at`); None
    # when no notification did (timers, sweeps).
    event_at: float | None = None


@dataclass(slots=True)
class Outcome:
    """What one reconcile saw and did, or which templates it failed for and why."""

    cause: Cause
    # Templates reconciled (their lock was free), and those another replica held.
    locked: tuple[UUID, ...] = ()
    busy: tuple[UUID, ...] = ()
    # Set by the dispatcher when the reconcile failed as a whole (rolled back): its templates
    # and the error. The reconciler itself raises instead.
    failed: tuple[UUID, ...] = ()
    error: BaseException | None = None
    paused: bool = False
    plans: list[Plan] = field(default_factory=list)
    results: list[store.ActionResult] = field(default_factory=list)
    failed_presets: list[tuple[UUID, str]] = field(default_factory=list)
    next_attention: dict[UUID, datetime] = field(default_factory=dict)
    duration: float = 0.0
    lag: float | None = None

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
    ) -> None:
        self._config = config
        self._clock = clock
        self._dry_run = dry_run

    async def reconcile(
        self, conn: AsyncConnection[object], template_ids: Sequence[UUID], cause: Cause
    ) -> Outcome:
        """Reconcile `template_ids` on `conn` (which must not be inside a transaction)."""
        outcome = Outcome(cause)
        started = time.monotonic()
        if cause.event_at is not None:
            outcome.lag = max(0.0, time.time() - cause.event_at)
        with _tracer.start_as_current_span("prebuildd.reconcile") as span:
            _annotate_start(span, template_ids, cause, outcome.lag)
            async with conn.transaction():
                await self._locked_cycle(conn, template_ids, outcome)
            outcome.duration = time.monotonic() - started
            _annotate_end(span, outcome)
        return outcome

    async def _locked_cycle(
        self, conn: AsyncConnection[object], template_ids: Sequence[UUID], outcome: Outcome
    ) -> None:
        with _tracer.start_as_current_span("prebuildd.lock_templates"):
            locked = await store.lock_templates(conn, template_ids)
        outcome.locked = tuple(locked)
        held = set(locked)
        outcome.busy = tuple(t for t in dict.fromkeys(template_ids) if t not in held)
        if not locked:
            return
        now = self._clock()
        with _tracer.start_as_current_span("prebuildd.read_snapshot") as span:
            snapshot = await store.read_snapshot(conn, locked, now=now, config=self._config)
            span.set_attribute("prebuildd.presets", len(snapshot.presets))
        outcome.paused = snapshot.paused
        with _tracer.start_as_current_span("prebuildd.plan"), deferred_collection():
            # Presets of retired versions with nothing left to clean up are most of a big
            # fleet and can produce no action: skip them, except when the plan is the
            # product (dry runs and `status` show every preset).
            outcome.plans = [
                plan_preset(ps, now, self._config)
                for ps in snapshot.presets
                if self._dry_run or not can_skip(ps)
            ]
        _collect_next_attention(outcome)
        if snapshot.paused or self._dry_run:
            return
        for plan in outcome.plans:
            if plan.actions:
                await self._execute_plan(conn, plan, now, outcome)

    async def _execute_plan(
        self, conn: AsyncConnection[object], plan: Plan, now: datetime, outcome: Outcome
    ) -> None:
        for action in plan.actions:
            await self._execute_action(conn, plan, action, now, outcome)

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
                    result = await store.execute(conn, plan, action, now=now)
                    _annotate_result(span, result)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # the connection is gone: nothing else in this cycle can succeed
            outcome.failed_presets.append((plan.preset.id, _one_line(exc)))
            extra = {"preset_id": preset_id, "action": str(action.kind), "error": _one_line(exc)}
            if action.kind is ActionKind.CREATE and store.is_invalid_preset(exc):
                # Refused before anything was written, for a reason only a new template
                # version cures (Coder's `validation_failed`): stop retrying it.
                log.error("preset rejected as invalid input", extra=extra)
                await _mark_validation_failed(conn, plan)
            elif isinstance(exc, psycopg.errors.QueryCanceled):
                log.error("preset action timed out; retried next reconcile", extra=extra)
            else:
                log.error("preset action failed; retried next reconcile", extra=extra)
            return
        outcome.results.append(result)


async def _mark_validation_failed(conn: AsyncConnection[object], plan: Plan) -> None:
    try:
        async with conn.transaction():
            await store.mark_validation_failed(conn, plan.preset.id)
    except psycopg.Error:
        log.exception("could not store validation_failed", extra={"preset_id": str(plan.preset.id)})


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


def _annotate_start(
    span: trace.Span, template_ids: Sequence[UUID], cause: Cause, lag: float | None
) -> None:
    span.set_attribute("prebuildd.trigger", str(cause.trigger))
    span.set_attribute("prebuildd.templates", len(template_ids))
    if len(template_ids) == 1:
        span.set_attribute("prebuildd.template_id", str(template_ids[0]))
    span.set_attribute("prebuildd.events_coalesced", cause.events)
    if lag is not None:
        span.set_attribute("prebuildd.lag_ms", round(lag * 1000, 3))


def _annotate_end(span: trace.Span, outcome: Outcome) -> None:
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
