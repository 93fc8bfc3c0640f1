"""The pure planner, table by table: snapshot + now -> actions, state, next attention."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from prebuildd.model import (
    Action,
    BuildInputs,
    BuildRecord,
    CancelPending,
    Create,
    Delete,
    DeleteReason,
    InProgress,
    InputError,
    InputErrorKind,
    JobStatus,
    Plan,
    PlanConfig,
    PrebuildStatus,
    Preset,
    PresetSnapshot,
    RunningPrebuild,
    Schedule,
    SetStatus,
    TemplateParameter,
)
from prebuildd.plan import can_skip, plan_preset

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)  # a Monday
PRESET_ID = UUID(int=0xA)
VERSION_ID = UUID(int=0xB)
CONFIG = PlanConfig()  # interval 1 m, lookback 1 h, hard limit 3, 500 creates per cycle
SEC = timedelta(seconds=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)

FAILED = JobStatus.FAILED
OK = JobStatus.SUCCEEDED


def preset(desired: int = 1, **changes: Any) -> Preset:
    base = Preset(
        id=PRESET_ID,
        name="p",
        template_id=UUID(int=0xC),
        template_name="t",
        organization_id=UUID(int=0xD),
        organization_name="o",
        template_version_id=VERSION_ID,
        template_version_name="v",
        using_active_version=True,
        template_deleted=False,
        template_deprecated=False,
        desired_instances=desired,
    )
    return dataclasses.replace(base, **changes)


def ws(n: int) -> UUID:
    return UUID(int=n)


def prebuilds(*ages: timedelta, ready: bool = True) -> tuple[RunningPrebuild, ...]:
    """Running prebuilds ws(1), ws(2), ... created `age` before NOW (pass oldest first)."""
    return tuple(
        RunningPrebuild(ws(i), f"prebuild-{i}", VERSION_ID, PRESET_ID, NOW - age, ready)
        for i, age in enumerate(ages, start=1)
    )


def builds(*spec: tuple[timedelta, JobStatus]) -> tuple[BuildRecord, ...]:
    """Recent builds, newest first, as (age, status)."""
    return tuple(BuildRecord(NOW - age, status) for age, status in spec)


def snap(p: Preset | None = None, **fields: Any) -> PresetSnapshot:
    return PresetSnapshot(preset=p or preset(), **fields)


def create(n: int) -> Create:
    return Create(PRESET_ID, VERSION_ID, n)


def delete(reason: DeleteReason, *ids: int) -> Delete:
    return Delete(PRESET_ID, tuple(ws(i) for i in ids), reason)


EXPIRED, SURPLUS, INACTIVE = DeleteReason.EXPIRED, DeleteReason.SURPLUS, DeleteReason.INACTIVE


def run(snapshot: PresetSnapshot, config: PlanConfig = CONFIG, now: datetime = NOW) -> Plan:
    plan = plan_preset(snapshot, now, config)
    assert plan_preset(snapshot, now, config) == plan, "planning must be deterministic"
    return plan


def check_state(plan: Plan, **expected: Any) -> None:
    actual = {name: getattr(plan.state, name) for name in expected}
    assert actual == expected


# ---------------------------------------------------------------------------------------------
# Counting: desired vs running, starting, stopping, deleting, surplus
# ---------------------------------------------------------------------------------------------

TTL = 3600  # invalidate_after_secs used by the expiry tables
OLD = timedelta(seconds=TTL) + MIN  # past the TTL
YOUNG = 10 * MIN


@pytest.mark.parametrize(
    ("snapshot", "actions", "state"),
    [
        pytest.param(
            snap(preset(0)), (), {"desired": 0, "running": 0, "to_create": 0}, id="desired-zero"
        ),
        pytest.param(snap(preset(3)), (create(3),), {"desired": 3, "to_create": 3}, id="net-new"),
        pytest.param(
            snap(preset(2), running=prebuilds(2 * HOUR, HOUR)),
            (),
            {"running": 2, "eligible": 2, "surplus": 0},
            id="running-satisfies",
        ),
        pytest.param(
            snap(preset(3), running=prebuilds(HOUR), in_progress=InProgress(starting=2)),
            (),
            {"running": 1, "starting": 2, "to_create": 0},
            id="starting-counts",
        ),
        pytest.param(
            snap(preset(3), running=prebuilds(HOUR), in_progress=InProgress(starting=1)),
            (create(1),),
            {"to_create": 1},
            id="starting-partially-counts",
        ),
        pytest.param(
            snap(preset(2), in_progress=InProgress(stopping=1, deleting=1)),
            (create(2),),
            {"stopping": 1, "deleting": 1, "to_create": 2},
            id="stopping-deleting-do-not-count",
        ),
        pytest.param(
            snap(preset(1), running=prebuilds(3 * HOUR, 2 * HOUR, HOUR)),
            (delete(SURPLUS, 1, 2),),
            {"running": 3, "surplus": 2},
            id="surplus-deletes-oldest",
        ),
        pytest.param(
            snap(preset(2), running=prebuilds(2 * HOUR, HOUR), in_progress=InProgress(starting=1)),
            (),
            {"surplus": 0},
            id="surplus-ignores-starting",
        ),
        pytest.param(
            snap(preset(0), running=prebuilds(HOUR)),
            (delete(SURPLUS, 1),),
            {"surplus": 1},
            id="desired-dropped-to-zero",
        ),
        pytest.param(
            snap(preset(2), running=prebuilds(2 * HOUR, HOUR, ready=False)),
            (),
            {"eligible": 0, "running": 2},
            id="not-ready-is-not-eligible",
        ),
    ],
)
def test_counting(
    snapshot: PresetSnapshot, actions: tuple[Action, ...], state: dict[str, Any]
) -> None:
    plan = run(snapshot)
    assert plan.actions == actions
    check_state(plan, **state)
    assert plan.errors == ()


def test_surplus_order_does_not_depend_on_input_order() -> None:
    running = prebuilds(3 * HOUR, 2 * HOUR, HOUR)
    forward = run(snap(preset(1), running=running))
    backward = run(snap(preset(1), running=running[::-1]))
    assert forward == dataclasses.replace(backward, preset=forward.preset)
    assert forward.actions == (delete(SURPLUS, 1, 2),)


# ---------------------------------------------------------------------------------------------
# Expiry: TTL and invalidation (Coder's table: running / desired / expired)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ages", "desired", "actions", "expired"),
    [
        pytest.param((YOUNG, YOUNG), 2, (), 0, id="2-2-0-no-action"),
        pytest.param((OLD, YOUNG), 2, (delete(EXPIRED, 1), create(1)), 1, id="2-2-1-replace"),
        pytest.param((OLD, OLD), 2, (delete(EXPIRED, 1, 2), create(2)), 2, id="2-2-2-replace-all"),
        pytest.param(
            (OLD + MIN, OLD, YOUNG + MIN, YOUNG), 2, (delete(EXPIRED, 1, 2),), 2, id="4-2-2-expired"
        ),
        pytest.param(
            (OLD, YOUNG + 2 * MIN, YOUNG + MIN, YOUNG),
            2,
            (delete(EXPIRED, 1), delete(SURPLUS, 2)),
            1,
            id="4-2-1-expired-then-surplus",
        ),
    ],
)
def test_ttl_expiry(
    ages: tuple[timedelta, ...], desired: int, actions: tuple[Action, ...], expired: int
) -> None:
    plan = run(snap(preset(desired, invalidate_after_secs=TTL), running=prebuilds(*ages)))
    assert plan.actions == actions
    check_state(plan, running=len(ages), desired=desired, expired=expired)


def test_ttl_boundary_is_expired() -> None:
    exactly = prebuilds(timedelta(seconds=TTL))
    plan = run(snap(preset(1, invalidate_after_secs=TTL), running=exactly))
    assert plan.actions == (delete(EXPIRED, 1), create(1))


@pytest.mark.parametrize("ttl", [None, 0, -5], ids=["none", "zero", "negative"])
def test_no_ttl_never_expires(ttl: int | None) -> None:
    plan = run(snap(preset(1, invalidate_after_secs=ttl), running=prebuilds(1000 * HOUR)))
    assert plan.actions == ()
    assert plan.next_attention is None


@pytest.mark.parametrize(
    ("ages", "actions", "expired"),
    [
        pytest.param((2 * HOUR, HOUR), (delete(EXPIRED, 1, 2), create(2)), 2, id="both-older"),
        pytest.param((2 * HOUR, YOUNG), (delete(EXPIRED, 1), create(1)), 1, id="one-newer"),
    ],
)
def test_invalidated_preset(
    ages: tuple[timedelta, ...], actions: tuple[Action, ...], expired: int
) -> None:
    invalidated = preset(2, last_invalidated_at=NOW - 30 * MIN)
    plan = run(snap(invalidated, running=prebuilds(*ages)))
    assert plan.actions == actions
    check_state(plan, expired=expired, running=2)


# ---------------------------------------------------------------------------------------------
# Inactive presets: outdated version, deprecated or deleted template
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        pytest.param({"using_active_version": False}, "template version not active", id="outdated"),
        pytest.param({"template_deprecated": True}, "template deprecated", id="deprecated"),
        pytest.param({"template_deleted": True}, "template deleted", id="deleted"),
    ],
)
def test_inactive_cancels_pending_and_deletes_all_running(
    changes: dict[str, Any], why: str
) -> None:
    p = preset(3, invalidate_after_secs=TTL, **changes)
    plan = run(snap(p, running=prebuilds(OLD, YOUNG, 30 * MIN)[::-1], pending_cancelable=2))
    assert plan.actions == (CancelPending(PRESET_ID, 2), delete(INACTIVE, 1, 3, 2))
    check_state(plan, desired=0, running=3, expired=1, eligible=0, to_create=0)
    assert plan.next_attention is None
    assert all(why in reason for reason in plan.reasons)


def test_inactive_with_nothing_to_do() -> None:
    plan = run(snap(preset(3, using_active_version=False)))
    assert plan.actions == ()
    assert plan.next_attention is None


def test_inactive_never_backs_off_nor_limits() -> None:
    failing = builds((MIN, FAILED), (2 * MIN, FAILED), (3 * MIN, FAILED))
    snapshot = snap(
        preset(3, using_active_version=False, prebuild_status=PrebuildStatus.HARD_LIMITED),
        running=prebuilds(HOUR),
        recent_builds=failing,
        failures_in_lookback=3,
    )
    plan = run(snapshot)
    assert plan.actions == (delete(INACTIVE, 1),)
    check_state(plan, backoff_until=None, hard_limited=False)


def test_inactive_ignores_broken_schedules() -> None:
    schedules = (Schedule(UUID(int=1), "0 9 * * *", 2),)
    plan = run(snap(preset(-1, using_active_version=False), schedules=schedules))
    assert plan.errors == ()


# ---------------------------------------------------------------------------------------------
# Backoff
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "recent", "failures", "until"),
    [
        pytest.param(2, ((30 * SEC, FAILED),), 1, NOW + 30 * SEC, id="inside-window"),
        pytest.param(2, ((2 * MIN, FAILED),), 3, NOW + MIN, id="failures-multiply"),
        pytest.param(2, ((2 * MIN, FAILED),), 1, None, id="window-over"),
        pytest.param(2, ((MIN, FAILED),), 1, None, id="ends-exactly-now"),
        pytest.param(2, ((61 * MIN, FAILED),), 1, None, id="failure-outside-lookback"),
        pytest.param(1, ((10 * SEC, OK), (20 * SEC, FAILED)), 1, None, id="older-than-latest-n"),
        pytest.param(2, ((10 * SEC, OK), (20 * SEC, FAILED)), 1, NOW + 40 * SEC,
                     id="within-latest-n"),
        pytest.param(0, ((10 * SEC, FAILED),), 1, None, id="desired-zero-no-backoff"),
        # A snapshot that counts fewer failures than it shows still holds for each one seen.
        pytest.param(2, ((10 * SEC, FAILED), (20 * SEC, FAILED)), 0, NOW + 110 * SEC,
                     id="count-at-least-seen"),
    ],
)  # fmt: skip
def test_backoff_window(
    desired: int,
    recent: tuple[tuple[timedelta, JobStatus], ...],
    failures: int,
    until: datetime | None,
) -> None:
    snapshot = snap(preset(desired), recent_builds=builds(*recent), failures_in_lookback=failures)
    plan = run(snapshot, dataclasses.replace(CONFIG, failure_hard_limit=0))
    assert plan.state.backoff_until == until
    if until is None:
        assert plan.actions == ((create(desired),) if desired else ())
    else:
        assert plan.actions == ()
        assert plan.next_attention == until
        assert any("backoff until" in reason for reason in plan.reasons)


def test_backoff_holds_deletes_too() -> None:
    snapshot = snap(
        preset(1, invalidate_after_secs=TTL),
        running=prebuilds(OLD, 20 * MIN, 10 * MIN),
        recent_builds=builds((30 * SEC, FAILED)),
        failures_in_lookback=1,
    )
    plan = run(snapshot)
    assert plan.actions == ()
    check_state(plan, expired=1, surplus=1, to_create=0, backoff_until=NOW + 30 * SEC)
    assert "holding 0 create(s) and 2 delete(s)" in plan.reasons[0]


def test_backoff_is_stable_across_repeated_plans() -> None:
    snapshot = snap(preset(2), recent_builds=builds((10 * SEC, FAILED)),
                    failures_in_lookback=2)  # fmt: skip
    until = NOW - 10 * SEC + 2 * MIN
    plans = [plan_preset(snapshot, NOW + k * 10 * SEC, CONFIG) for k in range(5)]
    assert {p.state.backoff_until for p in plans} == {until}
    assert all(p.actions == () and p.next_attention == until for p in plans)
    after = plan_preset(snapshot, until, CONFIG)
    assert after.actions == (create(2),)
    assert after.state.backoff_until is None


def test_backoff_rechecks_when_a_failure_leaves_the_lookback() -> None:
    # 100 failures x 1 m outlast the 1 h lookback: the verdict may change when the failure ages out.
    snapshot = snap(preset(1), recent_builds=builds((59 * MIN, FAILED)), failures_in_lookback=100)
    plan = run(snapshot)
    assert plan.state.backoff_until == NOW - 59 * MIN + 100 * MIN
    assert plan.next_attention == NOW + MIN


# ---------------------------------------------------------------------------------------------
# Hard limit and stored status
# ---------------------------------------------------------------------------------------------

# Old enough failures: outside the lookback, so no backoff interferes.
FAIL_1, FAIL_2, FAIL_3 = ((2 * HOUR + i * MIN, FAILED) for i in range(3))
OK_OLD = (3 * HOUR, OK)
OK_NEW = (HOUR + 30 * MIN, OK)


@pytest.mark.parametrize(
    ("limit", "recent", "stored", "actions", "limited"),
    [
        pytest.param(1, (FAIL_1,), PrebuildStatus.HEALTHY,
                     (SetStatus(PRESET_ID, PrebuildStatus.HARD_LIMITED),), True, id="limit-1-hit"),
        pytest.param(2, (FAIL_1, OK_OLD), PrebuildStatus.HEALTHY, (create(2),), False,
                     id="limit-2-one-failure"),
        pytest.param(2, (FAIL_1, FAIL_2, OK_OLD), PrebuildStatus.HEALTHY,
                     (SetStatus(PRESET_ID, PrebuildStatus.HARD_LIMITED),), True, id="limit-2-hit"),
        pytest.param(3, (FAIL_1, FAIL_2), PrebuildStatus.HEALTHY, (create(2),), False,
                     id="fewer-builds-than-limit"),
        pytest.param(0, (FAIL_1, FAIL_2, FAIL_3), PrebuildStatus.HEALTHY, (create(2),), False,
                     id="limit-0-disables"),
        pytest.param(2, (FAIL_1, FAIL_2), PrebuildStatus.HARD_LIMITED, (), True,
                     id="already-stored"),
        pytest.param(2, (OK_NEW, FAIL_1, FAIL_2), PrebuildStatus.HARD_LIMITED,
                     (SetStatus(PRESET_ID, PrebuildStatus.HEALTHY), create(2)), False,
                     id="recovered-back-to-healthy"),
        pytest.param(0, (FAIL_1, FAIL_2), PrebuildStatus.HARD_LIMITED,
                     (SetStatus(PRESET_ID, PrebuildStatus.HEALTHY), create(2)), False,
                     id="limit-disabled-back-to-healthy"),
        pytest.param(1, (FAIL_1,), PrebuildStatus.VALIDATION_FAILED, (), True,
                     id="validation-failed-is-sticky"),
    ],
)  # fmt: skip
def test_hard_limit(
    limit: int,
    recent: tuple[tuple[timedelta, JobStatus], ...],
    stored: PrebuildStatus,
    actions: tuple[Action, ...],
    limited: bool,
) -> None:
    snapshot = snap(preset(2, prebuild_status=stored), recent_builds=builds(*recent))
    plan = run(snapshot, dataclasses.replace(CONFIG, failure_hard_limit=limit))
    assert plan.actions == actions
    check_state(plan, hard_limited=limited)


def test_hard_limited_still_deletes() -> None:
    snapshot = snap(
        preset(1, invalidate_after_secs=TTL),
        running=prebuilds(OLD, 30 * MIN, 20 * MIN),
        recent_builds=builds(FAIL_1, FAIL_2, FAIL_3),
    )
    plan = run(snapshot)
    assert plan.actions == (
        SetStatus(PRESET_ID, PrebuildStatus.HARD_LIMITED),
        delete(EXPIRED, 1),
        delete(SURPLUS, 2),
    )


def test_hard_limited_reports_missing_creates() -> None:
    snapshot = snap(preset(2, prebuild_status=PrebuildStatus.HARD_LIMITED),
                    recent_builds=builds(FAIL_1, FAIL_2, FAIL_3))  # fmt: skip
    plan = run(snapshot)
    assert plan.actions == ()
    assert plan.reasons == ("hard limit reached: not creating 2 missing prebuild(s)",)


def test_status_is_recorded_during_backoff() -> None:
    recent = builds(*((timedelta(seconds=10 * (i + 1)), FAILED) for i in range(3)))
    plan = run(snap(preset(3), recent_builds=recent, failures_in_lookback=3))
    assert plan.actions == (SetStatus(PRESET_ID, PrebuildStatus.HARD_LIMITED),)
    assert plan.state.backoff_until is not None


@pytest.mark.parametrize(
    ("running", "actions"),
    [
        pytest.param((), (), id="no-creates"),
        pytest.param(prebuilds(2 * HOUR, HOUR), (delete(SURPLUS, 1),), id="deletes-continue"),
    ],
)
def test_validation_failed_blocks_creates(
    running: tuple[RunningPrebuild, ...], actions: tuple[Action, ...]
) -> None:
    p = preset(1 if running else 2, prebuild_status=PrebuildStatus.VALIDATION_FAILED)
    plan = run(snap(p, running=running))
    assert plan.actions == actions
    if not running:
        assert plan.reasons == ("validation failed: not creating 2 missing prebuild(s)",)


# ---------------------------------------------------------------------------------------------
# Build inputs: parameters checked and workspace tags evaluated before a create (issue 10)
# ---------------------------------------------------------------------------------------------

REGION = TemplateParameter("region", options=("eu", "us"), default_value="eu")
SIZE = TemplateParameter("size", required=True)
ROUTED_BY_REGION = (("region", "data.coder_parameter.region.value"), ("pool", '"ssd"'))
INVALID = SetStatus(PRESET_ID, PrebuildStatus.VALIDATION_FAILED)


def inputs(values: dict[str, str], tags: tuple[tuple[str, str], ...] = ()) -> BuildInputs:
    return BuildInputs((REGION, SIZE), tuple(values.items()), tags)


def test_valid_preset_creates_with_its_evaluated_workspace_tags() -> None:
    plan = run(snap(preset(2), inputs=inputs({"size": "l", "region": "us"}, ROUTED_BY_REGION)))
    assert plan.actions == (
        Create(PRESET_ID, VERSION_ID, 2, (("pool", "ssd"), ("region", "us"))),
    )
    assert plan.errors == () and plan.state.creates_refused is None
    assert not plan.state.validation_failed


def test_default_value_feeds_the_workspace_tags() -> None:
    plan = run(snap(preset(1), inputs=inputs({"size": "l"}, ROUTED_BY_REGION)))
    assert plan.actions == (Create(PRESET_ID, VERSION_ID, 1, (("pool", "ssd"), ("region", "eu"))),)


@pytest.mark.parametrize(
    ("values", "why"),
    [
        pytest.param({"region": "eu"}, "parameter 'size': required", id="required-missing"),
        pytest.param({"size": "l", "region": "mars"}, "'mars' is not one of", id="not-an-option"),
    ],
)
def test_invalid_preset_is_stored_validation_failed_instead_of_created(
    values: dict[str, str], why: str
) -> None:
    plan = run(snap(preset(2), inputs=inputs(values, ROUTED_BY_REGION)))
    assert plan.actions == (INVALID,)
    assert [e.kind for e in plan.errors] == [InputErrorKind.INVALID_PARAMETER]
    assert why in plan.errors[0].message
    assert plan.state.validation_failed and plan.state.to_create == 0
    assert plan.state.creates_refused is not None and why in plan.state.creates_refused
    assert why in plan.reasons[0] and "storing validation_failed" in plan.reasons[0]


def test_invalid_preset_still_deletes_and_replaces_no_other_status() -> None:
    # Expired prebuilds of an invalid preset are deleted (Coder: invalid presets are cleaned
    # up), and a hard_limited status that would go back to healthy goes to validation_failed
    # directly.
    p = preset(1, invalidate_after_secs=TTL, prebuild_status=PrebuildStatus.HARD_LIMITED)
    plan = run(snap(p, running=prebuilds(OLD), inputs=inputs({})))
    assert plan.actions == (INVALID, delete(EXPIRED, 1))


def test_invalid_preset_is_only_judged_when_a_create_is_due() -> None:
    # Coder checks parameters when it builds: a full pool, a backoff or the hard limit means
    # no build, so no verdict.
    bad = inputs({})
    assert run(snap(preset(1), running=prebuilds(HOUR), inputs=bad)).actions == ()
    failing = builds((10 * SEC, FAILED))
    held = run(snap(preset(1), recent_builds=failing, failures_in_lookback=1, inputs=bad))
    assert held.actions == () and held.errors == ()
    limited = builds(*((timedelta(minutes=10 * (i + 1)), FAILED) for i in range(3)))
    plan = run(snap(preset(1), recent_builds=limited, failures_in_lookback=0, inputs=bad),
               PlanConfig(backoff_lookback=timedelta(minutes=5)))
    assert plan.actions == (SetStatus(PRESET_ID, PrebuildStatus.HARD_LIMITED),)


def test_stored_validation_failed_says_why() -> None:
    stored = preset(2, prebuild_status=PrebuildStatus.VALIDATION_FAILED)
    plan = run(snap(stored, inputs=inputs({"region": "eu"})))
    assert plan.actions == () and plan.errors == ()
    assert plan.state.validation_failed
    assert plan.state.creates_refused is not None and "'size'" in plan.state.creates_refused
    fine = run(snap(stored, inputs=inputs({"size": "l"})))
    assert fine.actions == ()
    assert fine.state.creates_refused is not None
    assert "checks pass now" in fine.state.creates_refused


def test_unevaluated_workspace_tag_holds_creates() -> None:
    tags = (("region", "var.region"),)
    plan = run(snap(preset(2), inputs=inputs({"size": "l"}, tags)))
    assert plan.actions == ()
    assert [e.kind for e in plan.errors] == [InputErrorKind.UNEVALUATED_WORKSPACE_TAG]
    assert "template variables" in plan.errors[0].message
    assert plan.reasons == (f"{plan.errors[0].message}: holding 2 create(s)",)
    assert plan.state.creates_refused == plan.errors[0].message
    assert not plan.state.validation_failed, "the template may be fine: held, not condemned"
    # Nothing to create: nothing held, nothing reported.
    full = run(snap(preset(1), running=prebuilds(HOUR), inputs=inputs({"size": "l"}, tags)))
    assert full.errors == () and full.state.creates_refused is None


# ---------------------------------------------------------------------------------------------
# Schedules and invalid input
# ---------------------------------------------------------------------------------------------

WEEKDAYS = Schedule(UUID(int=1), "* 9-18 * * 1-5", 4)


@pytest.mark.parametrize(
    ("schedules", "timezone", "desired", "errors"),
    [
        pytest.param((WEEKDAYS,), "UTC", 4, 0, id="covering"),
        # 12:00 UTC is 05:00 in Los Angeles.
        pytest.param((WEEKDAYS,), "America/Los_Angeles", 1, 0, id="not-covering-in-zone"),
        pytest.param((WEEKDAYS,), "Nowhere/Land", 1, 1, id="invalid-timezone"),
        # No zone: Coder ignores the schedules (it does not read them as UTC).
        pytest.param((WEEKDAYS,), "", 1, 1, id="no-timezone"),
        pytest.param((Schedule(UUID(int=2), "0 9 * * *", 4),), "UTC", 1, 1, id="invalid-cron"),
        pytest.param((WEEKDAYS, Schedule(UUID(int=2), "* 12 * * *", 2)), "UTC", 1, 1, id="overlap"),
        pytest.param((Schedule(UUID(int=2), "* 9-18 * * 1-5", -2),), "UTC", 0, 1,
                     id="negative-schedule"),
    ],
)  # fmt: skip
def test_schedules(
    schedules: tuple[Schedule, ...], timezone: str, desired: int, errors: int
) -> None:
    plan = run(snap(preset(1, scheduling_timezone=timezone), schedules=schedules))
    assert plan.state.desired == desired
    assert plan.actions == ((create(desired),) if desired else ())
    assert len(plan.errors) == errors


def test_negative_preset_desired() -> None:
    plan = run(snap(preset(-2), running=prebuilds(HOUR)))
    assert plan.state.desired == 0
    assert plan.actions == (delete(SURPLUS, 1),)
    assert plan.errors == (
        InputError(
            InputErrorKind.NEGATIVE_DESIRED, "desired_instances is negative (-2); treated as 0"
        ),
    )


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_preset(snap(), datetime(2025, 6, 2, 12), CONFIG)


# ---------------------------------------------------------------------------------------------
# next_attention and the per-cycle create bound
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snapshot", "config", "expected"),
    [
        pytest.param(snap(preset(1), running=prebuilds(HOUR)), CONFIG, None, id="nothing-timed"),
        pytest.param(
            snap(preset(2, invalidate_after_secs=TTL), running=prebuilds(20 * MIN, 10 * MIN)),
            CONFIG,
            NOW + 40 * MIN,
            id="first-ttl-expiry",
        ),
        pytest.param(
            snap(preset(1, scheduling_timezone="UTC"), schedules=(WEEKDAYS,)), CONFIG,
            datetime(2025, 6, 2, 19, tzinfo=UTC), id="schedule-boundary",
        ),
        pytest.param(
            snap(preset(1, invalidate_after_secs=TTL, scheduling_timezone="UTC"),
                 schedules=(WEEKDAYS,), running=prebuilds(10 * MIN)),
            CONFIG, NOW + 50 * MIN, id="earliest-of-ttl-and-schedule",
        ),
        pytest.param(
            snap(preset(1), recent_builds=builds((10 * SEC, FAILED)),
                 failures_in_lookback=1),
            CONFIG, NOW + 50 * SEC, id="backoff-end",
        ),
        pytest.param(snap(preset(5)), dataclasses.replace(CONFIG, max_creates_per_cycle=2), NOW,
                     id="creates-capped"),
        pytest.param(snap(preset(5)), dataclasses.replace(CONFIG, max_creates_per_cycle=5), None,
                     id="creates-exactly-at-cap"),
        pytest.param(
            snap(preset(1, using_active_version=False, invalidate_after_secs=TTL),
                 running=prebuilds(10 * MIN)),
            CONFIG, None, id="inactive",
        ),
    ],
)  # fmt: skip
def test_next_attention(
    snapshot: PresetSnapshot, config: PlanConfig, expected: datetime | None
) -> None:
    assert run(snapshot, config).next_attention == expected


@pytest.mark.parametrize(
    ("cap", "created"),
    [pytest.param(2, 2, id="capped"), pytest.param(0, 1, id="zero-reads-as-one")],
)
def test_create_cap(cap: int, created: int) -> None:
    plan = run(snap(preset(5)), dataclasses.replace(CONFIG, max_creates_per_cycle=cap))
    assert plan.actions == (create(created),)
    assert plan.state.to_create == created
    assert plan.next_attention == NOW
    assert any("capped" in reason for reason in plan.reasons)


# ---------------------------------------------------------------------------------------------
# can_skip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        pytest.param(snap(preset(0)), False, id="active-never"),
        pytest.param(snap(preset(1, using_active_version=False)), True, id="inactive-empty"),
        pytest.param(snap(preset(1, template_deleted=True)), True, id="deleted-empty"),
        pytest.param(
            snap(preset(1, using_active_version=False), running=prebuilds(HOUR)),
            False,
            id="inactive-running",
        ),
        pytest.param(
            snap(preset(1, template_deprecated=True), pending_cancelable=1),
            False,
            id="inactive-pending",
        ),
        pytest.param(
            snap(preset(1, using_active_version=False), in_progress=InProgress(deleting=2)),
            True,
            id="inactive-only-in-progress",
        ),
    ],
)
def test_can_skip(snapshot: PresetSnapshot, expected: bool) -> None:
    assert can_skip(snapshot) is expected
    if expected:
        assert run(snapshot).actions == ()


def _action_kinds(actions: Sequence[Action]) -> list[str]:
    return [a.kind.value for a in actions]


def test_action_order_is_status_cancel_deletes_create() -> None:
    snapshot = snap(
        preset(3, invalidate_after_secs=TTL, prebuild_status=PrebuildStatus.HARD_LIMITED),
        running=prebuilds(OLD, YOUNG),
    )
    assert _action_kinds(run(snapshot).actions) == ["set_status", "delete", "create"]
