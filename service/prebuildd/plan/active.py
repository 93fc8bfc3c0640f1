"""The decision for an active preset: deletes, creates (their inputs checked), status changes,
and the state the plan reports. Pure: no I/O, no clock (prebuildd.plan).

Order of work for an active preset: delete expired (oldest first), delete the oldest surplus
among the non-expired, then create `max(desired - non_expired - starting, 0)`. Stopping and
deleting prebuilds count for nothing; starting ones count toward desired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prebuildd.autoscale import Sizing, size_pool
from prebuildd.model import (
    Action,
    BuildInputs,
    Create,
    Delete,
    DeleteReason,
    InputError,
    InputErrorKind,
    Plan,
    PlanConfig,
    PrebuildStatus,
    Preset,
    PresetSnapshot,
    PresetState,
    RunningPrebuild,
    SetStatus,
)
from prebuildd.parameters import check_parameters
from prebuildd.plan.verdicts import (
    Hold,
    backoff,
    earliest,
    hard_limit_reached,
    ids,
    newest_first,
    next_expiry,
    without,
)
from prebuildd.schedule import desired_instances
from prebuildd.workspace_tags import evaluate_workspace_tags


@dataclass(frozen=True, slots=True)
class _Counts:
    """The numbers an active preset's decision is made from."""

    desired: int
    fresh: tuple[RunningPrebuild, ...]  # running and not expired, oldest first
    expired: tuple[RunningPrebuild, ...]
    starting: int

    @property
    def surplus(self) -> int:
        return max(len(self.fresh) - self.desired, 0)

    @property
    def missing(self) -> int:
        return max(self.desired - len(self.fresh) - self.starting, 0)


def plan_active(
    snapshot: PresetSnapshot,
    running: tuple[RunningPrebuild, ...],
    expired: tuple[RunningPrebuild, ...],
    now: datetime,
    config: PlanConfig,
) -> Plan:
    preset = snapshot.preset
    wanted = desired_instances(
        preset.desired_instances, snapshot.schedules, preset.scheduling_timezone, now
    )
    # Demand-driven sizing (prebuildd.autoscale): the configured count unless the preset's
    # (template, name) has an autoscale policy.
    sizing = size_pool(wanted.desired, snapshot.policy, snapshot.demand, now)
    counts = _Counts(
        desired=sizing.desired,
        fresh=without(running, expired),
        expired=expired,
        starting=snapshot.in_progress.starting,
    )
    # Sorted once for both verdicts.
    newest = newest_first(snapshot.recent_builds)
    hold = backoff(newest, snapshot.failures_in_lookback, counts.desired, now, config)
    limited = hard_limit_reached(newest, config.failure_hard_limit)
    status = _status_change(preset, limited)
    if hold is not None:
        work: _Work = _held(counts, hold)
    else:
        work = _reconcile(preset, counts, limited, config, snapshot.inputs)
    status_reason = _status_reason(status, config) if status else None
    if work.invalid is not None:
        # Stored instead of any other status change (the reason is the create's).
        status = SetStatus(preset.id, PrebuildStatus.VALIDATION_FAILED)
        status_reason = None
    actions = (*((status,) if status else ()), *work.actions)
    reasons = (
        *((status_reason,) if status_reason else ()),
        *sizing.reasons,
        *work.reasons,
    )
    attention = earliest(
        wanted.next_change,
        sizing.next_change,
        next_expiry(counts.fresh, preset),
        hold.recheck if hold else None,
        now if work.capped else None,
    )
    state = _state(snapshot, counts, work, hold, limited, sizing, wanted.desired)
    return Plan(preset, state, actions, attention, reasons, (*wanted.errors, *work.errors))


@dataclass(frozen=True, slots=True)
class _Work:
    actions: tuple[Action, ...]
    reasons: tuple[str, ...]
    to_create: int
    capped: bool = False
    errors: tuple[InputError, ...] = ()
    # Why creates are refused or held (PresetState.creates_refused).
    refused: str | None = None
    # The preset's parameters were found invalid now (it is being stored validation_failed).
    invalid: str | None = None


def _held(counts: _Counts, hold: Hold) -> _Work:
    """Backoff holds creates *and* deletes: a failing template should not churn workspaces."""
    held_deletes = len(counts.expired) + counts.surplus
    reason = (
        f"backoff until {hold.until.isoformat()} after {hold.failures} failed build(s); "
        f"holding {counts.missing} create(s) and {held_deletes} delete(s)"
    )
    return _Work((), (reason,), 0)


def _reconcile(
    preset: Preset,
    counts: _Counts,
    limited: bool,
    config: PlanConfig,
    inputs: BuildInputs | None,
) -> _Work:
    deletes = _deletes(preset, counts)
    creates = _creates(preset, counts, _create_blocker(preset, limited), config, inputs)
    return _Work(
        (*deletes.actions, *creates.actions),
        (*deletes.reasons, *creates.reasons),
        creates.to_create,
        creates.capped,
        creates.errors,
        creates.refused,
        creates.invalid,
    )


def _deletes(preset: Preset, counts: _Counts) -> _Work:
    """Expired first, then the oldest non-expired above desired."""
    actions: list[Action] = []
    reasons: list[str] = []
    if counts.expired:
        actions.append(Delete(preset.id, ids(counts.expired), DeleteReason.EXPIRED))
        reasons.append(f"delete {len(counts.expired)} expired prebuild(s)")
    if counts.surplus:
        oldest = counts.fresh[: counts.surplus]
        actions.append(Delete(preset.id, ids(oldest), DeleteReason.SURPLUS))
        reasons.append(f"surplus {counts.surplus} above desired {counts.desired}")
    return _Work(tuple(actions), tuple(reasons), 0)


def _creates(
    preset: Preset,
    counts: _Counts,
    blocked: str | None,
    config: PlanConfig,
    inputs: BuildInputs | None,
) -> _Work:
    """The create that fills the deficit, unless something blocks it (see _create_blocker),
    the preset is invalid (stored validation_failed instead) or its tags cannot be evaluated
    (held)."""
    missing = counts.missing
    if not missing:
        return _Work((), (), 0)
    if blocked:
        return _Work((), (f"{blocked}: not creating {missing} missing prebuild(s)",), 0)
    check = _check_inputs(inputs)
    if check.invalid is not None:
        return _refuse(check.invalid, missing)
    if check.unevaluated is not None:
        reason = f"{check.unevaluated}: holding {missing} create(s)"
        error = InputError(InputErrorKind.UNEVALUATED_WORKSPACE_TAG, check.unevaluated)
        return _Work((), (reason,), 0, errors=(error,), refused=check.unevaluated)
    # A bound of 0 or less would never make progress; read it as 1.
    batch = min(missing, max(config.max_creates_per_cycle, 1))
    reasons = [
        f"create {batch} to reach desired {counts.desired} "
        f"(running {len(counts.fresh)}, starting {counts.starting})",
        *check.unchecked,
    ]
    if batch < missing:
        reasons.append(f"creates capped at {batch} per cycle; {missing - batch} follow")
    create = Create(preset.id, preset.template_version_id, batch, check.tags)
    return _Work((create,), tuple(reasons), batch, capped=batch < missing)


@dataclass(frozen=True, slots=True)
class _InputCheck:
    """What a create of the preset would be built with, or why it must not be."""

    tags: tuple[tuple[str, str], ...] = ()
    invalid: str | None = None
    unevaluated: str | None = None
    unchecked: tuple[str, ...] = ()


def _check_inputs(inputs: BuildInputs | None) -> _InputCheck:
    """Coder's builder's checks before a build: parameter values, then workspace tags."""
    if inputs is None:
        return _InputCheck()
    verdict = check_parameters(inputs.parameters, dict(inputs.preset_values))
    if verdict.invalid is not None:
        return _InputCheck(invalid=verdict.invalid, unchecked=verdict.unchecked)
    tags = evaluate_workspace_tags(inputs.workspace_tags, verdict.values)
    return _InputCheck(tags.tags, None, tags.unevaluated, verdict.unchecked)


def _refuse(invalid: str, missing: int) -> _Work:
    """Invalid parameters: store validation_failed (as Coder does; the caller emits the
    SetStatus, first among the actions), create nothing."""
    reason = f"invalid preset: {invalid}; storing validation_failed, not creating {missing}"
    return _Work(
        (),
        (reason,),
        0,
        errors=(InputError(InputErrorKind.INVALID_PARAMETER, invalid),),
        refused=invalid,
        invalid=invalid,
    )


def _why_validation_failed(preset: Preset, inputs: BuildInputs | None) -> str | None:
    """For a preset stored validation_failed: what is wrong with it, as far as prebuildd sees."""
    if preset.prebuild_status != PrebuildStatus.VALIDATION_FAILED or inputs is None:
        return None
    invalid = _check_inputs(inputs).invalid
    if invalid is not None:
        return invalid
    return (
        "stored by Coder or by an earlier reconcile; prebuildd's checks pass now, but the "
        "status stays until a new template version is published"
    )


def _create_blocker(preset: Preset, limited: bool) -> str | None:
    if preset.prebuild_status == PrebuildStatus.VALIDATION_FAILED:
        return "validation failed"
    if limited:
        return "hard limit reached"
    return None


def _status_change(preset: Preset, limited: bool) -> SetStatus | None:
    stored = preset.prebuild_status
    if stored == PrebuildStatus.VALIDATION_FAILED:
        return None
    if limited and stored != PrebuildStatus.HARD_LIMITED:
        return SetStatus(preset.id, PrebuildStatus.HARD_LIMITED)
    if not limited and stored == PrebuildStatus.HARD_LIMITED:
        return SetStatus(preset.id, PrebuildStatus.HEALTHY)
    return None


def _status_reason(status: SetStatus, config: PlanConfig) -> str:
    if status.status == PrebuildStatus.HARD_LIMITED:
        return f"hard limit reached: the latest {config.failure_hard_limit} builds failed"
    return "hard limit no longer reached: status back to healthy"


def _state(
    snapshot: PresetSnapshot,
    counts: _Counts,
    work: _Work,
    hold: Hold | None,
    limited: bool,
    sizing: Sizing,
    configured: int,
) -> PresetState:
    progress = snapshot.in_progress
    sized = sizing.suggested is not None
    return PresetState(
        desired=counts.desired,
        running=len(counts.fresh) + len(counts.expired),
        eligible=sum(1 for p in counts.fresh if p.ready),
        expired=len(counts.expired),
        starting=progress.starting,
        stopping=progress.stopping,
        deleting=progress.deleting,
        surplus=counts.surplus,
        to_create=work.to_create,
        backoff_until=hold.until if hold else None,
        hard_limited=limited,
        validation_failed=work.invalid is not None
        or snapshot.preset.prebuild_status == PrebuildStatus.VALIDATION_FAILED,
        creates_refused=work.refused or _why_validation_failed(snapshot.preset, snapshot.inputs),
        suggested=sizing.suggested,
        configured=configured if sized else None,
    )
