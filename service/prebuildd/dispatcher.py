"""The dispatcher: takes work out of the queue, runs it on a connection, puts back what follows.

    queue --get--> worker --Work -> Cause--> reconciler (one transaction per batch)
                     |                           |
                     |  the sweep marker         v Outcome
                     +--> Sweeper (list + add)   collector.observe, on_outcome hooks
                                                 |
    queue <--add----------- follow_up(outcome) --+   (the one path back into the queue)

What it owns:

* the worker loop: `get` a batch (or the sweep marker), run it, `done` it, whatever happened;
* Work -> `Cause`: which trigger names a batch (`cause_of`), how many adds it stands for, and
  the earliest event behind it (for the lag);
* `follow_up(outcome)`: after every piece of work, what must happen next goes back into the
  queue from here and nowhere else: the timers a plan asked for (schedule boundary, TTL,
  backoff end, capped creates), the busy retry of templates another replica held, the
  error retry of a batch that failed (its delay doubling per template), the retry of a
  sweep whose listing failed, and the templates whose turn under the cap on pending prebuild
  jobs came in another template's reconcile (`Outcome.wake`). A timer's instant is the
  database's time (the plans were made at the database's now); its delay is measured on the
  outcome's reading of the database's clock plus this host's monotonic time since
  (prebuildd.clock), never the wall clock;
* the periodic sweep and the retries of failed sweeps (`sweep_periodically`), so that every
  piece of work the service does on the pool runs here.

A sweep whose listing fails (permission denied after an upgrade, a missing table, a statement
timeout) is retried after 1 s, then 2, 4... up to 30 s, until one succeeds (any sweep resets
the delay), by the sweep loop: outside the queue's exclusive sweep marker, so event-driven
reconciles go on meanwhile and every queued template keeps its own timer or retry delay.
(Retried as the marker, a listing that fails at once would hold the queue in a loop.) The
collector counts each failure and reports the path failing in `/readyz` once it repeats.

Without a collector the dispatcher makes one pass (the CLI's sweep, prebuildd.sweep): nothing
follows a reconcile and errors propagate to the caller.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import anyio
import anyio.lowlevel

from prebuildd.collector import MetricsCollector
from prebuildd.queue import KeyMeta, QueueShutDown, Work, WorkQueue
from prebuildd.reconciler import Cause, Outcome, Reconciler
from prebuildd.store import Conn, Connect
from prebuildd.trigger import Trigger

# After a reconcile could not lock a template (another replica holds it), look again after
# this long: the holder normally follows up itself, this only covers a holder that died.
BUSY_RETRY_SECONDS = 2.0
# After a failed reconcile (database down...), retry with this delay, doubling up to the cap.
ERROR_RETRY_SECONDS = 0.5
ERROR_RETRY_MAX_SECONDS = 10.0
# After a sweep whose listing failed, sweep again after this long, doubling up to the cap.
SWEEP_RETRY_SECONDS = 1.0
SWEEP_RETRY_MAX_SECONDS = 30.0

# When one batch was queued for several reasons, the first of these names it: what a person
# did beats what the clock asked for, which beats the safety nets.
PRECEDENCE = (
    Trigger.EVENT,
    Trigger.STARTUP,
    Trigger.OVERFLOW,
    Trigger.TIMER,
    Trigger.THROTTLE,
    Trigger.SWEEP,
    Trigger.CLI,
    Trigger.RETRY,
)
# The sweep marker stands for every template; what its sweep is called.
_SWEEP_PRECEDENCE = (Trigger.STARTUP, Trigger.OVERFLOW)


class Sweep(Protocol):
    """What the dispatcher needs of a sweep (prebuildd.sweep.Sweeper)."""

    async def sweep(self, conn: Conn, trigger: Trigger, *, periodic: bool = False) -> object: ...


@dataclass(frozen=True, slots=True)
class SweepFailed:
    """A sweep could not list the templates (nothing was queued)."""

    trigger: Trigger
    periodic: bool = False


@dataclass(frozen=True, slots=True)
class _SweepRetry:
    """A failed sweep, to run again at `at` (the dispatcher's monotonic clock)."""

    at: float
    trigger: Trigger
    periodic: bool


def cause_of(work: Work[UUID]) -> Cause:
    """Why a batch runs: its most telling trigger, its adds, its earliest event."""
    metas = list(work.meta.values())
    triggers = {t for m in metas for t in m.triggers}
    trigger = next((t for t in PRECEDENCE if t in triggers), Trigger.RETRY)
    event_at = min((m.event_at for m in metas if m.event_at is not None), default=None)
    return Cause(trigger, events=sum(m.events for m in metas), event_at=event_at)


def sweep_trigger(meta: KeyMeta) -> Trigger:
    """The trigger of the templates a sweep marker queues: startup, overflow, else sweep."""
    return next((t for t in _SWEEP_PRECEDENCE if t in meta.triggers), Trigger.SWEEP)


class Dispatcher:
    def __init__(
        self,
        queue: WorkQueue[UUID],
        reconciler: Reconciler,
        sweeper: Sweep,
        *,
        max_batch: int,
        collector: MetricsCollector | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """`monotonic` must be the clock the outcomes' database clock readings were anchored
        on (time.monotonic; tests of timers pass their fake clock and outcomes of their own),
        and `sleep` must agree with it (the sweep loop waits on it)."""
        self._queue = queue
        self._reconciler = reconciler
        self._sweeper = sweeper
        self._max_batch = max_batch
        self._collector = collector
        self._monotonic = monotonic
        self._sleep = sleep
        # Consecutive failed reconciles per template: the error retry doubles with it.
        self._error_streak: dict[UUID, int] = {}
        # Consecutive failed sweeps (the sweep retry doubles with it), the retry due, and
        # what wakes the sweep loop when a retry is scheduled.
        self._sweep_streak = 0
        self._sweep_retry: _SweepRetry | None = None
        self._sweep_wakeup: anyio.Event | None = None
        # Called with every outcome, failed ones too (the demo narrates them; benches count).
        # The dispatcher keeps no history: at fleet scale outcomes hold every plan of a sweep.
        self.on_outcome: list[Callable[[Outcome], None]] = []

    @property
    def one_pass(self) -> bool:
        """No collector: nothing follows a reconcile and errors propagate (the CLI)."""
        return self._collector is None

    # ---- the worker loop -----------------------------------------------------------------

    async def worker(self, connect: Connect) -> None:
        """Take work until the queue shuts down; each piece on a connection from `connect`."""
        while True:
            try:
                work = await self._queue.get(self._max_batch)
            except QueueShutDown:
                return
            try:
                if work.sweep_meta is not None:
                    await self._sweep(sweep_trigger(work.sweep_meta), connect, periodic=False)
                else:
                    await self._reconcile(work, connect)
            finally:
                self._queue.done(work)

    async def _reconcile(self, work: Work[UUID], connect: Connect) -> None:
        ids = list(work.keys)
        cause = cause_of(work)
        try:
            async with connect() as conn:
                outcome = await self._reconciler.reconcile(conn, ids, cause)
        except Exception as exc:
            if self.one_pass:
                raise
            outcome = Outcome(cause, failed=tuple(ids), error=exc)
        self.follow_up(outcome)
        if self._collector is not None:
            self._collector.observe(outcome, work.meta)
        for hook in self.on_outcome:
            hook(outcome)

    async def _sweep(self, trigger: Trigger, connect: Connect, *, periodic: bool) -> None:
        try:
            async with connect() as conn:
                await self._sweeper.sweep(conn, trigger, periodic=periodic)
        except Exception as exc:
            if self._collector is None:
                raise
            failed = SweepFailed(trigger, periodic)
            self.follow_up(failed)
            retry_in = None if self._sweep_retry is None else self._sweep_retry.at
            if retry_in is not None:
                retry_in -= self._monotonic()
            self._collector.sweep_failed(exc, trigger, retry_in=retry_in)
            return
        self._sweep_streak = 0
        self._sweep_retry = None
        if self._collector is not None:
            self._collector.sweep_succeeded()

    async def sweep_periodically(self, interval: float, connect: Connect) -> None:
        """The safety net: a sweep every `interval` seconds, and the retries of failed sweeps
        (module docstring), one at a time, on connections of their own."""
        next_periodic = self._monotonic() + interval
        while True:
            retry = self._sweep_retry
            await self._wait_until(next_periodic if retry is None else min(next_periodic, retry.at))
            now = self._monotonic()
            retry = self._sweep_retry
            if now >= next_periodic:
                # The periodic sweep covers a retry that is due as well.
                next_periodic = now + interval
                self._sweep_retry = None
                await self._sweep(Trigger.SWEEP, connect, periodic=True)
            elif retry is not None and now >= retry.at:
                self._sweep_retry = None
                await self._sweep(retry.trigger, connect, periodic=retry.periodic)

    async def _wait_until(self, deadline: float) -> None:
        """Return at `deadline` (our monotonic clock), or earlier when a retry is scheduled."""
        timeout = deadline - self._monotonic()
        if timeout <= 0:
            await anyio.lowlevel.checkpoint()
            return
        wakeup = self._sweep_wakeup = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def alarm() -> None:
                await self._sleep(timeout)
                tg.cancel_scope.cancel()

            tg.start_soon(alarm)
            await wakeup.wait()
            tg.cancel_scope.cancel()

    # ---- the one path back into the queue ------------------------------------------------

    def follow_up(self, outcome: Outcome | SweepFailed) -> None:
        """Queue what must follow a piece of work; nothing else puts work back."""
        if self.one_pass:
            return
        queue = self._queue
        if isinstance(outcome, SweepFailed):
            # Later, growing, and by the sweep loop, not as the queue's exclusive marker.
            self._sweep_streak += 1
            growth = 2 ** (self._sweep_streak - 1)
            delay = min(SWEEP_RETRY_MAX_SECONDS, SWEEP_RETRY_SECONDS * growth)
            at = self._monotonic() + delay
            pending = self._sweep_retry
            if pending is not None:
                # One retry stands for every failed sweep; the startup sweep keeps its name.
                at = min(at, pending.at)
                both = (pending.trigger, outcome.trigger)
                trigger = next((t for t in _SWEEP_PRECEDENCE if t in both), outcome.trigger)
                outcome = SweepFailed(trigger, pending.periodic and outcome.periodic)
            self._sweep_retry = _SweepRetry(at, outcome.trigger, outcome.periodic)
            if self._sweep_wakeup is not None:
                self._sweep_wakeup.set()
            return
        for template_id in outcome.locked:
            self._error_streak.pop(template_id, None)
        for template_id in outcome.failed:
            streak = self._error_streak.get(template_id, 0) + 1
            self._error_streak[template_id] = streak
            delay = min(ERROR_RETRY_MAX_SECONDS, ERROR_RETRY_SECONDS * 2 ** (streak - 1))
            queue.add(template_id, trigger=Trigger.RETRY, delay=delay)
        for template_id in outcome.busy:
            queue.add(template_id, trigger=Trigger.RETRY, delay=BUSY_RETRY_SECONDS)
        for template_id in outcome.wake:
            queue.add(template_id, trigger=Trigger.THROTTLE)
        if outcome.next_attention:
            db_clock = outcome.clock
            if db_clock is None:
                raise ValueError("an outcome with timers must carry the database clock reading")
            elapsed = self._monotonic()
            for template_id, when in outcome.next_attention.items():
                delay = db_clock.seconds_until(when, elapsed)
                queue.add(template_id, trigger=Trigger.TIMER, delay=delay)
