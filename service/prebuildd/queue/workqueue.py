"""The queue the service uses: the core with its layers, plus the sweep/overflow policy.

    add(key, delay=None|d) --SettleWindow--> overflow policy --Cooldown--> KeyQueue.add_at
                              (G5, G6)        (G8)              (G10)      (G1-G4, G7, G9, G11)
    request_sweep() ----------------------> overflow policy (G8)
    get() <-- the sweep marker (G8), or the core's ready keys, whose cooldown starts (G10)

Every guarantee of the core (G1-G4, G7, G9, G11, core.py) holds here too, with the ready time an
add asks for decided by the settle window and the cooldown first. This module adds:

G8 Bounded memory, no silent loss (tests/unit/test_queue_overflow.py). At most `max_keys`
   keys are queued. An add of a new key beyond that is an *overflow*: the queued keys are
   replaced by one full-sweep marker (`Work.full_sweep`, `keys == ()`) which the consumer
   handles by sweeping (prebuildd.sweep: every template is queued again). The marker is ready
   at once (no settle window, no timer). While it is queued it absorbs every add, its
   `sweep_meta` summing them like G1 (no queued keys are left to coalesce into). The sweep is
   exclusive: it is handed out only when nothing is processing, and nothing else is handed out
   while it is processing; keys added during it are queued as usual and follow it (G3 applies
   to the sweep too: overflows during a sweep queue exactly one more sweep).
   `request_sweep()` queues the same marker on purpose. As the sweep starts after every
   absorbed add, no event is lost; absorbed *timers* are re-derived, because every reconcile
   reports its templates' next wake-up again. After `shutdown()`, `request_sweep()` is
   ignored like any add (G9).
   Urgent keys (G11) are the exception, below the bound: `request_sweep()` leaves queued
   urgent keys in place, and an urgent add while the marker is queued is queued as usual
   instead of being absorbed (an overflow absorbs everything, urgent keys too: memory first).
   They still wait for the exclusive sweep, but then the sweep's adds coalesce into them and
   they leave first, instead of waiting behind every template the sweep queued.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

import anyio

from prebuildd.queue.cooldown import Cooldown
from prebuildd.queue.core import (
    Clock,
    KeyQueue,
    QueueShutDown,
    Sleep,
    Tally,
    Work,
    check_batch,
)
from prebuildd.queue.settle import DEFAULT_SETTLE_SECONDS, SettleWindow
from prebuildd.trigger import Trigger

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters since creation. `adds` = queued + coalesced + absorbed + overflows + ignored."""

    adds: int
    queued: int
    coalesced: int
    absorbed: int
    overflows: int
    ignored: int
    handed_out: int
    follow_ups: int
    sweeps: int


class WorkQueue(Generic[K]):
    """Per-key coalescing queue with ready times, a settle window, a cooldown and a bound."""

    def __init__(
        self,
        *,
        settle: float = DEFAULT_SETTLE_SECONDS,
        cooldown: float = 0.0,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        """`clock` and `sleep` must agree (tests pass a fake pair and need no real sleeps)."""
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self._settle = SettleWindow(settle)
        self._cooldown: Cooldown[K] = Cooldown(cooldown)
        self._core: KeyQueue[K] = KeyQueue(clock=clock, sleep=sleep)
        self._max_keys = max_keys
        self._clock = clock
        self._sweep: Tally | None = None  # a queued full sweep
        self._sweep_running = False
        self._absorbed = self._overflows = self._sweeps = 0

    # ---- producers -------------------------------------------------------------------

    def add(
        self,
        key: K,
        *,
        trigger: Trigger = Trigger.EVENT,
        delay: float | None = None,
        event_at: float | None = None,
        urgent: bool = False,
    ) -> None:
        """Queue `key`: at once or at the end of the settle window (G5), or after `delay`
        seconds (G6).

        `urgent` exempts this add from the key's cooldown (G10) and puts the key in the urgent
        band (G11).
        """
        now = self._clock()
        ready_at = self._settle.ready_at(now, delay, idle=self._idle())
        self._offer(key, ready_at, now, trigger, event_at, urgent)

    def _idle(self) -> bool:
        # Only an idle queue opens a settle window with a leading edge (G5): under a burst
        # something is processing, and the burst keeps leaving one window at a time.
        return not (self._core.processing() or self._sweep_running or self._sweep is not None)

    def request_sweep(
        self, *, trigger: Trigger = Trigger.SWEEP, event_at: float | None = None
    ) -> None:
        """Queue the full-sweep marker, replacing queued keys but the urgent ones (G8)."""
        if self._core.shut:
            return
        if self._sweep is not None:
            self._sweep.record(trigger, event_at)
            return
        now = self._clock()
        self._start_sweep(Tally(now, event_at, 1, {trigger}), keep_urgent=True)

    def _offer(
        self,
        key: K,
        ready_at: float,
        now: float,
        trigger: Trigger,
        event_at: float | None,
        urgent: bool,
    ) -> None:
        if not urgent:
            ready_at = max(ready_at, self._cooldown.earliest(key, now))
        core = self._core
        full = not core.is_queued(key) and core.depth() >= self._max_keys
        if core.shut:
            core.add_at(key, ready_at, trigger=trigger, event_at=event_at)  # ignored (G9)
        elif self._sweep is not None and (full or not urgent):
            # The queued sweep starts after this add, so it covers it (G8).
            self._absorbed += 1
            self._sweep.record(trigger, event_at, urgent)
        elif full:
            self._overflows += 1
            self._start_sweep(Tally(now, event_at, 1, {trigger, Trigger.OVERFLOW}, urgent))
        else:
            # Below the bound; while a sweep is queued, only urgent adds get here (G8, G11).
            core.add_at(key, ready_at, trigger=trigger, event_at=event_at, urgent=urgent)

    def _start_sweep(self, sweep: Tally, *, keep_urgent: bool = False) -> None:
        for meta in self._core.clear(keep_urgent=keep_urgent):
            sweep.absorb(meta)
        self._sweep = sweep
        self._core.notify()

    # ---- consumers -------------------------------------------------------------------

    async def get(self, max_batch: int = 1) -> Work[K]:
        """Wait for ready work and hand out up to `max_batch` keys, or the sweep (G7, G8)."""
        check_batch(max_batch)
        while True:
            work = self.get_nowait(max_batch)
            if work is not None:
                return work
            await self._core.wait(self._next_ready())

    def get_nowait(self, max_batch: int = 1) -> Work[K] | None:
        """What `get` would hand out right now, or None; raises `QueueShutDown` as `get` does."""
        work = self._take_sweep() or self._take_keys(max_batch)
        if work is None and self._core.shut:
            raise QueueShutDown
        return work

    def _take_sweep(self) -> Work[K] | None:
        if self._sweep is None or self._sweep_running or self._core.processing():
            return None
        meta = self._sweep.freeze()
        self._sweep = None
        self._sweep_running = True
        self._sweeps += 1
        self._settle.handed_out()
        return Work((), MappingProxyType({}), meta)

    def _take_keys(self, max_batch: int) -> Work[K] | None:
        if self._sweep_running or self._sweep is not None:
            return None  # the sweep is exclusive (G8)
        work = self._core.take(max_batch)
        if work is not None:
            self._cooldown.started(work.keys, self._clock())
            self._settle.handed_out()
        return work

    def _next_ready(self) -> float | None:
        """When waiting `get`s should look again without being told; None = only when told."""
        if self._sweep is not None or self._sweep_running:
            return None  # the sweep waits for `done`, which notifies
        return self._core.next_ready()

    def done(self, work: Work[K] | Iterable[K]) -> None:
        """Finish a `Work`, or some of its keys; releases follow-ups (G3) and the sweep."""
        if isinstance(work, Work) and work.full_sweep:
            if not self._sweep_running:
                raise ValueError("done() for a full sweep that is not processing")
            self._sweep_running = False
            self._core.notify()
            return
        self._core.done(work.keys if isinstance(work, Work) else work)

    # ---- lifecycle -------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting adds and sweep requests; `get` stops waiting (G9). Idempotent."""
        self._core.shutdown()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is processing, a sweep included; False if `timeout` passes first."""
        deadline = self._clock() + timeout
        while self._core.processing() or self._sweep_running:
            if self._clock() >= deadline:
                return False
            await self._core.wait(deadline)
        return True

    # ---- introspection ---------------------------------------------------------------

    def depth(self) -> int:
        """Queued keys, ready or not, follow-ups included (the sweep marker not)."""
        return self._core.depth()

    def processing(self) -> int:
        """Keys handed out and not yet done (a running sweep not included)."""
        return self._core.processing()

    def cooling(self) -> int:
        """Keys whose cooldown is running (G10): the hand-out times the queue remembers."""
        return self._cooldown.cooling(self._clock())

    def sweep_queued(self) -> bool:
        return self._sweep is not None

    def sweep_running(self) -> bool:
        return self._sweep_running

    def stats(self) -> QueueStats:
        core = self._core
        return QueueStats(
            adds=core.adds + self._absorbed + self._overflows,
            queued=core.new_keys,
            coalesced=core.coalesced,
            absorbed=self._absorbed,
            overflows=self._overflows,
            ignored=core.ignored,
            handed_out=core.handed_out,
            follow_ups=core.follow_ups,
            sweeps=self._sweeps,
        )
