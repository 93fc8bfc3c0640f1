"""What one reconcile is about and what it saw and did: its `Cause` and its `Outcome`, with the
timing of its stages and the earliest wake-up per template its plans ask for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from prebuildd import store
from prebuildd.clock import DatabaseClock
from prebuildd.model import Plan
from prebuildd.trigger import Trigger


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


class Stages:
    """Times the stages of one reconcile into `Outcome.stages` (each from the previous one's
    end, so the stages add up to the reconcile up to its commit)."""

    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._last = time.monotonic()

    def done(self, stage: str) -> None:
        now = time.monotonic()
        self._into[stage] = self._into.get(stage, 0.0) + now - self._last
        self._last = now


def collect_next_attention(outcome: Outcome) -> None:
    for plan in outcome.plans:
        when = plan.next_attention
        if when is None:
            continue
        template = plan.preset.template_id
        current = outcome.next_attention.get(template)
        if current is None or when < current:
            outcome.next_attention[template] = when
