"""The cap on pending prebuild jobs, pure: how room is dealt, who waits, who is woken."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prebuildd.model import Create, Delete, DeleteReason, Plan, PlanConfig, Preset, PresetSnapshot
from prebuildd.plan import plan_preset
from prebuildd.throttle import HEAD_RECHECK, Lines, TagSet, Wait, deal, share

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
ORG = UUID(int=0xD)
TAGS = TagSet(ORG, '{"owner": "", "scope": "organization"}')
OTHER_TAGS = TagSet(ORG, '{"owner": "", "scope": "organization", "gpu": "true"}')
SEC = timedelta(seconds=1)


def preset(n: int, *, template: int | None = None, version: int | None = None) -> Preset:
    return Preset(
        id=UUID(int=0x100 + n),
        name=f"p{n}",
        template_id=UUID(int=0x200 + (template if template is not None else n)),
        template_name=f"t{n}",
        organization_id=ORG,
        organization_name="org",
        template_version_id=UUID(int=0x300 + (version if version is not None else n)),
        template_version_name="v",
        using_active_version=True,
        template_deleted=False,
        template_deprecated=False,
        desired_instances=0,
    )


def wanting(p: Preset, desired: int, config: PlanConfig | None = None) -> Plan:
    """The real planner's plan for a preset with `desired` and nothing built yet."""
    snapshot = PresetSnapshot(preset=dataclasses.replace(p, desired_instances=desired))
    return plan_preset(snapshot, NOW, config or PlanConfig())


def lines(
    pending: int = 0,
    waiting: Sequence[Wait] = (),
    *,
    versions: Sequence[Preset] = (),
    tag_set: TagSet = TAGS,
) -> Lines:
    tag_sets = {tag_set, *(w.tag_set for w in waiting)}
    return Lines(
        {(p.template_version_id, ()): tag_set for p in versions},
        {t: (pending if t == tag_set else 0) for t in tag_sets},
        tuple(waiting),
    )


def creates(plan: Plan) -> int:
    return sum(a.count for a in plan.actions if isinstance(a, Create))


def wait(p: Preset, held: int, age: timedelta, tag_set: TagSet = TAGS) -> Wait:
    return Wait(p.id, p.template_id, tag_set, held, NOW - age)


# ---- dealing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "room", "dealt"),
    [
        ([200, 2], 10, [8, 2]),
        ([200, 2], 3, [2, 1]),
        ([200, 2], 1, [1, 0]),
        ([0, 5, 1], 4, [0, 3, 1]),
        ([3, 3, 3], 7, [3, 2, 2]),
        ([3, 3, 3], 0, [0, 0, 0]),
        ([3, 3, 3], -2, [0, 0, 0]),
        ([], 5, []),
    ],
)
def test_deal_is_round_robin_in_line_order(wanted: list[int], room: int, dealt: list[int]) -> None:
    assert deal(wanted, room) == dealt


@given(st.lists(st.integers(0, 30), max_size=8), st.integers(-3, 120))
def test_deal_equals_dealing_one_at_a_time(wanted: list[int], room: int) -> None:
    slow = [0] * len(wanted)
    left = max(room, 0)
    while left and any(g < w for g, w in zip(slow, wanted, strict=True)):
        for i, w in enumerate(wanted):
            if left and slow[i] < w:
                slow[i] += 1
                left -= 1
    assert deal(wanted, room) == slow


# ---- one reconcile --------------------------------------------------------------------------


def test_no_cap_changes_nothing() -> None:
    p = preset(1)
    plans = (wanting(p, 10),)
    verdict = share(plans, lines(pending=100, versions=[p]), [p.template_id], 0, NOW)
    assert verdict.plans == plans
    assert (verdict.waits, verdict.wake, verdict.changed) == ((), (), False)


def test_room_under_the_cap_is_created_and_the_rest_waits_with_a_reason() -> None:
    p = preset(1)
    verdict = share((wanting(p, 10),), lines(pending=1, versions=[p]), [p.template_id], 4, NOW)
    (plan,) = verdict.plans
    (create,) = plan.actions
    assert create == Create(p.id, p.template_version_id, 3, max_pending=4)
    assert (plan.state.to_create, plan.state.held) == (3, 7)
    assert "1 of 4" in plan.reasons[-1] and "holding 7 create(s)" in plan.reasons[-1]
    assert verdict.waits == (Wait(p.id, p.template_id, TAGS, 7, NOW),)
    assert verdict.changed


def test_at_the_cap_nothing_is_created_and_the_preset_keeps_its_place() -> None:
    p = preset(1)
    earlier = wait(p, 7, 30 * SEC)
    verdict = share(
        (wanting(p, 10),), lines(pending=4, waiting=[earlier], versions=[p]), [p.template_id], 4,
        NOW,
    )
    (plan,) = verdict.plans
    assert plan.actions == ()
    assert (plan.state.to_create, plan.state.held) == (0, 10)
    assert "makes room" in plan.reasons[-1]
    assert verdict.waits == (dataclasses.replace(earlier, held=10),)


def test_a_preset_that_no_longer_wants_creates_leaves_the_line_and_its_room_goes_on() -> None:
    gone, other = preset(1), preset(2)
    verdict = share(
        (wanting(gone, 0),),
        lines(pending=2, waiting=[wait(gone, 5, 20 * SEC), wait(other, 3, 10 * SEC)]),
        [gone.template_id],
        3,
        NOW,
    )
    assert verdict.waits == ()
    assert verdict.changed
    assert verdict.wake == (other.template_id,)


def test_nothing_recorded_when_the_line_is_as_it_was() -> None:
    p = preset(1)
    verdict = share((wanting(p, 0),), lines(pending=0), [p.template_id], 3, NOW)
    assert (verdict.waits, verdict.wake, verdict.changed) == ((), (), False)


def test_creates_dealt_to_other_templates_are_left_to_them_and_they_are_woken() -> None:
    """The line is [a (oldest), b, mine]; room 2: a and b get one each, mine waits."""
    a, b, mine = preset(1), preset(2), preset(3)
    verdict = share(
        (wanting(mine, 4),),
        lines(pending=3, waiting=[wait(a, 9, 60 * SEC), wait(b, 1, 30 * SEC)], versions=[mine]),
        [mine.template_id],
        5,
        NOW,
    )
    (plan,) = verdict.plans
    assert creates(plan) == 0 and plan.state.held == 4
    assert verdict.wake == tuple(sorted((a.template_id, b.template_id)))
    assert "place 3 of 3" in plan.reasons[-1]


def test_a_served_preset_goes_to_the_back_of_the_line() -> None:
    big, small = preset(1), preset(2)
    # big has waited longest: it is served first, then waits behind small.
    verdict = share(
        (wanting(big, 100),),
        lines(pending=4, waiting=[wait(big, 100, 60 * SEC), wait(small, 2, 30 * SEC)],
              versions=[big]),
        [big.template_id],
        5,
        NOW,
    )
    (plan,) = verdict.plans
    assert creates(plan) == 1
    assert verdict.waits == (Wait(big.id, big.template_id, TAGS, 99, NOW),)
    assert verdict.wake == ()
    # The next job picked up: small is first now, and big's next reconcile leaves it the room.
    after = share(
        (wanting(big, 99),),
        lines(pending=4, waiting=[*verdict.waits, wait(small, 2, 30 * SEC)], versions=[big]),
        [big.template_id],
        5,
        NOW + SEC,
    )
    assert creates(after.plans[0]) == 0
    assert after.wake == (small.template_id,)


def test_a_big_and_a_small_deficit_take_turns() -> None:
    """Replays the line over many pickups: the small template is full long before the big."""
    big, small = preset(1), preset(2)
    wanted = {big.id: 200, small.id: 5}
    created = {big.id: 0, small.id: 0}
    line: dict[UUID, Wait] = {}
    now = NOW
    for _ in range(20):  # one job picked up per round: room 1 at every reconcile
        now += SEC
        # Both reconcile together (one batch): the worst case for the newcomer.
        plans = [wanting(p, wanted[p.id] - created[p.id]) for p in (big, small)]
        verdict = share(
            plans,
            lines(pending=9, waiting=list(line.values()), versions=[big, small]),
            [big.template_id, small.template_id],
            10,
            now,
        )
        for plan in verdict.plans:
            created[plan.preset.id] += creates(plan)
        line = {w.preset_id: w for w in verdict.waits}
    assert created[small.id] == 5
    assert created[big.id] == 15


def test_each_tag_set_has_its_own_room() -> None:
    gpu, cpu = preset(1), preset(2)
    verdict = share(
        (wanting(gpu, 3), wanting(cpu, 3)),
        Lines(
            {(gpu.template_version_id, ()): OTHER_TAGS, (cpu.template_version_id, ()): TAGS},
            {OTHER_TAGS: 2, TAGS: 0},
            (),
        ),
        [gpu.template_id, cpu.template_id],
        2,
        NOW,
    )
    assert [creates(p) for p in verdict.plans] == [0, 2]


def test_a_version_without_a_tag_set_is_not_capped() -> None:
    """No import job: the create fails as invalid input in the database, uncapped here."""
    p = preset(1)
    plan = wanting(p, 3)
    verdict = share((plan,), lines(pending=10), [p.template_id], 2, NOW)
    assert verdict.plans == (plan,)


def test_deletes_are_never_held() -> None:
    p = preset(1)
    delete = Delete(p.id, (UUID(int=7),), DeleteReason.SURPLUS)
    plan = wanting(p, 4)
    plan = dataclasses.replace(plan, actions=(delete, *plan.actions))
    verdict = share((plan,), lines(pending=5, versions=[p]), [p.template_id], 5, NOW)
    assert verdict.plans[0].actions == (delete,)


def test_the_per_cycle_follow_up_is_dropped_while_held_and_a_lone_waiter_rechecks() -> None:
    p = preset(1)
    plan = wanting(p, 10, PlanConfig(max_creates_per_cycle=3))
    assert plan.next_attention == NOW  # the per-cycle bound asks to come back at once
    verdict = share((plan,), lines(pending=2, versions=[p]), [p.template_id], 3, NOW)
    assert creates(verdict.plans[0]) == 1
    assert verdict.plans[0].next_attention == NOW + HEAD_RECHECK


def test_a_waiter_behind_others_gets_no_timer() -> None:
    """Others were in line before: the trigger wakes the first of them, and it wakes us."""
    p, first = preset(1), preset(2)
    verdict = share(
        (wanting(p, 3),),
        lines(pending=5, waiting=[wait(first, 2, 9 * SEC)], versions=[p]),
        [p.template_id],
        5,
        NOW,
    )
    assert verdict.plans[0].next_attention is None


def test_a_plan_that_fits_is_only_marked_capped() -> None:
    p = preset(1)
    verdict = share((wanting(p, 3),), lines(pending=0, versions=[p]), [p.template_id], 10, NOW)
    (plan,) = verdict.plans
    assert plan.actions == (Create(p.id, p.template_version_id, 3, max_pending=10),)
    assert plan.state.held == 0 and plan.reasons == wanting(p, 3).reasons
    assert not verdict.changed
