"""The rate-limiting layer (G10 in prebuildd.queue.cooldown), one property at a time."""

from __future__ import annotations

import itertools
import math
import random

import anyio
import pytest
from _queue_support import FakeClock, Getter, busy, make_queue, take, take_int
from hypothesis import given, settings
from hypothesis import strategies as st

from prebuildd.queue import Cooldown, Work, WorkQueue


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- G10 cooldown ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_g10_first_event_after_a_quiet_spell_waits_only_for_settle(
    clock: FakeClock,
) -> None:
    q = make_queue(clock, settle=0.5, cooldown=4)
    busy(q)  # the settle window is trailing (G5)
    q.add("a")  # never handed out: no cooldown
    await clock.advance(0.5)
    q.done(take(q))
    await clock.advance(4)  # the cooldown of that hand-out is over
    q.add("a")
    await clock.advance(0.25)
    assert q.get_nowait() is None
    await clock.advance(0.25)
    assert take(q).keys == ("a",)
    assert q.cooling() == 1


@pytest.mark.anyio
async def test_g10_an_event_inside_the_cooldown_waits_for_its_end(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0.5, cooldown=4)
    q.add("a", delay=0)
    q.done(take(q))  # handed out at 0: cooling until 4
    await clock.advance(1)
    q.add("a")
    q.add("b")  # another key is not affected
    await clock.advance(0.5)
    assert take(q).keys == ("b",)
    await clock.advance(2)
    assert q.get_nowait() is None
    await clock.advance(0.5)
    assert take(q).keys == ("a",)


@pytest.mark.anyio
async def test_g10_an_urgent_event_is_exempt_from_the_cooldown(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0.5, cooldown=4)
    q.add("a", delay=0)
    q.done(take(q))  # handed out at 0: cooling until 4
    await clock.advance(1)
    q.add("a")  # churn: would wait until 4
    q.add("a", urgent=True)  # a promotion: only the settle window
    await clock.advance(0.5)
    work = take(q)
    assert work.keys == ("a",)
    assert work.meta["a"].events == 2
    # ...and it still counts as a hand-out: the next churn waits until 1.5 + 4.
    q.done(work)
    q.add("a")
    await clock.advance(5.5 - 1.5 - 0.01)
    assert q.get_nowait() is None
    await clock.advance(0.02)
    assert take(q).keys == ("a",)


@pytest.mark.anyio
async def test_g10_an_urgent_event_during_processing_is_the_one_follow_up(
    clock: FakeClock,
) -> None:
    q = make_queue(clock, settle=0.5, cooldown=4)
    q.add("a", delay=0)
    work = take(q)
    q.add("a", urgent=True)
    await clock.advance(1)
    q.done(work)
    assert take(q).keys == ("a",), "ready at done, not at the end of the cooldown"


@pytest.mark.anyio
async def test_g10_a_waiting_get_wakes_at_the_end_of_the_cooldown(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0.5, cooldown=4)
    q.add("a", delay=0)
    first = take(q)
    q.add("a")  # follow-up asked for during the reconcile: ready at 4
    getter = Getter(q, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(getter.run)
        await clock.advance(1)
        q.done(first)
        await clock.advance(2.5)
        assert getter.work is None
        await clock.advance(0.5)
    assert getter.at == 4


@pytest.mark.anyio
async def test_g10_timers_and_delays_respect_it_the_sweep_does_not(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0, cooldown=4)
    q.add("a", delay=0)
    q.add("b", delay=0)
    q.done(take(q))  # both handed out at 0
    q.add("a", trigger="timer", delay=1)
    q.add("b", trigger="retry", delay=2)
    await clock.advance(3.5)
    assert q.get_nowait() is None
    await clock.advance(0.5)
    assert take(q).keys == ("a", "b")  # both at 4, in the order they were queued

    q.request_sweep()  # at 4, with a and b processing: the sweep waits for them only
    q.done(["a", "b"])
    sweep = take(q)
    assert sweep.full_sweep
    q.done(sweep)
    q.add("c")
    assert take(q).keys == ("c",)  # a sweep starts no cooldown


@pytest.mark.anyio
async def test_g10_ready_time_moves_earlier_only_within_the_cooldown(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0.5, cooldown=4)
    q.add("a", delay=0)
    q.done(take(q))
    q.add("a", delay=10)  # ready at 10
    q.add("a")  # an event: at the end of the cooldown, 4, earlier than 10
    q.add("a", trigger="timer", delay=1)  # asks for 1, raised to 4: no change
    q.add("a", delay=20)  # later: no change (G4)
    await clock.advance(3.5)
    assert q.get_nowait() is None
    await clock.advance(0.5)
    work = take(q)
    assert work.meta["a"].events == 4


@pytest.mark.anyio
async def test_g10_a_two_second_burst_is_handed_out_three_times(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0.125, cooldown=1)
    busy(q)  # the settle window is trailing (G5)
    assert await _burst_starts(q, clock) == [0.125, 1.125, 2.125]


@pytest.mark.anyio
async def test_g10_g5_the_burst_on_an_idle_queue_still_leaves_three_times(
    clock: FakeClock,
) -> None:
    # The same burst without other work: each window opens with a leading edge (G5), so the
    # first hand-out is at once and the cooldown spaces the others as before.
    q = make_queue(clock, settle=0.125, cooldown=1)
    assert await _burst_starts(q, clock) == [0, 1, 2]


async def _burst_starts(q: WorkQueue[str], clock: FakeClock) -> list[float]:
    """An event for "k" every 1/8 s from 0 to 2, each hand-out done at once; the hand-outs'
    times before 5 s."""
    starts: list[float] = []
    for step in range(40):
        if step < 17:
            q.add("k")
        if (work := q.get_nowait()) is not None:
            starts.append(clock.now)
            q.done(work)
        await clock.advance(0.125)
    return starts


def _simulate_burst(
    rng: random.Random, settle: float, cooldown: float, span: float
) -> tuple[list[tuple[float, float]], list[tuple[float, float, float]]]:
    """One key, events at random steps of 1/8 over `span`, reconciles of random length.

    Returns the hand-outs (start, done) and, per event, (added, handed out, bound) where
    bound = max(added + settle, previous start + cooldown, previous done) is what G5 and
    G10 promise. Time moves in steps of 1/8 (exact), and the consumer looks at every step.
    """
    clock = FakeClock()
    q = make_queue(clock, settle=settle, cooldown=cooldown)
    handouts: list[tuple[float, float]] = []
    pending: list[tuple[float, float]] = []  # events not handed out yet: (added, bound)
    waits: list[tuple[float, float, float]] = []
    held: tuple[Work[str], float] | None = None
    step, last_add = 0.125, span
    while clock.now <= last_add or held is not None or q.depth():
        if held is not None and held[1] <= clock.now:
            q.done(held[0])
            held = None
        if clock.now <= last_add and rng.random() < 0.6:
            prev_start = handouts[-1][0] if handouts else -math.inf
            busy_until = held[1] if held is not None else -math.inf
            pending.append((clock.now, max(clock.now + settle, prev_start + cooldown, busy_until)))
            q.add("k")
        work = q.get_nowait()
        if work is not None:
            finish = clock.now + step * rng.randint(0, 12)
            handouts.append((clock.now, finish))
            waits.extend((added, clock.now, bound) for added, bound in pending)
            pending.clear()
            held = (work, finish)
        clock.now += step
    assert not pending, "an event was never handed out"
    return handouts, waits


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    settle=st.sampled_from([0.125, 0.25, 0.5]),
    cooldown=st.sampled_from([0.25, 0.5, 1.0]),
    span=st.sampled_from([0.0, 0.5, 2.0, 5.0]),
)
def test_g10_burst_on_one_key_is_bounded_and_nothing_starves(
    seed: int, settle: float, cooldown: float, span: float
) -> None:
    handouts, waits = _simulate_burst(random.Random(seed), settle, cooldown, span)
    starts = [start for start, _ in handouts]
    assert all(b - a >= cooldown for a, b in itertools.pairwise(starts))
    assert len(handouts) <= math.ceil(span / cooldown) + 1
    for added, handed, bound in waits:
        assert added <= handed <= bound, (added, handed, bound)


@pytest.mark.anyio
async def test_g10_hand_out_times_are_forgotten_after_the_cooldown(clock: FakeClock) -> None:
    n = 20_000
    q: WorkQueue[int] = WorkQueue(settle=0, cooldown=1, max_keys=n, clock=clock, sleep=clock.sleep)
    for key in range(n):
        q.add(key)
    while (work := q.get_nowait(1000)) is not None:
        q.done(work)
    assert q.cooling() == n
    await clock.advance(0.5)
    assert q.cooling() == n
    await clock.advance(0.5)
    assert q.cooling() == 0
    assert q._cooldown.remembered() == 0
    q.add(1)
    assert take_int(q).keys == (1,)  # not delayed: its hand-out time was forgotten


@pytest.mark.anyio
async def test_g10_cooldown_must_be_a_non_negative_number(clock: FakeClock) -> None:
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            make_queue(clock, cooldown=bad)


def test_cooldown_alone_raises_the_ready_time_and_forgets_cooled_keys() -> None:
    cooldown: Cooldown[str] = Cooldown(4.0)
    assert cooldown.earliest("a", 0.0) == -math.inf  # never handed out
    cooldown.started(["a", "b"], 1.0)
    assert cooldown.earliest("a", 2.0) == 5.0
    assert cooldown.cooling(2.0) == 2
    cooldown.started(["a"], 3.0)  # handed out again: its cooldown restarts
    assert cooldown.earliest("a", 4.0) == 7.0
    assert cooldown.earliest("b", 5.0) == -math.inf  # 1 + 4: over
    assert cooldown.cooling(5.0) == 1
    assert cooldown.cooling(7.0) == 0
    assert cooldown.remembered() == 0


def test_cooldown_alone_zero_remembers_nothing() -> None:
    cooldown: Cooldown[str] = Cooldown(0.0)
    cooldown.started(["a"], 1.0)
    assert cooldown.earliest("a", 1.0) == -math.inf
    assert cooldown.remembered() == 0
