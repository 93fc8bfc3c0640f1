"""Running a reconcile's plans: every action in a savepoint of its own, results recorded in the
`Outcome`, failures logged, counted and judged (prebuildd.reconciler).

Status changes run one by one, then every create, delete and cancel in one call
(`store.execute_actions`); when that call fails as a whole, its actions are replayed one per
statement. Only a create refused as invalid input (`store.INVALID_PRESET`) condemns its
preset (`validation_failed`); any other failure is retried by the template's next reconcile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime

import psycopg
from opentelemetry import trace
from psycopg import AsyncConnection

from prebuildd import store
from prebuildd.config import NotificationDelivery
from prebuildd.model import Action, ActionKind, Plan
from prebuildd.reconciler.outcome import Outcome, Stages

# The reconciler's logger and tracer, as before the split: log lines and spans keep their name.
log = logging.getLogger("prebuildd.reconciler")
_tracer = trace.get_tracer("prebuildd.reconciler")


async def execute_plans(
    conn: AsyncConnection[object],
    now: datetime,
    outcome: Outcome,
    stages: Stages,
    notifications: NotificationDelivery,
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
                await _execute_action(conn, plan, action, now, outcome, notifications)
                statuses += 1
    if statuses:
        stages.done("status")
    if batch:
        await _execute_batch(conn, batch, now, outcome, notifications)
        stages.done("actions")


async def _execute_batch(
    conn: AsyncConnection[object],
    batch: Sequence[tuple[Plan, Action]],
    now: datetime,
    outcome: Outcome,
    notifications: NotificationDelivery,
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
            await _execute_action(conn, plan, action, now, outcome, notifications)
        return
    ended = time.time_ns()
    for (plan, action), result in zip(batch, results, strict=True):
        _action_span(action, plan, result, started, ended)
        if isinstance(result, store.ActionFailure):
            await _failed(conn, plan, action, result.sqlstate, result.message, outcome)
        else:
            outcome.results.append(result)


async def _execute_action(
    conn: AsyncConnection[object],
    plan: Plan,
    action: Action,
    now: datetime,
    outcome: Outcome,
    notifications: NotificationDelivery,
) -> None:
    preset_id = str(plan.preset.id)
    try:
        async with conn.transaction():  # a savepoint: this action only
            with _tracer.start_as_current_span(f"prebuildd.action.{action.kind}") as span:
                span.set_attribute("prebuildd.preset_id", preset_id)
                result = await store.execute(
                    conn, plan, action, now=now, notifications=notifications
                )
                _annotate_result(span, result)
    except psycopg.Error as exc:
        if conn.broken or conn.closed:
            raise  # the connection is gone: nothing else in this cycle can succeed
        await _failed(conn, plan, action, exc.sqlstate, _one_line(exc), outcome)
        return
    outcome.results.append(result)


async def _failed(
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _annotate_result(span: trace.Span, result: store.ActionResult) -> None:
    span.set_attribute("prebuildd.created", len(result.created))
    span.set_attribute("prebuildd.deleted", len(result.deleted))
    span.set_attribute("prebuildd.skipped", len(result.skipped))
    span.set_attribute("prebuildd.canceled", result.canceled)
