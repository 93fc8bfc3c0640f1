"""The urgent band (G11 in prebuildd.queue.core) and how it meets the sweep marker (G8).

A change a person made (a promotion, a claim) is an urgent add; the sweeps queue every template
with plain adds. These tests pin down that an urgent key overtakes sweep work that was ready
long before it, leaves in a batch of its own band, and that every older guarantee still holds
for it (its ready time, one holder, exactly one follow-up, the bound).
"""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest
from _queue_support import FakeClock, busy, make_queue, take
from hypothesis import given, settings
from hypothesis import strategies as st

from prebuildd.queue import KeyQueue, WorkQueue
from prebuildd.trigger import Trigger


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def swept(q: WorkQueue[str], n: int) -> list[str]:
    """What a sweep does: every template queued at once, not urgent."""
    keys = [f"t{i:04d}" for i in range(n)]
    for key in keys:
        q.add(key, trigger=Trigger.SWEEP, delay=0.0)
    return keys


@pytest.mark.anyio
async def test_g11_an_urgent_add_overtakes_the_sweep_that_queued_its_key(
    clock: FakeClock,
) -> None:
    q = make_queue(clock, settle=0.002)
    keys = swept(q, 1000)
    first = take(q, 200)
    assert first.keys == tuple(keys[:200])  # sweep work in queueing order (G7)
    await clock.advance(1)
    # A person promotes a version of a template the sweep queued near the end of its list.
    q.add("t0900", trigger=Trigger.EVENT, event_at=5.0, urgent=True)
    # Its ready time is still the sweep's (G4: earlier than the settle window's end)...
    urgent = take(q, 200)
    # ...and it leaves alone, before the 799 sweep keys that were ready a second earlier.
    assert urgent.keys == ("t0900",)
    meta = urgent.meta["t0900"]
    assert meta.urgent and meta.triggers == {Trigger.SWEEP, Trigger.EVENT}
    assert meta.event_at == 5.0 and meta.events == 2
    # Then the sweep goes on where it was, without the key that already left.
    rest = take(q, 1000)
    assert rest.keys == tuple(k for k in keys[200:] if k != "t0900")
    assert not any(m.urgent for m in rest.meta.values())


@pytest.mark.anyio
async def test_g11_urgent_keys_leave_in_batches_of_their_own_band(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0)
    swept(q, 5)
    for key in ("u1", "u2", "u3"):
        q.add(key, urgent=True)
    batch = take(q, 10)  # room for everything: still only the urgent band
    assert batch.keys == ("u1", "u2", "u3")
    assert take(q, 10).keys == ("t0000", "t0001", "t0002", "t0003", "t0004")


@pytest.mark.anyio
async def test_g11_g4_an_urgent_add_keeps_its_own_ready_time(clock: FakeClock) -> None:
    q = make_queue(clock, settle=1.0)
    busy(q)  # the settle window is trailing (G5)
    swept(q, 3)
    q.add("new", urgent=True)  # a new key: ready at the end of the settle window (G5)
    assert take(q).keys == ("t0000", "t0001", "t0002")  # the band never makes a key ready
    q.add("t0000", trigger=Trigger.TIMER, delay=100)
    await clock.advance(1)
    assert take(q).keys == ("new",)


@pytest.mark.anyio
async def test_g11_g3_an_urgent_add_during_processing_makes_an_urgent_follow_up(
    clock: FakeClock,
) -> None:
    q = make_queue(clock, settle=0)
    q.add("a")
    held = take(q)
    swept(q, 4)
    q.add("a", urgent=True)
    assert take(q).keys == ("t0000", "t0001", "t0002", "t0003")  # G2: "a" is still held
    q.done(held)
    follow_up = take(q)
    assert follow_up.keys == ("a",) and follow_up.meta["a"].urgent


@pytest.mark.anyio
async def test_g11_the_band_ends_with_the_hand_out(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0)
    q.add("a", urgent=True)
    q.done(take(q))
    swept(q, 2)
    q.add("a", trigger=Trigger.SWEEP, delay=0.0)  # a later, plain add of the same key
    assert take(q).keys == ("t0000", "t0001", "a")


@pytest.mark.anyio
async def test_g11_core_alone_a_later_urgent_ready_time_does_not_postpone(
    clock: FakeClock,
) -> None:
    core: KeyQueue[str] = KeyQueue(clock=clock, sleep=clock.sleep)
    core.add_at("a", 1.0, trigger=Trigger.TIMER)
    core.add_at("b", 0.0, trigger=Trigger.SWEEP)
    core.add_at("a", 50.0, trigger=Trigger.EVENT, urgent=True)  # urgent, but asks for later
    assert core.next_ready() == 0.0
    assert core.take(10) is not None  # "b"
    assert core.next_ready() == 1.0  # G4: "a" kept its earlier time in its new band
    await clock.advance(1)
    work = core.take(10)
    assert work is not None and work.keys == ("a",) and work.meta["a"].urgent
    assert core.heap_size() <= 2


# ---- G11 with the sweep marker (G8) ----------------------------------------------------------


@pytest.mark.anyio
async def test_g8_g11_a_requested_sweep_neither_absorbs_nor_drops_urgent_keys(
    clock: FakeClock,
) -> None:
    q = make_queue(clock, settle=0)
    q.add("urgent-before", urgent=True)
    q.add("plain", trigger=Trigger.TIMER, delay=30)
    q.request_sweep(trigger=Trigger.SWEEP)  # the listener reconnected
    assert q.depth() == 1  # the timer is absorbed (re-derived by the sweep), the urgent key stays
    q.add("urgent-during", urgent=True)  # a claim while the marker waits
    q.add("plain-during")  # absorbed, as before
    marker = take(q)
    assert marker.full_sweep and marker.sweep_meta is not None
    assert marker.sweep_meta.events == 3  # the sweep itself, the timer, plain-during
    assert q.get_nowait() is None  # the sweep is exclusive
    # The sweep lists every template and queues each one; the urgent keys coalesce.
    for key in ("plain", "plain-during", "urgent-before", "urgent-during", "z"):
        q.add(key, trigger=Trigger.SWEEP, delay=0.0)
    q.done(marker)
    assert take(q, 10).keys == ("urgent-before", "urgent-during")
    assert take(q, 10).keys == ("plain", "plain-during", "z")


@pytest.mark.anyio
async def test_g8_g11_an_overflow_absorbs_urgent_keys_too(clock: FakeClock) -> None:
    q = make_queue(clock, settle=0, max_keys=2)
    q.add("a", urgent=True)
    q.add("b")
    q.add("c", urgent=True)  # beyond the bound: memory first
    assert q.depth() == 0 and q.sweep_queued()
    q.add("d", urgent=True)  # the marker emptied the queue: below the bound, queued as usual
    marker = take(q)
    assert marker.sweep_meta is not None and marker.sweep_meta.urgent
    assert marker.sweep_meta.events == 3 and q.depth() == 1


# ---- a randomized check of the band against a model -----------------------------------------


async def _random_run(seed: int, n_ops: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    q = make_queue(clock, settle=rng.choice([0.0, 1.0]))
    keys = [f"k{i}" for i in range(6)]
    held: list[tuple[str, ...]] = []
    urgent_since_hand_out: set[str] = set()
    for _ in range(n_ops):
        roll = rng.random()
        key = rng.choice(keys)
        if roll < 0.35:
            urgent = rng.random() < 0.3
            q.add(key, trigger=Trigger.EVENT, urgent=urgent, delay=rng.choice([None, 0, 2]))
            if urgent:
                urgent_since_hand_out.add(key)
        elif roll < 0.6:
            now = clock()
            ready_urgent = {
                k
                for k in urgent_since_hand_out
                if q._core.is_queued(k)
                and k not in q._core._processing
                and q._core._queued[k].ready_at <= now
            }
            work = q.get_nowait(rng.randint(1, 4))
            if work is None:
                assert not ready_urgent
                continue
            bands = {work.meta[k].urgent for k in work.keys}
            assert len(bands) == 1, "a batch mixes the bands"
            if ready_urgent:
                assert bands == {True}, "ready urgent keys waited behind other work"
            for k in work.keys:
                assert work.meta[k].urgent == (k in urgent_since_hand_out)
                urgent_since_hand_out.discard(k)
            held.append(work.keys)
        elif roll < 0.8 and held:
            q.done(held.pop(rng.randrange(len(held))))
        else:
            await clock.advance(rng.choice([0.5, 1, 3]))
        await anyio.lowlevel.checkpoint()


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1), n_ops=st.integers(1, 150))
def test_g11_random_interleavings_match_the_model(seed: int, n_ops: int) -> None:
    anyio.run(_random_run, seed, n_ops, backend="asyncio")
