"""The core of the work queue: keys with ready times, coalesced, handed out one holder at a time.

This layer knows nothing of settle windows, cooldowns or sweeps (the layers in settle.py,
cooldown.py and workqueue.py decide the ready time of an add and when the core may hand out);
it only keeps the promises below. Keys are template ids in practice, any hashable value here.

Vocabulary
----------
A key is *queued* from an `add_at` until `get` hands it out, and *processing* from that hand-out
until `done`. A key can be processing and queued at the same time: it was added again while
being worked on, and that queued entry is its *follow-up*. Every queued key has a *ready time*
(a reading of `clock`, monotonic by default); it is *ready* once `clock() >= ready time`.

Contract (tests/unit/test_queue_core.py checks each guarantee on its own)
-------------------------------------------------------------------------
G1 Coalescing. Any number of adds of a queued key collapse into one entry and one hand-out.
   Its `KeyMeta` sums them: `events` is the number of adds, `triggers` the union of their
   triggers, `first_added` the clock at the first add, `event_at` the earliest `event_at`
   any of them carried (None if none did).
G2 Exclusive. A key is never handed out while it is processing: at most one holder per key,
   whatever the number of consumers. One `Work` never holds a key twice.
G3 Exactly one follow-up. However many adds arrive while a key is processing, the key is
   handed out exactly once more, and not before `done` for it. An add that arrives while the
   key is queued (not processing) causes no extra hand-out.
G4 Ready time only moves earlier. Each add asks for a ready time; the key's ready time
   becomes the minimum of the one it had and the one asked for. A later request never
   postpones a key, an earlier one advances it, and a `get` already waiting for the old time
   wakes up for the new one. Processing does not change a follow-up's ready time: it is
   handed out at its ready time or at `done`, whichever comes last.
G7 Batching and order. `get(max_batch)` hands out up to `max_batch` keys that are ready and
   not processing, earliest ready time first, ties in the order they were queued (within a
   band, G11). It hands out what is ready when it wakes up; it never waits to fill a batch.
G9 Shutdown. After `shutdown()` adds are ignored (and counted). `get()` never waits again: it
   hands out what it could hand out right now, else raises `QueueShutDown`; gets already
   waiting wake up to do the same. A consumer that sees `QueueShutDown` stops, so what was not
   ready at that moment (later ready times, follow-ups of keys still processing) is abandoned:
   the database is the truth and the next start sweeps everything. `done()` keeps working (a
   follow-up it releases can still go to a later `get`), and `drain(timeout)` waits until
   nothing is processing.

G11 Urgent band. An add may be `urgent` (a change a person made: a promotion, a claim). A
   queued key is urgent when any add behind it was (G1 sums that too: `KeyMeta.urgent`), and
   stays so until it is handed out; a follow-up is urgent when an urgent add arrived during
   processing (G3). Whenever an urgent key is ready and not processing, `get` hands out a
   batch of urgent keys only (G7's order among them), before any other ready key, however
   long those have been ready. So a template that a sweep queued along with thousands of
   others, and that a person then changes, leaves with the next batch, alone or with other
   urgent keys, instead of keeping the sweep's place or sharing a batch of sweep work. Being
   urgent never changes a ready time (G4): an urgent add still waits for its own ready time
   (the settle window), and a key held by a consumer is still never handed out (G2). The
   bound on this: an urgent key waits for the first consumer that finishes its current work.
   Non-urgent keys are not starved for long by this band: urgent adds come from people, not
   from machines, and each urgent key leaves at once.

Use from one event loop only (it is not thread-safe; `depth()` alone may be read from another
thread, as the metrics do). `add_at`, `done` and `shutdown` are synchronous and never block.
Cancelling a `get` loses nothing: it either returns `Work` or hands out nothing. A consumer must
call `done` exactly once for everything it was handed (use try/finally); a key that is never
done is never handed out again and blocks `drain`.

Costs: `add_at` is O(log n) (a heap per band ordered by ready time with lazy deletion, plus a
dict); `get` is O(b log n) for a batch of b. The heaps are rebuilt when stale entries outnumber
live ones, so memory stays O(queued keys).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

from prebuildd.trigger import Trigger

K = TypeVar("K", bound=Hashable)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Heap entries that no longer match their key's entry are left in place and skipped on pop;
# rebuild once they outnumber live entries by this slack so memory stays proportional.
_COMPACT_SLACK = 64


class QueueShutDown(Exception):
    """`get` on a shut-down queue that has nothing ready to hand out right now."""


@dataclass(frozen=True, slots=True)
class KeyMeta:
    """Why and since when a key (or the full sweep) was queued; see G1."""

    first_added: float
    # Wall-clock epoch seconds of the earliest event behind it (`Event.event_at`).
    event_at: float | None
    events: int
    triggers: frozenset[Trigger]
    # An urgent add was among them (G11).
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class Work(Generic[K]):
    """What one `get` hands out: a batch of keys, or the full-sweep marker (G8, workqueue.py)."""

    keys: tuple[K, ...]
    meta: Mapping[K, KeyMeta]
    sweep_meta: KeyMeta | None = None

    @property
    def full_sweep(self) -> bool:
        """True for the marker that stands for every key: reconcile everything."""
        return self.sweep_meta is not None


@dataclass(slots=True)
class Tally:
    """The adds behind one queued key (or behind the queued sweep), summed as G1 says."""

    first_added: float
    event_at: float | None
    events: int = 1
    triggers: set[Trigger] = field(default_factory=set)
    urgent: bool = False

    def record(self, trigger: Trigger, event_at: float | None, urgent: bool = False) -> None:
        self.events += 1
        self.triggers.add(trigger)
        self.event_at = _earliest(self.event_at, event_at)
        self.urgent = self.urgent or urgent

    def absorb(self, other: KeyMeta) -> None:
        self.events += other.events
        self.triggers |= other.triggers
        self.first_added = min(self.first_added, other.first_added)
        self.event_at = _earliest(self.event_at, other.event_at)
        self.urgent = self.urgent or other.urgent

    def freeze(self) -> KeyMeta:
        return KeyMeta(
            self.first_added, self.event_at, self.events, frozenset(self.triggers), self.urgent
        )


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


# (ready time, push sequence, key): heapq orders by ready time, then by queueing order.
_Heap = list[tuple[float, int, K]]


@dataclass(slots=True)
class _Entry:
    """One queued key: its tally and ready time."""

    tally: Tally
    ready_at: float
    seq: int = -1  # matches the entry's one live heap item; anything else is stale


def check_number(value: float, name: str) -> None:
    # NaN would poison the heap order silently; fail at the caller instead.
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got NaN")


class KeyQueue(Generic[K]):
    """Per-key coalescing queue with ready times; the contract is the module docstring."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep) -> None:
        """`clock` and `sleep` must agree (tests pass a fake pair and need no real sleeps)."""
        self._clock = clock
        self._sleep = sleep
        self._queued: dict[K, _Entry] = {}
        # One heap per band (G11): [0] the others, [1] the urgent keys. An entry's one live
        # item is in the heap of its band; an entry that became urgent left a stale item in
        # the other.
        self._heaps: tuple[_Heap[K], _Heap[K]] = ([], [])
        self._processing: set[K] = set()
        self._seq = itertools.count()
        self._changed: anyio.Event | None = None  # created lazily: only waiters need one
        self._shut = False
        self.adds = self.new_keys = self.coalesced = self.ignored = 0
        self.handed_out = self.follow_ups = 0

    # ---- producers -------------------------------------------------------------------

    def add_at(
        self,
        key: K,
        ready_at: float,
        *,
        trigger: Trigger,
        event_at: float | None = None,
        urgent: bool = False,
    ) -> None:
        """Queue `key` to be ready at `ready_at` (a reading of the clock), or advance it (G4);
        an `urgent` add puts it in the urgent band (G11)."""
        check_number(ready_at, "ready_at")
        self.adds += 1
        if self._shut:
            self.ignored += 1
        elif (entry := self._queued.get(key)) is not None:
            self.coalesced += 1
            promoted = urgent and not entry.tally.urgent
            entry.tally.record(trigger, event_at, urgent)
            self._advance(key, entry, ready_at, promoted)
        else:
            self.new_keys += 1
            entry = _Entry(Tally(self._clock(), event_at, 1, {trigger}, urgent), ready_at)
            self._queued[key] = entry
            if key not in self._processing:
                self._push(key, entry)

    def _advance(self, key: K, entry: _Entry, ready_at: float, promoted: bool) -> None:
        if ready_at >= entry.ready_at and not promoted:
            return  # never postpone (G4)
        entry.ready_at = min(entry.ready_at, ready_at)
        if key not in self._processing:  # a follow-up enters the heap only at done (G3)
            self._push(key, entry)

    def clear(self, *, keep_urgent: bool = False) -> list[KeyMeta]:
        """Remove every queued key (follow-ups included), or every one but the urgent ones,
        and return what each removed key stood for.

        For a layer that replaces them (G8): processing keys stay processing.
        """
        removed = [
            entry.tally.freeze()
            for entry in self._queued.values()
            if not (keep_urgent and entry.tally.urgent)
        ]
        if keep_urgent:
            self._queued = {k: e for k, e in self._queued.items() if e.tally.urgent}
            self._heaps[0].clear()
        else:
            self._queued.clear()
            for heap in self._heaps:
                heap.clear()
        self.notify()
        return removed

    def _push(self, key: K, entry: _Entry) -> None:
        entry.seq = next(self._seq)
        heapq.heappush(self._heaps[entry.tally.urgent], (entry.ready_at, entry.seq, key))
        if self.heap_size() > 2 * len(self._queued) + _COMPACT_SLACK:
            self._compact()
        self.notify()

    def _compact(self) -> None:
        for band, heap in enumerate(self._heaps):
            heap[:] = [
                (e.ready_at, e.seq, k)
                for k, e in self._queued.items()
                if k not in self._processing and e.tally.urgent == bool(band)
            ]
            heapq.heapify(heap)

    # ---- consumers -------------------------------------------------------------------

    async def get(self, max_batch: int = 1) -> Work[K]:
        """Wait for ready work and hand out up to `max_batch` keys (G7)."""
        check_batch(max_batch)
        while True:
            work = self.get_nowait(max_batch)
            if work is not None:
                return work
            await self.wait(self.next_ready())

    def get_nowait(self, max_batch: int = 1) -> Work[K] | None:
        """What `get` would hand out right now, or None; raises `QueueShutDown` as `get` does."""
        work = self.take(max_batch)
        if work is None and self._shut:
            raise QueueShutDown
        return work

    def take(self, max_batch: int) -> Work[K] | None:
        """Hand out up to `max_batch` ready keys now (G7), of one band, urgent first (G11), or
        None; never raises on shutdown."""
        now = self._clock()
        urgent, others = self._heaps[1], self._heaps[0]
        heap = urgent if self._ready_top(urgent, now) is not None else others
        taken: dict[K, KeyMeta] = {}
        while len(taken) < max_batch and (key := self._ready_top(heap, now)) is not None:
            heapq.heappop(heap)
            entry = self._queued.pop(key)
            self._processing.add(key)
            taken[key] = entry.tally.freeze()
        if not taken:
            return None
        self.handed_out += len(taken)
        return Work(tuple(taken), MappingProxyType(taken))

    def _ready_top(self, heap: _Heap[K], now: float) -> K | None:
        key = self._peek(heap)
        return key if key is not None and self._queued[key].ready_at <= now else None

    def _peek(self, heap: _Heap[K]) -> K | None:
        """The live key at the top of `heap`, dropping stale items on the way."""
        while heap:
            _, seq, key = heap[0]
            entry = self._queued.get(key)
            if entry is not None and entry.seq == seq:
                return key
            heapq.heappop(heap)
        return None

    def next_ready(self) -> float | None:
        """The earliest ready time of a key that may be handed out; None when none is queued."""
        times = [self._queued[k].ready_at for h in self._heaps if (k := self._peek(h)) is not None]
        return min(times, default=None)

    def done(self, keys: Iterable[K]) -> None:
        """Finish some handed-out keys; releases their follow-ups (G3)."""
        finished = tuple(keys)
        # Validate everything before changing anything: a bad call must not half-apply.
        if len(set(finished)) != len(finished):
            raise ValueError("done() got the same key twice")
        unknown = [k for k in finished if k not in self._processing]
        if unknown:
            raise ValueError(f"done() for keys that are not processing: {unknown!r}")
        for key in finished:
            self._processing.remove(key)
            entry = self._queued.get(key)
            if entry is not None:
                self.follow_ups += 1
                self._push(key, entry)
        self.notify()

    # ---- lifecycle -------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting adds; `get` stops waiting (G9). Idempotent."""
        self._shut = True
        self.notify()

    @property
    def shut(self) -> bool:
        return self._shut

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is processing; False if `timeout` seconds pass first."""
        deadline = self._clock() + timeout
        while self._processing:
            if self._clock() >= deadline:
                return False
            await self.wait(deadline)
        return True

    # ---- introspection ---------------------------------------------------------------

    def depth(self) -> int:
        """Queued keys, ready or not, follow-ups included."""
        return len(self._queued)

    def processing(self) -> int:
        """Keys handed out and not yet done."""
        return len(self._processing)

    def is_queued(self, key: K) -> bool:
        return key in self._queued

    def heap_size(self) -> int:
        """Heap items of both bands, stale ones included (bounded by 2 x depth + a constant)."""
        return len(self._heaps[0]) + len(self._heaps[1])

    # ---- waiting ---------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every waiter; each re-checks, so one Event per round of changes is enough."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait(self, deadline: float | None) -> None:
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


def check_batch(max_batch: int) -> None:
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
