"""The bound on memory and its full-sweep marker (G8 in prebuildd.queue.workqueue)."""

from __future__ import annotations

import anyio
import pytest
from _queue_support import FakeClock, Getter, all_blocked, make_queue, take


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- G8 overflow and the full sweep ------------------------------------------------------


@pytest.mark.anyio
async def test_g8_overflow_becomes_a_full_sweep_not_a_silent_drop(clock: FakeClock) -> None:
    q = make_queue(clock, max_keys=3)
    for key in ["a", "b", "c"]:
        q.add(key)
    q.add("a")  # a queued key still coalesces at the limit
    q.add("d", trigger="timer", delay=60)  # the fourth key overflows
    assert q.depth() == 0 and q.sweep_queued()
    q.add("e")  # absorbed by the queued sweep
    q.add("a")

    work = take(q)  # ready at once: no settle, nothing processing
    assert work.full_sweep and work.keys == ()
    assert work.sweep_meta is not None
    assert work.sweep_meta.events == 7
    assert work.sweep_meta.triggers == frozenset({"event", "timer", "overflow"})
    stats = q.stats()
    assert (stats.overflows, stats.absorbed, stats.sweeps) == (1, 2, 1)
    assert stats.adds == (
        stats.queued + stats.coalesced + stats.absorbed + stats.overflows + stats.ignored
    )


@pytest.mark.anyio
async def test_g8_sweep_waits_for_processing_keys(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0, max_keys=1)
    q.add("a")
    held = take(q)
    q.add("b")
    q.add("c")  # overflow while "a" is processing
    q.add("a")  # absorbed: the sweep runs after "a" is done
    getter = Getter(q, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(getter.run)
        await clock.advance(10)
        assert getter.work is None
        q.done(held)
        await all_blocked()
    assert getter.work is not None and getter.work.full_sweep
    q.done(getter.work)
    assert q.get_nowait() is None  # nothing left: "a"'s follow-up was absorbed


@pytest.mark.anyio
async def test_g8_keys_added_during_a_sweep_follow_it(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0, max_keys=2)
    q.request_sweep()
    sweep = take(q)
    assert sweep.full_sweep
    q.add("a")
    q.add("b")
    assert q.get_nowait() is None  # exclusive: nothing while the sweep runs
    q.done(sweep)
    assert take(q).keys == ("a", "b")


@pytest.mark.anyio
async def test_g8_overflow_during_a_sweep_queues_exactly_one_more(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0, max_keys=1)
    q.request_sweep(trigger="startup")
    sweep = take(q)
    assert sweep.sweep_meta is not None and sweep.sweep_meta.triggers == {"startup"}
    for key in ["a", "b", "c", "d"]:
        q.add(key)
    q.request_sweep()  # coalesces into the queued one
    assert q.get_nowait() is None
    q.done(sweep)
    again = take(q)
    assert again.full_sweep
    assert again.sweep_meta is not None
    assert again.sweep_meta.triggers == {"event", "overflow", "sweep"}
    q.done(again)
    assert q.get_nowait() is None
    assert q.stats().sweeps == 2
