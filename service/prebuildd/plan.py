"""The pure planner: one preset's snapshot + `now` -> typed actions + when to look again.

No I/O, no clock: the same snapshot at the same `now` always yields an equal Plan. Parity with
Coder's reconciler (coderd/prebuilds/preset_snapshot.go), with these deliberate differences:

- Expired prebuilds of *inactive* presets are deleted too (Coder only deletes the non-expired).
- Pending, never-picked-up jobs of inactive presets are cancelled (CancelPending).
- A preset whose stored status is `hard_limited` goes back to `healthy` once the latest builds
  are no longer all failures (e.g. the limit was raised or the failed prebuilds were removed).
- `validation_failed` is sticky: the planner never overwrites it, because it is set for
  non-retryable input errors that only a new template version can cure.
- Invalid parameters are found *before* anything is written: when a create is due, the
  preset's values are checked against the version's parameters as Coder's builder checks
  them (prebuildd.parameters); an invalid preset gets SetStatus(validation_failed) with the
  reason instead of a Create (Coder stores the same status when its builder refuses).
- Workspace tags are evaluated for each create (prebuildd.workspace_tags); a tag that cannot
  be evaluated holds the preset's creates with the reason (never `validation_failed`: the
  template may be fine, prebuildd only cannot tell).
- Status changes are emitted even while backing off: they record a verdict, they are not
  provisioning work.
- Backoff ends at `now >= backoff_until` (Coder: strictly after), so a wake-up scheduled at
  `backoff_until` finds the preset ready to act.
- Every plan says when it next needs attention (`next_attention`), so time-driven changes are
  scheduled instead of polled.

Beyond Coder: a preset whose (template, name) has an autoscale policy is sized from demand
(prebuildd.autoscale): in `auto` mode the desired count is the forecast's suggestion, never
below the configured count; the suggestion changes at hour boundaries, so such plans ask to be
looked at again at the next one.

Order of work for an active preset: delete expired (oldest first), delete the oldest surplus
among the non-expired, then create `max(desired - non_expired - starting, 0)`. Stopping and
deleting prebuilds count for nothing; starting ones count toward desired.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from uuid import UUID

from prebuildd.autoscale import Sizing, size_pool
from prebuildd.model import (
    Action,
    BuildInputs,
    BuildRecord,
    CancelPending,
    Create,
    Delete,
    DeleteReason,
    InputError,
    InputErrorKind,
    JobStatus,
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
from prebuildd.schedule import desired_instances
from prebuildd.workspace_tags import evaluate_workspace_tags

__all__ = [
    "can_skip",
    "inactive_reason",
    "is_expired",
    "plan_preset",
]


@dataclass(frozen=True, slots=True)
class _Hold:
    """The backoff: a hold on creates and deletes after recent failed builds."""

    until: datetime
    failures: int
    # When the verdict may change first: `until`, or earlier if one of the failures that
    # triggered the hold leaves the lookback window (only when failures x interval > lookback).
    recheck: datetime


def can_skip(snapshot: PresetSnapshot) -> bool:
    """True when planning cannot produce an action: an inactive preset with nothing to clean up.

    The caller may then skip the preset without taking a database connection.
    """
    return (
        not snapshot.preset.is_active and not snapshot.running and snapshot.pending_cancelable <= 0
    )


def is_expired(prebuild: RunningPrebuild, preset: Preset, now: datetime) -> bool:
    """Older than the preset's TTL (when > 0), or created before its last invalidation."""
    ttl = preset.invalidate_after_secs
    if ttl is not None and ttl > 0 and prebuild.created_at + timedelta(seconds=ttl) <= now:
        return True
    invalidated = preset.last_invalidated_at
    return invalidated is not None and prebuild.created_at < invalidated


def inactive_reason(preset: Preset) -> str | None:
    """Why prebuilds of this preset are not maintained; None when the preset is active."""
    if preset.template_deleted:
        return "template deleted"
    if preset.template_deprecated:
        return "template deprecated"
    if not preset.using_active_version:
        return "template version not active"
    return None


def _hard_limit_reached(newest_first: Sequence[BuildRecord], limit: int) -> bool:
    """The latest `limit` builds (there must be that many) all failed; `limit` <= 0 disables."""
    if limit <= 0 or len(newest_first) < limit:
        return False
    return all(b.job_status == JobStatus.FAILED for b in newest_first[:limit])


def _backoff(
    newest_first: Sequence[BuildRecord],
    failures_in_lookback: int,
    desired: int,
    now: datetime,
    config: PlanConfig,
) -> _Hold | None:
    """The hold in force at `now`, if any of the latest `desired` builds failed recently.

    The hold lasts `failures_in_lookback x backoff_interval` from the newest such failure.
    The count is at least the failures seen among the latest builds, so an inconsistent
    snapshot cannot shorten the hold to nothing.
    """
    since = now - config.backoff_lookback
    failed = [
        b
        for b in newest_first[: max(desired, 0)]
        if b.job_status == JobStatus.FAILED and b.created_at >= since
    ]
    if not failed:
        return None
    failures = max(failures_in_lookback, len(failed))
    until = max(b.created_at for b in failed) + failures * config.backoff_interval
    if now >= until:
        return None
    ages_out = min(b.created_at for b in failed) + config.backoff_lookback
    return _Hold(until=until, failures=failures, recheck=min(until, ages_out))


def plan_preset(snapshot: PresetSnapshot, now: datetime, config: PlanConfig) -> Plan:
    """Decide what to do for one preset at `now` (timezone-aware)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    running = _oldest_first(snapshot.running)
    expired = tuple(p for p in running if is_expired(p, snapshot.preset, now))
    why_inactive = inactive_reason(snapshot.preset)
    if why_inactive is not None:
        return _plan_inactive(snapshot, running, expired, why_inactive)
    return _plan_active(snapshot, running, expired, now, config)


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
        actions.append(Delete(preset.id, _ids(running), DeleteReason.INACTIVE))
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


# ---------------------------------------------------------------------------------------------
# Active presets.
# ---------------------------------------------------------------------------------------------


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


def _plan_active(
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
        fresh=_without(running, expired),
        expired=expired,
        starting=snapshot.in_progress.starting,
    )
    # Sorted once for both verdicts.
    newest = _newest_first(snapshot.recent_builds)
    hold = _backoff(newest, snapshot.failures_in_lookback, counts.desired, now, config)
    limited = _hard_limit_reached(newest, config.failure_hard_limit)
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
    attention = _earliest(
        wanted.next_change,
        sizing.next_change,
        _next_expiry(counts.fresh, preset),
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


def _held(counts: _Counts, hold: _Hold) -> _Work:
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
        actions.append(Delete(preset.id, _ids(counts.expired), DeleteReason.EXPIRED))
        reasons.append(f"delete {len(counts.expired)} expired prebuild(s)")
    if counts.surplus:
        oldest = counts.fresh[: counts.surplus]
        actions.append(Delete(preset.id, _ids(oldest), DeleteReason.SURPLUS))
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
    hold: _Hold | None,
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
        creates_refused=work.refused
        or _why_validation_failed(snapshot.preset, snapshot.inputs),
        suggested=sizing.suggested,
        configured=configured if sized else None,
    )


# ---------------------------------------------------------------------------------------------
# Small helpers.
# ---------------------------------------------------------------------------------------------


def _next_expiry(fresh: Iterable[RunningPrebuild], preset: Preset) -> datetime | None:
    """When the first non-expired prebuild reaches its TTL (None without a TTL)."""
    ttl = preset.invalidate_after_secs
    if ttl is None or ttl <= 0:
        return None
    return min((p.created_at + timedelta(seconds=ttl) for p in fresh), default=None)


def _earliest(*instants: datetime | None) -> datetime | None:
    return min((t for t in instants if t is not None), default=None)


# Sort keys. C-level getters, not lambdas: the planner sorts every preset's prebuilds and
# builds, 15,000 presets per sweep of a big fleet. The id breaks ties so that equal snapshots
# in any order give equal plans; so does the status (a str enum: it sorts as its value).
_BY_AGE = attrgetter("created_at", "workspace_id")
_BY_BUILD_TIME = attrgetter("created_at", "job_status")


def _oldest_first(running: Iterable[RunningPrebuild]) -> tuple[RunningPrebuild, ...]:
    return tuple(sorted(running, key=_BY_AGE))


def _newest_first(builds: Iterable[BuildRecord]) -> list[BuildRecord]:
    return sorted(builds, key=_BY_BUILD_TIME, reverse=True)


def _without(
    running: tuple[RunningPrebuild, ...], expired: tuple[RunningPrebuild, ...]
) -> tuple[RunningPrebuild, ...]:
    if not expired:
        return running  # the common case: no set to build, no id to hash
    gone = {p.workspace_id for p in expired}
    return tuple(p for p in running if p.workspace_id not in gone)


def _ids(prebuilds: Iterable[RunningPrebuild]) -> tuple[UUID, ...]:
    return tuple(p.workspace_id for p in prebuilds)
