"""The delay layer: when an add asks to be ready (tests/unit/test_queue_settle.py).

G5 Settle window. An add without a delay (an event) is ready at the end of the current settle
   window: the first such add at a moment when no window is open opens one that ends `settle`
   seconds later, and every event add until then becomes ready at that same end.
   Notifications of one transaction arrive together at its commit and therefore leave the
   queue as one batch, and no event waits longer than `settle` before it is ready (plus what
   the cooldown, G10, adds on top).
G6 Delays. An add with `delay=d` (a timer, a retry, a sweep's entry) asks for
   `now + max(d, 0)`: not subject to the settle window, and never handed out before that
   time (the core's G4). NaN is refused.

One window for all keys, not one per key: a burst must leave as one batch.
"""

from __future__ import annotations

import math

from prebuildd.queue.core import check_number

# The product's settle window (`prebuildd run --settle`): notifications of one transaction are
# delivered together at its commit, so 2 ms batch them, and every millisecond here is added to
# a promotion's reaction (docs/benchmarks.md, "Reaction").
DEFAULT_SETTLE_SECONDS = 0.002


class SettleWindow:
    def __init__(self, settle: float = DEFAULT_SETTLE_SECONDS) -> None:
        if not settle >= 0:
            raise ValueError(f"settle must be >= 0, got {settle!r}")
        self._settle = settle
        self._window_end = -math.inf

    def ready_at(self, now: float, delay: float | None) -> float:
        """The ready time an add at `now` asks for: the window's end (G5) or `now + delay` (G6)."""
        if delay is not None:
            check_number(delay, "delay")
            return now + max(delay, 0.0)
        if now >= self._window_end:
            self._window_end = now + self._settle
        return self._window_end
