"""Per-key coalescing work queue: the one place that decides *when* a template is reconciled.

The listener, the timers reported by plans and the sweeps all feed keys (template ids in
practice, any hashable value here) into a `WorkQueue`; reconcile workers take `Work` out of it
with `get()` and give it back with `done()`. The queue never looks at what a key means.

Vocabulary
----------
A key is *queued* from an `add` until `get` hands it out, and *processing* from that hand-out
until `done`. A key can be processing and queued at the same time: it was added again while
being worked on, and that queued entry is its *follow-up*. Every queued key has a *ready time*
(a reading of `clock`, monotonic by default); it is *ready* once `clock() >= ready time`.

Contract (each guarantee is tested on its own in tests/unit/test_queue.py)
--------------------------------------------------------------------------
G1 Coalescing. Any number of adds of a queued key collapse into one entry and one hand-out.
   Its `KeyMeta` sums them: `events` is the number of adds, `triggers` the union of their
   triggers, `first_added` the clock at the first add, `first_added_wall` the smallest
   `wall_time` any of them carried (None if none did).
G2 Exclusive. A key is never handed out while it is processing: at most one holder per key,
   whatever the number of consumers. One `Work` never holds a key twice.
G3 Exactly one follow-up. However many adds arrive while a key is processing, the key is
   handed out exactly once more, and not before `done` for it. An add that arrives while the
   key is queued (not processing) causes no extra hand-out.
G4 Ready time only moves earlier. Each add asks for a ready time; the key's ready time
   becomes the minimum of the one it had and the one asked for. A later request never
   postpones a key, an earlier one advances it, and a `get` already waiting for the old time
   wakes up for the new one. Processing does not change a follow-up's ready time: it is
   handed out at its ready time or at `done`, whichever comes last. With a cooldown (G10)
   the time asked for is first raised to the end of the key's cooldown, so "earlier" means
   earlier within what the cooldown allows.
G5 Settle window. `add(key)` without `delay` (an event) is ready at the end of the current
   settle window: the first such add at a moment when no window is open opens one that ends
   `settle` seconds later, and every event add until then becomes ready at that same end.
   Notifications of one transaction arrive together at its commit and therefore leave the
   queue as one batch, and no event waits longer than max(`settle`, the time left in its
   key's cooldown, G10) before it is ready.
G6 Delays. `add(key, delay=d)` asks for `clock() + max(d, 0)`, `add_at(key, t)` for `t`.
   Neither is subject to the settle window, and neither is handed out before its time.
   Both are subject to the cooldown (G10): they are not urgent by nature.
G7 Batching and order. `get(max_batch)` hands out up to `max_batch` keys that are ready and
   not processing, earliest ready time first, ties in the order they were queued. It hands
   out what is ready when it wakes up; it never waits to fill a batch.
G8 Bounded memory, no silent loss. At most `max_keys` keys are queued. An add of a new key
   beyond that is an *overflow*: the queued keys are replaced by one full-sweep marker
   (`Work.full_sweep`, `keys == ()`) which the consumer handles by reconciling everything.
   The marker is ready at once (no settle window, no timer). While it is queued it absorbs
   every add, its `sweep_meta` summing them like G1 (no queued keys are left to coalesce
   into). The sweep is exclusive: it is handed out only when nothing is processing, and
   nothing else is handed out while it is processing; keys added during it are queued as
   usual and follow it (G3 applies to the sweep too: overflows during a sweep queue exactly
   one more sweep). `request_sweep()` queues the same marker on purpose. As the sweep starts
   after every absorbed add, no event is lost; absorbed *timers* are re-derived, because
   every reconcile reports its templates' next wake-up again.
G9 Shutdown. After `shutdown()` adds are ignored (and counted), as is `request_sweep()`.
   `get()` never waits again: it hands out what it could hand out right now, else raises
   `QueueShutDown`; gets already waiting wake up to do the same. A consumer that sees
   `QueueShutDown` stops, so what was not ready at that moment (later ready times,
   follow-ups of keys still processing) is abandoned: the database is the truth and the next
   start sweeps everything. `done()` keeps working (a follow-up it releases can still go to
   a later `get`), and `drain(timeout)` waits until nothing is processing.
G10 Cooldown. With `cooldown` c > 0, a key is never handed out less than c after its
   previous hand-out: while a key's last hand-out at t is less than c ago, every add of it
   (event, delay or timer) asks for max(its own time, t + c) instead. A key not handed out
   within the last c is untouched, so the first event after a quiet spell waits for the
   settle window only. A key that keeps receiving events for T seconds is therefore handed
   out at most ceil(T / c) + 1 times, and its burst still leaves with its batch mates (keys
   handed out together cool down together). The full-sweep marker ignores the cooldown and
   starts none: the queue does not know which keys a sweep covers. A hand-out time is
   forgotten once its cooldown is over, so the queue remembers only the keys handed out
   within the last c. c = 0 disables all of this. An urgent add (`add(key, urgent=True)`)
   is exempt and asks for its own time: the cooldown tames churn (provisioner progress),
   it must not delay a change a person made (a promotion, a claim); G3 still holds, so an
   urgent add during processing is the key's one follow-up, ready at `done`.

Use from one event loop only (it is not thread-safe). `add`, `add_at`, `request_sweep`,
`done` and `shutdown` are synchronous and never block, so the listener can call them between
two notifications. Cancelling a `get` loses nothing: it either returns `Work` or hands out
nothing. A consumer must call `done` exactly once for everything it was handed (use
try/finally); a key that is never done is never handed out again and blocks `drain`.

Costs: `add` is O(log n) (a heap ordered by ready time with lazy deletion, plus a dict);
`get` is O(b log n) for a batch of b, plus amortised O(1) per key for the cooldown's
bookkeeping (a dict and a deque in hand-out order, pruned from its old end). The heap is
rebuilt when stale entries outnumber live ones, so memory stays O(max_keys + keys handed
out within the last `cooldown`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

K = TypeVar("K", bound=Hashable)

# Heap entries that no longer match their key's entry are left in place and skipped on pop;
# rebuild once they outnumber live entries by this slack so memory stays proportional.
_COMPACT_SLACK = 64


class QueueShutDown(Exception):
    """`get` on a shut-down queue that has nothing ready to hand out right now."""


@dataclass(frozen=True, slots=True)
class KeyMeta:
    """Why and since when a key (or the full sweep) was queued; see G1."""

    first_added: float
    first_added_wall: float | None
    events: int
    triggers: frozenset[str]


@dataclass(frozen=True, slots=True)
class Work(Generic[K]):
    """What one `get` hands out: a batch of keys, or the full-sweep marker (G8)."""

    keys: tuple[K, ...]
    meta: Mapping[K, KeyMeta]
    sweep_meta: KeyMeta | None = None

    @property
    def full_sweep(self) -> bool:
        """True for the marker that stands for every key: reconcile everything."""
        return self.sweep_meta is not None


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


@dataclass(slots=True)
class _Entry:
    """Mutable bookkeeping for one queued key (or the queued sweep)."""

    ready_at: float
    first_added: float
    first_added_wall: float | None
    events: int = 1
    triggers: set[str] = field(default_factory=set)
    seq: int = -1  # matches the entry's one live heap item; anything else is stale

    def record(self, trigger: str, wall_time: float | None) -> None:
        self.events += 1
        self.triggers.add(trigger)
        self.first_added_wall = _min_wall(self.first_added_wall, wall_time)

    def absorb(self, other: _Entry) -> None:
        self.events += other.events
        self.triggers |= other.triggers
        self.first_added = min(self.first_added, other.first_added)
        self.first_added_wall = _min_wall(self.first_added_wall, other.first_added_wall)

    def freeze(self) -> KeyMeta:
        return KeyMeta(
            self.first_added, self.first_added_wall, self.events, frozenset(self.triggers)
        )


def _min_wall(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


class WorkQueue(Generic[K]):
    """Per-key coalescing queue with ready times; the contract is the module docstring."""

    def __init__(
        self,
        *,
        settle: float = 0.01,
        cooldown: float = 0.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """`clock` and `sleep` must agree (tests pass a fake pair and need no real sleeps)."""
        if not settle >= 0:
            raise ValueError(f"settle must be >= 0, got {settle!r}")
        if not cooldown >= 0:
            raise ValueError(f"cooldown must be >= 0, got {cooldown!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self._settle = settle
        self._cooldown = cooldown
        self._max_keys = max_keys
        self._clock = clock
        self._sleep = sleep
        self._queued: dict[K, _Entry] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._processing: set[K] = set()
        self._sweep: _Entry | None = None  # a queued full sweep
        self._sweep_running = False
        self._window_end = -math.inf
        # G10: last hand-out per key while it is cooling down, and the same in hand-out order
        # (the clock is monotonic, so the deque is sorted and is pruned from its left end).
        self._last_start: dict[K, float] = {}
        self._starts: deque[tuple[float, K]] = deque()
        self._seq = itertools.count()
        self._changed: anyio.Event | None = None  # created lazily: only waiters need one
        self._shut = False
        self._adds = self._new_keys = self._coalesced = self._absorbed = 0
        self._overflows = self._ignored = self._handed_out = self._follow_ups = 0
        self._sweeps = 0

    # ---- producers -------------------------------------------------------------------

    def add(
        self,
        key: K,
        *,
        trigger: str = "event",
        delay: float | None = None,
        wall_time: float | None = None,
        urgent: bool = False,
    ) -> None:
        """Queue `key`: at the end of the settle window (G5), or after `delay` seconds (G6).

        `urgent` exempts this add from the key's cooldown (G10).
        """
        now = self._clock()
        if delay is None:
            ready_at = self._settle_deadline(now)
        else:
            _check_number(delay, "delay")
            ready_at = now + max(delay, 0.0)
        self._offer(key, ready_at, now, trigger, wall_time, urgent=urgent)

    def add_at(
        self, key: K, ready_at: float, *, trigger: str = "timer", wall_time: float | None = None
    ) -> None:
        """Queue `key` to be ready at `ready_at`, a reading of this queue's clock (G6)."""
        _check_number(ready_at, "ready_at")
        self._offer(key, ready_at, self._clock(), trigger, wall_time)

    def request_sweep(self, *, trigger: str = "sweep", wall_time: float | None = None) -> None:
        """Queue the full-sweep marker, replacing queued keys, as an overflow would (G8)."""
        if self._shut:
            return
        now = self._clock()
        if self._sweep is not None:
            self._sweep.record(trigger, wall_time)
            return
        self._start_sweep(_Entry(now, now, wall_time, 1, {trigger}))

    def _settle_deadline(self, now: float) -> float:
        # One window for all keys, not one per key: a burst must leave as one batch (G5).
        if now >= self._window_end:
            self._window_end = now + self._settle
        return self._window_end

    def _offer(
        self,
        key: K,
        ready_at: float,
        now: float,
        trigger: str,
        wall_time: float | None,
        *,
        urgent: bool = False,
    ) -> None:
        self._adds += 1
        if not urgent:
            ready_at = max(ready_at, self._cooldown_end(key, now))
        if self._shut:
            self._ignored += 1
        elif self._sweep is not None:
            # The queued sweep starts after this add, so it covers it (G8).
            self._absorbed += 1
            self._sweep.record(trigger, wall_time)
        elif (entry := self._queued.get(key)) is not None:
            self._coalesced += 1
            entry.record(trigger, wall_time)
            self._advance(key, entry, ready_at)
        elif len(self._queued) >= self._max_keys:
            self._overflows += 1
            self._start_sweep(_Entry(now, now, wall_time, 1, {trigger, "overflow"}))
        else:
            self._new_keys += 1
            entry = _Entry(ready_at, now, wall_time, 1, {trigger})
            self._queued[key] = entry
            if key not in self._processing:
                self._push(key, entry)

    def _cooldown_end(self, key: K, now: float) -> float:
        """The earliest time the cooldown allows for `key` (G10); -inf when it is not cooling."""
        last = self._last_start.get(key)
        if last is None or last + self._cooldown <= now:
            return -math.inf
        return last + self._cooldown

    def _advance(self, key: K, entry: _Entry, ready_at: float) -> None:
        if ready_at >= entry.ready_at:
            return  # never postpone (G4)
        entry.ready_at = ready_at
        if key not in self._processing:  # a follow-up enters the heap only at done (G3)
            self._push(key, entry)

    def _start_sweep(self, sweep: _Entry) -> None:
        for entry in self._queued.values():
            sweep.absorb(entry)
        self._queued.clear()
        self._heap.clear()
        self._sweep = sweep
        self._notify()

    def _push(self, key: K, entry: _Entry) -> None:
        entry.seq = next(self._seq)
        heapq.heappush(self._heap, (entry.ready_at, entry.seq, key))
        if len(self._heap) > 2 * len(self._queued) + _COMPACT_SLACK:
            self._compact()
        self._notify()

    def _compact(self) -> None:
        self._heap = [
            (e.ready_at, e.seq, k) for k, e in self._queued.items() if k not in self._processing
        ]
        heapq.heapify(self._heap)

    # ---- consumers -------------------------------------------------------------------

    async def get(self, max_batch: int = 1) -> Work[K]:
        """Wait for ready work and hand out up to `max_batch` keys, or the sweep (G7, G8)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        while True:
            work = self.get_nowait(max_batch)
            if work is not None:
                return work
            await self._wait(self._next_ready())

    def get_nowait(self, max_batch: int = 1) -> Work[K] | None:
        """What `get` would hand out right now, or None; raises `QueueShutDown` as `get` does."""
        work = self._take_sweep() or self._take_keys(max_batch)
        if work is None and self._shut:
            raise QueueShutDown
        return work

    def _take_sweep(self) -> Work[K] | None:
        if self._sweep is None or self._sweep_running or self._processing:
            return None
        meta = self._sweep.freeze()
        self._sweep = None
        self._sweep_running = True
        self._sweeps += 1
        return Work((), MappingProxyType({}), meta)

    def _take_keys(self, max_batch: int) -> Work[K] | None:
        if self._sweep_running or self._sweep is not None:
            return None  # the sweep is exclusive (G8)
        now = self._clock()
        taken: dict[K, KeyMeta] = {}
        while len(taken) < max_batch and (key := self._peek()) is not None:
            entry = self._queued[key]
            if entry.ready_at > now:
                break
            heapq.heappop(self._heap)
            del self._queued[key]
            self._processing.add(key)
            taken[key] = entry.freeze()
        if not taken:
            return None
        self._start_cooldowns(taken, now)
        self._handed_out += len(taken)
        return Work(tuple(taken), MappingProxyType(taken))

    def _start_cooldowns(self, keys: Iterable[K], now: float) -> None:
        if self._cooldown <= 0:
            return
        self._forget_cooled(now)
        for key in keys:
            self._last_start[key] = now
            self._starts.append((now, key))

    def _forget_cooled(self, now: float) -> None:
        # A deque item is stale when its key was handed out again since; the dict has the
        # newer time then, and that newer item (further right) removes it in its turn.
        while self._starts and self._starts[0][0] + self._cooldown <= now:
            started, key = self._starts.popleft()
            if self._last_start.get(key) == started:
                del self._last_start[key]

    def _peek(self) -> K | None:
        """The live key at the top of the heap, dropping stale items on the way."""
        while self._heap:
            _, seq, key = self._heap[0]
            entry = self._queued.get(key)
            if entry is not None and entry.seq == seq:
                return key
            heapq.heappop(self._heap)
        return None

    def _next_ready(self) -> float | None:
        """When waiting `get`s should look again without being told; None = only when told."""
        if self._sweep is not None or self._sweep_running:
            return None  # the sweep waits for `done`, which notifies
        key = self._peek()
        return None if key is None else self._queued[key].ready_at

    def done(self, work: Work[K] | Iterable[K]) -> None:
        """Finish a `Work`, or some of its keys; releases follow-ups (G3) and the sweep."""
        sweep = isinstance(work, Work) and work.full_sweep
        keys = tuple(work.keys if isinstance(work, Work) else work)
        self._check_done(keys, sweep)
        if sweep:
            self._sweep_running = False
        for key in keys:
            self._processing.remove(key)
            entry = self._queued.get(key)
            if entry is not None:
                self._follow_ups += 1
                self._push(key, entry)
        self._notify()

    def _check_done(self, keys: tuple[K, ...], sweep: bool) -> None:
        # Validate everything before changing anything: a bad call must not half-apply.
        if sweep and not self._sweep_running:
            raise ValueError("done() for a full sweep that is not processing")
        if len(set(keys)) != len(keys):
            raise ValueError("done() got the same key twice")
        unknown = [k for k in keys if k not in self._processing]
        if unknown:
            raise ValueError(f"done() for keys that are not processing: {unknown!r}")

    # ---- lifecycle -------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting adds; `get` stops waiting (G9). Idempotent."""
        self._shut = True
        self._notify()

    @property
    def is_shut_down(self) -> bool:
        return self._shut

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is processing; False if `timeout` seconds pass first."""
        deadline = self._clock() + timeout
        while self._processing or self._sweep_running:
            if self._clock() >= deadline:
                return False
            await self._wait(deadline)
        return True

    # ---- introspection ---------------------------------------------------------------

    def depth(self) -> int:
        """Queued keys, ready or not, follow-ups included (the sweep marker not)."""
        return len(self._queued)

    def processing(self) -> int:
        """Keys handed out and not yet done (a running sweep not included)."""
        return len(self._processing)

    def cooling(self) -> int:
        """Keys whose cooldown is running (G10): the hand-out times the queue remembers."""
        self._forget_cooled(self._clock())
        return len(self._last_start)

    def sweep_queued(self) -> bool:
        return self._sweep is not None

    def sweep_running(self) -> bool:
        return self._sweep_running

    def stats(self) -> QueueStats:
        return QueueStats(
            adds=self._adds,
            queued=self._new_keys,
            coalesced=self._coalesced,
            absorbed=self._absorbed,
            overflows=self._overflows,
            ignored=self._ignored,
            handed_out=self._handed_out,
            follow_ups=self._follow_ups,
            sweeps=self._sweeps,
        )

    # ---- waiting ---------------------------------------------------------------------

    def _notify(self) -> None:
        # Wake every waiter; each re-checks, so one Event per round of changes is enough.
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait(self, deadline: float | None) -> None:
        """Return when notified or at `deadline` (a reading of our clock), whichever first."""
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        if deadline is None:
            await changed.wait()
            return
        timeout = deadline - self._clock()
        if timeout <= 0:
            await anyio.lowlevel.checkpoint()
            return
        # Race the injected sleep (not anyio's own timeouts) so a fake clock drives the queue.
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._alarm, timeout, tg.cancel_scope)
            await changed.wait()
            tg.cancel_scope.cancel()

    async def _alarm(self, timeout: float, scope: anyio.CancelScope) -> None:
        await self._sleep(timeout)
        scope.cancel()


def _check_number(value: float, name: str) -> None:
    # NaN would poison the heap order silently; fail at the caller instead.
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got NaN")
