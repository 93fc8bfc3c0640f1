"""Properties of the planner over generated snapshots (hypothesis)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from prebuildd.model import (
    BuildRecord,
    CancelPending,
    Create,
    Delete,
    InProgress,
    JobStatus,
    Plan,
    PlanConfig,
    PrebuildStatus,
    Preset,
    PresetSnapshot,
    RunningPrebuild,
    Schedule,
)
from prebuildd.plan import can_skip, plan_preset

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
PRESET_ID = UUID(int=0xA)
VERSION_ID = UUID(int=0xB)

AGES = st.integers(0, 4 * 3600).map(lambda s: timedelta(seconds=s))


@st.composite
def presets(draw: st.DrawFn) -> Preset:
    return Preset(
        id=PRESET_ID,
        name="p",
        template_id=UUID(int=0xC),
        template_name="t",
        organization_id=UUID(int=0xD),
        organization_name="o",
        template_version_id=VERSION_ID,
        template_version_name="v",
        using_active_version=draw(st.booleans()),
        template_deleted=draw(st.booleans()),
        template_deprecated=draw(st.booleans()),
        desired_instances=draw(st.integers(-2, 8)),
        invalidate_after_secs=draw(st.one_of(st.none(), st.integers(-10, 3 * 3600))),
        last_invalidated_at=draw(st.one_of(st.none(), AGES.map(lambda a: NOW - a))),
        scheduling_timezone=draw(st.sampled_from(["", "America/Los_Angeles", "Nowhere/Land"])),
        prebuild_status=draw(st.sampled_from(list(PrebuildStatus))),
    )


@st.composite
def running(draw: st.DrawFn) -> tuple[RunningPrebuild, ...]:
    ages = draw(st.lists(AGES, max_size=10))
    return tuple(
        RunningPrebuild(
            UUID(int=i + 1), f"p{i}", VERSION_ID, PRESET_ID, NOW - age, draw(st.booleans())
        )
        for i, age in enumerate(ages)
    )


SCHEDULES = st.sampled_from(
    [
        (),
        (Schedule(UUID(int=1), "* 9-18 * * 1-5", 3),),
        (Schedule(UUID(int=1), "* 0-11 * * *", 5), Schedule(UUID(int=2), "* 12-23 * * *", 0)),
        (Schedule(UUID(int=1), "0 9 * * *", 2),),
    ]
)

SNAPSHOTS = st.builds(
    PresetSnapshot,
    preset=presets(),
    schedules=SCHEDULES,
    running=running(),
    in_progress=st.builds(InProgress, st.integers(0, 4), st.integers(0, 3), st.integers(0, 3)),
    pending_cancelable=st.integers(0, 3),
    recent_builds=st.lists(
        st.builds(BuildRecord, AGES.map(lambda a: NOW - a), st.sampled_from(list(JobStatus))),
        max_size=8,
    ).map(lambda bs: tuple(sorted(bs, key=lambda b: b.created_at, reverse=True))),
    failures_in_lookback=st.integers(0, 8),
)

CONFIGS = st.builds(
    PlanConfig,
    backoff_interval=st.integers(1, 600).map(lambda s: timedelta(seconds=s)),
    backoff_lookback=st.integers(60, 7200).map(lambda s: timedelta(seconds=s)),
    failure_hard_limit=st.integers(0, 4),
    max_creates_per_cycle=st.integers(1, 6),
)


def _deleted(plan: Plan) -> list[UUID]:
    return [i for a in plan.actions if isinstance(a, Delete) for i in a.workspace_ids]


def _created(plan: Plan) -> int:
    return sum(a.count for a in plan.actions if isinstance(a, Create))


@settings(max_examples=400, deadline=None)
@given(snapshot=SNAPSHOTS, config=CONFIGS)
def test_plan_invariants(snapshot: PresetSnapshot, config: PlanConfig) -> None:
    plan = plan_preset(snapshot, NOW, config)
    running_ids = {p.workspace_id for p in snapshot.running}
    deleted = _deleted(plan)

    # Only running prebuilds of this preset are ever deleted, each at most once.
    assert set(deleted) <= running_ids
    assert len(deleted) == len(set(deleted))
    # Numbers agree with actions; time only moves forward.
    assert plan.state.to_create == _created(plan)
    assert plan.state.running == len(snapshot.running)
    assert plan.next_attention is None or plan.next_attention >= NOW
    assert all(a.count > 0 for a in plan.actions if isinstance(a, Create))
    assert all(a.workspace_ids for a in plan.actions if isinstance(a, Delete))

    if not snapshot.preset.is_active:
        assert _created(plan) == 0
        assert set(deleted) == running_ids
        assert plan.next_attention is None
        assert can_skip(snapshot) is (plan.actions == ())
        return

    assert not any(isinstance(a, CancelPending) for a in plan.actions)
    desired = plan.state.desired
    assert desired >= 0
    if plan.state.backoff_until is not None:
        assert deleted == [] and _created(plan) == 0
        return

    # After the plan, non-expired running prebuilds never exceed desired ...
    kept = plan.state.running - len(deleted)
    assert kept <= desired
    assert kept == min(plan.state.running - plan.state.expired, desired)
    # ... and live ones (kept + starting + created) reach desired unless creates are held back.
    live = kept + plan.state.starting + _created(plan)
    assert live <= max(desired, kept + plan.state.starting)
    blocked = plan.state.hard_limited or (
        snapshot.preset.prebuild_status == PrebuildStatus.VALIDATION_FAILED
    )
    capped = plan.next_attention == NOW
    if not blocked and not capped:
        assert live == max(desired, kept + plan.state.starting)
    assert _created(plan) <= config.max_creates_per_cycle


@settings(max_examples=200, deadline=None)
@given(snapshot=SNAPSHOTS, config=CONFIGS)
def test_plan_is_deterministic_and_order_independent(
    snapshot: PresetSnapshot, config: PlanConfig
) -> None:
    plan = plan_preset(snapshot, NOW, config)
    assert plan_preset(snapshot, NOW, config) == plan
    shuffled = dataclasses.replace(
        snapshot,
        running=snapshot.running[::-1],
        recent_builds=snapshot.recent_builds[::-1],
    )
    assert plan_preset(shuffled, NOW, config) == plan


@settings(max_examples=200, deadline=None)
@given(snapshot=SNAPSHOTS, config=CONFIGS, later=st.integers(0, 3600))
def test_nothing_changes_before_next_attention(
    snapshot: PresetSnapshot, config: PlanConfig, later: int
) -> None:
    """Between now and next_attention, with no new events, the plan's actions stay the same."""
    plan = plan_preset(snapshot, NOW, config)
    moment = NOW + timedelta(seconds=later)
    if plan.next_attention is not None and moment >= plan.next_attention:
        return
    assert plan_preset(snapshot, moment, config).actions == plan.actions
