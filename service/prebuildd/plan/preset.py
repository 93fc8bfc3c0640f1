"""One preset's plan: the entry point (`plan_preset`, `can_skip`) and the plan of an inactive
preset, which cleans up and never creates nor backs off. Pure (prebuildd.plan).
"""

from __future__ import annotations

from datetime import datetime

from prebuildd.model import (
    Action,
    CancelPending,
    Delete,
    DeleteReason,
    Plan,
    PlanConfig,
    PresetSnapshot,
    PresetState,
    RunningPrebuild,
)
from prebuildd.plan.active import plan_active
from prebuildd.plan.verdicts import ids, inactive_reason, is_expired, oldest_first


def can_skip(snapshot: PresetSnapshot) -> bool:
    """True when planning cannot produce an action: an inactive preset with nothing to clean up.

    The caller may then skip the preset without taking a database connection.
    """
    return (
        not snapshot.preset.is_active and not snapshot.running and snapshot.pending_cancelable <= 0
    )


def plan_preset(snapshot: PresetSnapshot, now: datetime, config: PlanConfig) -> Plan:
    """Decide what to do for one preset at `now` (timezone-aware)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    running = oldest_first(snapshot.running)
    expired = tuple(p for p in running if is_expired(p, snapshot.preset, now))
    why_inactive = inactive_reason(snapshot.preset)
    if why_inactive is not None:
        return _plan_inactive(snapshot, running, expired, why_inactive)
    return plan_active(snapshot, running, expired, now, config)


# ---------------------------------------------------------------------------------------------
# Inactive presets: clean up, never create, never back off.
# ---------------------------------------------------------------------------------------------


def _plan_inactive(
    snapshot: PresetSnapshot,
    running: tuple[RunningPrebuild, ...],
    expired: tuple[RunningPrebuild, ...],
    why: str,
) -> Plan:
    preset = snapshot.preset
    actions: list[Action] = []
    reasons: list[str] = []
    if snapshot.pending_cancelable > 0:
        actions.append(CancelPending(preset.id, snapshot.pending_cancelable))
        reasons.append(f"{why}: cancel {snapshot.pending_cancelable} pending prebuild job(s)")
    if running:
        actions.append(Delete(preset.id, ids(running), DeleteReason.INACTIVE))
        reasons.append(f"{why}: delete {len(running)} running prebuild(s)")
    progress = snapshot.in_progress
    state = PresetState(
        desired=0,
        running=len(running),
        # Claims only ever pick prebuilds of the active version of a live template.
        eligible=0,
        expired=len(expired),
        starting=progress.starting,
        stopping=progress.stopping,
        deleting=progress.deleting,
        surplus=0,
        to_create=0,
        backoff_until=None,
        hard_limited=False,
    )
    return Plan(preset, state, tuple(actions), None, tuple(reasons))
