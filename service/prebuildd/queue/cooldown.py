"""The rate-limiting layer: a template reconciled a moment ago waits.

Tested on its own in tests/unit/test_queue_cooldown.py.

G10 Cooldown. With `cooldown` c > 0, a key is never handed out less than c after its previous
    hand-out: while a key's last hand-out at t is less than c ago, every add of it (event,
    delay or timer) asks for max(its own time, t + c) instead. A key not handed out within the
    last c is untouched, so the first event after a quiet spell waits for the settle window
    only. A key that keeps receiving events for T seconds is therefore handed out at most
    ceil(T / c) + 1 times, and its burst still leaves with its batch mates (keys handed out
    together cool down together). With the core's G4, "earlier" then means earlier within what
    the cooldown allows. The full-sweep marker ignores the cooldown and starts none: the queue
    does not know which keys a sweep covers. A hand-out time is forgotten once its cooldown
    is over, so this layer remembers only the keys handed out within the last c. c = 0
    disables all of this. An urgent add is exempt and asks for its own time: the cooldown
    tames churn (provisioner progress), it must not delay a change a person made (a
    promotion, a claim); the core's G3 still holds, so an urgent add during processing is the
    key's one follow-up, ready at `done`.

Costs: amortised O(1) per hand-out (a dict and a deque in hand-out order, pruned from its old
end as the clock moves on).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Cooldown(Generic[K]):
    def __init__(self, cooldown: float = 0.0) -> None:
        if not cooldown >= 0:
            raise ValueError(f"cooldown must be >= 0, got {cooldown!r}")
        self._cooldown = cooldown
        # Last hand-out per key while it is cooling, and the same in hand-out order (the clock
        # is monotonic, so the deque is sorted and is pruned from its left end).
        self._last_start: dict[K, float] = {}
        self._starts: deque[tuple[float, K]] = deque()

    def earliest(self, key: K, now: float) -> float:
        """The earliest ready time the cooldown allows for `key`; -inf when it is not cooling."""
        last = self._last_start.get(key)
        if last is None or last + self._cooldown <= now:
            return -math.inf
        return last + self._cooldown

    def started(self, keys: Iterable[K], now: float) -> None:
        """`keys` were handed out at `now`: their cooldown starts."""
        if self._cooldown <= 0:
            return
        self._forget_cooled(now)
        for key in keys:
            self._last_start[key] = now
            self._starts.append((now, key))

    def cooling(self, now: float) -> int:
        """Keys whose cooldown is running: the hand-out times this layer remembers."""
        self._forget_cooled(now)
        return len(self._last_start)

    def remembered(self) -> int:
        """Hand-out records held (dict and deque), cooled or not: what bounds its memory."""
        return len(self._last_start) + len(self._starts)

    def _forget_cooled(self, now: float) -> None:
        # A deque item is stale when its key was handed out again since; the dict has the
        # newer time then, and that newer item (further right) removes it in its turn.
        while self._starts and self._starts[0][0] + self._cooldown <= now:
            started, key = self._starts.popleft()
            if self._last_start.get(key) == started:
                del self._last_start[key]
