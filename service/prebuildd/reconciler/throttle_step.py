"""The reconcile's step under `--max-pending-prebuild-jobs`: read the tag sets' lines (taking
their advisory locks, ascending, before any preset's actions), cut the plans' creates to the
room left under the cap (prebuildd.throttle, pure), and store the line the verdict changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from opentelemetry import trace
from psycopg import AsyncConnection

from prebuildd import store, throttle
from prebuildd.model import Create
from prebuildd.reconciler.outcome import Outcome, collect_next_attention

_tracer = trace.get_tracer("prebuildd.reconciler")


async def share_room(
    conn: AsyncConnection[object],
    templates: Sequence[UUID],
    outcome: Outcome,
    now: datetime,
    cap: int,
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
        verdict = throttle.share(outcome.plans, lines, templates, cap, now)
        span.set_attribute("prebuildd.tag_sets", len(lines.pending))
        span.set_attribute("prebuildd.creates_held", sum(w.held for w in verdict.waits))
    outcome.plans = list(verdict.plans)
    # The cut plans' wake-ups replace the planner's (a held create's per-cycle "now").
    outcome.next_attention.clear()
    collect_next_attention(outcome)
    return verdict


async def record_waits(
    conn: AsyncConnection[object], templates: Sequence[UUID], verdict: throttle.Verdict
) -> None:
    """Store the line the verdict changed (prebuildd.throttle_waits), under the locks taken by
    `share_room`."""
    if verdict.changed:
        with _tracer.start_as_current_span("prebuildd.throttle_record"):
            await store.record_throttle_waits(conn, templates, verdict.waits)
