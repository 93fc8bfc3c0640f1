"""The delay layer: when an add asks to be ready (tests/unit/test_queue_settle.py).

G5 Settle window, leading edge. An add without a delay (an event) opens a window when none is
   open; the window ends `settle` seconds later. What the event that opens it gets depends on
   the queue:
   * idle (nothing processing, no sweep queued or running: the caller says so): the window
     opens with a *leading edge*. The opening event is ready at once, and so is every event
     added after it until the queue next hands out keys (`handed_out`); those leave together
     as one batch. Events added after that hand-out and before the window ends are ready at
     its end, as below. A lone event -- a promotion on a quiet service -- so waits for no
     window at all, and the notifications of one transaction still leave as one batch: they
     arrive together at its commit and the listener adds them all before the consumers run
     (prebuildd.listener, "Batches").
   * busy: the window is *trailing*, as it always was before: the opening event and every
     event until the window ends become ready at that same end. Under a burst the queue is
     busy, so the burst keeps leaving in batches of one window each; a key added again while
     it is processing still gets exactly one follow-up (G3).
   No event waits longer than `settle` before it is ready (plus what the cooldown, G10, adds
   on top).
G6 Delays. An add with `delay=d` (a timer, a retry, a sweep's entry) asks for
   `now + max(d, 0)`: not subject to the settle window, and never handed out before that
   time (the core's G4). NaN is refused.

One window for all keys, not one per key: a burst must leave as one batch.
"""

from __future__ import annotations

import math

from prebuildd.queue.core import check_number

# The product's settle window (`prebuildd run --settle`): notifications of one transaction are
# delivered together at its commit, so 2 ms batch them, and a busy queue's events wait for
# its end (on an idle queue the leading edge hands a lone event out at once, G5).
DEFAULT_SETTLE_SECONDS = 0.002


class SettleWindow:
    def __init__(self, settle: float = DEFAULT_SETTLE_SECONDS) -> None:
        if not settle >= 0:
            raise ValueError(f"settle must be >= 0, got {settle!r}")
        self._settle = settle
        self._window_end = -math.inf
        # The opening time of a leading-edge window until the queue's next hand-out: events
        # added until then are ready at once and leave in the same batch (G5). None: none.
        self._leading_at: float | None = None

    def ready_at(self, now: float, delay: float | None, *, idle: bool = False) -> float:
        """The ready time an add at `now` asks for: now (a leading edge), the window's end
        (G5) or `now + delay` (G6). `idle`: the queue has nothing processing (the caller's
        word; only an idle queue opens a leading edge)."""
        if delay is not None:
            check_number(delay, "delay")
            return now + max(delay, 0.0)
        if now >= self._window_end:
            self._window_end = now + self._settle
            self._leading_at = now if idle else None
        if self._leading_at is not None:
            return self._leading_at
        return self._window_end

    def handed_out(self) -> None:
        """The queue handed keys out: a leading edge's batch has left, the rest of its window
        is trailing (G5)."""
        self._leading_at = None
