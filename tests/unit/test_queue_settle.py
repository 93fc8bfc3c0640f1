"""The delay layer (G5 settle window, G6 delays in prebuildd.queue.settle), one at a time."""

from __future__ import annotations

import anyio
import pytest
from _queue_support import FakeClock, Getter, busy, make_queue, take

from prebuildd.queue import SettleWindow


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- G5 settle window --------------------------------------------------------------------


@pytest.mark.anyio
async def test_g5_a_burst_inside_the_window_leaves_as_one_batch(clock: FakeClock) -> None:
    q = make_queue(clock, settle=1.0)
    busy(q)  # a busy queue: the window is trailing
    q.add("a")
    await clock.advance(0.5)
    q.add("b")
    await clock.advance(0.25)
    q.add("c")
    await clock.advance(0.125)
    assert q.get_nowait() is None  # nothing before the window ends
    await clock.advance(0.125)
    assert take(q).keys == ("a", "b", "c")

    q.add("d")  # the window closed at 1.0: a new one ends at 2.0
    await clock.advance(0.5)
    assert q.get_nowait() is None
    await clock.advance(0.5)
    assert take(q).keys == ("d",)


@pytest.mark.anyio
async def test_g5_settle_bounds_latency_for_a_waiting_get(clock: FakeClock) -> None:
    q = make_queue(clock, settle=1.0)
    busy(q)
    getter = Getter(q, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(getter.run)
        await clock.advance(7)
        q.add("a")
        await clock.advance(1)
    assert getter.at == 8


# ---- G5 leading edge: an idle queue hands a lone event out at once -----------------------


@pytest.mark.anyio
async def test_g5_a_lone_event_on_an_idle_queue_is_ready_at_once(clock: FakeClock) -> None:
    q = make_queue(clock, settle=1.0)
    getter = Getter(q, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(getter.run)
        await clock.advance(7)
        q.add("a")  # no window open, nothing processing: no wait
    assert getter.at == 7
    assert getter.work is not None and getter.work.keys == ("a",)


@pytest.mark.anyio
async def test_g5_events_added_before_the_first_hand_out_leave_in_one_batch(
    clock: FakeClock,
) -> None:
    # One transaction's notifications: added together, before any consumer runs.
    q = make_queue(clock, settle=1.0)
    q.add("a")
    await clock.advance(0.25)  # even a little later, as long as nothing was handed out
    q.add("b")
    q.add("a")
    work = take(q)
    assert work.keys == ("a", "b")
    assert work.meta["a"].events == 2


@pytest.mark.anyio
async def test_g5_after_the_leading_batch_the_window_is_trailing(clock: FakeClock) -> None:
    q = make_queue(clock, settle=1.0)
    q.add("a")
    held = take(q)  # the leading batch, at 0
    q.add("a")  # again while processing: exactly one follow-up (G3) ...
    await clock.advance(0.5)
    q.add("b")  # ... and a new key: both at the window's end
    q.add("a")
    assert q.get_nowait() is None
    q.done(held)
    assert q.get_nowait() is None  # done does not advance a follow-up's ready time (G4)
    await clock.advance(0.5)
    work = take(q)
    assert sorted(work.keys) == ["a", "b"]  # ties leave in the order they entered the heap
    assert work.meta["a"].events == 2
    q.done(work)
    assert q.get_nowait() is None  # coalesced: one follow-up, not two

    await clock.advance(3)  # the window closed at 1 and the queue is idle again
    q.add("c")
    assert take(q).keys == ("c",)


@pytest.mark.anyio
async def test_g5_a_busy_queue_opens_a_trailing_window(clock: FakeClock) -> None:
    q = make_queue(clock, settle=1.0)
    held = busy(q)
    q.add("a")
    assert q.get_nowait() is None
    q.done(held)  # idle again, but the window opened trailing stays so
    q.add("b")
    assert q.get_nowait() is None
    await clock.advance(1)
    assert take(q).keys == ("a", "b")


@pytest.mark.anyio
async def test_g5_a_queued_or_running_sweep_opens_no_leading_edge(clock: FakeClock) -> None:
    q = make_queue(clock, settle=1.0)
    q.request_sweep()
    sweep = take(q)
    assert sweep.full_sweep
    q.add("a")  # during the sweep: queued as usual, trailing
    q.done(sweep)
    assert q.get_nowait() is None
    await clock.advance(1)
    assert take(q).keys == ("a",)


# ---- G6 delays ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_g6_far_future_delay_is_handed_out_then_not_before(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.add("a", trigger="timer", delay=3600)
    getter = Getter(q, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(getter.run)
        await clock.advance(3599.5)
        assert getter.work is None
        await clock.advance(0.5)
    assert getter.at == 3600
    assert getter.work is not None and getter.work.meta["a"].triggers == frozenset({"timer"})


@pytest.mark.anyio
async def test_g6_negative_delay_is_now_and_nan_is_refused(clock: FakeClock) -> None:
    q = make_queue(clock)
    q.add("a", delay=-5)
    assert take(q).keys == ("a",)
    with pytest.raises(ValueError):
        q.add("b", delay=float("nan"))
    assert q.depth() == 0


def test_settle_window_alone_one_window_for_all_keys() -> None:
    window = SettleWindow(settle=1.0)
    assert window.ready_at(10.0, None) == 11.0  # opens a window
    assert window.ready_at(10.5, None) == 11.0  # inside it: the same end
    assert window.ready_at(11.0, None) == 12.0  # closed at 11: a new one
    assert window.ready_at(11.5, delay=3) == 14.5  # delays are not windowed (G6)
    assert window.ready_at(11.5, delay=-1) == 11.5
    assert window.ready_at(11.5, None) == 12.0  # and do not disturb the open window


def test_settle_window_alone_leading_edge() -> None:
    window = SettleWindow(settle=1.0)
    assert window.ready_at(10.0, None, idle=True) == 10.0  # opens a leading window
    assert window.ready_at(10.5, None, idle=False) == 10.0  # same batch until a hand-out
    window.handed_out()
    assert window.ready_at(10.5, None, idle=True) == 11.0  # the rest of it is trailing
    assert window.ready_at(11.0, None, idle=False) == 12.0  # a busy queue: trailing
    assert window.ready_at(11.5, None, idle=True) == 12.0  # inside that window
    assert window.ready_at(12.0, None, idle=True) == 12.0
    assert window.ready_at(12.5, delay=0.25, idle=True) == 12.75  # delays: G6
    assert window.ready_at(12.5, None) == 12.0  # the leading window's batch is still open


def test_settle_window_alone_refuses_bad_numbers() -> None:
    for bad in (-0.001, float("nan")):
        with pytest.raises(ValueError):
            SettleWindow(settle=bad)
    with pytest.raises(ValueError):
        SettleWindow().ready_at(0.0, float("nan"))


def test_the_default_window_is_the_products() -> None:
    window = SettleWindow()
    assert window.ready_at(0.0, None) == 0.002  # `prebuildd run --settle` defaults to 2ms
    assert SettleWindow().ready_at(0.0, None, idle=True) == 0.0
