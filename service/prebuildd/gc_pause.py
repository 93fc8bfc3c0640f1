"""Keep Python's cyclic garbage collector's pauses off the reaction path.

Two tools, both about the collector walking objects that are not garbage:

* `deferred_collection`: held off while a batch is turned into plans (below);
* `SweepFreezer`: the fleet's long-lived state moved out of the collected generations once
  a sweep has been reconciled (after the next section).

Deferred collection
-------------------

Reading a 200-template batch (some 50,000 rows: tuples and UUIDs, all tracked by the
collector) and turning it into snapshots and plans allocates a few hundred thousand objects,
almost none of them part of a reference cycle: reference counting frees them. Left on, the
collector runs hundreds of times per sweep, and its full collections walk every live object;
measured on the SPEC fleet that was about a quarter of a sweep's client CPU. Deferred, it
runs once afterwards over what survived.

Only for synchronous stretches (no waiting on I/O in between), so that other tasks never run
with the collector held off for long. Uses are counted: nested or overlapping uses resume the
collector when the last one ends, and a collector the application switched off stays off.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterable, Iterator
from uuid import UUID

__all__ = ["SweepFreezer", "deferred_collection"]

log = logging.getLogger(__name__)


class _State:
    holders = 0
    # Whether the first holder found the collector on (and so the last must switch it back).
    resume = False


@contextlib.contextmanager
def deferred_collection() -> Iterator[None]:
    if _State.holders == 0:
        _State.resume = gc.isenabled()
        gc.disable()
    _State.holders += 1
    try:
        yield
    finally:
        _State.holders -= 1
        if _State.holders == 0 and _State.resume:
            gc.enable()


# ---- frozen after a sweep --------------------------------------------------------------------


class SweepFreezer:
    """Freeze the heap (`gc.freeze`) once every template of a sweep has been reconciled.

    Why: after a sweep the service holds the fleet's state (the collector's latest plan per
    preset: 60,000 presets at 5,000 templates). Every full collection walks all of it, ~150
    ms there, and reconciles allocate enough to start one every few seconds: promotions that
    arrive during one wait for it (docs/benchmarks.md, bench/reaction.py, the 5,000-template
    tail). Frozen objects are skipped by every later collection; reference counting still
    frees them when they are dropped (a plan replaced by a newer one), so memory is not held.

    What a freeze cannot do: collect a reference cycle among frozen objects once it becomes
    garbage. So each freeze first unfreezes what the previous one froze and runs one full
    collection over everything, reclaiming such cycles, before freezing again: at most one
    sweep's worth of cyclic garbage waits, and the one full pass per sweep (default every 60
    s) runs at a known moment -- right after the sweep's own reconciles -- instead of every
    few seconds in the middle of event work.

    `swept` starts waiting for a sweep's templates (a newer sweep replaces an older one's
    wait); `reconciled` crosses off the templates of each outcome (locked and reconciled,
    or held by another replica, which reconciles them); when none is left, `freeze`. A
    template that keeps failing postpones the freeze until it succeeds or the next sweep.
    Synchronous, from the event loop's callbacks (Sweeper.on_sweep, Dispatcher.on_outcome).
    """

    def __init__(self) -> None:
        self._waiting: set[UUID] | None = None  # None: no sweep to wait for
        self.freezes = 0

    def swept(self, templates: Iterable[UUID]) -> None:
        self._waiting = set(templates)
        if not self._waiting:
            self._waiting = None

    def reconciled(self, templates: Iterable[UUID]) -> None:
        if self._waiting is None:
            return
        self._waiting.difference_update(templates)
        if not self._waiting:
            self._waiting = None
            self.freeze()

    def freeze(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self.freezes += 1
        log.debug(
            "heap frozen after a sweep",
            extra={
                "collected": collected,
                "frozen": gc.get_freeze_count(),
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
